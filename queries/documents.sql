-- saedata concept store: documents and their metadata.

-- meta_counts(field, dataset_ids, doc_ids := NULL): how many documents have each value
-- of metadata field `field` (as text; NULL for documents without it), among the documents
-- of the datasets `dataset_ids` (every dataset when NULL) and, when given, of `doc_ids`.
--   SELECT * FROM meta_counts('topic', [1, 2]) ORDER BY n DESC;
CREATE OR REPLACE MACRO meta_counts(field, dataset_ids, doc_ids := NULL) AS TABLE
SELECT meta ->> field AS value, count(*) AS n
FROM documents
WHERE (dataset_ids IS NULL OR list_contains(dataset_ids, dataset_id))
  AND (doc_ids IS NULL OR list_contains(doc_ids, doc_id))
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
