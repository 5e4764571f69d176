"""Property retrieval: find the documents that have a property described in words.

A query ("Why did the dog do that?", "text editors") is coded by the SAE's reader and
SAE exactly as documents were embedded (``models.query_codes``), and compared with every
document's stored codes in two ways, each a cosine similarity:

- **over latents**: a document is its latents weighted by ``ln(1 + tokens) x idf``
  (``tokens``: how many of its tokens the latent fired on; ``idf = ln(1 / freq)`` from
  the latent's document frequency in the store, so rare, specific latents count more
  than ones that fire everywhere), unit length; the query likewise, from its own
  latents (the ``query_latents`` heaviest; latents with weak labels, punctuation and
  function words (:func:`saedata.analysis.words.weak_label`), left out unless the label
  shares a word or mark with the query or ``include_weak``), plus **label latents**:
  latents whose keyword label shares a word with the query (plurals folded, stopwords
  ignored), weighted by idf x the share of their label terms that match, at
  ``LABEL_WEIGHT`` of the query's own;
- **decoded**: the codes decoded back into the reader's space, ``sum_j (value_j x
  tokens_j / n_tokens) W_dec[j] + b_dec`` (each latent's mean over the document's
  tokens, as far as its peak and count tell), for document and query alike.

A document's score is the sum of the two similarities, each in standard deviations over
the searched documents. Then **feedback** (pseudo-relevance feedback, Rocchio's rule):
the centroid of the ``feedback`` best documents' vectors, over the latents most of them
share, is added to the query's, and every document is scored again
(:func:`rank_by_concepts`). On 4,607 Debian package descriptions in 25 sections
(``benchmarks/bench_search_real.py``), mean AP@200 for a topic phrase / an example
sentence per section: over latents alone 0.397 / 0.272, decoded alone 0.413 / 0.300,
both 0.427 / 0.304, with feedback from 20 documents 0.480 / 0.350, against 0.402 / 0.261
for the dense mean-pooled reader embedding (0.437 / 0.310 with a plain feedback round)
and 0.236 / 0.205 for BM25. Each result lists the latents that contributed most to its
score (``matched``), with the word where each peaked: a score is a sum over latents.

Documents are scored from the stored codes alone, with no reader pass over the corpus,
``BLOCK_DOCS`` at a time. Explicit ``latents`` replace the query: documents are then
scored by ``sum(value / max_act) / ln(1 + n_tokens)`` over the latents they have (the
``score_docs`` macro; the length term keeps long documents, which have more latents
active, from matching everything). ``saedata index`` builds ``activations_by_latent``, a
copy of the activations sorted by latent, of which DuckDB reads only the row groups
holding the asked latents; such a search uses it when it is current and pays off
(:func:`index_pays_off`). With ``eval_field``, precision@top against a metadata column
says how many of the returned documents have the property.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from scipy import sparse

from saedata.analysis.scope import LatentMatrix, Models, Scope, latent_matrix, opened, resolve_scope
from saedata.analysis.words import WEAK_SOURCE, content_words, forms, source_kind, weak_label, words
from saedata.errors import ConfigError, NotFoundError
from saedata.store import Store

DEFAULT_QUERY_LATENTS = 128
"""Latents kept from the query's own activations (label matches come on top)."""

LABEL_WEIGHT = 0.5
"""The label matches' share of the query vector, against 1 for the query's own latents."""

LABEL_LATENTS = 16
"""At most this many label matches are added (the heaviest)."""

DEFAULT_FEEDBACK = 20
"""Best documents of the first round whose centroid expands the query (0: one round)."""

FEEDBACK_WEIGHT = 1.0
"""The feedback centroid's weight (a unit vector) against the query's (unit) vectors."""

FEEDBACK_SHARED = 0.5
"""Feedback adds the latents that at least this share of the feedback documents have."""

FEEDBACK_SCOPE = 100
"""Documents of the scope per feedback document: feedback documents stay the query's
nearest neighbours (1% of the scope at most), not a slice of the corpus."""

