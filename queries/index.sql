-- saedata concept store: the by-latent access path (run on demand by `saedata index`
-- and Store.build_latent_index(); not part of the schema loaded on every open).
--
-- `activations` is appended document by document, so a lookup by latent reads every
-- row group: DuckDB's zone maps on `latent` span the whole range everywhere, and
-- EXPLAIN ANALYZE shows an ART index on `latent` used only for `latent = x` (never for
-- `latent IN (...)` or a join), one on (sae_id, latent) not even for that.
-- activations_by_latent holds the same (sae_id, latent, doc_id, value, peak) rows
-- sorted by latent, so each latent lies in one or two row groups and zone maps skip
-- the rest: score_docs and search_matches with src := 'activations_by_latent' read
-- only those.
-- It is a copy: rebuild it after embedding more documents (search checks that its
-- row count still equals that of `activations`, and falls back to the scan if not).
CREATE OR REPLACE TABLE activations_by_latent AS
SELECT sae_id, latent, doc_id, value, peak
FROM activations
ORDER BY sae_id, latent, doc_id;
