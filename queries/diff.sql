-- saedata concept store: dataset diffing (`saedata diff`): per-latent presence counts by
-- group and length bin, paired documents, and the diff itself as one recipe.

-- doc_strata(dataset_ids, field := NULL, levels := [], edges := []): the documents of
-- the datasets `dataset_ids` (doc_id, dataset_id, n_tokens) with the group and length bin that `saedata diff`
-- compares. grp is the dataset_id when `field` is NULL, else the 1-based position in
-- `levels` of the document's value of metadata field `field` (NULL when it has none,
-- or one not in `levels`); bin counts the `edges` (ascending token counts) at or below
-- the document's n_tokens.
--   SELECT grp, bin, count(*) FROM doc_strata([1, 2], edges := [18, 24]) GROUP BY ALL;
CREATE OR REPLACE MACRO doc_strata(dataset_ids, field := NULL, levels := [], edges := []) AS TABLE
SELECT
    d.doc_id,
    d.dataset_id,
    coalesce(d.n_tokens, 0) AS n_tokens,
    CASE WHEN field IS NULL THEN d.dataset_id
         ELSE list_position(levels::VARCHAR[], d.meta ->> field) END AS grp,
    len(list_filter(edges, lambda e: e <= coalesce(d.n_tokens, 0))) AS bin
FROM documents AS d
WHERE d.dataset_id IN (SELECT unnest(dataset_ids));

