-- saedata concept store: latents, their statistics and their strongest documents.

-- length_floor(n): token count n with all but its 5 leading bits cleared (n itself
-- below 32): the length classes of latent_counts. Monotone, and length_floor(e) = e
-- for a class boundary e, so `n >= e` and `length_floor(n) >= e` agree.
--   SELECT length_floor(103);   -- 100 (0b1100111 -> 0b1100100)
CREATE OR REPLACE MACRO length_floor(n) AS (
    CASE WHEN n < 32 THEN n
         ELSE (n >> (floor(log2(n))::INTEGER - 4)) << (floor(log2(n))::INTEGER - 4) END
);

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