MIN_FEEDBACK = 5
"""Fewer feedback documents than this are no group: one round."""

BLOCK_DOCS = 50_000
"""Documents whose codes are held at once while scoring."""

MATCHES_SHOWN = 5
"""Latents listed per result: those that contributed most to its score."""


WEIGHTS_SCHEMA = {"latent": pl.Int32, "label": pl.String, "weight": pl.Float64, "source": pl.String}
"""The query-latents frame: (latent, label, weight, source)."""


@dataclass(frozen=True)
class SearchResult:
    """The outcome of a property search."""

    docs: pl.DataFrame
    """(rank, doc_id, dataset, ext_id, score, matched, text), best first; ``matched`` names the
    latents that contributed most to the score, strongest first, as ``latent label [word]``
    with the word where the latent peaked."""
    query_latents: pl.DataFrame
    """(latent, label, weight, source) of the query vector over latents, heaviest first;
    source is 'query' (activated by the query text), 'label' (label matches a query word),
    'query+label' (both), 'feedback' (added by the feedback documents) or 'explicit'."""
    precision: float | None
    """Share of the returned documents whose ``eval_field`` equals ``eval_value`` (None without
    ``eval_field``)."""
    base_rate: float | None
    """Share of all searched documents with that value: what a random ranking would score."""
    matches: pl.DataFrame
    """(doc_id, latent, label, value, contribution, word): the evidence behind ``matched``."""
    used_index: bool
    """Whether documents were scored from ``activations_by_latent`` rather than a scan."""
    top: int
    eval_field: str | None = None
    eval_value: str | None = None
    feedback: int = 0
    """Documents whose codes expanded the query for the second round (0: one round)."""
    feedback_note: str | None = None
    """Whether feedback was used, and why or why not (None for a search by latents)."""


# -- entry point ------------------------------------------------------------------------


def search(
    store_or_path: Store | str | os.PathLike,
    query: str | None = None,
    *,
    latents: list[int] | None = None,
    dataset: str | None = None,
    top: int = 50,
    eval_field: str | None = None,
    eval_value: Any = None,
    models: Models | None = None,
    sae_id: int | None = None,
    query_latents: int = DEFAULT_QUERY_LATENTS,
    feedback: int = DEFAULT_FEEDBACK,
    use_index: bool | None = None,
    include_weak: bool = False,
) -> SearchResult:
    """The ``top`` documents that best show the property described by ``query``.

    ``latents`` (explicit latent ids) replace the query. ``dataset`` restricts the
    search to one dataset. ``eval_field`` (a metadata field) with ``eval_value``
    (default True, for boolean fields) adds precision@top. ``models`` computes the
    query's codes (``saedata.search`` passes the SAE's reader and SAE); without it only
    label matches map a query. ``feedback``: documents whose centroid expands the query
    (0: score once). ``use_index`` (``latents`` only): None reads
    ``activations_by_latent`` when it is current and :func:`index_pays_off`, False
    always scans ``activations``, True requires the index. ``include_weak``: keep query
    latents with weak labels too.
    """
    if top <= 0:
        raise ConfigError(f"--top must be positive, got {top}")
    if query_latents <= 0:
        raise ConfigError(f"--query-latents must be positive, got {query_latents}")
    if feedback < 0:
        raise ConfigError(f"--feedback must be 0 or more, got {feedback}")
    if not (query and query.strip()) and not latents:
        raise ConfigError("give a query text or --latents")
    if use_index and not latents:
        raise ConfigError("the latent index serves searches by --latents; a query is scored from every "
                          "document's codes")
    with opened(store_or_path) as store:
        dataset_id, base_rate, precision, used, note = None, None, None, 0, None
        if dataset is not None:
            state = store.dataset_state(dataset)
            dataset_id = state.dataset_id
            sae_id = store.resolve_sae(state.sae_id if sae_id is None else sae_id)
        else:
            sae_id = store.resolve_sae(sae_id)
        if eval_field is not None:
            eval_value, base_rate = _eval_target(store, dataset_id, eval_field, eval_value)
        if latents:
            weights = explicit_latents(store, sae_id, latents)
            if use_index is None:
                use_index = store.has_latent_index() and index_pays_off(store, sae_id, weights["latent"].to_list())
            elif use_index and not store.has_latent_index():
                raise NotFoundError(f"{store.path} has no current latent index; build it with `saedata index`")
            scored = score_documents(store, sae_id, weights["latent"].to_list(), weights["weight"].to_list(),
                                     top=top, dataset_id=dataset_id, use_index=use_index)
            matches = _latent_matches(store, sae_id, scored["doc_id"].to_list(), weights, bool(use_index))
        else:
            use_index = False
            scope = resolve_scope(store, dataset, sae_id=sae_id)
            q = query_vectors(store, str(query), sae_id, models=models, query_latents=query_latents,
                              include_weak=include_weak)
            ranking = rank_by_concepts(store, scope, q, top=top, feedback=feedback)
            scored, weights, note, used = ranking.ranked, ranking.query.frame, ranking.note, ranking.feedback
            matches = _concept_matches(store, scope, scored["doc_id"].to_numpy(), ranking.query, ranking.spread)
        docs = _describe(store, scored, matches)
        if eval_field is not None:
            precision = _precision(store, docs["doc_id"].to_list(), eval_field, eval_value)
    return SearchResult(docs, weights, precision, base_rate, matches, bool(use_index), top,
                        eval_field, eval_value if eval_field is not None else None, used, note)


