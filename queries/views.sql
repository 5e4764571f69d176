-- saedata concept store: views. Loaded after schema.sql.

-- concepts: every non-zero activation with its document, dataset name and latent label.
-- The shape most ad-hoc SQL wants:  SELECT label, count(*) FROM concepts GROUP BY ALL.
CREATE OR REPLACE VIEW concepts AS
SELECT
    a.doc_id,
    d.ext_id,
    ds.name AS dataset,
    a.sae_id,
    a.latent,
    l.label,
    l.label_source,
    a.value
FROM activations AS a
JOIN documents AS d USING (doc_id)
JOIN datasets AS ds USING (dataset_id)
LEFT JOIN latents AS l ON l.sae_id = a.sae_id AND l.latent = a.latent;
