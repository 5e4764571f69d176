-- saedata concept store: latents, their statistics and their strongest documents.

-- length_floor(n): token count n with all but its 5 leading bits cleared (n itself
-- below 32): the length classes of latent_counts. Monotone, and length_floor(e) = e
-- for a class boundary e, so `n >= e` and `length_floor(n) >= e` agree.
--   SELECT length_floor(103);   -- 100 (0b1100111 -> 0b1100100)
CREATE OR REPLACE MACRO length_floor(n) AS (
    CASE WHEN n < 32 THEN n
         ELSE (n >> (floor(log2(n))::INTEGER - 4)) << (floor(log2(n))::INTEGER - 4) END
);

-- token_counts(sae, dataset_ids): per latent of SAE `sae`, dataset (grp), length class
-- and token count, n_active: in how many documents the latent fired on exactly `tokens`
-- of their tokens. Read from latent_counts (written when a dataset completes).
--   SELECT tokens, sum(n_active) FROM token_counts(1, [1, 2]) GROUP BY ALL ORDER BY ALL;
CREATE OR REPLACE MACRO token_counts(sae, dataset_ids) AS TABLE
SELECT latent, dataset_id AS grp, len_floor, tokens, sum(n_active)::BIGINT AS n_active
FROM latent_counts
WHERE sae_id = sae AND dataset_id IN (SELECT unnest(dataset_ids))
GROUP BY ALL;

-- latent_rates(sae, dataset_ids): per latent, rate: the fraction of all the tokens of
-- the documents of `dataset_ids` that it fires on.
--   SELECT * FROM latent_rates(1, [1, 2]) ORDER BY rate DESC LIMIT 10;
CREATE OR REPLACE MACRO latent_rates(sae, dataset_ids) AS TABLE
SELECT latent,
       sum(tokens * n_active) / (SELECT sum(n_tokens) FROM documents
                                 WHERE dataset_id IN (SELECT unnest(dataset_ids))) AS rate
FROM token_counts(sae, dataset_ids)
GROUP BY latent;

-- present_in(sae, dataset_ids): the activations of the documents of `dataset_ids`,
-- each with `present`: the concept fires on more of the document's tokens than its rate
-- over these documents predicts for a document of that length class (tokens >
-- length_floor(n_tokens) * rate). What every analysis reads as presence
-- (saedata.analysis.presence computes the same in Python).
--   SELECT latent, count(*) FILTER (WHERE present) FROM present_in(1, [1]) GROUP BY ALL;
CREATE OR REPLACE MACRO present_in(sae, dataset_ids) AS TABLE
SELECT a.doc_id, a.latent, a.value, a.tokens, d.n_tokens,
       a.tokens > length_floor(coalesce(d.n_tokens, 0)) * r.rate AS present
FROM activations AS a
JOIN documents AS d USING (doc_id)
JOIN latent_rates(sae, dataset_ids) AS r USING (latent)
WHERE a.sae_id = sae AND d.dataset_id IN (SELECT unnest(dataset_ids));

-- latent_stats(sae): per latent of SAE `sae`, over every document embedded with it:
-- n_docs (documents where active), freq (their fraction) and max_act (largest value).
--   SELECT * FROM latent_stats(1) ORDER BY freq DESC LIMIT 10;
CREATE OR REPLACE MACRO latent_stats(sae) AS TABLE
WITH total AS (
    SELECT count(*) AS n
    FROM documents AS d JOIN datasets AS ds USING (dataset_id)
    WHERE ds.sae_id = sae
)
SELECT
    a.latent,
    count(*) AS n_docs,
    count(*) / any_value(total.n) AS freq,
    max(a.value) AS max_act
FROM activations AS a, total
WHERE a.sae_id = sae
GROUP BY a.latent;

-- latent_freq(dataset_name): per latent, how many documents of one dataset it is
-- active in, that fraction, and its mean and max pooled value there.
--   SELECT * FROM latent_freq('reviews') ORDER BY freq DESC LIMIT 10;
CREATE OR REPLACE MACRO latent_freq(dataset_name) AS TABLE
WITH ds AS (SELECT dataset_id, sae_id, n_docs FROM datasets WHERE name = dataset_name)
SELECT
    a.latent,
    l.label,
    count(*) AS n_docs,
    count(*) / any_value(ds.n_docs) AS freq,
    avg(a.value) AS mean_act,
    max(a.value) AS max_act