# -- query -> latents --------------------------------------------------------------------


@dataclass(frozen=True)
class QueryVectors:
    """A query as the two vectors documents are compared with."""

    frame: pl.DataFrame
    """(latent, label, weight, source) of ``latents``' non-zero entries, heaviest first."""
    latents: np.ndarray
    """(d_sae,) the query over latents: unit vector of its own latents plus
    ``LABEL_WEIGHT`` x a unit vector of label matches (plus feedback, once expanded)."""
    decoded: np.ndarray | None
    """(d_in,) unit vector: the query's codes decoded into the reader's space (None
    without a reader, when only labels map the query)."""
    idf: np.ndarray
    """(d_sae,) ln(1 / document frequency) of each latent (0 where it never fired)."""
    left_out: np.ndarray
    """(d_sae,) bool: weak-label latents the query does not say (kept out of feedback too)."""
    decoder: tuple[np.ndarray, np.ndarray] | None
    """(W_dec (d_sae, d_in), b_dec (d_in,)) float32 of the SAE (None without ``decoded``)."""
    labels: dict[int, str | None]


def map_query(
    store: Store,
    query: str,
    sae_id: int,
    *,
    models: Models | None = None,
    query_latents: int = DEFAULT_QUERY_LATENTS,
    include_weak: bool = False,
) -> pl.DataFrame:
    """(latent, label, weight, source) for a query text: its own latents (from
    ``models.query_codes``) plus label matches (see :func:`query_vectors`)."""
    return query_vectors(store, query, sae_id, models=models, query_latents=query_latents,
                         include_weak=include_weak).frame


