"""Concept correlation: which latents fire together, and which go with a metadata column.

Latent-latent (:func:`correlate`): every pair of latents present together in at
least ``min_support`` documents is counted by a sparse matrix product ``A.T @ A`` over
the binary document x latent presence matrix (scipy.sparse, in blocks of columns so
memory stays bounded; presence as in :mod:`saedata.analysis.presence`). The ``cooccur``
macro is the same count as one SQL recipe (a self-join of the activations on doc_id),
for firing at all. Each pair
is a 2x2 table (both fire / only one / neither) over the N documents in scope, scored by

    NPMI = ln(p_ij / (p_i p_j)) / -ln p_ij      in [-1, 1]: 0 independent, 1 always together
    phi  = (N n_ij - n_i n_j) / sqrt(n_i n_j (N - n_i) (N - n_j))

and tested for independence: Pearson's chi-square (1 df), or Fisher's exact test (the
hypergeometric tail in the observed direction, doubled) where an expected cell count is
below 5; Benjamini-Hochberg q-values over all pairs tested (:mod:`saedata.analysis.stats`).

Latent-metadata (:func:`correlate_metadata`): for a categorical column, each latent's
activation frequency per class and a chi-square test of the 2 x K table; for a numeric
column, Spearman's rho between the latent's pooled value (0 where it is silent) and the
column. Their HTML reports are :mod:`saedata.reports.correlate`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
from scipy import sparse, stats

from saedata.analysis.axes import select_latents
from saedata.analysis.presence import LENGTH_WARNING, Presence, check_presence
from saedata.analysis.scope import (
    Scope,
    documents_frame,
    latent_labels,
    latent_matrix,
    opened,
    read_presence,
    resolve_scope,
)
from saedata.analysis.stats import (
    LENGTH_BINS,
    BHSelection,
    bh_qvalues,
    chi2_columns,
    cmh_test,
    correlation_pvalues,
    independence_pvalues,
    length_edges,
    npmi_from_counts,
    spearman_columns,
)
from saedata.errors import ConfigError
from saedata.store import Store

REDUNDANT_JACCARD = 0.9
"""Pairs whose activation sets overlap this much (|both| / |either|) are flagged ``redundant``."""


# -- latent x latent ---------------------------------------------------------------------


@dataclass(frozen=True)
class CorrelateResult:
    """Co-occurring latent pairs, best first, with example documents."""

    pairs: pl.DataFrame
    """rank, latent_i, label_i, latent_j, label_j, n_ij, n_i, n_j, expected, npmi, phi, jaccard,
    p, q, significant, redundant: the ``top`` pairs (significant ones first, by NPMI)."""
    examples: pl.DataFrame
    """rank, latent_i, latent_j, doc_id, dataset, ext_id, word_i, word_j, text: up to
    ``n_examples`` documents per top pair where both fire, with the word where each peaked."""
    matrix: np.ndarray
    """(m, m) NPMI among ``matrix_latents`` (-1 where two never fire together; 1 on the diagonal)."""
    matrix_latents: pl.DataFrame
    """(latent, label) of the heatmap's rows and columns, in order."""
    n_docs: int
    n_latents: int
    """Latents firing in at least ``min_support`` documents (the ones paired)."""
    n_tested: int
    """Pairs firing together in at least ``min_support`` documents (the BH family)."""
    n_significant: int
    datasets: tuple[str, ...]
    sae_id: int
    min_support: int
    alpha: float
    warnings: tuple[str, ...] = ()


