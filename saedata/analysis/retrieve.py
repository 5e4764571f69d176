"""Property retrieval: find the documents that have a property described in words.

A query ("Why did the dog do that?", "my dog played with the ball") becomes a weighted
set of latents in two ways:

- **query latents**: the SAE's reader reads the query, the SAE encodes its tokens and
  the codes are pooled exactly as documents were embedded (``models.query_codes``,
  which the API provides); each active latent weighs
  ``min(value / max_act, 1) x idf``, with ``idf = ln(1 / freq)`` from the latent's
  document frequency in the store (rare, specific latents count more than ones that
  fire everywhere); latents with weak labels (punctuation, function words:
  :func:`saedata.analysis.words.weak_label`) are left out unless their label shares a
  word or mark with the query ("?" stays for "Why did the dog do that?", "of" goes for
  "food and cooking") or ``include_weak``; the ``query_latents`` heaviest are kept (a short query activates
  ~150-250; on CPython docs precision@50 rose from 0.58 with 16 to 0.65 with 128, on
  planted corpora from 0.66 to 0.93: see benchmarks/bench_analyses.py);
- **label latents**: latents whose keyword label shares a word with the query (plurals
  folded, stopwords ignored) weigh ``LABEL_WEIGHT x idf x`` the share of their label
  terms that match (a label match counts like a query activation at half strength);
  the ``LABEL_LATENTS`` heaviest are added.

Explicit ``latents`` replace both, each with weight 1. Documents are then scored from
the stored activations alone, with no reader pass over the corpus: ``score =
sum(weight x value / max_act) / ln(1 + n_tokens)`` over the latents a document has
(the ``score_docs`` macro; the length term keeps long documents, which have more
latents active, from matching everything). ``saedata index`` builds
``activations_by_latent``, a copy of the activations sorted by latent, of which DuckDB
reads only the row groups holding the asked latents; search uses it when it is current
and pays off (:func:`index_pays_off`). With ``eval_field``, precision@top against a
metadata column says how many of the returned documents have the property.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from saedata.analysis.scope import Models, opened
from saedata.analysis.words import content_words, forms, weak_label, words
from saedata.errors import ConfigError, NotFoundError
from saedata.store import Store

DEFAULT_QUERY_LATENTS = 128
"""Latents kept from the query's own activations (label matches come on top)."""

LABEL_WEIGHT = 0.5
"""A latent whose label fully matches the query weighs like a query activation at half its max."""

LABEL_LATENTS = 16
"""At most this many label matches are added (the heaviest)."""

@dataclass(frozen=True)
class SearchResult:
    """The outcome of a property search."""

    docs: pl.DataFrame
    """(rank, doc_id, dataset, ext_id, score, matched, text), best first; ``matched`` names the
    query latents the document has, strongest contribution first, as ``latent label [word]``
    with the word where the latent peaked."""
    query_latents: pl.DataFrame
    """(latent, label, weight, source) used to score; source is 'query' (activated by the query
    text), 'label' (label matches a query word), 'query+label' (both) or 'explicit'."""
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
    use_index: bool | None = None,
    include_weak: bool = False,
) -> SearchResult:
    """The ``top`` documents that best show the property described by ``query``.

    ``latents`` (explicit latent ids) replace the latents found from the query.
    ``dataset`` restricts the search to one dataset. ``eval_field`` (a metadata field)
    with ``eval_value`` (default True, for boolean fields) adds precision@top.
    ``models`` computes the query's codes (``saedata.search`` passes the SAE's reader
    and SAE); without it only label matches map a query. ``use_index``: None reads ``activations_by_latent`` when it
    is current and :func:`index_pays_off`, False always scans ``activations``, True
    requires the index. ``include_weak``: keep query latents with weak labels too.
    """
    if top <= 0:
        raise ConfigError(f"--top must be positive, got {top}")
    if query_latents <= 0:
        raise ConfigError(f"--query-latents must be positive, got {query_latents}")
    if not (query and query.strip()) and not latents:
        raise ConfigError("give a query text or --latents")
    with opened(store_or_path) as store:
        dataset_id, base_rate, precision = None, None, None
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
        else:
            weights = map_query(store, str(query), sae_id, models=models, query_latents=query_latents,
                                include_weak=include_weak)
        if use_index is None:
            use_index = store.has_latent_index() and index_pays_off(store, sae_id, weights["latent"].to_list())
        elif use_index and not store.has_latent_index():
            raise NotFoundError(f"{store.path} has no current latent index; build it with `saedata index`")
        scored = score_documents(store, sae_id, weights["latent"].to_list(), weights["weight"].to_list(),
                                 top=top, dataset_id=dataset_id, use_index=use_index)
        docs, matches = _describe(store, sae_id, scored, weights, use_index=bool(use_index))
        if eval_field is not None:
            precision = _precision(store, docs["doc_id"].to_list(), eval_field, eval_value)
    return SearchResult(docs, weights, precision, base_rate, matches, bool(use_index), top,
                        eval_field, eval_value if eval_field is not None else None)


