"""Filtered clustering: cluster documents along an axis the user names.

Clustering on every latent groups documents by whatever dominates them (usually
topic). To cluster by something else -- sentiment, say -- pick the latents of that axis
(:func:`saedata.analysis.axes.select_latents`: an axis text, a label regex or a list)
and cluster on those alone:

1. features (``scale``): ``"tokens"``: tf-idf with concepts as terms, log(1 + tokens
   the latent fired on) x idf (:func:`saedata.analysis.presence.tfidf`), so a concept
   that fires once in a long document weighs little and one that fires everywhere
   nothing; ``"values"``: the pooled values; ``"auto"`` (the default): "tokens" on all
   latents, "values" on an axis (a handful of latents that fire on a token or two,
   where how strongly they fire is the signal: on the planted sentiment axis "values"
   recovers sentiment with ARI 0.79, "tokens" 0.11); ``"binary"``: 1 where a latent
   fires; ``"tfidf"``: those 1s weighted by ln((1 + n) / (1 + df)) + 1. Each row is
   scaled to unit length, which makes Euclidean k-means behave like cosine k-means;
   documents with none of the latents stay at the origin, together. On 4,607 Debian
   package descriptions (25 sections) "tokens" gave NMI 0.590 at k = 25, mean of 5
   seeds, against 0.583 for k-means on the dense MiniLM embedding in the same run
   (benchmarks/bench_real.py).
2. k-means (k given, or chosen by stability and silhouette over 2..max_k, see
   :func:`choose_k`, which says so when no k is clearly better; n_init=10,
   random_state=seed) or HDBSCAN (noise label -1). Features wider than 256 latents are
   first reduced to 128 dimensions by truncated SVD (64 lost 0.017 NMI on the Debian
   benchmark with one of two SAEs; 128 lost nothing on either).
3. each cluster described by distinct latents -- among *all* latents, not only the
   selected, and none with a weak label (punctuation, function words) -- with the
   highest lift (frequency in the cluster / frequency overall) that are present
   (:mod:`saedata.analysis.presence`) in at least a quarter of its documents and in
   ``min_support`` of them; a latent describes only the cluster where its lift is
   highest. Each cluster's median length in tokens stands beside its description.
4. a 2-D UMAP map of the features, coloured by cluster (:mod:`saedata.reports.cluster`
   draws it as PNG and writes an offline HTML report).

``unfiltered=True`` also clusters on all latents and reports the adjusted Rand index
(ARI) between the two clusterings, and with ``eval_field`` the ARI and NMI of each
against a metadata column.
"""

from __future__ import annotations

import os
import warnings as _warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
from scipy import sparse

from saedata.analysis.axes import LEXICAL_MATCH, SELECTED_SCHEMA, select_latents
from saedata.analysis.presence import LENGTH_WARNING, length_explained, no_token_counts_warning, tfidf
from saedata.analysis.scope import (
    LatentMatrix,
    Models,
    Scope,
    documents_frame,
    latent_labels,
    latent_matrix,
    opened,
    resolve_scope,
)
from saedata.errors import ConfigError
from saedata.store import Store

Method = Literal["kmeans", "hdbscan"]
Scale = Literal["auto", "tokens", "values", "binary", "tfidf"]
SCALES = ("auto", "tokens", "values", "binary", "tfidf")
STABLE = 0.8
"""Mean ARI between k-means on resampled halves at and above which a k counts as stable."""
FLAT = 0.02
"""A silhouette curve whose best k beats the median k by less than this is flat."""
MIN_MAP_DOCS = 10
"""Fewer documents than this: no UMAP map (its neighbourhood graph needs some points)."""
MAX_EMPTY = 1 / 3
"""An axis matched by label similarity alone (no label word in common) whose latents leave
more than this share of the documents empty is refused as a weak match."""
MIN_CLUSTER_FREQ = 0.25
"""A describing latent fires in at least this fraction of the cluster's documents."""