def correlate(
    store_or_path: Store | str | os.PathLike,
    dataset: str | list[str] | None = None,
    *,
    min_support: int = 5,
    threshold: float = 0.0,
    label_pattern: str | None = None,
    latents: list[int] | None = None,
    top: int = 50,
    alpha: float = 0.05,
    n_examples: int = 3,
    heatmap_latents: int = 20,
    presence: Presence = "excess",
    sae_id: int | None = None,
) -> CorrelateResult:
    """Latent pairs that fire together in the documents of ``dataset`` more than chance says.

    A latent counts in a document when it is present there (``presence="excess"``, the
    default: beyond chance for the document's length) or fires at all (``"any"``), with
    pooled |value| > ``threshold`` either way. Only latents
    and pairs firing in at least ``min_support`` documents are considered;
    ``label_pattern`` (a regex on labels) and ``latents`` restrict both sides of every
    pair to those latents.

    Ranking: pairs with q <= ``alpha`` first, then by NPMI (then by n_ij). NPMI
    measures how unexpected a pair is on a scale that does not grow with the latents'
    frequencies (raw PMI favours rare latents, raw counts and p-values favour frequent
    ones); but the NPMI of two rare latents rests on a handful of documents, and the
    significance filter (with ``min_support``) removes pairs whose NPMI could be luck.
    Negative associations are tested too but rank last: pairs that never fire together
    have no co-occurrence row to count. ``redundant`` flags pairs whose activation sets
    nearly coincide (Jaccard >= 0.9): two latents for one concept, worth knowing but not
    a finding about the data.
    """
    if min_support < 1:
        raise ConfigError(f"--min-support must be at least 1, got {min_support}")
    if top < 1:
        raise ConfigError(f"--top must be at least 1, got {top}")
    if not 0 < alpha <= 1:
        raise ConfigError(f"alpha must be in (0, 1], got {alpha}")
    check_presence(presence)
    with opened(store_or_path) as store:
        scope = resolve_scope(store, dataset, sae_id)
        keep = _restrict(store, scope.sae_id, label_pattern, latents)
        n = scope.n_docs
        if n < max(min_support, 2):
            raise ConfigError(
                f"too few documents for co-occurrence: {n} in {scope.describe()}, --min-support is {min_support}"
            )
        warnings: list[str] = list(scope.warnings)
        A, more = read_presence(latent_matrix(store, scope), presence, threshold, scope.describe())
        warnings += more
        pc = pair_counts(A, min_support, keep)
        n_latents = pc.n_latents
        labels = latent_labels(store, scope.sae_id).select("latent", "label")
        if len(pc.n_ij) == 0:
            warnings.append(
                f"no pair of latents fires together in {min_support} or more of the {n} documents of "
                f"{scope.describe()}; lower --min-support"
            )
            return CorrelateResult(_empty_pairs(), _empty_examples(), np.zeros((0, 0)),
                                   pl.DataFrame(schema={"latent": pl.Int32, "label": pl.String}), n, n_latents,
                                   0, 0, scope.names, scope.sae_id, min_support, alpha, tuple(warnings))
        # p of every pair (the BH family); NPMI for the ones that can rank; the other scores for the shown ones
        nij = pc.n_ij.astype(np.float64)
        ni, nj = pc.support[pc.latent_i].astype(np.float64), pc.support[pc.latent_j].astype(np.float64)
        bh = BHSelection(independence_pvalues(nij, ni, nj, float(pc.n_docs)), alpha)
        sig = bh.significant()
        n_sig = int(sig.sum())
        rows = _top_rows(sig, lambda r: npmi_from_counts(nij[r], ni[r], nj[r], float(pc.n_docs)),
                         pc.n_ij, pc.latent_i, pc.latent_j, top)
        scored = pair_stats(pc.frame(rows), bh.q(rows)).with_columns(pl.Series("significant", sig[rows]))
        if n_sig == 0:
            warnings.append(
                f"none of the {len(pc.n_ij)} pairs is significant at q <= {alpha}; the table shows the "
                "highest NPMI anyway (more documents or a higher --min-support help)"
            )
        pairs = (
            scored.with_row_index("rank", offset=1)
            .join(labels.rename({"latent": "latent_i", "label": "label_i"}), on="latent_i", how="left")
            .join(labels.rename({"latent": "latent_j", "label": "label_j"}), on="latent_j", how="left")
            .select("rank", "latent_i", "label_i", "latent_j", "label_j", "n_ij", "n_i", "n_j", "expected",
                    "npmi", "phi", "jaccard", "p", "q", "significant", "redundant")
            .sort("rank")
            .with_columns(pl.col("rank").cast(pl.Int64))
        )
        examples = _examples(store, scope, pairs, n_examples, threshold)
        m_latents = _matrix_latents(pairs, heatmap_latents)
        matrix = _npmi_matrix(A, m_latents)
        m_frame = pl.DataFrame({"latent": m_latents}, schema={"latent": pl.Int32}).join(
            labels, on="latent", how="left", maintain_order="left")
    return CorrelateResult(pairs, examples, matrix, m_frame, n, n_latents, len(pc.n_ij), n_sig, scope.names,
                           scope.sae_id, min_support, alpha, tuple(warnings))