FROM activations AS a
JOIN documents AS d USING (doc_id)
JOIN ds ON d.dataset_id = ds.dataset_id AND a.sae_id = ds.sae_id
LEFT JOIN latents AS l ON l.sae_id = a.sae_id AND l.latent = a.latent
GROUP BY a.latent, l.label;

-- top_docs(sae, lat, n := 10): the n documents where latent `lat` of SAE `sae` is
-- strongest, with their dataset and text.
--   SELECT * FROM top_docs(1, 42, n := 5);
CREATE OR REPLACE MACRO top_docs(sae, lat, n := 10) AS TABLE
SELECT a.doc_id, d.ext_id, ds.name AS dataset, a.value, word_at(d.text, a.peak) AS at_word, d.text
FROM activations AS a
JOIN documents AS d USING (doc_id)
JOIN datasets AS ds USING (dataset_id)
WHERE a.sae_id = sae AND a.latent = lat
ORDER BY a.value DESC, a.doc_id
LIMIT n;

-- doc_concepts(doc): the active concepts of one document, strongest first, with the
-- word where each peaked.
--   SELECT * FROM doc_concepts(17);
CREATE OR REPLACE MACRO doc_concepts(doc) AS TABLE
SELECT a.sae_id, a.latent, l.label, a.value, word_at(d.text, a.peak) AS at_word, l.freq
FROM activations AS a
JOIN documents AS d USING (doc_id)
LEFT JOIN latents AS l ON l.sae_id = a.sae_id AND l.latent = a.latent
WHERE a.doc_id = doc
ORDER BY abs(a.value) DESC, a.latent;

-- peak_windows(sae, latent_ids, n := 8, width := 120): for each latent of `latent_ids`,
-- the `width` characters of text around its peak in each of its `n` strongest
-- documents: what the latent fires on, in the words of the corpus (axes compare it with
-- the axis text).
--   SELECT * FROM peak_windows(1, [42, 7], n := 3);
CREATE OR REPLACE MACRO peak_windows(sae, latent_ids, n := 8, width := 120) AS TABLE
SELECT latent, doc_id, snippet FROM (
    SELECT a.latent, a.doc_id, substr(d.text, greatest(1, a.peak + 1 - width // 2), width) AS snippet,
           row_number() OVER (PARTITION BY a.latent ORDER BY a.value DESC, a.doc_id) AS r
    FROM activations AS a
    JOIN documents AS d USING (doc_id)
    WHERE a.sae_id = sae AND a.latent IN (SELECT unnest(latent_ids)) AND a.peak IS NOT NULL
)
WHERE r <= n
ORDER BY latent, r;

-- latent_evidence(sae, lats, doc_ids): where each latent of `lats` (of SAE `sae`) peaked
-- in the document at the same position of `doc_ids`: (latent, doc_id, peak, at_word),
-- peak a character offset; a pair where the latent did not fire gives no row. One query
-- for many latents' evidence (a latent's page, or every page of `saedata browse`).
--   SELECT * FROM latent_evidence(1, [42, 42, 7], [3, 17, 3]);
CREATE OR REPLACE MACRO latent_evidence(sae, lats, doc_ids) AS TABLE
WITH wanted AS (SELECT DISTINCT unnest(lats) AS latent, unnest(doc_ids) AS doc_id)
SELECT a.latent, a.doc_id, a.peak, word_at(d.text, a.peak) AS at_word
FROM wanted AS w
JOIN activations AS a ON a.sae_id = sae AND a.latent = w.latent AND a.doc_id = w.doc_id
JOIN documents AS d ON d.doc_id = a.doc_id
ORDER BY a.latent, a.doc_id;

-- text_windows(n := 64, width := 120): the first `width` characters of `n` documents
-- chosen by a hash of their id (the same ones every time): text in general, to compare
-- a latent's peak windows against.
--   SELECT * FROM text_windows(n := 5);
CREATE OR REPLACE MACRO text_windows(n := 64, width := 120) AS TABLE
SELECT doc_id, substr(text, 1, width) AS snippet
FROM documents
ORDER BY hash(doc_id), doc_id
LIMIT n;
