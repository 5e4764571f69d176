-- saedata concept store: documents and their metadata.

-- meta_value(field, meta, dataset_name): a document's value of field `field` as text:
-- its dataset's name for 'dataset', else the metadata key (NULL when it has none).
--   SELECT meta_value('dataset', d.meta, ds.name) FROM documents d JOIN datasets ds USING (dataset_id);
CREATE OR REPLACE MACRO meta_value(field, meta, dataset_name) AS (
    CASE WHEN field = 'dataset' THEN dataset_name ELSE meta ->> field END
);

-- meta_counts(field, dataset_ids, doc_ids := NULL): how many documents have each value
-- of field `field` (meta_value: a metadata key, or 'dataset'; as text; NULL for documents
-- without it), among the documents of the datasets `dataset_ids` (every dataset when
-- NULL) and, when given, of `doc_ids`.
--   SELECT * FROM meta_counts('topic', [1, 2]) ORDER BY n DESC;
CREATE OR REPLACE MACRO meta_counts(field, dataset_ids, doc_ids := NULL) AS TABLE
SELECT meta_value(field, d.meta, ds.name) AS value, count(*) AS n
FROM documents AS d JOIN datasets AS ds USING (dataset_id)
WHERE (dataset_ids IS NULL OR list_contains(dataset_ids, d.dataset_id))
  AND (doc_ids IS NULL OR list_contains(doc_ids, d.doc_id))
GROUP BY ALL;

-- meta_fields(dataset_ids): the metadata fields (JSON keys) the documents of the datasets
-- `dataset_ids` have (every dataset when NULL), in alphabetical order.
--   SELECT field FROM meta_fields([1]);
CREATE OR REPLACE MACRO meta_fields(dataset_ids) AS TABLE
SELECT DISTINCT unnest(json_keys(meta)) AS field
FROM documents
WHERE meta IS NOT NULL AND (dataset_ids IS NULL OR list_contains(dataset_ids, dataset_id))
ORDER BY field;

-- doc_words(doc_ids, peaks): for two parallel lists, each document with the word at its
-- character position (word_at): pos (0-based index into the lists), doc_id, ext_id,
-- at_word, text, in list order. How evidence (a latent's peak) is shown beside a document.
--   SELECT at_word FROM doc_words([3, 17], [0, 12]);
CREATE OR REPLACE MACRO doc_words(doc_ids, peaks) AS TABLE
SELECT p.pos, p.doc_id, d.ext_id, word_at(d.text, p.peak) AS at_word, d.text
FROM (SELECT unnest(range(len(doc_ids))) AS pos, unnest(doc_ids) AS doc_id, unnest(peaks) AS peak) AS p
JOIN documents AS d USING (doc_id)
ORDER BY p.pos;
