-- saedata concept store: the by-latent access path (run on demand by `saedata index`
-- and Store.build_latent_index(); not part of the schema loaded on every open).
--
-- `activations` is appended document by document, so a lookup by latent reads every
-- row group (DuckDB's zone maps on `latent` span the whole range everywhere, and an
-- ART index on (sae_id, latent) serves only `latent = x`, not `latent IN (...)` or a
-- join). activations_by_latent holds the same (sae_id, latent, doc_id, value) rows
-- sorted by latent, so each latent lies in one or two row groups and zone maps skip
-- the rest: score_docs(..., src := 'activations_by_latent') reads only those.
-- It is a copy: rebuild it after embedding more documents (search checks that its
-- row count still equals that of `activations`, and falls back to the scan if not).
CREATE OR REPLACE TABLE activations_by_latent AS
SELECT sae_id, latent, doc_id, value
FROM activations
ORDER BY sae_id, latent, doc_id;