-- latent_presence(sae, thr, dataset_ids, field := NULL, levels := [], edges := []):
-- per latent of SAE `sae`, group and length bin of doc_strata, n_active: how many
-- documents the latent is active in (|pooled value| > thr). One aggregate scan of
-- activations; the counting behind `saedata diff`.
--   SELECT grp, sum(n_active) FROM latent_presence(1, 0, [1, 2]) GROUP BY grp;
CREATE OR REPLACE MACRO latent_presence(sae, thr, dataset_ids, field := NULL, levels := [], edges := []) AS TABLE
SELECT a.latent, (s.stratum // 1024)::INTEGER AS grp, (s.stratum % 1024)::INTEGER AS bin, count(*) AS n_active
FROM activations AS a
JOIN (
    -- one integer per (group, bin): a narrower join and group key than two columns
    SELECT doc_id, grp * 1024 + bin AS stratum
    FROM doc_strata(dataset_ids, field, levels, edges)
    WHERE grp IS NOT NULL
) AS s USING (doc_id)
WHERE a.sae_id = sae AND abs(a.value) > thr
GROUP BY a.latent, s.stratum;

-- counted_presence(sae, dataset_ids, edges := []): latent_presence(sae, 0, dataset_ids,
-- edges := edges) read from the latent_counts of complete datasets instead of a scan of
-- activations (grp is the dataset_id). Equal to it when every edge is a length_floor
-- class boundary.
--   SELECT grp, sum(n_active) FROM counted_presence(1, [1, 2]) GROUP BY grp;
CREATE OR REPLACE MACRO counted_presence(sae, dataset_ids, edges := []) AS TABLE
SELECT latent, dataset_id AS grp, len(list_filter(edges, lambda e: e <= len_floor)) AS bin,
       sum(n_active)::BIGINT AS n_active
FROM latent_counts
WHERE sae_id = sae AND dataset_id IN (SELECT unnest(dataset_ids))
GROUP BY ALL;

-- diff(ds_a, ds_b, thr := 0, presence := 'excess'): the dataset diff as one SQL recipe.
-- Per latent of the two datasets' SAE (by name), the documents of each where it is
-- present (|value| > thr and, with presence 'excess', it fires on more of the
-- document's tokens than its rate over both datasets predicts, as present_in), their
-- fractions, the difference diff_b_minus_a and the two-proportion z statistic (pooled
-- variance); |z| > 1.96 is p < 0.05 before multiple-testing correction. `saedata diff`
-- adds q-values, length control, merged duplicates and examples on top.
--   SELECT latent, label, freq_a, freq_b, z FROM diff('a', 'b') ORDER BY abs(z) DESC LIMIT 10;
CREATE OR REPLACE MACRO diff(ds_a, ds_b, thr := 0, presence := 'excess') AS TABLE
WITH ids AS (
    SELECT (SELECT dataset_id FROM datasets WHERE name = ds_a) AS a,
           (SELECT dataset_id FROM datasets WHERE name = ds_b) AS b,
           (SELECT sae_id FROM datasets WHERE name = ds_a) AS sae
), sizes AS (
    SELECT count(*) FILTER (WHERE d.dataset_id = ids.a) AS n_a, count(*) FILTER (WHERE d.dataset_id = ids.b) AS n_b,
           sum(d.n_tokens) AS n_tokens
    FROM documents AS d, ids
    WHERE d.dataset_id IN (ids.a, ids.b)
), rates AS (
    SELECT a.latent, sum(a.tokens) / any_value(s.n_tokens) AS rate
    FROM activations AS a JOIN documents AS d USING (doc_id), ids, sizes AS s
    WHERE d.dataset_id IN (ids.a, ids.b) AND a.sae_id = ids.sae
    GROUP BY a.latent
), active AS (
    SELECT a.latent,
           count(*) FILTER (WHERE d.dataset_id = ids.a) AS k_a,
           count(*) FILTER (WHERE d.dataset_id = ids.b) AS k_b
    FROM activations AS a JOIN documents AS d USING (doc_id) JOIN rates AS r USING (latent), ids
    WHERE d.dataset_id IN (ids.a, ids.b) AND a.sae_id = ids.sae AND abs(a.value) > thr
      AND (presence = 'any' OR a.tokens > length_floor(coalesce(d.n_tokens, 0)) * r.rate)
    GROUP BY a.latent
)
SELECT c.latent, l.label, c.k_a AS n_a, c.k_b AS n_b,
       c.k_a / s.n_a AS freq_a, c.k_b / s.n_b AS freq_b, c.k_b / s.n_b - c.k_a / s.n_a AS diff_b_minus_a,
       (c.k_b / s.n_b - c.k_a / s.n_a)
         / nullif(sqrt(((c.k_a + c.k_b) / (s.n_a + s.n_b)) * (1 - (c.k_a + c.k_b) / (s.n_a + s.n_b))
                       * (1 / s.n_a + 1 / s.n_b)), 0) AS z
FROM active AS c, sizes AS s, ids
LEFT JOIN latents AS l ON l.sae_id = ids.sae AND l.latent = c.latent
ORDER BY abs(z) DESC NULLS LAST, c.latent;

-- doc_sample(dataset_ids, field := NULL, levels := [], n := 20000): the first n
-- documents (by doc_id) of each dataset, with each document's group as in doc_strata:
-- the sample `saedata diff` takes example documents, near-duplicate latents and
-- findings from.
--   SELECT grp, count(*) FROM doc_sample([1, 2], n := 1000) GROUP BY grp;
CREATE OR REPLACE MACRO doc_sample(dataset_ids, field := NULL, levels := [], n := 20000) AS TABLE
WITH cut AS (
    -- the n-th smallest doc_id of each dataset (a top-n aggregate, no sort)
    SELECT dataset_id, list_max(min(doc_id, n)) AS last
    FROM documents
    WHERE dataset_id IN (SELECT unnest(dataset_ids))
    GROUP BY dataset_id
)
SELECT s.doc_id, s.grp, s.n_tokens
FROM doc_strata(dataset_ids, field, levels) AS s JOIN cut USING (dataset_id)
WHERE s.doc_id <= cut.last;

-- latent_docs(sae, thr, latent_ids, dataset_ids, field := NULL, levels := [], n := 20000):
-- where the latents of `latent_ids` are active (|value| > thr) in doc_sample, with the
-- tokens the latent fired on and the document's n_tokens, strongest first within
-- each latent.
--   SELECT latent, count(*) FROM latent_docs(1, 0, [3, 42], [1, 2]) GROUP BY ALL;
CREATE OR REPLACE MACRO latent_docs(sae, thr, latent_ids, dataset_ids, field := NULL, levels := [], n := 20000) AS TABLE
SELECT a.doc_id, s.grp, a.latent, a.value, a.peak, a.tokens, s.n_tokens
FROM doc_sample(dataset_ids, field, levels, n) AS s
JOIN activations AS a USING (doc_id)
WHERE a.sae_id = sae AND abs(a.value) > thr AND list_contains(latent_ids, a.latent)
ORDER BY a.latent, abs(a.value) DESC, a.doc_id;

-- doc_pairs(ds_a, ds_b, field): documents of datasets ds_a and ds_b paired by their
-- value of metadata field `field` (e.g. the same prompt answered by two models). n_a
-- and n_b count the documents sharing the value on each side; the first by doc_id is
-- the one paired.
--   SELECT count(*) FROM doc_pairs(1, 2, 'prompt_id');
CREATE OR REPLACE MACRO doc_pairs(ds_a, ds_b, field) AS TABLE
WITH a AS (
    SELECT meta ->> field AS key, min(doc_id) AS doc_id, count(*) AS n
    FROM documents WHERE dataset_id = ds_a AND meta ->> field IS NOT NULL GROUP BY ALL
), b AS (
    SELECT meta ->> field AS key, min(doc_id) AS doc_id, count(*) AS n
    FROM documents WHERE dataset_id = ds_b AND meta ->> field IS NOT NULL GROUP BY ALL
)
SELECT a.key, a.doc_id AS doc_a, b.doc_id AS doc_b, a.n AS n_a, b.n AS n_b
FROM a JOIN b USING (key);

-- paired_sides(ds_a, ds_b, field): the paired documents of doc_pairs(ds_a, ds_b, field),
-- one row per document: the pair's key, doc_id and side (1: A, 2: B).
--   SELECT side, count(*) FROM paired_sides(1, 2, 'prompt_id') GROUP BY side;
CREATE OR REPLACE MACRO paired_sides(ds_a, ds_b, field) AS TABLE
WITH pairs AS (SELECT * FROM doc_pairs(ds_a, ds_b, field))
SELECT key, doc_a AS doc_id, 1 AS side FROM pairs
UNION ALL
SELECT key, doc_b AS doc_id, 2 AS side FROM pairs;

-- paired_presence(sae, thr, ds_a, ds_b, field): per latent, over the pairs of
-- doc_pairs(ds_a, ds_b, field), in how many it is active (|value| > thr) in both
-- documents, in A's only and in B's only: the counts of McNemar's test.
--   SELECT * FROM paired_presence(1, 0, 1, 2, 'prompt_id') ORDER BY latent;
CREATE OR REPLACE MACRO paired_presence(sae, thr, ds_a, ds_b, field) AS TABLE
WITH sides AS (SELECT * FROM paired_sides(ds_a, ds_b, field)),
per_pair AS (
    SELECT a.latent, s.key, bit_or(s.side) AS sides   -- 1: A only, 2: B only, 3: both
    FROM activations AS a JOIN sides AS s USING (doc_id)
    WHERE a.sae_id = sae AND abs(a.value) > thr
    GROUP BY ALL
)
SELECT
    latent,
    count(*) FILTER (WHERE sides = 3) AS n_both,
    count(*) FILTER (WHERE sides = 1) AS n_a_only,
    count(*) FILTER (WHERE sides = 2) AS n_b_only
FROM per_pair
GROUP BY latent;

-- length_histogram(dataset_ids, field := NULL, levels := []): documents per group (as in
-- doc_strata) and token count: (grp, n_tokens, n). The length distributions a diff
-- compares and bins.
--   SELECT grp, sum(n) FROM length_histogram([1, 2]) GROUP BY grp;
CREATE OR REPLACE MACRO length_histogram(dataset_ids, field := NULL, levels := []) AS TABLE
SELECT grp::BIGINT AS grp, n_tokens, count(*) AS n
FROM doc_strata(dataset_ids, field := field, levels := levels)
WHERE grp IS NOT NULL
GROUP BY ALL
ORDER BY ALL;

-- paired_lengths(ds_a, ds_b, field): length_histogram of the documents paired by
-- doc_pairs(ds_a, ds_b, field), grp being the dataset_id.
--   SELECT * FROM paired_lengths(1, 2, 'prompt_id');
CREATE OR REPLACE MACRO paired_lengths(ds_a, ds_b, field) AS TABLE
WITH p AS (SELECT * FROM doc_pairs(ds_a, ds_b, field))
SELECT d.dataset_id::BIGINT AS grp, coalesce(d.n_tokens, 0) AS n_tokens, count(*) AS n
FROM (SELECT doc_a AS doc_id FROM p UNION ALL SELECT doc_b FROM p) AS paired
JOIN documents AS d USING (doc_id)
GROUP BY ALL
ORDER BY ALL;

-- token_presence(sae, thr, dataset_ids, field := NULL, levels := []): per latent of SAE
-- `sae`, group (as in doc_strata), length class and token count, n_active: in how many
-- documents the latent is active (|value| > thr) on exactly `tokens` of their tokens.
-- One aggregate scan of activations: what `saedata diff` reads presence from when the
-- stored token_counts cannot serve (a threshold, or --by a metadata column).
--   SELECT grp, sum(n_active) FROM token_presence(1, 0, [1, 2]) GROUP BY grp;
CREATE OR REPLACE MACRO token_presence(sae, thr, dataset_ids, field := NULL, levels := []) AS TABLE
SELECT a.latent, s.grp::BIGINT AS grp, length_floor(s.n_tokens) AS len_floor, a.tokens, count(*) AS n_active
FROM activations AS a
JOIN doc_strata(dataset_ids, field, levels) AS s USING (doc_id)
WHERE a.sae_id = sae AND abs(a.value) > thr AND s.grp IS NOT NULL
GROUP BY ALL;

-- paired_tokens(sae, thr, ds_a, ds_b, field): the activations (|value| > thr) of the
-- documents paired by doc_pairs(ds_a, ds_b, field): latent, the pair's key, side (1: A,
-- 2: B), tokens and the document's n_tokens; `saedata diff --paired-on` decides presence
-- from them.
--   SELECT side, count(*) FROM paired_tokens(1, 0, 1, 2, 'prompt_id') GROUP BY side;
CREATE OR REPLACE MACRO paired_tokens(sae, thr, ds_a, ds_b, field) AS TABLE
SELECT a.latent, s.key, s.side, a.tokens, coalesce(d.n_tokens, 0) AS n_tokens
FROM activations AS a JOIN paired_sides(ds_a, ds_b, field) AS s USING (doc_id) JOIN documents AS d USING (doc_id)
WHERE a.sae_id = sae AND abs(a.value) > thr;
