-- saedata concept store: offline keyword labels.

-- keyword_terms(sae, top_docs := 64, n_words := 3, src := 'activations', words := 'word_counts',
-- ds := NULL): the terms that
-- label each latent of SAE `sae`. A latent's evidence is the word where it peaked in each
-- of its `top_docs` strongest documents (and the word before it); images, which have no
-- text position, give every word of their path. Each word is scored by its contribution
-- to KL(evidence || corpus), its share of the evidence p against its document frequency
-- q in word_counts: p * ln(p / q). The `n_words` best contrastive words (score > 0) make
-- the label, a word standing as its commonest two-word phrase when that phrase makes half
-- its occurrences and the first word is not a corpus-wide filler; a latent with no
-- contrastive word keeps its commonest words (contrastive = false: a weak label).
-- `src` is where the strongest rows are picked from: 'activations', or in a shard folder
-- 'label_candidates' (every part's strongest rows, which hold the overall ones). With `ds`
-- (dataset ids) the evidence and the background are those datasets' documents alone,
-- `words` then naming a relation (sae_id, word, df) of their document frequencies.
-- Returns (latent, term, c, n, score, contrastive, rk), rk the term's rank in the label.
--   SELECT latent, string_agg(term, ' / ' ORDER BY rk) FROM keyword_terms(1) GROUP BY latent;
CREATE OR REPLACE MACRO keyword_terms(sae, top_docs := 64, n_words := 3, src := 'activations',
                                      words := 'word_counts', ds := NULL) AS TABLE
WITH top AS (
    SELECT a.latent, a.doc_id, a.peak
    FROM query_table(src) AS a
    WHERE a.sae_id = sae
      AND (ds IS NULL OR a.doc_id IN (SELECT doc_id FROM documents WHERE list_contains(ds, dataset_id)))
    QUALIFY row_number() OVER (PARTITION BY a.latent ORDER BY abs(a.value) DESC, a.doc_id) <= top_docs
),
evidence AS (
    -- text: the word where the latent peaked, and the word before it
    SELECT t.latent, t.doc_id, word_at(d.text, t.peak) AS word, word_before(d.text, t.peak) AS prev
    FROM top AS t JOIN documents AS d USING (doc_id)
    WHERE t.peak IS NOT NULL
    UNION ALL
    -- images (no text position): every word of the document's path, e.g. its folder names
    SELECT t.latent, t.doc_id, unnest(list_distinct(regexp_extract_all(lower(d.text), '[\pL\pN]+'))) AS word,
           NULL AS prev
    FROM top AS t JOIN documents AS d USING (doc_id)
    WHERE t.peak IS NULL
),
n_ev AS (SELECT latent, count(DISTINCT doc_id) AS n FROM evidence GROUP BY latent),
total AS (
    SELECT greatest(count(*), 1) AS n_docs
    FROM documents JOIN datasets USING (dataset_id)
    WHERE datasets.sae_id = sae AND (ds IS NULL OR list_contains(ds, documents.dataset_id))
),
df AS (SELECT word, sum(df) AS df FROM query_table(words) WHERE sae_id = sae GROUP BY word),
top_prev AS (
    -- each word's commonest previous word (ties: the first alphabetically, so labels are
    -- the same on every run)
    SELECT latent, word, prev, count(*) AS c_prev
    FROM evidence
    WHERE word IS NOT NULL AND prev IS NOT NULL
    GROUP BY latent, word, prev
    QUALIFY row_number() OVER (PARTITION BY latent, word ORDER BY count(*) DESC, prev) = 1
),
words AS (
    SELECT w.latent, w.word, w.c, p.prev, coalesce(p.c_prev, 0) AS c_prev
    FROM (SELECT latent, word, count(DISTINCT doc_id) AS c FROM evidence WHERE word IS NOT NULL GROUP BY ALL) AS w
    LEFT JOIN top_prev AS p USING (latent, word)
),
scored AS (
    SELECT w.latent, w.word, w.c, n_ev.n,
           -- "prev word" stands for the word when that phrase makes at least half of its
           -- occurrences and prev is not a corpus-wide filler ("the", "of", ".")
           CASE WHEN w.c_prev >= 2 AND 2 * w.c_prev >= w.c
                     AND coalesce(pdf.df, 0) < 0.1 * total.n_docs
                THEN w.prev || ' ' || w.word ELSE w.word END AS term,
           -- this word's contribution to KL(evidence || corpus): p * ln(p / q)
           (w.c / n_ev.n) * ln((w.c / n_ev.n) / ((coalesce(wdf.df, 0) + 1) / (total.n_docs + 1))) AS score
    FROM words AS w
    JOIN n_ev USING (latent)
    CROSS JOIN total
    LEFT JOIN df AS wdf ON wdf.word = w.word
    LEFT JOIN df AS pdf ON pdf.word = w.prev
    WHERE w.c >= least(2, n_ev.n)
)
SELECT latent, term, c, n, score,
       score > 0 AS contrastive,
       row_number() OVER (PARTITION BY latent ORDER BY score > 0 DESC,
                          CASE WHEN score > 0 THEN score ELSE c END DESC, term) AS rk
