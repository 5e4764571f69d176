-- saedata concept store: tables.
-- Loaded first, in a fixed order (store.QUERY_FILES: schema, views, then macros by topic), every time a
-- store is opened for writing. Every statement is idempotent.
-- Schema version 2 (1 + activations.tokens and latent_counts.tokens, added to a version-1
-- store when it is opened for writing; its datasets keep NULL there until re-embedded).
-- A store whose saedata_meta says a newer version is refused on open.

-- Key/value facts about the store itself (schema_version, created_by).
CREATE TABLE IF NOT EXISTS saedata_meta (
    key   VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);

-- One row per sparse autoencoder used in this store. `fingerprint` is the SHA-256 of
-- the weights file, so the same SAE loaded from two paths is one row.
CREATE TABLE IF NOT EXISTS saes (
    sae_id      INTEGER PRIMARY KEY,
    name        VARCHAR NOT NULL,
    reader      VARCHAR,
    layer       INTEGER,
    d_in        INTEGER NOT NULL,
    d_sae       INTEGER NOT NULL,
    activation  VARCHAR NOT NULL,
    cfg         JSON,
    path        VARCHAR,
    fingerprint VARCHAR UNIQUE,
    created_at  TIMESTAMP DEFAULT current_timestamp
);

-- One row per embedded corpus. `complete` turns true when every document is stored;
-- an incomplete dataset is resumed by rerunning the same `saedata embed`.
CREATE TABLE IF NOT EXISTS datasets (
    dataset_id  INTEGER PRIMARY KEY,
    name        VARCHAR NOT NULL UNIQUE,
    source      VARCHAR,
    n_docs      BIGINT DEFAULT 0,
    created_at  TIMESTAMP DEFAULT current_timestamp,
    sae_id      INTEGER,
    complete    BOOLEAN DEFAULT false,
    n_empty     BIGINT DEFAULT 0,
    n_truncated BIGINT DEFAULT 0,
    args        JSON
);

-- One row per document. doc_id is global across datasets; ext_id is the corpus's own
-- id (or its line number); n_tokens counts the reader tokens kept (after truncation).
CREATE TABLE IF NOT EXISTS documents (
    doc_id      BIGINT PRIMARY KEY,
    dataset_id  INTEGER NOT NULL,
    ext_id      VARCHAR NOT NULL,
    text        VARCHAR,
    meta        JSON,
    n_tokens    INTEGER
);

-- One row per SAE latent: its label, where the label came from, the fraction of
-- documents where it is active and its largest pooled activation.
CREATE TABLE IF NOT EXISTS latents (
    sae_id       INTEGER NOT NULL,
    latent       INTEGER NOT NULL,
    label        VARCHAR,
    label_source VARCHAR,
    freq         DOUBLE,
    max_act      REAL,
    PRIMARY KEY (sae_id, latent)
);
-- How well the label predicts where the latent fires (saedata label --score; NULL until
-- scored, and again when the label changes): `score` the AUROC of label-document
-- embedding similarity, `detect_*` the label's words as a detector of its documents.
ALTER TABLE latents ADD COLUMN IF NOT EXISTS score DOUBLE;
ALTER TABLE latents ADD COLUMN IF NOT EXISTS detect_precision DOUBLE;
ALTER TABLE latents ADD COLUMN IF NOT EXISTS detect_recall DOUBLE;
-- The LLM's scores of the label (saedata label --llm --score; NULL until scored, and
-- again when the label changes), the auto-interpretability work's two cheap scorers:
-- `llm_detection` the balanced accuracy of the LLM telling, from the label alone, the
-- documents where the latent fires from ones where it is silent; `llm_fuzzing` that of
-- telling whether a marked word of an activating document is where the latent peaked or
-- another word. 0.5: chance (the label tells nothing); 1: never wrong.
ALTER TABLE latents ADD COLUMN IF NOT EXISTS llm_detection DOUBLE;
ALTER TABLE latents ADD COLUMN IF NOT EXISTS llm_fuzzing DOUBLE;