def _top_rows(sig: np.ndarray, npmi, n_ij: np.ndarray, li: np.ndarray, lj: np.ndarray, top: int) -> np.ndarray:
    """The ``top`` rows by (significant, npmi, n_ij), ties broken by latent ids, best first;
    ``npmi(rows)`` scores only the significant rows, and the others only when those are too few."""
    out: list[np.ndarray] = []
    for idx in (np.flatnonzero(sig), np.flatnonzero(~sig)):
        need = top - sum(len(o) for o in out)
        if need <= 0 or len(idx) == 0:
            continue
        s = npmi(idx)
        if len(idx) > need:
            keep = s >= np.partition(s, len(s) - need)[len(s) - need]  # ties at the cut stay in
            idx, s = idx[keep], s[keep]
        out.append(idx[np.lexsort((lj[idx], li[idx], -n_ij[idx], -s))][:need])
    return np.concatenate(out)


def pair_stats(counts: pl.DataFrame, q: np.ndarray | None = None) -> pl.DataFrame:
    """NPMI, phi, Jaccard, expected count, p and BH q for rows of (latent_i, latent_j, n_ij, n_i, n_j, n_docs);
    ``q``: the rows' q-values when they are some of many pairs tested (BH over these rows otherwise)."""
    nij = counts["n_ij"].to_numpy().astype(np.float64)
    ni = counts["n_i"].to_numpy().astype(np.float64)
    nj = counts["n_j"].to_numpy().astype(np.float64)
    N = counts["n_docs"].to_numpy().astype(np.float64)
    npmi = npmi_from_counts(nij, ni, nj, N)
    denom = np.sqrt(ni * nj * (N - ni) * (N - nj))
    with np.errstate(divide="ignore", invalid="ignore"):
        phi = np.where(denom > 0, (N * nij - ni * nj) / denom, 0.0)
    p = independence_pvalues(nij, ni, nj, N)
    jaccard = nij / (ni + nj - nij)
    return counts.select("latent_i", "latent_j", "n_ij", "n_i", "n_j").with_columns(
        pl.Series("expected", ni * nj / N),
        pl.Series("npmi", npmi),
        pl.Series("phi", phi),
        pl.Series("jaccard", jaccard),
        pl.Series("p", p),
        pl.Series("q", bh_qvalues(p) if q is None else q),
        pl.Series("redundant", jaccard >= REDUNDANT_JACCARD),
    )


def _restrict(store: Store, sae_id: int, label_pattern: str | None, latents: list[int] | None) -> list[int] | None:
    if label_pattern is None and latents is None:
        return None
    picked = select_latents(store, sae_id, latents=latents, label_pattern=label_pattern, min_freq=0.0)
    return sorted(picked["latent"].to_list())


COOCCUR_BLOCK = 512
"""Latent columns per block of the sparse product A[:, block].T @ A[:, :block end]: the memory bound."""


@dataclass(frozen=True)
class PairCounts:
    """Co-occurrence counts of latent pairs (latent_i < latent_j), one array entry per pair."""

    latent_i: np.ndarray
    latent_j: np.ndarray
    n_ij: np.ndarray
    support: np.ndarray
    """(d_sae,) documents each latent is set in."""
    n_docs: int
    n_latents: int
    """Latents set in at least ``min_support`` documents (the ones paired)."""

    def frame(self, rows: np.ndarray | None = None) -> pl.DataFrame:
        """(latent_i, latent_j, n_ij, n_i, n_j, n_docs) of ``rows`` (all by default), in that order."""
        li, lj, nij = (a if rows is None else a[rows] for a in (self.latent_i, self.latent_j, self.n_ij))
        return pl.DataFrame({"latent_i": li.astype(np.int32), "latent_j": lj.astype(np.int32),
                             "n_ij": nij.astype(np.int64), "n_i": self.support[li].astype(np.int64),
                             "n_j": self.support[lj].astype(np.int64),
                             "n_docs": np.full(len(li), self.n_docs, np.int64)})