@dataclass(frozen=True)
class ClusterResult:
    """Documents clustered on a set of latents, with cluster descriptions and a 2-D map."""

    assignments: pl.DataFrame
    """doc_id, dataset, ext_id, cluster (-1: HDBSCAN noise), x, y (the map; null without one),
    and cluster_all (the clustering on all latents) with ``unfiltered``."""
    clusters: pl.DataFrame
    """cluster, size, share, median_tokens, top_latents: one row per cluster, largest first
    (0 is the largest); median_tokens: the median document length in reader tokens."""
    descriptions: pl.DataFrame
    """cluster, rank, latent, label, freq_in, freq_all, lift, selected: the latents most
    over-represented in each cluster (``selected``: one of the latents clustered on)."""
    examples: pl.DataFrame
    """cluster, doc_id, dataset, ext_id, word, text: the documents nearest each cluster's
    centre, with the word where their strongest selected latent peaked."""
    latents_used: pl.DataFrame
    """latent, label, freq, score, why: the latents the documents were clustered on."""
    comparison: pl.DataFrame
    """clustering, n_latents, k, silhouette, field, ari, nmi: one row per clustering
    (filtered, and all latents with ``unfiltered``); ari/nmi against ``eval_field``."""
    k_scores: pl.DataFrame
    """k, silhouette, stability of every k tried when k-means estimated k (empty
    otherwise); stability: mean ARI between k-means fits on resampled halves."""
    method: str
    k: int
    """Clusters found (noise excluded)."""
    silhouette: float | None
    ari_unfiltered: float | None
    """ARI between the filtered clustering and the one on all latents (``unfiltered``)."""
    n_docs: int
    datasets: tuple[str, ...]
    sae_id: int
    scale: str
    seed: int
    axis: str | None
    warnings: tuple[str, ...] = ()

    @property
    def has_map(self) -> bool:
        """Whether the documents have 2-D map coordinates (x, y)."""
        return self.assignments["x"].null_count() < self.assignments.height