-- The long sparse table: one row per non-zero pooled activation. `peak` is the
-- character offset in the document's text of the token where the latent fired most
-- strongly (word_at(text, peak) gives the word): the evidence labels are made from.
-- `tokens` counts the document's tokens the latent fired on: with the document's
-- n_tokens it says whether the concept is present beyond chance (present_in) and
-- weighs it (concept_weights). No index, so it stays compact (about 8 bytes a row);
-- DuckDB scans it with zone maps on doc_id.
CREATE TABLE IF NOT EXISTS activations (
    doc_id  BIGINT NOT NULL,
    sae_id  INTEGER NOT NULL,
    latent  INTEGER NOT NULL,
    value   REAL NOT NULL,
    peak    INTEGER,
    tokens  INTEGER
);
ALTER TABLE activations ADD COLUMN IF NOT EXISTS tokens INTEGER;

-- Every non-zero token code of the datasets embedded with --store-tokens (opt-in; the
-- bytes per token are measured by benchmarks/bench_embed.py): the token's index among its
-- document's pooled tokens, its character span [char_start, char_end) in the text (NULL
-- for image patches), the latent and its value (rounded as activations' are). Every span
-- where a latent fires (doc_tokens, latent_spans) and re-pooling a dataset (saedata pool)
-- read it instead of the corpus.
CREATE TABLE IF NOT EXISTS token_activations (
    doc_id     BIGINT NOT NULL,
    sae_id     INTEGER NOT NULL,
    token      INTEGER NOT NULL,
    char_start INTEGER,
    char_end   INTEGER,
    latent     INTEGER NOT NULL,
    value      REAL NOT NULL
);

-- Document frequency of every word in the documents embedded with an SAE: the
-- background that labels are contrasted against. Append-only while embedding (one
-- row per word and batch, no index), folded to one row per word when a dataset
-- completes; always read it with sum(df) ... GROUP BY word.
CREATE TABLE IF NOT EXISTS word_counts (
    sae_id  INTEGER NOT NULL,
    word    VARCHAR NOT NULL,
    df      BIGINT NOT NULL
);

-- Per complete dataset, SAE, latent, length class and token count: in how many
-- documents the latent is active (stored with a non-zero value) on that many of their
-- tokens. len_floor is length_floor(n_tokens): the token count with all but its 5
-- leading bits cleared, so about 16 classes per doubling of length. Written when a
-- dataset completes (Store.complete_dataset); `saedata diff` counts from these few rows
-- instead of scanning activations. One row per non-empty cell (tokens NULL: a dataset
-- stored before token counts were).
CREATE TABLE IF NOT EXISTS latent_counts (
    dataset_id INTEGER NOT NULL,
    sae_id     INTEGER NOT NULL,
    len_floor  INTEGER NOT NULL,
    latent     INTEGER NOT NULL,
    n_active   BIGINT NOT NULL,
    tokens     INTEGER
);
ALTER TABLE latent_counts ADD COLUMN IF NOT EXISTS tokens INTEGER;

-- Every request of an LLM labelling run (saedata label --llm), so that a run can be
-- audited and its cost known: the prompt, the reply (NULL when none came), what went
-- wrong with it (`error`, NULL when the reply was used), the tokens the endpoint's `usage`
-- counted, and the attempts it took (retries after HTTP 429 or 5xx). `purpose` is label,
-- detection or fuzzing; `run` numbers the store's runs (one `saedata label --llm` each).
--   SELECT run, count(*), sum(prompt_tokens), sum(completion_tokens) FROM llm_calls GROUP BY run;
CREATE TABLE IF NOT EXISTS llm_calls (
    run               INTEGER NOT NULL,
    sae_id            INTEGER NOT NULL,
    latent            INTEGER NOT NULL,
    purpose           VARCHAR NOT NULL,
    model             VARCHAR NOT NULL,
    prompt            VARCHAR NOT NULL,
    reply             VARCHAR,
    error             VARCHAR,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    attempts          INTEGER NOT NULL,
    created_at        TIMESTAMP DEFAULT current_timestamp
);
