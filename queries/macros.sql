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
-- scale); returns the n best documents with n_matched, how many of the latents they
-- have. `weights` runs parallel to `latent_ids`; `ds` keeps one dataset_id; `src` is
-- the table read: 'activations', or 'activations_by_latent', the copy sorted by
-- latent that `saedata index` builds, where DuckDB skips every row group holding none
-- of the latents.
--   SELECT * FROM score_docs(1, [1661, 83], [1.0, 0.5], n := 5);
CREATE OR REPLACE MACRO score_docs(sae, latent_ids, weights, n := 50, ds := NULL, src := 'activations') AS TABLE
WITH q AS (
    SELECT unnest(latent_ids)::INTEGER AS latent, unnest(weights)::DOUBLE AS weight
),
w AS (
    SELECT q.latent, sum(q.weight) / coalesce(nullif(any_value(l.max_act), 0), 1) AS w
    FROM q JOIN latents AS l ON l.sae_id = sae AND l.latent = q.latent
    GROUP BY q.latent
)
SELECT a.doc_id, sum(w.w * a.value) AS score, count(*) AS n_matched
FROM query_table(src) AS a
JOIN w ON a.latent = w.latent
WHERE a.sae_id = sae
  AND (ds IS NULL OR a.doc_id IN (SELECT doc_id FROM documents WHERE dataset_id = ds))
GROUP BY a.doc_id
ORDER BY score DESC, a.doc_id
LIMIT n;

-- search_matches(sae, doc_ids, latent_ids): which of `latent_ids` each document of
-- `doc_ids` has, with the value and the word where the latent peaked (the evidence
-- a search result shows).
--   SELECT * FROM search_matches(1, [3, 17], [1661, 83]);
CREATE OR REPLACE MACRO search_matches(sae, doc_ids, latent_ids) AS TABLE
SELECT a.doc_id, a.latent, a.value, word_at(d.text, a.peak) AS word
FROM activations AS a
JOIN documents AS d USING (doc_id)
WHERE a.sae_id = sae
  AND a.doc_id IN (SELECT unnest(doc_ids))
  AND a.latent IN (SELECT unnest(latent_ids))
ORDER BY a.doc_id, a.latent;