def cluster(
    store_or_path: Store | str | os.PathLike,
    dataset: str | list[str] | None = None,
    *,
    axis: str | None = None,
    latents: list[int] | None = None,
    label_pattern: str | None = None,
    method: Method = "kmeans",
    k: int | None = None,
    max_k: int = 12,
    seed: int = 0,
    min_cluster_size: int = 10,
    scale: Scale = "auto",
    map: bool = True,  # noqa: A002 - the issue's name for it
    unfiltered: bool = False,
    eval_field: str | None = None,
    top: int = 20,
    min_support: int = 5,
    n_describe: int = 5,
    n_examples: int = 3,
    models: Models | None = None,
    sae_id: int | None = None,
) -> ClusterResult:
    """Cluster the documents of ``dataset`` on the latents of an axis (see the module doc).

    ``axis`` / ``latents`` / ``label_pattern`` pick the latents (their union; ``top``
    caps the axis picks); with none of them, every latent firing in ``min_support``
    documents is used. ``k`` fixes the number of k-means clusters, else it is chosen by
    stability and silhouette over 2..``max_k`` (:func:`choose_k`). ``min_cluster_size`` is HDBSCAN's. ``map``
    computes the 2-D UMAP map (skipped with a warning under 10 documents). ``models``
    embeds the axis and the labels for the semantic match (see
    :func:`~saedata.analysis.axes.select_latents`; ``saedata.cluster`` passes them).
    """
    if method not in ("kmeans", "hdbscan"):
        raise ConfigError(f"--method must be kmeans or hdbscan, got {method!r}")
    if scale not in SCALES:
        raise ConfigError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if k is not None and k < 2:
        raise ConfigError(f"--k must be at least 2, got {k}")
    if max_k < 2:
        raise ConfigError(f"--max-k must be at least 2, got {max_k}")
    if min_cluster_size < 2:
        raise ConfigError(f"--min-cluster-size must be at least 2, got {min_cluster_size}")
    with opened(store_or_path) as store:
        scope = resolve_scope(store, dataset, sae_id)
        warnings: list[str] = list(scope.warnings)
        n = scope.n_docs
        where = f"the {n} documents of {scope.describe()}"
        if n < 3:
            raise ConfigError(f"too few documents to cluster: {where}")
        if k is not None and k > n:
            raise ConfigError(f"--k {k} is more than {where}")
        if method == "hdbscan" and min_cluster_size > n:
            raise ConfigError(f"--min-cluster-size {min_cluster_size} is more than {where}")
        fields = [eval_field] if eval_field else []
        docs = documents_frame(store, scope, fields=fields or None)
        lm = latent_matrix(store, scope)
        filtered = axis is not None or latents is not None or label_pattern is not None
        all_scale = ("tokens" if lm.has_tokens else "tfidf") if scale == "auto" else scale
        if scale == "auto":
            scale = "values" if filtered else all_scale
        if scale == "tokens" and not lm.has_tokens:
            warnings.append(no_token_counts_warning(scope.describe()) + "; clustering on --scale tfidf")
            scale = all_scale = "tfidf"
        active = lm.active()
        present = lm.present()
        support = np.asarray(active.sum(axis=0)).ravel()
        labels = latent_labels(store, scope.sae_id)
        if axis is None and latents is None and label_pattern is None:
            used = _all_latents(labels, support, min_support, n)
        else:
            used = select_latents(store, scope.sae_id, axis=axis, latents=latents, label_pattern=label_pattern,
                                  top=top, embed_texts=models.text_vectors if models is not None else None,
                                  word_pieces=models.text_pieces if models is not None else None)
        cols = used["latent"].to_numpy().astype(np.int64)
        F = features(lm, cols, scale)
        n_empty = int((F.getnnz(axis=1) == 0).sum())
        if n_empty == n:
            raise ConfigError(f"none of the {len(cols)} selected latents fires in {where}")
        by_similarity_only = axis is not None and label_pattern is None and latents is None and \
            not used["why"].str.contains(LEXICAL_MATCH, literal=True).any()
        if by_similarity_only and n_empty > MAX_EMPTY * n:
            named = "; ".join(f"{lat} {lab}" for lat, lab in used.select("latent", "label").head(5).iter_rows())
            raise ConfigError(
                f"the {len(cols)} latents picked for the axis, by label similarity alone, fire in only "
                f"{n - n_empty} of {where} ({n_empty} would sit together at the origin): a weak match, not an "
                f"axis of these documents (picked: {named}); name the axis differently, by example values, "
                "or with --latents")
        if n_empty:
            warnings.append(f"{n_empty} of {n} documents have none of the selected latents; they sit together "
                            "at the origin (usually as one cluster)")
        assign, k_scores, sil, more = _fit(F, method, k, max_k, seed, min_cluster_size, where)
        warnings += more
        descriptions = describe(present, assign, labels, set(cols.tolist()), min_support, n_describe)
        examples = _examples(store, scope, F, assign, docs, cols, n_examples)
    out = docs.select("doc_id", "dataset", "ext_id").with_columns(pl.Series("cluster", assign))
    xy = None
    if map:
        if n < MIN_MAP_DOCS:
            warnings.append(f"map skipped: only {n} documents (UMAP needs at least {MIN_MAP_DOCS})")
        else:
            xy = umap_xy(F, seed)
    out = out.with_columns(pl.Series("x", xy[:, 0] if xy is not None else [None] * n, dtype=pl.Float64),
                           pl.Series("y", xy[:, 1] if xy is not None else [None] * n, dtype=pl.Float64))
    k_found = len(set(assign.tolist()) - {-1})
    comp = [("filtered" if filtered else "all latents", len(cols), k_found, sil, assign)]
    ari_between = None
    if unfiltered:
        all_used = _all_latents(labels, support, min_support, n)
        F_all = features(lm, all_used["latent"].to_numpy().astype(np.int64), all_scale)
        assign_all, _, sil_all, more = _fit(F_all, method, k, max_k, seed, min_cluster_size, where)
        warnings += [f"all latents: {w}" for w in more]
        out = out.with_columns(pl.Series("cluster_all", assign_all))
        comp.append(("all latents", all_used.height, len(set(assign_all.tolist()) - {-1}), sil_all, assign_all))
        from sklearn.metrics import adjusted_rand_score

        ari_between = float(adjusted_rand_score(assign, assign_all))
    if eval_field and docs[eval_field].null_count() == n:
        raise ConfigError(f"metadata field {eval_field!r} is empty in every document of {scope.describe()}")
    comparison = _compare(comp, docs, eval_field)
    clusters = _summary(assign, descriptions, docs["n_tokens"].to_numpy())
    explained = length_explained(assign, docs["n_tokens"].to_numpy())
    if explained > LENGTH_WARNING:
        medians = clusters.filter(pl.col("cluster") >= 0)["median_tokens"]
        warnings.append(f"the clusters follow document length: cluster explains {explained:.0%} of the variance of "
                        f"log length (median tokens {medians.min():g} to {medians.max():g}); compare "
                        "median_tokens before reading the descriptions as topics")
    return ClusterResult(out, clusters, descriptions, examples, used.cast(SELECTED_SCHEMA),  # type: ignore[arg-type]
                         comparison, k_scores, method, k_found, sil, ari_between, n, scope.names, scope.sae_id,
                         scale, seed, axis, tuple(warnings))


