-- saedata concept store: latent co-occurrence (`saedata correlate`).

-- cooccur(sae, dataset_ids, min_support := 5, threshold := 0.0, keep_latents := NULL):
-- latent-latent co-occurrence over the documents of the datasets `dataset_ids`. A
-- latent "fires" in a document when |value| > threshold; only latents firing in at
-- least min_support documents (and in keep_latents, when given) take part, and only
-- pairs firing together in at least min_support documents are returned, as
-- (latent_i < latent_j, n_ij documents with both, n_i, n_j, n_docs in scope): the
-- 2x2 table of each pair, never a dense d_sae x d_sae matrix.
--   SELECT * FROM cooccur(1, [1, 2], min_support := 10) ORDER BY n_ij DESC LIMIT 5;
CREATE OR REPLACE MACRO cooccur(sae, dataset_ids, min_support := 5, threshold := 0.0, keep_latents := NULL) AS TABLE
WITH docs AS (
    SELECT doc_id FROM documents WHERE list_contains(dataset_ids, dataset_id)
),
fires AS (
    SELECT a.doc_id, a.latent
    FROM activations AS a SEMI JOIN docs USING (doc_id)
    WHERE a.sae_id = sae AND abs(a.value) > threshold
      AND (keep_latents IS NULL OR list_contains(keep_latents, a.latent))
),
support AS (
    SELECT latent, count(*) AS n FROM fires GROUP BY latent HAVING count(*) >= min_support
),
kept AS (SELECT f.doc_id, f.latent FROM fires AS f SEMI JOIN support USING (latent)),
pairs AS (
    SELECT x.latent AS latent_i, y.latent AS latent_j, count(*) AS n_ij
    FROM kept AS x JOIN kept AS y ON x.doc_id = y.doc_id AND x.latent < y.latent
    GROUP BY x.latent, y.latent
    HAVING count(*) >= min_support
)
SELECT p.latent_i, p.latent_j, p.n_ij, si.n AS n_i, sj.n AS n_j, (SELECT count(*) FROM docs) AS n_docs
FROM pairs AS p
JOIN support AS si ON si.latent = p.latent_i
JOIN support AS sj ON sj.latent = p.latent_j;

-- cooccur_docs(sae, dataset_ids, lat_i, lat_j, n := 3, threshold := 0.0): for each pair
-- (lat_i[k], lat_j[k]) of two parallel lists, the n documents of `dataset_ids` where
-- both latents fire most strongly (by the weaker of the two values), with the word
-- where each peaked: the evidence shown beside a co-occurring pair.
--   SELECT * FROM cooccur_docs(1, [1, 2], [12, 40], [300, 41], n := 2);
CREATE OR REPLACE MACRO cooccur_docs(sae, dataset_ids, lat_i, lat_j, n := 3, threshold := 0.0) AS TABLE
WITH pairs AS (
    SELECT unnest(lat_i)::INTEGER AS latent_i, unnest(lat_j)::INTEGER AS latent_j
),
acts AS (
    SELECT a.doc_id, a.latent, a.value, a.peak
    FROM activations AS a JOIN documents AS d USING (doc_id)
    WHERE a.sae_id = sae AND list_contains(dataset_ids, d.dataset_id) AND abs(a.value) > threshold
      AND (list_contains(lat_i, a.latent) OR list_contains(lat_j, a.latent))
),
both_fire AS (
    SELECT p.latent_i, p.latent_j, x.doc_id, x.value AS value_i, y.value AS value_j,
           x.peak AS peak_i, y.peak AS peak_j
    FROM pairs AS p
    JOIN acts AS x ON x.latent = p.latent_i
    JOIN acts AS y ON y.latent = p.latent_j AND y.doc_id = x.doc_id
    QUALIFY row_number() OVER (PARTITION BY p.latent_i, p.latent_j
                               ORDER BY least(abs(x.value), abs(y.value)) DESC, x.doc_id) <= n
)
SELECT b.latent_i, b.latent_j, b.doc_id, ds.name AS dataset, d.ext_id, b.value_i, b.value_j,
       word_at(d.text, b.peak_i) AS word_i, word_at(d.text, b.peak_j) AS word_j, d.text
FROM both_fire AS b
JOIN documents AS d USING (doc_id)
JOIN datasets AS ds USING (dataset_id)
ORDER BY b.latent_i, b.latent_j, least(abs(b.value_i), abs(b.value_j)) DESC, b.doc_id;

-- supported_latents(sae, dataset_ids, min_support := 5, threshold := 0.0, keep_latents := NULL):
-- the latents of SAE `sae` that fire (|value| > threshold) in at least min_support
-- documents of the datasets `dataset_ids` (and are in keep_latents, when given), with n,
-- how many: the latents cooccur pairs up.
--   SELECT count(*) FROM supported_latents(1, [1, 2], min_support := 10);
CREATE OR REPLACE MACRO supported_latents(sae, dataset_ids, min_support := 5, threshold := 0.0, keep_latents := NULL) AS TABLE
SELECT a.latent, count(*) AS n
FROM activations AS a JOIN documents AS d USING (doc_id)
WHERE a.sae_id = sae AND list_contains(dataset_ids, d.dataset_id) AND abs(a.value) > threshold
  AND (keep_latents IS NULL OR list_contains(keep_latents, a.latent))
GROUP BY a.latent
HAVING count(*) >= min_support;
