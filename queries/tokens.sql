-- saedata concept store: macros over token_activations, the per-token codes kept by
-- `saedata embed --store-tokens`. Empty results for a dataset embedded without it.

-- doc_tokens(doc, k := 3): every token of document `doc` where some latent fires, in
-- text order: its index, character span, the text of the span, how many latents fire
-- on it and the `k` strongest as "latent label (value)" joined by "; ".
--   SELECT * FROM doc_tokens(17, k := 5);
CREATE OR REPLACE MACRO doc_tokens(doc, k := 3) AS TABLE
SELECT t.token, t.char_start, t.char_end,
       substr(d.text, t.char_start + 1, t.char_end - t.char_start) AS piece,
       count(*) AS n_latents,
       string_agg(concat_ws(' ', t.latent, l.label, '(' || round(t.value, 3) || ')'), '; '
                  ORDER BY abs(t.value) DESC, t.latent) FILTER (WHERE t.r <= k) AS top_latents
FROM (SELECT *, row_number() OVER (PARTITION BY token ORDER BY abs(value) DESC, latent) AS r
      FROM token_activations WHERE doc_id = doc) AS t
JOIN documents AS d USING (doc_id)
LEFT JOIN latents AS l ON l.sae_id = t.sae_id AND l.latent = t.latent
GROUP BY ALL
ORDER BY t.token;

-- latent_spans(sae, lats, doc_ids): every token where each latent of `lats` (of SAE `sae`)
-- fires in the document at the same position of `doc_ids`, with its character span and
-- value: what a latent's page highlights. No rows without token codes.
--   SELECT * FROM latent_spans(1, [42, 42], [3, 17]);
CREATE OR REPLACE MACRO latent_spans(sae, lats, doc_ids) AS TABLE
WITH wanted AS (SELECT DISTINCT unnest(lats) AS latent, unnest(doc_ids) AS doc_id)
SELECT t.latent, t.doc_id, t.token, t.char_start, t.char_end, t.value
FROM wanted AS w
JOIN token_activations AS t ON t.sae_id = sae AND t.latent = w.latent AND t.doc_id = w.doc_id
ORDER BY t.latent, t.doc_id, t.token;

-- dataset_token_codes(ds, lo, hi): the token codes of dataset `ds`'s documents with
-- lo <= doc_id < hi, by document and token: what `saedata pool` re-pools.
CREATE OR REPLACE MACRO dataset_token_codes(ds, lo, hi) AS TABLE
SELECT t.doc_id, t.token, t.char_start, t.char_end, t.latent, t.value
FROM token_activations AS t
WHERE t.doc_id >= lo AND t.doc_id < hi
  AND t.doc_id IN (SELECT doc_id FROM documents WHERE dataset_id = ds AND doc_id >= lo AND doc_id < hi)
ORDER BY t.doc_id, t.token, t.latent;

-- token_coverage(ds): the documents of dataset `ds`, and how many of those with
-- activations have no token codes (0 for a dataset embedded with --store-tokens).
CREATE OR REPLACE MACRO token_coverage(ds) AS TABLE
SELECT count(*) AS n_docs,
       count(*) FILTER (WHERE doc_id IN (SELECT doc_id FROM activations)
                        AND doc_id NOT IN (SELECT doc_id FROM token_activations)) AS n_missing
FROM documents WHERE dataset_id = ds;