# -- query -> latents --------------------------------------------------------------------


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
    ``models.query_codes``) plus label matches. Query latents with weak labels are left
    out unless the label shares a word or mark with the query, or ``include_weak``.

    Raises NotFoundError when the query activates no latent seen in the store and no
    label matches it.
    """
    lat = store.latents(sae_id)
    ids = lat["latent"].to_numpy()
    n = int(ids.max()) + 1 if len(ids) else 0
    freq, max_act = np.zeros(n), np.zeros(n)  # indexed by latent id
    freq[ids] = lat["freq"].fill_null(0.0).to_numpy()
    max_act[ids] = lat["max_act"].fill_null(0.0).to_numpy()
    idf = np.where(freq > 0, -np.log(np.clip(freq, 1e-12, 1.0)), 0.0)

    q_lat, q_val = models.query_codes(sae_id, query) if models is not None else (np.zeros(0, np.int64), np.zeros(0))
    w_query = np.zeros(n)
    c_lat, c_val = q_lat[q_lat < n], q_val[q_lat < n]
    ok = max_act[c_lat] > 0
    w_query[c_lat[ok]] = np.minimum(np.abs(c_val[ok]) / max_act[c_lat[ok]], 1.0) * idf[c_lat[ok]]
    if not include_weak:
        w_query[ids[_weak_unasked(lat["label"].to_list(), lat["label_source"].to_list(), query)]] = 0.0
    keep_q = _top_nonzero(w_query, query_latents)

    w_label = np.zeros(n)
    w_label[ids] = LABEL_WEIGHT * idf[ids] * label_match_share(lat["label"].to_list(), lat["label_source"].to_list(),
                                                              query)
    keep_l = _top_nonzero(w_label, LABEL_LATENTS)

    chosen = sorted(set(keep_q) | set(keep_l))
    if not chosen:
        raise NotFoundError(
            f"query {query!r} activates no latent found in the store and matches no label; "
            "rephrase it as an example of the property, or pass --latents"
        )
    q, lab = set(keep_q), set(keep_l)
    weight = [float((w_query[i] if i in q else 0.0) + (w_label[i] if i in lab else 0.0)) for i in chosen]
    source = ["query+label" if i in q and i in lab else "query" if i in q else "label" for i in chosen]
    label_of = dict(zip(ids.tolist(), lat["label"].to_list()))
    out = pl.DataFrame(
        {"latent": pl.Series(chosen, dtype=pl.Int32), "label": [label_of.get(i) for i in chosen],
         "weight": weight, "source": source},
        schema={"latent": pl.Int32, "label": pl.String, "weight": pl.Float64, "source": pl.String},
    )
    return out.sort(["weight", "latent"], descending=[True, False])


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
        schema={"latent": pl.Int32, "label": pl.String, "weight": pl.Float64, "source": pl.String},
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
        if not label or src == "frequent-words":
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


def _describe(store: Store, sae_id: int, scored: pl.DataFrame, weights: pl.DataFrame,
              use_index: bool = False) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The documents frame (with ``matched``) and the matches frame for scored documents."""
    doc_ids = scored["doc_id"].to_list()
    info = store.documents_by_id(doc_ids).select("doc_id", "dataset", "ext_id", "text")
    w = weights.join(
        store.latents(sae_id).select("latent", "max_act"), on="latent", how="left"
    ).with_columns((pl.col("weight") / pl.col("max_act").fill_null(1.0)).alias("w"))
    matches = store.macro("search_matches", int(sae_id), doc_ids, weights["latent"].to_list(),
                          src="activations_by_latent" if use_index else "activations")
    matches = (
        matches.with_columns(pl.col("latent").cast(pl.Int32))
        .join(w.select("latent", "label", "w"), on="latent", how="left")
        .with_columns((pl.col("w") * pl.col("value")).alias("contribution"))
        .select("doc_id", "latent", "label", "value", "contribution", "word")
        .sort(["doc_id", "contribution", "latent"], descending=[False, True, False])
    )
    matched = matches.group_by("doc_id", maintain_order=True).agg(
        pl.format("{} {} [{}]", pl.col("latent"), pl.col("label").fill_null("").str.split(" / ").list.first(),
                  pl.col("word").fill_null("")).str.join("; ").alias("matched")
    )
    docs = (
        scored.with_row_index("rank", offset=1)
        .join(info, on="doc_id", how="left")
        .join(matched, on="doc_id", how="left")
        .sort("rank")
        .select(pl.col("rank").cast(pl.Int64), "doc_id", "dataset", "ext_id", "score", "matched", "text")
    )
    return docs, matches


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