def features(lm: LatentMatrix, cols: np.ndarray, scale: Scale = "tokens") -> sparse.csr_matrix:
    """(n_docs, len(cols)) clustering features of latents ``cols``, rows at unit length
    (zero rows stay zero); ``scale`` as in the module doc ("tokens" needs token counts)."""
    from sklearn.preprocessing import normalize

    if scale == "tokens":
        return sparse.csr_matrix(tfidf(lm.tokens[:, cols]))
    A = sparse.csr_matrix(lm.X[:, cols], dtype=np.float64, copy=True)
    A.data = np.abs(A.data)
    A.eliminate_zeros()
    if scale in ("binary", "tfidf"):
        A.data[:] = 1.0
    if scale == "tfidf":
        df = np.asarray(A.sum(axis=0)).ravel()
        idf = np.log((1 + A.shape[0]) / (1 + df)) + 1
        A = sparse.csr_matrix(A.multiply(idf[None, :]))
    return sparse.csr_matrix(normalize(A))


def _all_latents(labels: pl.DataFrame, support: np.ndarray, min_support: int, n: int) -> pl.DataFrame:
    cols = np.flatnonzero(support >= min(min_support, n))
    if cols.size == 0:
        raise ConfigError(f"no latent fires in {min_support} or more of the {n} documents; lower --min-support")
    return (
        pl.DataFrame({"latent": cols.astype(np.int32)})
        .join(labels.select("latent", "label"), on="latent", how="left", maintain_order="left")
        .with_columns(pl.Series("freq", support[cols] / n), pl.lit(None, pl.Float64).alias("score"),
                      pl.lit("all latents").alias("why"))
        .select("latent", "label", "freq", "score", "why")
    )


def reduce(F: sparse.csr_matrix, seed: int = 0, max_width: int = 256, dims: int = 128) -> np.ndarray:
    """Dense features for the clustering algorithms: ``F`` itself when at most ``max_width``
    latents wide, else its ``dims``-dimensional truncated SVD (k-means, HDBSCAN and UMAP on
    thousands of sparse columns are slow, and the leading components keep the structure)."""
    if F.shape[1] <= max_width or min(F.shape) <= dims:
        return F.toarray()
    from sklearn.decomposition import TruncatedSVD

    return TruncatedSVD(n_components=dims, random_state=seed).fit_transform(F)


