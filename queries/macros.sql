-- saedata concept store: macros. Loaded after views.sql; stored in the database file,
-- so a plain `duckdb run.duckdb` session can call them too.

-- word_at(txt, pos): the lower-cased word of `txt` that contains character `pos`
-- (0-based), or that character itself when it is punctuation. `activations.peak`
-- holds such a position: where in the document the latent fired most strongly.
--   SELECT word_at('New York is big', 5);   -- 'york'
CREATE OR REPLACE MACRO word_at(txt, pos) AS (
    CASE
        WHEN pos IS NULL OR pos < 0 OR pos >= length(txt) THEN NULL
        WHEN NOT regexp_matches(substr(txt, pos + 1, 1), '[\pL\pN_]') THEN substr(txt, pos + 1, 1)
        ELSE lower(trim(
            regexp_extract(substr(txt, 1, pos + 1), '[\pL\pN_''’]*$')
            || regexp_extract(substr(txt, pos + 2), '^[\pL\pN_''’]*'),
            '''’'))
    END
);

-- word_before(txt, pos): the word (or punctuation mark) just before word_at(txt, pos).
--   SELECT word_before('New York is big', 5);   -- 'new'
CREATE OR REPLACE MACRO word_before(txt, pos) AS (
    CASE WHEN pos IS NULL OR pos < 0 OR pos >= length(txt) THEN NULL ELSE
    nullif(lower(regexp_extract(
        substr(txt, 1, pos + 1
                       - length(regexp_extract(substr(txt, 1, pos + 1), '[\pL\pN_''’]*$'))
                       - CASE WHEN regexp_matches(substr(txt, pos + 1, 1), '[\pL\pN_]') THEN 0 ELSE 1 END),
        '([\pL\pN_''’]+|[^\s\pL\pN_])\s*$', 1)), '')
    END
);

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

-- score_docs(sae, latent_ids, weights, n := 50, ds := NULL, src := 'activations'):
-- property retrieval from stored activations alone. A document's score is the sum,
-- over the latents of `latent_ids` it has, of weight x value / max_act (each value is
-- divided by the latent's largest value in the store, so that no latent dominates by
-- scale; fsum keeps the sum independent of row order), divided by ln(1 + n_tokens)
-- (long documents have more latents active, so they would match anything); returns the
-- n best documents with n_matched, how many of the latents they have. `weights` runs
-- parallel to `latent_ids`; `ds` keeps one dataset_id; `src` is the table read:
-- 'activations', or 'activations_by_latent', the copy sorted by latent that `saedata
-- index` builds, where DuckDB skips every row group holding none of the latents.
--   SELECT * FROM score_docs(1, [1661, 83], [1.0, 0.5], n := 5);
CREATE OR REPLACE MACRO score_docs(sae, latent_ids, weights, n := 50, ds := NULL, src := 'activations') AS TABLE
WITH q AS (
    SELECT unnest(latent_ids)::INTEGER AS latent, unnest(weights)::DOUBLE AS weight
),
w AS (
    SELECT q.latent, sum(q.weight) / coalesce(nullif(any_value(l.max_act), 0), 1) AS w
    FROM q JOIN latents AS l ON l.sae_id = sae AND l.latent = q.latent
    GROUP BY q.latent
),
raw AS (
    SELECT a.doc_id, fsum(w.w * a.value) AS raw, count(*) AS n_matched
    FROM query_table(src) AS a
    JOIN w ON a.latent = w.latent
    WHERE a.sae_id = sae
    GROUP BY a.doc_id
)
SELECT r.doc_id, r.raw / ln(1 + greatest(coalesce(d.n_tokens, 1), 1)) AS score, r.n_matched
FROM raw AS r JOIN documents AS d USING (doc_id)
WHERE ds IS NULL OR d.dataset_id = ds
ORDER BY score DESC, r.doc_id
LIMIT n;

-- search_matches(sae, doc_ids, latent_ids, src := 'activations'): which of
-- `latent_ids` each document of `doc_ids` has, with the value and the word where the
-- latent peaked (the evidence a search result shows); `src` as for score_docs.
--   SELECT * FROM search_matches(1, [3, 17], [1661, 83]);
CREATE OR REPLACE MACRO search_matches(sae, doc_ids, latent_ids, src := 'activations') AS TABLE
SELECT a.doc_id, a.latent, a.value, word_at(d.text, a.peak) AS word
FROM query_table(src) AS a
JOIN documents AS d USING (doc_id)
WHERE a.sae_id = sae
  AND a.doc_id IN (SELECT unnest(doc_ids))
  AND a.latent IN (SELECT unnest(latent_ids))
ORDER BY a.doc_id, a.latent;

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

-- diff(ds_a, ds_b, thr := 0): the dataset diff as one SQL recipe. Per latent of the two
-- datasets' SAE (by name), the documents of each where it is active (|value| > thr),
-- their fractions, the difference (b - a) and the two-proportion z statistic (pooled
-- variance); |z| > 1.96 is p < 0.05 before multiple-testing correction. `saedata
-- diff` adds q-values, length control, merged duplicates and examples on top.
--   SELECT latent, label, freq_a, freq_b, z FROM diff('a', 'b') ORDER BY abs(z) DESC LIMIT 10;
CREATE OR REPLACE MACRO diff(ds_a, ds_b, thr := 0) AS TABLE
WITH ids AS (
    SELECT (SELECT dataset_id FROM datasets WHERE name = ds_a) AS a,
           (SELECT dataset_id FROM datasets WHERE name = ds_b) AS b,
           (SELECT sae_id FROM datasets WHERE name = ds_a) AS sae
), sizes AS (
    SELECT count(*) FILTER (WHERE d.dataset_id = ids.a) AS n_a, count(*) FILTER (WHERE d.dataset_id = ids.b) AS n_b
    FROM documents AS d, ids
    WHERE d.dataset_id IN (ids.a, ids.b)
), active AS (
    SELECT a.latent,
           count(*) FILTER (WHERE d.dataset_id = ids.a) AS k_a,
           count(*) FILTER (WHERE d.dataset_id = ids.b) AS k_b
    FROM activations AS a JOIN documents AS d USING (doc_id), ids
    WHERE d.dataset_id IN (ids.a, ids.b) AND a.sae_id = ids.sae AND abs(a.value) > thr
    GROUP BY a.latent
)
SELECT c.latent, l.label, c.k_a AS n_a, c.k_b AS n_b,
       c.k_a / s.n_a AS freq_a, c.k_b / s.n_b AS freq_b, c.k_b / s.n_b - c.k_a / s.n_a AS diff,
       (c.k_b / s.n_b - c.k_a / s.n_a)
         / nullif(sqrt(((c.k_a + c.k_b) / (s.n_a + s.n_b)) * (1 - (c.k_a + c.k_b) / (s.n_a + s.n_b))
                       * (1 / s.n_a + 1 / s.n_b)), 0) AS z
FROM active AS c, sizes AS s, ids
LEFT JOIN latents AS l ON l.sae_id = ids.sae AND l.latent = c.latent
ORDER BY abs(z) DESC NULLS LAST, c.latent;

-- latent_docs(sae, thr, latent_ids, dataset_ids, field := NULL, levels := [], n := 20000):
-- where the latents of `latent_ids` are active (|value| > thr) among the first n
-- documents (by doc_id) of each dataset, with each document's group as in doc_strata,
-- strongest first within each latent. The sample `saedata diff` takes example
-- documents and near-duplicate latents from.
--   SELECT latent, count(*) FROM latent_docs(1, 0, [3, 42], [1, 2]) GROUP BY ALL;
CREATE OR REPLACE MACRO latent_docs(sae, thr, latent_ids, dataset_ids, field := NULL, levels := [], n := 20000) AS TABLE
WITH cut AS (
    -- the n-th smallest doc_id of each dataset (a top-n aggregate, no sort)
    SELECT dataset_id, list_max(min(doc_id, n)) AS last
    FROM documents
    WHERE dataset_id IN (SELECT unnest(dataset_ids))
    GROUP BY dataset_id
), sample AS (
    SELECT s.doc_id, s.grp
    FROM doc_strata(dataset_ids, field, levels) AS s JOIN cut USING (dataset_id)
    WHERE s.doc_id <= cut.last
)
SELECT a.doc_id, s.grp, a.latent, a.value, a.peak
FROM sample AS s
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

-- paired_presence(sae, thr, ds_a, ds_b, field): per latent, over the pairs of
-- doc_pairs(ds_a, ds_b, field), in how many it is active (|value| > thr) in both
-- documents, in A's only and in B's only: the counts of McNemar's test.
--   SELECT * FROM paired_presence(1, 0, 1, 2, 'prompt_id') ORDER BY latent;
CREATE OR REPLACE MACRO paired_presence(sae, thr, ds_a, ds_b, field) AS TABLE
WITH pairs AS (SELECT * FROM doc_pairs(ds_a, ds_b, field)),
sides AS (
    SELECT key, doc_a AS doc_id, 1 AS side FROM pairs
    UNION ALL
    SELECT key, doc_b AS doc_id, 2 AS side FROM pairs
),
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
