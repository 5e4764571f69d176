-- saedata concept store: offline keyword labels.

-- keyword_terms(sae, top_docs := 64, n_words := 3, src := 'activations'): the terms that
-- label each latent of SAE `sae`. A latent's evidence is the word where it peaked in each
-- of its `top_docs` strongest documents (and the word before it); images, which have no
-- text position, give every word of their path. Each word is scored by its contribution
-- to KL(evidence || corpus), its share of the evidence p against its document frequency
-- q in word_counts: p * ln(p / q). The `n_words` best contrastive words (score > 0) make
-- the label, a word standing as its commonest two-word phrase when that phrase makes half
-- its occurrences and the first word is not a corpus-wide filler; a latent with no
-- contrastive word keeps its commonest words (contrastive = false: a weak label).
-- `src` is where the strongest rows are picked from: 'activations', or in a shard folder
-- 'label_candidates' (every part's strongest rows, which hold the overall ones).
-- Returns (latent, term, c, n, score, contrastive, rk), rk the term's rank in the label.
--   SELECT latent, string_agg(term, ' / ' ORDER BY rk) FROM keyword_terms(1) GROUP BY latent;
CREATE OR REPLACE MACRO keyword_terms(sae, top_docs := 64, n_words := 3, src := 'activations') AS TABLE
WITH top AS (
    SELECT a.latent, a.doc_id, a.peak
    FROM query_table(src) AS a
    WHERE a.sae_id = sae
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
    FROM documents JOIN datasets USING (dataset_id) WHERE datasets.sae_id = sae
),
df AS (SELECT word, sum(df) AS df FROM word_counts WHERE sae_id = sae GROUP BY word),
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

-- top_texts(sae, latent_ids, n := 64, src := 'activations'): the texts of the `n`
-- strongest documents of each latent of `latent_ids` (ties: the lower doc_id), to find the
-- words that tell apart latents whose peak words are the same.
--   SELECT latent, count(*) FROM top_texts(1, [4, 41]) GROUP BY latent;
CREATE OR REPLACE MACRO top_texts(sae, latent_ids, n := 64, src := 'activations') AS TABLE
SELECT a.latent, a.doc_id, d.text
FROM query_table(src) AS a
JOIN documents AS d USING (doc_id)
WHERE a.sae_id = sae AND a.latent IN (SELECT unnest(latent_ids))
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