def query_vectors(
    store: Store,
    query: str,
    sae_id: int,
    *,
    models: Models | None = None,
    query_latents: int = DEFAULT_QUERY_LATENTS,
    include_weak: bool = False,
) -> QueryVectors:
    """The query's vectors: over latents (its own latents, weighted ``ln(1 + tokens) x
    idf``, the ``query_latents`` heaviest, weak labels left out unless the label shares a
    word or mark with the query or ``include_weak``; plus label matches) and decoded.

    Raises NotFoundError when the query activates no latent seen in the store and no
    label matches it.
    """
    lat = store.latents(sae_id)
    ids = lat["latent"].to_numpy()
    n = int(store.sae_info(sae_id)["d_sae"])
    freq = np.zeros(n)  # indexed by latent id
    freq[ids] = lat["freq"].fill_null(0.0).to_numpy()
    idf = np.where(freq > 0, -np.log(np.clip(freq, 1e-12, 1.0)), 0.0)
    labels, sources = lat["label"].to_list(), lat["label_source"].to_list()
    left_out = np.zeros(n, dtype=bool)
    if not include_weak:
        left_out[ids] = _weak_unasked(labels, sources, query)

    decoded, decoder = None, None
    w_query = np.zeros(n)
    if models is not None:
        q_lat, q_val, q_tok, q_len = models.query_codes(sae_id, query)
        w_query[q_lat] = np.log1p(q_tok) * idf[q_lat]
        w_query[left_out] = 0.0
        sae = models.sae(sae_id)
        decoder = (sae.W_dec.detach().float().cpu().numpy(), sae.b_dec.detach().float().cpu().numpy())
        mean = np.zeros(n, dtype=np.float32)
        mean[q_lat] = q_val * q_tok / max(q_len, 1)
        decoded = _unit(mean @ decoder[0] + decoder[1])
    keep_q = _top_nonzero(w_query, query_latents)

    w_label = np.zeros(n)
    w_label[ids] = idf[ids] * label_match_share(labels, sources, query)
    keep_l = _top_nonzero(w_label, LABEL_LATENTS)
    if not keep_q and not keep_l:
        raise NotFoundError(
            f"query {query!r} activates no latent found in the store and matches no label; "
            "rephrase it as an example of the property, or pass --latents"
        )
    vec = _unit(_only(w_query, keep_q)) + LABEL_WEIGHT * _unit(_only(w_label, keep_l))
    source = np.full(n, "", dtype=object)
    source[keep_q] = "query"
    source[keep_l] = np.where(source[keep_l] == "query", "query+label", "label")
    label_of = dict(zip(ids.tolist(), labels))
    q = QueryVectors(pl.DataFrame(), vec, decoded, idf, left_out, decoder, label_of)
    return _with_frame(q, vec, source)


def _with_frame(q: QueryVectors, vec: np.ndarray, source: np.ndarray) -> QueryVectors:
    """``q`` with latents ``vec`` and its frame (latents of non-zero weight, heaviest first)."""
    chosen = np.flatnonzero(vec > 0)
    frame = pl.DataFrame(
        {"latent": chosen.astype(np.int32), "label": [q.labels.get(int(i)) for i in chosen],
         "weight": vec[chosen].astype(np.float64), "source": [str(x) for x in source[chosen]]},
        schema=WEIGHTS_SCHEMA,
    ).sort(["weight", "latent"], descending=[True, False])
    return QueryVectors(frame, vec, q.decoded, q.idf, q.left_out, q.decoder, q.labels)


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def _only(v: np.ndarray, keep: list[int]) -> np.ndarray:
    out = np.zeros_like(v)
    out[keep] = v[keep]
    return out


def explicit_latents(store: Store, sae_id: int, latents: list[int]) -> pl.DataFrame:
    """(latent, label, weight=1, source='explicit') for user-given latent ids, checked to exist."""
    d_sae = store.sae_info(sae_id)["d_sae"]
    bad = [int(x) for x in latents if not 0 <= int(x) < d_sae]
    if bad:
        raise NotFoundError(
            f"no latent {', '.join(map(str, bad))} in SAE {sae_id} (latent ids are 0..{d_sae - 1})"
        )
    ids = list(dict.fromkeys(int(x) for x in latents))
    labels = store.latents(sae_id).filter(pl.col("latent").is_in(ids))
    label_of = dict(zip(labels["latent"].to_list(), labels["label"].to_list()))
    return pl.DataFrame(
        {"latent": ids, "label": [label_of.get(i) for i in ids], "weight": [1.0] * len(ids),
         "source": ["explicit"] * len(ids)},
        schema=WEIGHTS_SCHEMA,
    )