def pair_counts(A: sparse.spmatrix, min_support: int, keep: list[int] | None = None) -> PairCounts:
    """Every pair of columns of the binary (n_docs, d_sae) matrix ``A`` both set in at
    least ``min_support`` rows, among the columns set in at least ``min_support`` rows
    (and in ``keep`` when given). The counts of the ``cooccur`` macro, from a sparse
    matrix product in blocks of ``COOCCUR_BLOCK`` columns, each against the columns
    before it and itself only (i < j: half of ``A.T @ A``; each block's product is at
    most COOCCUR_BLOCK x n_latents non-zeros). A block's latents are the rows of its
    product, so each document's codes are read as one run (its latents up to the block's
    end), which keeps the product fast when the documents are many (measured on 30,000
    documents: 42-48 s against 54-93 s with the block's latents as columns)."""
    A = sparse.csc_matrix(A, dtype=np.int32)
    A.data[:] = 1
    support = np.asarray(A.sum(axis=0)).ravel()
    cols = np.flatnonzero(support >= min_support)
    if keep is not None:
        cols = np.intersect1d(cols, np.asarray(keep, dtype=np.int64))
    Ac = A[:, cols]
    rows_of = Ac.tocsr()  # documents x latents: row slices below a block's end are runs
    parts_i, parts_j, parts_n = [], [], []
    for start in range(0, len(cols), COOCCUR_BLOCK):
        stop = min(start + COOCCUR_BLOCK, len(cols))
        block = Ac[:, start:stop].T.tocsr() @ rows_of[:, :stop]  # CSR (block, stop): j of block vs i < stop
        at = np.flatnonzero(block.data >= min_support)  # most pairs are rarer than that: drop them first
        j = np.searchsorted(block.indptr, at, side="right") - 1 + start
        i = block.indices[at]
        upper = i < j
        parts_i.append(i[upper])
        parts_j.append(j[upper])
        parts_n.append(block.data[at[upper]])
    empty = np.zeros(0, np.int64)
    li = cols[np.concatenate(parts_i)] if parts_i else empty
    lj = cols[np.concatenate(parts_j)] if parts_j else empty
    nij = np.concatenate(parts_n).astype(np.int64) if parts_n else empty
    return PairCounts(li, lj, nij, support, A.shape[0], len(cols))


def cooccurrence(A: sparse.spmatrix, min_support: int, keep: list[int] | None = None) -> tuple[pl.DataFrame, int]:
    """:func:`pair_counts` as a frame of (latent_i, latent_j, n_ij, n_i, n_j, n_docs), and n_latents."""
    pc = pair_counts(A, min_support, keep)
    return pc.frame(), pc.n_latents


def _examples(store: Store, scope: Scope, pairs: pl.DataFrame, n: int, threshold: float) -> pl.DataFrame:
    if n <= 0 or pairs.height == 0:
        return _empty_examples()
    docs = store.macro("cooccur_docs", scope.sae_id, scope.dataset_ids, pairs["latent_i"].to_list(),
                       pairs["latent_j"].to_list(), n=int(n), threshold=float(threshold))
    return (
        docs.join(pairs.select("rank", "latent_i", "latent_j"), on=["latent_i", "latent_j"])
        .select("rank", "latent_i", "latent_j", "doc_id", "dataset", "ext_id", "word_i", "word_j", "text")
        .sort("rank", maintain_order=True)
    )


def _matrix_latents(pairs: pl.DataFrame, limit: int) -> list[int]:
    out: list[int] = []
    for i, j in pairs.select("latent_i", "latent_j").iter_rows():
        for lat in (i, j):
            if lat not in out and len(out) < limit:
                out.append(lat)
    return out


def _npmi_matrix(A: sparse.spmatrix, lats: list[int]) -> np.ndarray:
    m = len(lats)
    mat = np.eye(m)
    if m < 2:
        return mat
    c, _ = cooccurrence(A, 1, lats)
    pos = {lat: k for k, lat in enumerate(lats)}
    mat[~np.eye(m, dtype=bool)] = -1.0
    if c.height:
        v = npmi_from_counts(c["n_ij"].to_numpy(), c["n_i"].to_numpy(), c["n_j"].to_numpy(), c["n_docs"].to_numpy())
        for (i, j), val in zip(c.select("latent_i", "latent_j").iter_rows(), v, strict=True):
            mat[pos[i], pos[j]] = mat[pos[j], pos[i]] = val
    return mat