def _fit(F: sparse.csr_matrix, method: Method, k: int | None, max_k: int, seed: int, min_cluster_size: int,
         where: str) -> tuple[np.ndarray, pl.DataFrame, float | None, list[str]]:
    """Cluster labels (relabelled by size: 0 is the largest), the k scan, the silhouette, warnings."""
    from sklearn.cluster import HDBSCAN, KMeans

    n = F.shape[0]
    warnings: list[str] = []
    n_distinct = _n_distinct(F)
    Z = reduce(F, seed)
    scores = pl.DataFrame(schema={"k": pl.Int64, "silhouette": pl.Float64, "stability": pl.Float64})
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")
        if method == "kmeans":
            if k is None:
                ks = list(range(2, min(max_k, n - 1, n_distinct) + 1))
                if not ks:
                    raise ConfigError(f"too few distinct documents to cluster ({n_distinct} in {where})")
                fits = {kk: KMeans(kk, n_init=10, random_state=seed).fit_predict(Z) for kk in ks}
                sil = {kk: _silhouette(Z, lab, seed) for kk, lab in fits.items()}
                stab = {kk: stability(Z, kk, seed) for kk in ks}
                scores = pl.DataFrame({"k": ks, "silhouette": [sil[kk] for kk in ks],
                                       "stability": [stab[kk] for kk in ks]},
                                      schema={"k": pl.Int64, "silhouette": pl.Float64, "stability": pl.Float64})
                k, why = choose_k(sil, stab)
                if why:
                    warnings.append(f"{why} in {where}; pass --k to choose")
                labels = fits[k]
            else:
                if k > n_distinct:
                    warnings.append(f"only {n_distinct} distinct feature rows in {where}; using k = {n_distinct}")
                    k = n_distinct
                labels = KMeans(k, n_init=10, random_state=seed).fit_predict(Z)
        else:
            labels = HDBSCAN(min_cluster_size=min_cluster_size, copy=True).fit_predict(Z)
            if (labels == -1).all():
                warnings.append(f"HDBSCAN found no cluster in {where} (all noise); lower --min-cluster-size")
    labels = _relabel(np.asarray(labels))
    return labels, scores, _silhouette(Z, labels, seed), warnings


def pick_k(silhouettes: dict[int, float | None], floor: float = 0.75) -> int:
    """k from the silhouette of each k tried: the first peak of the curve (a k scoring at
    least as well as the next one) that reaches ``floor`` x the best silhouette.

    On sparse concept features the silhouette often creeps up again at large k (small,
    tight clusters of near-identical documents); the first good peak keeps the broad
    groups. The best k is always such a peak, so there is always an answer.
    """
    valid = sorted((k, s) for k, s in silhouettes.items() if s is not None)
    if not valid:
        return min(silhouettes)
    best = max(s for _, s in valid)
    return next(k for i, (k, s) in enumerate(valid)
                if (i + 1 == len(valid) or s >= valid[i + 1][1]) and s >= floor * best)


def stability(Z: np.ndarray, k: int, seed: int, pairs: int = 3) -> float:
    """Mean adjusted Rand index between k-means fits on two random halves of the rows,
    each labelling every row, over ``pairs`` pairs: 1 when k clusters are found again
    whatever the sample, near 0 when the split is arbitrary (a flat landscape)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(seed)
    n = Z.shape[0]
    scores = []
    for p in range(pairs):
        order = rng.permutation(n)
        halves = order[: n // 2], order[n // 2:]
        if min(len(h) for h in halves) <= k:
            return float("nan")
        fits = [KMeans(k, n_init=3, random_state=seed + 2 * p + i).fit(Z[h]).predict(Z) for i, h in enumerate(halves)]
        scores.append(adjusted_rand_score(*fits))
    return float(np.mean(scores))


def choose_k(silhouettes: dict[int, float | None], stabilities: dict[int, float]) -> tuple[int, str | None]:
    """k from the silhouette and stability of each k tried, and why no k is clearly better
    (None when one is). Among the stable k (stability >= ``STABLE``), the first peak of
    the silhouette curve (:func:`pick_k`); with none stable, or a flat curve (best
    silhouette within ``FLAT`` of the median), the same pick, said to be arbitrary."""
    valid = {k: s for k, s in silhouettes.items() if s is not None}
    stable = {k: s for k, s in valid.items() if stabilities.get(k, 0.0) >= STABLE}
    k = pick_k(stable or silhouettes)
    if not valid:
        return k, "no k gave a defined silhouette"
    values = sorted(valid.values())
    lo, hi, median = values[0], values[-1], float(np.median(values))
    if hi - median < FLAT:
        return k, (f"no k is clearly better: the silhouette is flat ({lo:.3f}-{hi:.3f} over k = "
                   f"{min(valid)}..{max(valid)}), so k = {k} is one reading among several")
    if not stable:
        best = max(stabilities.values(), default=float("nan"))
        return k, (f"no k is stable: k-means on two halves of the documents agree at most ARI {best:.2f} "
                   f"(k = {k} picked by silhouette alone)")
    return k, None


def _n_distinct(F: sparse.csr_matrix) -> int:
    F = sparse.csr_matrix(F)
    F.sort_indices()
    rows = {(F.indices[F.indptr[i]:F.indptr[i + 1]].tobytes(), np.round(F.data[F.indptr[i]:F.indptr[i + 1]], 9)
             .tobytes()) for i in range(F.shape[0])}
    return len(rows)


def _silhouette(F, labels: np.ndarray, seed: int) -> float | None:
    """Silhouette of the non-noise points (on at most 2,000 of them), None if undefined."""
    from sklearn.metrics import silhouette_score

    keep = labels != -1
    n_labels = len(set(labels[keep].tolist()))
    if n_labels < 2 or n_labels >= keep.sum():
        return None
    size = min(int(keep.sum()), 2000)
    return float(silhouette_score(F[keep], labels[keep], sample_size=size, random_state=seed))


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Clusters renumbered by size (largest 0), ties by first document; noise stays -1."""
    ids = [c for c in dict.fromkeys(labels.tolist()) if c != -1]
    sizes = {c: int((labels == c).sum()) for c in ids}
    order = sorted(ids, key=lambda c: (-sizes[c], ids.index(c)))
    mapping = {c: i for i, c in enumerate(order)}
    mapping[-1] = -1
    return np.array([mapping[c] for c in labels.tolist()], dtype=np.int64)