def label_match_share(labels: list[str | None], sources: list[str | None], query: str) -> np.ndarray:
    """(n_latents,) share of each label's terms ("a / b c / d") holding a content word of
    the query (singular and plural alike). Weak labels (label_source 'frequent-words')
    never match."""
    query_forms = {f for w in content_words(query) for f in forms(w)}
    share = np.zeros(len(labels))
    if not query_forms:
        return share
    for i, (label, src) in enumerate(zip(labels, sources)):
        if not label or source_kind(src) == WEAK_SOURCE:
            continue
        terms = [t for t in label.split(" / ") if t.strip()]
        hits = sum(1 for t in terms if query_forms & set(words(t)))
        share[i] = hits / len(terms) if terms else 0.0
    return share


def _weak_unasked(labels: list[str | None], sources: list[str | None], query: str) -> np.ndarray:
    """(n_latents,) bool: the label is weak and shares no word or mark with the query."""
    said = set(words(query))
    return np.array([weak_label(lab, src) and not (said & set(words(lab or ""))) for lab, src in zip(labels, sources)],
                    dtype=bool)


def _top_nonzero(w: np.ndarray, k: int) -> list[int]:
    nz = np.flatnonzero(w > 0)
    order = nz[np.lexsort((nz, -w[nz]))]
    return [int(i) for i in order[:k]]


# -- scoring ---------------------------------------------------------------------------------


ROW_GROUP = 122_880
"""Rows per DuckDB row group: the unit zone maps let a scan skip."""


def index_pays_off(store: Store, sae_id: int, latents: list[int]) -> bool:
    """Whether reading these latents from ``activations_by_latent`` beats scanning.

    The scan filters every row fast; the sorted copy reads only the row groups holding
    the latents, but both then aggregate the matching rows. On 1M documents x 32 of
    4,096 latents (2 cores), the copy scored 16 latents 3.2x faster, 128 1.8x, 256
    1.4x, 512 (12% of the rows) as fast, 1,024 0.85x. So: use it on stores of more than
    a few row groups, while the latents hold under a tenth of the activations.
    """
    matched = store.macro("expected_rows", int(sae_id), [int(x) for x in latents])["rows"][0]
    total = store.latent_index_rows()
    return total > 4 * ROW_GROUP and float(matched or 0) < 0.1 * total


def score_documents(
    store: Store,
    sae_id: int,
    latents: list[int],
    weights: list[float],
    *,
    top: int = 50,
    dataset_id: int | None = None,
    use_index: bool = False,
) -> pl.DataFrame:
    """(doc_id, score, n_matched): the ``top`` documents by sum(weight x value / max_act) / ln(1 + n_tokens)."""
    src = "activations_by_latent" if use_index else "activations"
    return store.macro("score_docs", int(sae_id), [int(x) for x in latents], [float(w) for w in weights],
                       n=int(top), ds=dataset_id, src=src)


def _describe(store: Store, scored: pl.DataFrame, matches: pl.DataFrame) -> pl.DataFrame:
    """The documents frame, with ``matched`` from the matches frame, for scored documents."""
    info = store.documents_by_id(scored["doc_id"].to_list()).select("doc_id", "dataset", "ext_id", "text")
    matched = matches.group_by("doc_id", maintain_order=True).agg(
        pl.format("{} {} [{}]", pl.col("latent"), pl.col("label").fill_null("").str.split(" / ").list.first(),
                  pl.col("word").fill_null("")).str.join("; ").alias("matched")
    )
    return (
        scored.with_row_index("rank", offset=1)
        .join(info, on="doc_id", how="left")
        .join(matched, on="doc_id", how="left")
        .sort("rank")
        .select(pl.col("rank").cast(pl.Int64), "doc_id", "dataset", "ext_id", "score", "matched", "text")
    )