FROM scored
QUALIFY rk <= n_words AND (contrastive OR NOT bool_or(score > 0) OVER (PARTITION BY latent))
ORDER BY latent, rk;

-- top_texts(sae, latent_ids, n := 64, src := 'activations', ds := NULL): the texts of the `n`
-- strongest documents of each latent of `latent_ids` (ties: the lower doc_id), to find the
-- words that tell apart latents whose peak words are the same.
--   SELECT latent, count(*) FROM top_texts(1, [4, 41]) GROUP BY latent;
CREATE OR REPLACE MACRO top_texts(sae, latent_ids, n := 64, src := 'activations', ds := NULL) AS TABLE
SELECT a.latent, a.doc_id, d.text
FROM query_table(src) AS a
JOIN documents AS d USING (doc_id)
WHERE a.sae_id = sae AND a.latent IN (SELECT unnest(latent_ids)) AND (ds IS NULL OR list_contains(ds, d.dataset_id))
QUALIFY row_number() OVER (PARTITION BY a.latent ORDER BY abs(a.value) DESC, a.doc_id) <= n
ORDER BY a.latent, a.doc_id;

-- sample_docs(sae, n := 2000): `n` documents of the datasets of SAE `sae`, chosen by a
-- hash of their id (the same ones every run), with their text: what labels are scored on.
--   SELECT count(*) FROM sample_docs(1, n := 100);
CREATE OR REPLACE MACRO sample_docs(sae, n := 2000) AS TABLE
SELECT d.doc_id, d.text
FROM documents AS d JOIN datasets AS ds USING (dataset_id)
WHERE ds.sae_id = sae
ORDER BY hash(d.doc_id), d.doc_id
LIMIT n;

-- doc_latents(sae, doc_ids): the (doc_id, latent) pairs where a latent of SAE `sae` fires
-- in one of the documents `doc_ids`.
--   SELECT * FROM doc_latents(1, [0, 1]);
CREATE OR REPLACE MACRO doc_latents(sae, doc_ids) AS TABLE
SELECT doc_id, latent FROM activations
WHERE sae_id = sae AND doc_id IN (SELECT unnest(doc_ids))
ORDER BY doc_id, latent;