def describe(active: sparse.csr_matrix, assign: np.ndarray, labels: pl.DataFrame, selected: set[int],
             min_support: int = 5, n_describe: int = 5) -> pl.DataFrame:
    """Per cluster, the latents with the highest lift (freq in cluster / freq overall) among those
    present in at least a quarter of the cluster's documents and in ``min_support`` of them,
    leaving out weak labels; each latent describes only the cluster where its lift is highest."""
    A = sparse.csr_matrix(active, dtype=np.float64)
    n = A.shape[0]
    freq_all = np.asarray(A.sum(axis=0)).ravel() / n
    label_of = dict(labels.select("latent", "label").iter_rows())
    weak = np.zeros(A.shape[1], dtype=bool)
    weak[labels.filter(pl.col("weak"))["latent"].to_numpy()] = True
    clusters = sorted(set(assign.tolist()) - {-1})
    lifts, oks = {}, {}
    for c in clusters:
        members = np.flatnonzero(assign == c)
        count = np.asarray(A[members].sum(axis=0)).ravel()
        freq_in = count / len(members)
        with np.errstate(divide="ignore", invalid="ignore"):
            lifts[c] = (freq_in, np.where(freq_all > 0, freq_in / freq_all, 0.0))
        oks[c] = (count >= min(min_support, len(members))) & (freq_in >= MIN_CLUSTER_FREQ) & ~weak
    home = np.full(A.shape[1], -1)
    if clusters:
        L = np.stack([np.where(oks[c], lifts[c][1], -np.inf) for c in clusters])
        home = np.where(np.isfinite(L.max(axis=0)), np.asarray(clusters)[L.argmax(axis=0)], -1)
    rows = []
    for c in clusters:
        freq_in, lift = lifts[c]
        cand = np.flatnonzero(oks[c] & (home == c))
        best = cand[np.lexsort((cand, -freq_in[cand], -lift[cand]))][:n_describe]
        for r, j in enumerate(best, start=1):
            rows.append((int(c), r, int(j), label_of.get(int(j)), float(freq_in[j]), float(freq_all[j]),
                         float(lift[j]), int(j) in selected))
    return pl.DataFrame(rows, orient="row", schema={
        "cluster": pl.Int64, "rank": pl.Int64, "latent": pl.Int32, "label": pl.String, "freq_in": pl.Float64,
        "freq_all": pl.Float64, "lift": pl.Float64, "selected": pl.Boolean})