def _latent_matches(store: Store, sae_id: int, doc_ids: list[int], weights: pl.DataFrame,
                    use_index: bool) -> pl.DataFrame:
    """(doc_id, latent, label, value, contribution, word) of an explicit-latent search: each
    asked latent a document has, contribution ``weight x value / max_act``."""
    w = weights.join(
        store.latents(sae_id).select("latent", "max_act"), on="latent", how="left"
    ).with_columns((pl.col("weight") / pl.col("max_act").fill_null(1.0)).alias("w"))
    matches = store.macro("search_matches", int(sae_id), doc_ids, weights["latent"].to_list(),
                          src="activations_by_latent" if use_index else "activations")
    return (
        matches.with_columns(pl.col("latent").cast(pl.Int32))
        .join(w.select("latent", "label", "w"), on="latent", how="left")
        .with_columns((pl.col("w") * pl.col("value")).alias("contribution"))
        .select("doc_id", "latent", "label", "value", "contribution", "word")
        .sort(["doc_id", "contribution", "latent"], descending=[False, True, False])
    )


# -- scoring by concepts -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Vectors:
    """Documents as the two vectors a query is compared with."""

    latents: sparse.csr_matrix
    """(n_docs, d_sae) unit rows of ln(1 + tokens) x idf."""
    means: sparse.csr_matrix
    """(n_docs, d_sae) each latent's mean over the document's tokens, value x tokens / n_tokens."""
    decoded: np.ndarray | None
    """(n_docs, d_in) float32 unit rows: ``means @ W_dec + b_dec`` normalised (None when
    the query has no decoder, and so no ``decoded`` vector)."""
    decoded_norm: np.ndarray | None
    """(n_docs,) the norm ``decoded`` was divided by."""


def _vectors(lm: LatentMatrix, q: QueryVectors) -> _Vectors:
    counts = lm.tokens if lm.tokens is not None else (lm.X != 0).astype(np.float64)
    counts = sparse.csr_matrix(counts, dtype=np.float64)
    weighted = counts.log1p().multiply(q.idf[None, :]).tocsr()
    lengths = np.sqrt(np.asarray(weighted.multiply(weighted).sum(axis=1)).ravel())
    latents = sparse.csr_matrix(sparse.diags(1.0 / np.maximum(lengths, 1e-12)) @ weighted)
    n = np.maximum(lm.n_tokens if lm.n_tokens is not None else np.ones(lm.X.shape[0]), 1).astype(np.float64)
    means = sparse.csr_matrix(sparse.diags(1.0 / n) @ lm.X.multiply(counts).tocsr(), dtype=np.float32)
    if q.decoder is None:
        return _Vectors(latents, means, None, None)
    W, b = q.decoder
    raw = np.asarray(means @ W) + b[None, :]
    norm = np.linalg.norm(raw, axis=1)
    return _Vectors(latents, means, raw / np.maximum(norm, 1e-12)[:, None], norm)


def _similarities(v: _Vectors, q: QueryVectors) -> tuple[np.ndarray, np.ndarray | None]:
    over_latents = np.asarray(v.latents @ q.latents).ravel()
    decoded = None if v.decoded is None else v.decoded @ q.decoded
    return over_latents, decoded


@dataclass(frozen=True)
class Ranking:
    """The documents most like a query, and how they were found."""

    ranked: pl.DataFrame
    """(doc_id, score), best first."""
    query: QueryVectors
    """The query as finally used (expanded by feedback when there was some)."""
    spread: tuple[float, float]
    """Standard deviations over the scope of the two similarities, which scores divide by."""
    feedback: int
    """Documents whose centroid expanded the query (0: none)."""
    note: str
    """Whether feedback was used, and why or why not, in words."""