def _empty_pairs() -> pl.DataFrame:
    return pl.DataFrame(schema={
        "rank": pl.Int64, "latent_i": pl.Int32, "label_i": pl.String, "latent_j": pl.Int32, "label_j": pl.String,
        "n_ij": pl.Int64, "n_i": pl.Int64, "n_j": pl.Int64, "expected": pl.Float64, "npmi": pl.Float64,
        "phi": pl.Float64, "jaccard": pl.Float64, "p": pl.Float64, "q": pl.Float64, "significant": pl.Boolean,
        "redundant": pl.Boolean,
    })


def _empty_examples() -> pl.DataFrame:
    return pl.DataFrame(schema={
        "rank": pl.Int64, "latent_i": pl.Int32, "latent_j": pl.Int32, "doc_id": pl.Int64, "dataset": pl.String,
        "ext_id": pl.String, "word_i": pl.String, "word_j": pl.String, "text": pl.String,
    })


# -- latent x metadata -------------------------------------------------------------------


@dataclass(frozen=True)
class MetadataResult:
    """How latents go with one metadata column."""

    column: str
    kind: Literal["categorical", "numeric"]
    latents: pl.DataFrame
    """One row per latent tested, most significant first. Categorical: latent, label, n_docs,
    freq, chi2, p, q, cramers_v, top_class, top_lift. Numeric: latent, label, n_docs, freq,
    rho, p, q."""
    classes: pl.DataFrame
    """Categorical only: class, n_class, rank, latent, label, freq_in, freq_out, lift, q
    (and q_adj when length-controlled): per class, the significant latents most
    over-represented in it (by lift). Empty for numeric."""
    frequencies: pl.DataFrame
    """Categorical only: class, latent, label, freq: the per-class activation frequency of
    the latents in ``classes`` (the heatmap's cells)."""
    n_docs: int
    n_missing: int
    """Documents left out because the column is missing or null for them."""
    datasets: tuple[str, ...]
    sae_id: int
    alpha: float
    warnings: tuple[str, ...] = ()