def _summary(assign: np.ndarray, descriptions: pl.DataFrame, n_tokens: np.ndarray) -> pl.DataFrame:
    n = len(assign)
    rows = []
    for c in sorted(set(assign.tolist()), key=lambda c: (c == -1, c)):
        size = int((assign == c).sum())
        length = float(np.median(n_tokens[assign == c]))
        if c == -1:
            top = "(noise: no cluster)"
        else:
            d = descriptions.filter(pl.col("cluster") == c)
            top = "; ".join(f"{lab or lat} ({lift:.1f}x)" for lat, lab, lift in d.select("latent", "label", "lift")
                            .iter_rows()) or "(no latent over-represented)"
        rows.append((int(c), size, size / n, length, top))
    return pl.DataFrame(rows, orient="row", schema={"cluster": pl.Int64, "size": pl.Int64, "share": pl.Float64,
                                                    "median_tokens": pl.Float64, "top_latents": pl.String})


def _examples(store: Store, scope: Scope, F: sparse.csr_matrix, assign: np.ndarray, docs: pl.DataFrame,
              cols: np.ndarray, n_examples: int) -> pl.DataFrame:
    schema = {"cluster": pl.Int64, "doc_id": pl.Int64, "dataset": pl.String, "ext_id": pl.String,
              "word": pl.String, "text": pl.String}
    picks: list[tuple[int, int]] = []
    for c in sorted(set(assign.tolist()), key=lambda c: (c == -1, c)):
        members = np.flatnonzero(assign == c)
        centre = np.asarray(F[members].mean(axis=0)).ravel()
        Fm = F[members]
        # squared distance to the centre: |x|^2 - 2 x.c + |c|^2, without densifying
        dist = np.asarray(Fm.multiply(Fm).sum(axis=1)).ravel() - 2 * (Fm @ centre) + centre @ centre
        for i in members[np.lexsort((members, dist))][:n_examples]:
            picks.append((int(c), int(i)))
    if not picks or n_examples <= 0:
        return pl.DataFrame(schema=schema)
    rows = [i for _, i in picks]
    doc_ids = docs["doc_id"].to_numpy()[rows].tolist()
    words = store.macro("search_matches", scope.sae_id, doc_ids, cols.tolist())
    best = (words.sort(["doc_id", "value", "latent"], descending=[False, True, False])
            .group_by("doc_id", maintain_order=True).agg(pl.col("word").first()))
    word_of = dict(best.iter_rows())
    d = docs.select("doc_id", "dataset", "ext_id", "text")
    return pl.DataFrame(
        [(c, *d.row(i)[:3], word_of.get(int(d["doc_id"][i])), d["text"][i]) for c, i in picks],
        orient="row", schema=schema)


def _compare(comp: list, docs: pl.DataFrame, eval_field: str | None) -> pl.DataFrame:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rows = []
    truth = None
    if eval_field:
        truth = docs[eval_field].cast(pl.String)
    for name, n_latents, k, sil, assign in comp:
        ari = nmi = None
        if truth is not None:
            ok = truth.is_not_null().to_numpy()
            t = truth.filter(pl.Series(ok)).to_list()
            ari = float(adjusted_rand_score(t, assign[ok]))
            nmi = float(normalized_mutual_info_score(t, assign[ok]))
        rows.append((name, n_latents, k, sil, eval_field, ari, nmi))
    return pl.DataFrame(rows, orient="row", schema={
        "clustering": pl.String, "n_latents": pl.Int64, "k": pl.Int64, "silhouette": pl.Float64,
        "field": pl.String, "ari": pl.Float64, "nmi": pl.Float64})


def umap_xy(F: sparse.csr_matrix, seed: int = 0) -> np.ndarray:
    """(n_docs, 2) UMAP coordinates of unit-length feature rows (Euclidean on unit rows is
    cosine, and stays defined for the all-zero rows); n_neighbors = min(15, n - 1)."""
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")
        import umap

        n = F.shape[0]
        reducer = umap.UMAP(n_neighbors=min(15, n - 1), n_components=2, metric="euclidean", random_state=seed,
                            init="spectral" if n > 20 else "random")
        return np.asarray(reducer.fit_transform(reduce(F, seed)), dtype=np.float64)