def rank_by_concepts(store: Store, scope: Scope, q: QueryVectors, *, top: int = 50,
                     feedback: int = DEFAULT_FEEDBACK) -> Ranking:
    """The ``top`` documents of ``scope`` most like the query.

    The score is the sum of the two cosine similarities (over latents, decoded), each in
    standard deviations over the scope's documents. With ``feedback`` (at most one per
    ``FEEDBACK_SCOPE`` documents of the scope, and at least ``MIN_FEEDBACK``), the best
    documents expand the query and all are scored again: the centroid of their vectors
    over latents, kept to the latents at least ``FEEDBACK_SHARED`` of them have, is
    added to the query's vector over latents, and their decoded centroid to its decoded
    vector. Keeping to shared latents is what stops a query for a property that cuts
    across topics from drifting to the topic of a few of its first documents: on the
    Debian benchmark the plain centroid lowered mean AP for cross-section package kinds
    ("-common", "-data" packages) from 0.123 to 0.111, the shared one raised it to 0.129,
    and it raised section queries more (0.480 / 0.350 against 0.459 / 0.336). Documents
    are read ``BLOCK_DOCS`` at a time (held between rounds when one block holds them
    all)."""
    doc_ids = store.doc_lengths(scope.dataset_ids)["doc_id"].to_numpy()
    blocks = [doc_ids[i : i + BLOCK_DOCS] for i in range(0, len(doc_ids), BLOCK_DOCS)]
    held: dict[int, _Vectors] = {}

    def vectors(i: int) -> _Vectors:
        if i in held:
            return held[i]
        v = _vectors(latent_matrix(store, scope, doc_ids=blocks[i]), q)
        if len(blocks) == 1:
            held[i] = v
        return v

    def scores(query: QueryVectors) -> tuple[np.ndarray, tuple[float, float]]:
        parts = [_similarities(vectors(i), query) for i in range(len(blocks))]
        over_latents = np.concatenate([p[0] for p in parts])
        z, spread_l = _standardised(over_latents)
        spread_d = 0.0
        if parts[0][1] is not None:
            zd, spread_d = _standardised(np.concatenate([p[1] for p in parts]))
            z = z + zd
        return z, (spread_l, spread_d)

    score, spread = scores(q)
    if feedback < MIN_FEEDBACK:
        note = f"no feedback (--feedback {feedback}; it takes at least {MIN_FEEDBACK} documents)"
    else:
        note = (f"no feedback: {len(doc_ids)} documents are too few (feedback takes 1 per {FEEDBACK_SCOPE}, "
                f"at least {MIN_FEEDBACK})")
    feedback = min(feedback, len(doc_ids) // FEEDBACK_SCOPE)
    used = 0
    if feedback >= MIN_FEEDBACK:
        best = np.lexsort((doc_ids, -score))[:feedback]
        v = _vectors(latent_matrix(store, scope, doc_ids=doc_ids[best]), q)
        note = f"feedback from the best {feedback} documents"
        used = feedback
        centroid = np.asarray(v.latents.mean(axis=0)).ravel()
        centroid[q.left_out] = 0.0
        centroid[np.asarray((v.latents > 0).sum(axis=0)).ravel() < FEEDBACK_SHARED * len(best)] = 0.0
        vec = q.latents + FEEDBACK_WEIGHT * _unit(centroid)
        source = np.full(len(vec), "", dtype=object)
        source[centroid > 0] = "feedback"
        source[q.frame["latent"].to_numpy()] = q.frame["source"].to_numpy()
        decoded = None
        if v.decoded is not None:
            decoded = q.decoded + FEEDBACK_WEIGHT * _unit(v.decoded.mean(axis=0))
        q = _with_frame(QueryVectors(q.frame, vec, decoded, q.idf, q.left_out, q.decoder, q.labels), vec, source)
        score, spread = scores(q)
    order = np.lexsort((doc_ids, -score))[:top]
    ranked = pl.DataFrame({"doc_id": doc_ids[order], "score": score[order]},
                          schema={"doc_id": pl.Int64, "score": pl.Float64})
    return Ranking(ranked, q, spread, used, note)


def _concept_matches(store: Store, scope: Scope, doc_ids: np.ndarray, q: QueryVectors,
                     spread: tuple[float, float]) -> pl.DataFrame:
    """(doc_id, latent, label, value, contribution, word): the ``MATCHES_SHOWN`` latents
    adding most to each document's score. A score is a sum over the document's latents
    (plus the decoder bias's share of the decoded similarity): latent j adds
    ``latents[d, j] x q.latents[j] / spread_l + means[d, j] x (W_dec[j] . q.decoded) /
    (|decoded_d| spread_d)``."""
    empty = pl.DataFrame(schema={"doc_id": pl.Int64, "latent": pl.Int32, "label": pl.String,
                                 "value": pl.Float32, "contribution": pl.Float64, "word": pl.String})
    if len(doc_ids) == 0:
        return empty
    lm = latent_matrix(store, scope, doc_ids=doc_ids)
    v = _vectors(lm, q)
    part = v.latents.multiply(q.latents[None, :] / spread[0])
    if v.decoded is not None:
        along = q.decoder[0] @ q.decoded / spread[1]
        part = part + sparse.diags(1.0 / np.maximum(v.decoded_norm, 1e-12)) @ v.means.multiply(along[None, :])
    part = sparse.coo_matrix(part)
    frame = pl.DataFrame({"row": part.row.astype(np.int64), "latent": part.col.astype(np.int32),
                          "contribution": part.data.astype(np.float64)})
    frame = (frame.filter(pl.col("contribution") > 0)
             .sort(["row", "contribution", "latent"], descending=[False, True, False])
             .group_by("row", maintain_order=True).head(MATCHES_SHOWN)
             .join(pl.DataFrame({"row": np.arange(len(doc_ids)), "doc_id": doc_ids.astype(np.int64)}), on="row"))
    if frame.height == 0:
        return empty
    found = store.macro("search_matches", int(scope.sae_id), [int(d) for d in doc_ids],
                        sorted(set(frame["latent"].to_list())))
    found = found.with_columns(pl.col("doc_id").cast(pl.Int64), pl.col("latent").cast(pl.Int32))
    labels = pl.DataFrame({"latent": list(q.labels), "label": list(q.labels.values())},
                          schema={"latent": pl.Int32, "label": pl.String})
    return (frame.join(found, on=["doc_id", "latent"], how="left").join(labels, on="latent", how="left")
            .select("doc_id", "latent", "label", pl.col("value").cast(pl.Float32), "contribution", "word"))


def _standardised(x: np.ndarray) -> tuple[np.ndarray, float]:
    """(x - mean) / std, and the std (1 when x is constant)."""
    spread = float(x.std()) or 1.0
    return (x - x.mean()) / spread, spread


# -- evaluation --------------------------------------------------------------------------------


def _meta_text(value: Any) -> str:
    """A metadata value as DuckDB's ``meta->>field`` renders it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _eval_target(store: Store, dataset_id: int | None, field: str, value: Any) -> tuple[str, float]:
    """The value to count as relevant (as text) and its base rate among the searched documents."""
    ids = None if dataset_id is None else [dataset_id]
    counts = store.macro("meta_counts", field, ids).sort(["n", "value"], descending=[True, False])
    present = counts.filter(pl.col("value").is_not_null())
    if present.height == 0:
        keys = store.macro("meta_fields", ids)["field"].to_list()
        raise NotFoundError(f"no metadata field {field!r} in the documents searched "
                            f"(fields: {', '.join(keys) or 'none'})")
    values = present["value"].to_list()
    if value is None:
        if not set(values) <= {"true", "false"}:
            shown = ", ".join(values[:10]) + (", ..." if len(values) > 10 else "")
            raise ConfigError(f"--eval-field {field} is not boolean; pass --eval-value (values: {shown})")
        value = "true"
    value = _meta_text(value)
    total = int(counts["n"].sum())
    hits = int(present.filter(pl.col("value") == value)["n"].sum())
    return value, hits / total if total else math.nan


def _precision(store: Store, doc_ids: list[int], field: str, value: str) -> float | None:
    """Share of ``doc_ids`` whose meta ``field`` renders as ``value``; None when there are none."""
    if not doc_ids:
        return None
    hits = store.macro("meta_counts", field, None, doc_ids=doc_ids).filter(pl.col("value") == value)["n"].sum()
    return int(hits) / len(doc_ids)
