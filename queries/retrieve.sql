-- saedata concept store: property retrieval (`saedata search`) from stored activations.

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

-- expected_rows(sae, latent_ids): about how many activation rows the latents of
-- `latent_ids` hold (their document frequencies times the documents embedded with SAE
-- `sae`): what reading them from activations_by_latent would cost.
--   SELECT rows FROM expected_rows(1, [12, 40]);
CREATE OR REPLACE MACRO expected_rows(sae, latent_ids) AS TABLE
SELECT coalesce(sum(l.freq), 0) * (SELECT coalesce(sum(n_docs), 0) FROM datasets WHERE sae_id = sae) AS rows
FROM latents AS l
WHERE l.sae_id = sae AND list_contains(latent_ids::INTEGER[], l.latent);
