-- saedata concept store: words of a document at a character position.
-- `activations.peak` holds the character where a latent fired most strongly; these two
-- macros turn it into the word there, and the word before it (labels, evidence).

-- word_at(txt, pos): the lower-cased word of `txt` that contains character `pos`
-- (0-based), or that character itself when it is punctuation. `activations.peak`
-- holds such a position: where in the document the latent fired most strongly.
-- Only the 64 characters either side of `pos` are read, so a peak in a 50 MB document
-- costs what a peak in a tweet costs (a longer "word" is cut to that window).
--   SELECT word_at('New York is big', 5);   -- 'york'
CREATE OR REPLACE MACRO word_at(txt, pos) AS (
    CASE
        WHEN pos IS NULL OR pos < 0 OR substr(txt, pos + 1, 1) = '' THEN NULL
        WHEN NOT regexp_matches(substr(txt, pos + 1, 1), '[\pL\pN_]') THEN substr(txt, pos + 1, 1)
        ELSE lower(trim(
            regexp_extract(substr(txt, greatest(1, pos - 62), least(pos + 1, 64)), '[\pL\pN_''’]*$')
            || regexp_extract(substr(txt, pos + 2, 64), '^[\pL\pN_''’]*'),
            '''’'))
    END
);

-- word_before(txt, pos): the word (or punctuation mark) just before word_at(txt, pos),
-- found within the 128 characters that end at `pos`.
--   SELECT word_before('New York is big', 5);   -- 'new'
CREATE OR REPLACE MACRO word_before(txt, pos) AS (
    CASE WHEN pos IS NULL OR pos < 0 OR substr(txt, pos + 1, 1) = '' THEN NULL ELSE
    nullif(lower(regexp_extract(
        substr(substr(txt, greatest(1, pos - 126), least(pos + 1, 128)), 1,
               least(pos + 1, 128)
               - length(regexp_extract(substr(txt, greatest(1, pos - 126), least(pos + 1, 128)),
                                       '[\pL\pN_''’]*$'))
               - CASE WHEN regexp_matches(substr(txt, pos + 1, 1), '[\pL\pN_]') THEN 0 ELSE 1 END),
        '([\pL\pN_''’]+|[^\s\pL\pN_])\s*$', 1)), '')
    END
);