def correlate_metadata(
    store_or_path: Store | str | os.PathLike,
    dataset: str | list[str] | None,
    column: str,
    *,
    kind: Literal["auto", "categorical", "numeric"] = "auto",
    min_support: int = 5,
    threshold: float = 0.0,
    label_pattern: str | None = None,
    latents: list[int] | None = None,
    per_class: int = 5,
    alpha: float = 0.05,
    presence: Presence = "excess",
    length_control: bool = True,
    sae_id: int | None = None,
) -> MetadataResult:
    """Latents associated with the metadata ``column`` over the documents of ``dataset``.

    ``kind="auto"`` treats integer and float columns as numeric, everything else
    (strings, booleans) as categorical. Categorical: each latent's firing frequency per
    class, a chi-square test of independence on its 2 x K table (firing or not x class),
    q-values, Cramer's V; per class, the ``per_class`` latents with q <= ``alpha`` that
    fire in at least ``min_support`` of its documents and most over-represented there
    (lift = frequency in the class / frequency in the other documents, with half a
    document added to each count so it stays finite); with ``length_control`` (default)
    "significant" is q_adj, each class against the rest within length bins
    (Cochran-Mantel-Haenszel), and a warning says when the classes' lengths differ.
    Numeric: Spearman's rho
    between the latent's pooled value (0 where silent) and the column, with its
    t-approximation p-value and q-values; with ``length_control`` (default) also the
    partial rho with document length held fixed (``rho_adj``, Spearman ranks), whose
    p and q then rank the table, and a warning when the column tracks length. Latents
    present in fewer than ``min_support`` documents are not tested; ``label_pattern`` /
    ``latents`` restrict the latents. ``presence``: "excess" (default) or "any", as in
    diff; it decides which latents count as firing (categorical) and which pooled
    values are kept (numeric: values where the latent is not present count as 0).
    """
    if kind not in ("auto", "categorical", "numeric"):
        raise ConfigError(f"kind must be auto, categorical or numeric, got {kind!r}")
    if min_support < 1:
        raise ConfigError(f"--min-support must be at least 1, got {min_support}")
    check_presence(presence)
    with opened(store_or_path) as store:
        scope = resolve_scope(store, dataset, sae_id)
        docs = documents_frame(store, scope, fields=[column])
        keep = _restrict(store, scope.sae_id, label_pattern, latents)
        lm = latent_matrix(store, scope)
        labels = latent_labels(store, scope.sae_id).select("latent", "label")
    if not np.array_equal(lm.doc_ids, docs["doc_id"].to_numpy()):  # pragma: no cover - both sort by doc_id
        raise ConfigError("documents and activations disagree; re-run `saedata embed`")
    values = docs[column]
    ok = values.is_not_null().to_numpy()
    if values.dtype == pl.Float64 or values.dtype == pl.Float32:
        ok &= ~values.is_nan().fill_null(True).to_numpy()
    n_missing = int((~ok).sum())
    warnings: list[str] = list(scope.warnings)
    if n_missing:
        warnings.append(f"{n_missing} of {len(ok)} documents have no value for {column!r}; they are left out")
    values = values.filter(pl.Series(ok))
    if kind == "auto":
        kind = "numeric" if values.dtype.is_numeric() and values.dtype != pl.Boolean else "categorical"
    if kind == "numeric" and not values.dtype.is_numeric():
        raise ConfigError(f"column {column!r} of {scope.describe()} is not numeric ({values.dtype}); "
                          "treat it as categorical")
    P, more = read_presence(lm, presence, threshold, scope.describe())
    warnings += more
    P = P[np.flatnonzero(ok)]
    X = lm.X[np.flatnonzero(ok)].multiply(P).tocsr()  # pooled values where present, 0 elsewhere
    A = P.astype(np.float32).tocsr()
    lengths = lm.n_tokens[np.flatnonzero(ok)] if lm.n_tokens is not None else None
    support = np.asarray(A.sum(axis=0)).ravel()
    cols = np.flatnonzero(support >= min_support)
    if keep is not None:
        cols = np.intersect1d(cols, np.asarray(keep, dtype=np.int64))
    n = int(ok.sum())
    if n < 3:
        raise ConfigError(f"too few documents with {column!r} in {scope.describe()} to test: {n}")
    if cols.size == 0:
        raise ConfigError(
            f"no latent fires in {min_support} or more of the {n} documents of {scope.describe()}; "
            "lower --min-support"
        )
    base = pl.DataFrame({"latent": cols.astype(np.int32), "n_docs": support[cols].astype(np.int64),
                         "freq": support[cols].astype(np.float64) / n})
    base = base.join(labels, on="latent", how="left", maintain_order="left")
    base = base.select("latent", "label", "n_docs", "freq")
    if kind == "numeric":
        y = values.cast(pl.Float64).to_numpy()
        table = _spearman(X[:, cols], y, column, scope)
        rank_by = "rho"
        if length_control and lengths is not None:
            adjusted, more = _length_adjusted(X[:, cols], y, lengths, table["rho"].to_numpy(), column)
            warnings.extend(more)
            if adjusted is not None:
                table = pl.concat([table, adjusted], how="horizontal")
                rank_by = "rho_adj"
        q_col = "q_adj" if rank_by == "rho_adj" else "q"
        out = (pl.concat([base, table], how="horizontal")
               .sort([pl.col(q_col), pl.col(rank_by).abs()], descending=[False, True], nulls_last=True))
        empty = pl.DataFrame()
        return MetadataResult(column, "numeric", out, empty, empty, n, n_missing, scope.names, scope.sae_id, alpha,
                              tuple(warnings))
    classes = values.cast(pl.String).to_numpy()
    table, per_class, freqs, more = _categorical(A[:, cols], classes, base, column, scope, min_support,
                                                 per_class, alpha, lengths if length_control else None)
    warnings.extend(more)
    return MetadataResult(column, "categorical", table, per_class, freqs, n, n_missing, scope.names, scope.sae_id,
                          alpha, tuple(warnings))


def _spearman(X, x: np.ndarray, column: str, scope: Scope) -> pl.DataFrame:
    """Spearman rho, p and q of each column of sparse X (n, L) with x (n,)."""
    if np.all(x == x[0]):
        raise ConfigError(f"column {column!r} has one value ({x[0]:g}) in every document of {scope.describe()}")
    rho = spearman_columns(X, x)
    p = correlation_pvalues(rho, len(x))
    return pl.DataFrame({"rho": rho, "p": p, "q": bh_qvalues(p)})