-- latent_examples(sae, latent_ids, n_top := 8, n_sample := 10, seed := 0): for each latent
-- of `latent_ids`, the evidence an LLM is shown: its `n_top` strongest documents (kind
-- 'top', rk 1 the strongest; ties: the lower doc_id) and `n_sample` more of the documents
-- where it fires, drawn by a hash of their id and `seed` from all the others (kind
-- 'sample', held out from the label's evidence to score it on), each with the character
-- where it peaked and the text.
--   SELECT latent, kind, count(*) FROM latent_examples(1, [42], seed := 7) GROUP BY ALL;
CREATE OR REPLACE MACRO latent_examples(sae, latent_ids, n_top := 8, n_sample := 10, seed := 0) AS TABLE
WITH ranked AS (
    SELECT a.latent, a.doc_id, a.value, a.peak,
           row_number() OVER (PARTITION BY a.latent ORDER BY abs(a.value) DESC, a.doc_id) AS strength
    FROM activations AS a
    WHERE a.sae_id = sae AND a.latent IN (SELECT unnest(latent_ids))
),
picked AS (
    SELECT latent, doc_id, value, peak, 'top' AS kind, strength AS rk FROM ranked WHERE strength <= n_top
    UNION ALL
    SELECT latent, doc_id, value, peak, 'sample' AS kind,
           row_number() OVER (PARTITION BY latent ORDER BY hash(doc_id, seed), doc_id) AS rk
    FROM ranked WHERE strength > n_top
    QUALIFY rk <= n_sample
)
SELECT p.latent, p.kind, p.rk, p.doc_id, p.value, p.peak, d.text
FROM picked AS p JOIN documents AS d USING (doc_id)
ORDER BY p.latent, p.kind DESC, p.rk;

-- silent_examples(sae, latent_ids, n := 10, seed := 0, pool := 4096): for each latent of
-- `latent_ids`, `n` documents of the SAE's datasets where it does not fire, drawn by a
-- hash of their id, `seed` and the latent from `pool` documents drawn by a hash of their
-- id and `seed` (fewer when it fires in nearly all of them). Empty texts are skipped.
--   SELECT latent, count(*) FROM silent_examples(1, [42, 7], n := 5) GROUP BY ALL;
CREATE OR REPLACE MACRO silent_examples(sae, latent_ids, n := 10, seed := 0, pool := 4096) AS TABLE
WITH drawn AS (
    SELECT d.doc_id, d.text
    FROM documents AS d JOIN datasets AS ds USING (dataset_id)
    WHERE ds.sae_id = sae AND d.text <> ''
    ORDER BY hash(d.doc_id, seed), d.doc_id
    LIMIT pool
),
fired AS (
    SELECT a.latent, a.doc_id FROM activations AS a
    WHERE a.sae_id = sae AND a.latent IN (SELECT unnest(latent_ids)) AND a.doc_id IN (SELECT doc_id FROM drawn)
)
SELECT l.latent, p.doc_id, p.text
FROM (SELECT unnest(latent_ids) AS latent) AS l
CROSS JOIN drawn AS p
ANTI JOIN fired AS f ON f.latent = l.latent AND f.doc_id = p.doc_id
QUALIFY row_number() OVER (PARTITION BY l.latent ORDER BY hash(p.doc_id, seed, l.latent), p.doc_id) <= n
ORDER BY l.latent, hash(p.doc_id, seed, l.latent), p.doc_id;

-- near_misses(sae, latent_ids, n := 8, top_docs := 32, pool := 20000): for each latent
-- of `latent_ids`, documents close to those where it fires but where it is silent -- the
-- contrast that says what it is *not* -- of two kinds, each ranked on its own (rk):
-- 'words': documents holding the words where it peaked in its `top_docs` strongest
-- documents (cues: words with a letter, in under a quarter of the corpus), among `pool`
-- documents drawn by a hash of their id; `cues` the words they share, weight how many of
-- its strongest documents peaked on them; 'co-firing': documents where the latents that
-- fire most over-represented in its strongest documents (p ln(p / freq), at most 5 of
-- them, each in at least two of those) fire; `others` those latents, weight the sum of their
-- scores, `pos` where the strongest of them peaked. The best `n` of each kind.
--   SELECT latent, kind, doc_id, cues, others FROM near_misses(1, [42], n := 3);
CREATE OR REPLACE MACRO near_misses(sae, latent_ids, n := 8, top_docs := 32, pool := 20000) AS TABLE
WITH top AS (
    SELECT a.latent, a.doc_id, a.peak
    FROM activations AS a
    WHERE a.sae_id = sae AND a.latent IN (SELECT unnest(latent_ids))
    QUALIFY row_number() OVER (PARTITION BY a.latent ORDER BY abs(a.value) DESC, a.doc_id) <= top_docs
),
n_top AS (SELECT latent, count(*) AS n FROM top GROUP BY latent),
total AS (
    SELECT greatest(count(*), 1) AS n_docs
    FROM documents JOIN datasets USING (dataset_id) WHERE datasets.sae_id = sae
),
df AS (SELECT word, sum(df) AS df FROM word_counts WHERE sae_id = sae GROUP BY word),
cues AS (
    SELECT e.latent, e.word, count(DISTINCT e.doc_id) AS c
    FROM (SELECT t.latent, t.doc_id, word_at(d.text, t.peak) AS word FROM top AS t JOIN documents AS d USING (doc_id))
         AS e
    CROSS JOIN total
    LEFT JOIN df USING (word)
    WHERE regexp_matches(e.word, '\pL') AND coalesce(df.df, 0) < 0.25 * total.n_docs
    GROUP BY ALL
),
drawn AS (
    SELECT DISTINCT doc_id, trim(w, '''’') AS word
    FROM (SELECT d.doc_id, unnest(regexp_extract_all(lower(d.text), '[\pL\pN_''’]+')) AS w
          FROM (SELECT d2.doc_id, d2.text FROM documents AS d2 JOIN datasets AS ds USING (dataset_id)
                WHERE ds.sae_id = sae ORDER BY hash(d2.doc_id), d2.doc_id LIMIT pool) AS d)
),
fired AS (
    SELECT a.latent, a.doc_id FROM activations AS a
    WHERE a.sae_id = sae AND a.latent IN (SELECT unnest(latent_ids))
),
by_words AS (
    SELECT c.latent, w.doc_id, list(c.word ORDER BY c.c DESC, c.word) AS cues, sum(c.c)::DOUBLE AS weight
    FROM cues AS c JOIN drawn AS w USING (word)
    ANTI JOIN fired AS f ON f.latent = c.latent AND f.doc_id = w.doc_id
    GROUP BY ALL
),
together AS (
    -- p: the share of the latent's strongest documents where `other` fires too
    SELECT t.latent, a.latent AS other, count(*) AS c, any_value(n_top.n) AS n, count(*) / any_value(n_top.n) AS p
    FROM top AS t
    JOIN activations AS a ON a.sae_id = sae AND a.doc_id = t.doc_id AND a.latent <> t.latent
    JOIN n_top ON n_top.latent = t.latent
    GROUP BY t.latent, a.latent
),
neighbours AS (
    SELECT g.latent, g.other, g.p * ln(g.p / l.freq) AS score
    FROM together AS g JOIN latents AS l ON l.sae_id = sae AND l.latent = g.other
    WHERE g.c >= least(2, g.n) AND l.freq > 0 AND g.p > l.freq
    QUALIFY row_number() OVER (PARTITION BY g.latent ORDER BY score DESC, g.other) <= 5
),
by_latents AS (
    SELECT nb.latent, a.doc_id, list(nb.other ORDER BY nb.score DESC, nb.other) AS others,
           sum(nb.score) AS weight, arg_max(a.peak, nb.score) AS pos
    FROM neighbours AS nb
    JOIN activations AS a ON a.sae_id = sae AND a.latent = nb.other
    ANTI JOIN fired AS f ON f.latent = nb.latent AND f.doc_id = a.doc_id
    GROUP BY ALL
),
both_kinds AS (
    SELECT latent, 'words' AS kind, doc_id, cues, NULL::INTEGER[] AS others, weight, NULL::INTEGER AS pos
    FROM by_words
    UNION ALL
    SELECT latent, 'co-firing' AS kind, doc_id, NULL::VARCHAR[] AS cues, others, weight, pos
    FROM by_latents
)
SELECT b.latent, b.kind,
       row_number() OVER (PARTITION BY b.latent, b.kind ORDER BY b.weight DESC, hash(b.doc_id), b.doc_id) AS rk,
       b.doc_id, b.cues, b.others, b.weight, b.pos, d.text
FROM both_kinds AS b JOIN documents AS d USING (doc_id)
QUALIFY rk <= n
ORDER BY b.latent, b.kind DESC, rk;