def _length_adjusted(X, y: np.ndarray, lengths: np.ndarray, rho: np.ndarray, column: str
                     ) -> tuple[pl.DataFrame | None, list[str]]:
    """Partial Spearman rho of each column of X with y, document length held fixed
    (rho_adj, p_adj, q_adj), and warnings when y tracks length. None when y is
    length itself (nothing is left to correlate once length is fixed)."""
    r_yz = float(stats.spearmanr(y, lengths)[0]) if np.ptp(lengths) > 0 and np.ptp(y) > 0 else 0.0
    if not np.isfinite(r_yz):
        r_yz = 0.0
    if abs(r_yz) > 0.95:
        return None, [f"{column!r} is document length in other words (Spearman {r_yz:.2f} with the token count): "
                      "every latent that grows with length correlates with it; no length control is possible"]
    warnings = []
    if abs(r_yz) > LENGTH_WARNING:
        warnings.append(f"{column!r} tracks document length (Spearman {r_yz:.2f} with the token count); rho_adj "
                        "holds length fixed and ranks the table")
    r_xz = spearman_columns(X, lengths.astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        adj = (rho - r_xz * r_yz) / np.sqrt((1 - r_xz**2) * (1 - r_yz**2))
    adj = np.clip(np.where(np.isfinite(adj), adj, 0.0), -1.0, 1.0)
    p = correlation_pvalues(adj, len(y) - 1)  # one variable partialled out: n - 3 df
    return pl.DataFrame({"rho_adj": adj, "p_adj": p, "q_adj": bh_qvalues(p)}), warnings


def _class_length_q(A, idx: np.ndarray, n_classes: int, lengths: np.ndarray) -> np.ndarray:
    """(n_classes, n_latents) Benjamini-Hochberg q-values of each class against the rest,
    Cochran-Mantel-Haenszel across LENGTH_BINS quantile bins of the documents' lengths."""
    values, counts = np.unique(lengths, return_counts=True)
    edges = np.asarray(length_edges(values, counts, LENGTH_BINS), dtype=np.int64)
    bins = np.searchsorted(edges, lengths, side="right")
    n_bins = len(edges) + 1
    n = len(idx)
    cell = idx * n_bins + bins  # (class, bin) of each document
    S = sparse.csr_matrix((np.ones(n), (np.arange(n), cell)), shape=(n, n_classes * n_bins))
    O = np.asarray((S.T @ A).todense(), dtype=np.float64).reshape(n_classes, n_bins, -1)  # (K, bins, L)
    docs = np.bincount(cell, minlength=n_classes * n_bins).reshape(n_classes, n_bins).astype(np.float64)
    total_o, total_docs = O.sum(0), docs.sum(0)
    out = np.ones((n_classes, O.shape[2]))
    for k in range(n_classes):
        test = cmh_test((total_o - O[k]).T, total_docs - docs[k], O[k].T, docs[k])
        out[k] = bh_qvalues(test.p)
    return out


def _class_length_warning(lengths: np.ndarray, idx: np.ndarray, names: np.ndarray, column: str) -> list[str]:
    """A warning when the classes' document lengths differ (Kruskal-Wallis p < 0.01)."""
    groups = [lengths[idx == k] for k in range(len(names))]
    if len(groups) < 2 or any(len(g) == 0 for g in groups) or np.ptp(lengths) == 0:
        return []
    p = float(stats.kruskal(*groups).pvalue)
    if p >= 0.01:
        return []
    medians = sorted(((float(np.median(g)), str(c)) for g, c in zip(groups, names)), reverse=True)
    shown = ", ".join(f"{c} {m:g}" for m, c in (medians[:2] + medians[-1:] if len(medians) > 3 else medians))
    return [f"document lengths differ between the values of {column!r} (median tokens: {shown}; Kruskal-Wallis "
            f"p={p:.2g}): longer documents fire more latents, so the per-class latents are chosen by q_adj, "
            "which compares documents of similar length"]


def _categorical(A, classes: np.ndarray, base: pl.DataFrame, column: str, scope: Scope, min_support: int,
                 per_class: int, alpha: float, lengths: np.ndarray | None = None):
    """The chi-square table, the per-class over-represented latents and their
    frequencies. With ``lengths`` (each document's token count), each class is also
    compared with the rest within length bins (Cochran-Mantel-Haenszel: ``q_adj``), and
    that q chooses a class's latents: a class of long documents is not rich in every
    concept."""
    names, idx = np.unique(classes, return_inverse=True)
    if len(names) < 2:
        raise ConfigError(
            f"column {column!r} has one value ({names[0]!r}) in every document of {scope.describe()}; "
            "nothing to compare"
        )
    warnings = []
    n = len(classes)
    C = sparse.csr_matrix((np.ones(n), (np.arange(n), idx)), shape=(n, len(names)))
    n_k = np.asarray(C.sum(axis=0)).ravel()  # (K,)
    small = [f"{c!r} ({int(m)})" for c, m in zip(names, n_k, strict=True) if m < 5]
    if small:
        warnings.append(f"classes of {column!r} with fewer than 5 documents: {', '.join(small[:5])}; "
                        "their tests are rough")
    if len(names) > 50:
        warnings.append(f"column {column!r} has {len(names)} distinct values; is it numeric or an id?")
    O = np.asarray((C.T @ A).todense(), dtype=np.float64)  # (K, L) documents of class k where latent fires
    n_l = np.asarray(A.sum(axis=0)).ravel().astype(np.float64)  # (L,)
    stat, p = chi2_columns(O, n_k, n_l, n)
    q = bh_qvalues(p)
    freq_in = O / n_k[:, None]
    rest = (n - n_k)[:, None]
    out_count = n_l[None, :] - O
    with np.errstate(divide="ignore", invalid="ignore"):
        freq_out = np.where(rest > 0, out_count / rest, 0.0)
    # lift with half a document added to each count, so it stays finite and rare latents don't dominate
    lift = ((O + 0.5) / (n_k[:, None] + 1)) / ((out_count + 0.5) / (rest + 1))
    q_adj = _class_length_q(A, idx, len(names), lengths) if lengths is not None else None
    if q_adj is not None:
        warnings += _class_length_warning(lengths, idx, names, column)
    best = np.argmax(lift, axis=0)
    table = base.with_columns(
        pl.Series("chi2", stat), pl.Series("p", p), pl.Series("q", q),
        pl.Series("cramers_v", np.sqrt(stat / n)),  # for a 2 x K table, V = sqrt(chi2 / n)
        pl.Series("top_class", names[best].astype(str)),
        pl.Series("top_lift", lift[best, np.arange(len(best))]),
    ).sort(["q", "cramers_v"], descending=[False, True])
    rows = []
    lat = base["latent"].to_numpy()
    lab = base["label"].to_list()
    for k, name in enumerate(names):
        sig = q if q_adj is None else q_adj[k]
        ok = (sig <= alpha) & (O[k] >= min_support) & (freq_in[k] > freq_out[k])
        cand = np.flatnonzero(ok)
        order = cand[np.lexsort((-freq_in[k][cand], -lift[k][cand]))][:per_class]
        if order.size == 0:
            warnings.append(f"no latent is significantly over-represented in {column} = {name!r}")
        for r, j in enumerate(order, start=1):
            rows.append((str(name), int(n_k[k]), r, int(lat[j]), lab[j], float(freq_in[k, j]),
                         float(freq_out[k, j]), float(lift[k, j]), float(q[j]))
                        + (() if q_adj is None else (float(q_adj[k, j]),)))
    schema = {"class": pl.String, "n_class": pl.Int64, "rank": pl.Int64, "latent": pl.Int32, "label": pl.String,
              "freq_in": pl.Float64, "freq_out": pl.Float64, "lift": pl.Float64, "q": pl.Float64}
    per = pl.DataFrame(rows, schema=schema | ({} if q_adj is None else {"q_adj": pl.Float64}), orient="row")
    shown = list(dict.fromkeys(per["latent"].to_list()))
    col_of = {int(v): j for j, v in enumerate(lat)}
    freqs = pl.DataFrame(
        [(str(c), int(v), lab[col_of[v]], float(freq_in[k, col_of[v]])) for k, c in enumerate(names) for v in shown],
        schema={"class": pl.String, "latent": pl.Int32, "label": pl.String, "freq": pl.Float64}, orient="row",
    )
    return table, per, freqs, warnings
