"""Probes of representations: out-of-distribution scores, concept purity, linear probes.

Following "Probing the Representational Power of Sparse Autoencoders in Vision Models",
these compare an SAE's codes with the dense embedding they were computed from:

* :func:`ood_scores` / :func:`ood_auroc`: how far test rows lie from the in-distribution
  training rows, from the SAE's reconstruction error and its codes;
* :func:`concept_purity` / :func:`compare_purity`: per latent, the label entropy of its
  top-activating rows and the best single-latent AUROC for any class, against the raw
  embedding dimensions;
* :func:`linear_probe`: cross-validated accuracy of a logistic regression on any features;
* :func:`sae_concepts`: each SAE latent's frequency, top rows and dominant class.

The functions over arrays (numpy, or scipy sparse for codes) take codes from anywhere;
:func:`probe_dataset` and :func:`probe_ood` feed them a stored dataset's codes and its
dense embedding (the mean of its reader activations at the SAE's layer, which the API's
``models`` compute: an analysis never loads a reader itself).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import polars as pl
from scipy import sparse

from saedata.analysis.scope import Models, documents_frame, latent_matrix, opened, resolve_scope
from saedata.errors import ConfigError, DimensionMismatchError
from saedata.store import Store

# ------------------------------------------------------------------ helpers


def as_matrix(X: Any, what: str = "data", dtype: Any = np.float64, d_in: int | None = None,
              owner: str = "the model") -> np.ndarray:
    """``X`` (numpy, torch or scipy sparse) as a contiguous 2-D ``dtype`` array, checked:
    DimensionMismatchError when it is not 2-D or not ``d_in`` wide, ConfigError when it has
    no rows or holds NaN or infinite values (each naming ``what``)."""
    if sparse.issparse(X):
        X = X.toarray()
    elif hasattr(X, "detach"):
        X = X.detach().cpu().numpy()
    arr = np.ascontiguousarray(np.asarray(X, dtype=dtype))
    if arr.ndim != 2:
        raise DimensionMismatchError(f"{what} must be 2-D (n_rows, n_columns), got shape {arr.shape}")
    if d_in is not None and arr.shape[1] != d_in:
        raise DimensionMismatchError(f"{what} has {arr.shape[1]} columns, but {owner} expects d_in={d_in}")
    if arr.shape[0] == 0:
        raise ConfigError(f"{what} has no rows")
    if not np.isfinite(arr).all():
        raise ConfigError(f"{what} contains NaN or infinite values")
    return arr


def _labels(y: Any, n: int, what: str = "labels") -> np.ndarray:
    arr = np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ConfigError(f"{what} must be 1-D with one entry per row ({n}), got shape {arr.shape}")
    return arr


def _auroc_rank(ranks: np.ndarray, positive: np.ndarray) -> float:
    """AUROC of a score whose (average, 1-based) ranks are ``ranks``, for the bool ``positive``."""
    n_pos = int(positive.sum())
    n_neg = positive.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Mann-Whitney U of the positives, normalised: P(score_pos > score_neg) + 0.5 P(tie)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# -------------------------------------------------------------- OOD detection


class OODScores(NamedTuple):
    """Out-of-distribution scores of test rows; higher = more unusual."""

    score: np.ndarray
    """(n_test,) ``recon_error / median_train(recon_error) + code_distance / median_train(code_distance)``."""
    recon_error: np.ndarray
    """(n_test,) relative reconstruction error ``||x - x^||^2 / ||x - mean_train||^2`` of the SAE."""
    code_distance: np.ndarray
    """(n_test,) ``1 - mean cosine`` of the row's code to its ``k`` nearest training codes."""


def ood_score_parts(
    codes_train: Any,
    codes_test: Any,
    recon_error_train: np.ndarray | None = None,
    recon_error_test: np.ndarray | None = None,
    k: int = 10,
) -> OODScores:
    """OOD scores from codes (n, d_sae) (dense or sparse) and, optionally, reconstruction errors.

    The code term is the k-nearest-neighbour cosine distance of Sun et al. (2022) in code
    space: ``1 - mean of the k largest cosines`` to the training codes (a training row
    leaves itself out). Both terms are divided by their median over the training rows, so
    they count equally; without reconstruction errors the score is the code term alone.
    """
    A = _unit_rows(codes_train, "codes_train")
    B = _unit_rows(codes_test, "codes_test")
    if A.shape[1] != B.shape[1]:
        raise ConfigError(f"codes_train has {A.shape[1]} columns but codes_test has {B.shape[1]}")
    k = max(1, min(k, A.shape[0] - 1))
    d_train = _knn_distance(A, A, k, leave_one_out=True)
    d_test = _knn_distance(B, A, k, leave_one_out=False)
    score = d_test / max(float(np.median(d_train)), 1e-12)
    if recon_error_test is not None:
        e_test = np.asarray(recon_error_test, dtype=np.float64)
        e_train = np.asarray(recon_error_train if recon_error_train is not None else e_test, dtype=np.float64)
        score = score + e_test / max(float(np.median(e_train)), 1e-12)
    else:
        e_test = np.full(B.shape[0], np.nan)
    return OODScores(score=score, recon_error=e_test, code_distance=d_test)


def _unit_rows(X: Any, what: str) -> np.ndarray:
    arr = as_matrix(X, what)
    norm = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.maximum(norm, 1e-12)


def _knn_distance(Q: np.ndarray, R: np.ndarray, k: int, leave_one_out: bool, chunk: int = 2048) -> np.ndarray:
    out = np.empty(Q.shape[0])
    for s in range(0, Q.shape[0], chunk):
        sim = Q[s : s + chunk] @ R.T
        if leave_one_out:
            idx = np.arange(s, min(s + chunk, Q.shape[0]))
            sim[idx - s, idx] = -np.inf
        top = -np.partition(-sim, k - 1, axis=1)[:, :k]
        out[s : s + chunk] = 1.0 - top.mean(axis=1)
    return out


def ood_scores(sae: Any, X_in_train: Any, X_test: Any, k: int = 10, batch_size: int = 4096) -> OODScores:
    """OOD scores of ``X_test`` (n_test, d_in) against in-distribution rows ``X_in_train`` (n, d_in).

    ``sae`` is a :class:`~saedata.sae.model.SparseAutoencoder` trained on in-distribution
    data. The score adds two terms, each divided by its median over ``X_in_train``:
    the relative reconstruction error ``||x - x^||^2 / ||x - mean||^2`` (mean of
    ``X_in_train``) and the k-NN cosine distance of the row's SAE code to the training
    codes (see :func:`ood_score_parts`).
    """
    import torch

    mean = as_matrix(X_in_train, "X_in_train").mean(0)

    def run(X: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
        arr = as_matrix(X, what).astype(np.float32)
        if arr.shape[1] != sae.d_in:
            raise ConfigError(f"{what} has {arr.shape[1]} columns but the SAE expects d_in={sae.d_in}")
        codes, errs = [], []
        with torch.no_grad():
            for s in range(0, arr.shape[0], batch_size):
                x = torch.from_numpy(arr[s : s + batch_size]).to(sae.device)
                z = sae.encode(x)
                recon = sae.decode(z)
                num = (recon - x).pow(2).sum(-1)
                den = (x - torch.from_numpy(mean).to(x)).pow(2).sum(-1).clamp_min(1e-12)
                codes.append(z.float().cpu().numpy())  # an SAE may compute in bf16, which numpy lacks
                errs.append((num / den).float().cpu().numpy())
        return np.concatenate(codes), np.concatenate(errs)

    c_train, e_train = run(X_in_train, "X_in_train")
    c_test, e_test = run(X_test, "X_test")
    return ood_score_parts(c_train, c_test, e_train, e_test, k=k)


def ood_auroc(scores: Any, is_out: Any) -> float:
    """AUROC of ``scores`` (n,) for telling out-of-distribution rows (``is_out`` true) apart; 0.5 = chance."""
    s = np.asarray(getattr(scores, "score", scores), dtype=np.float64)
    out = _labels(is_out, s.shape[0], "is_out").astype(bool)
    if out.all() or not out.any():
        raise ConfigError("is_out must mark at least one in-distribution and one out-of-distribution row")
    from scipy.stats import rankdata

    return _auroc_rank(rankdata(s), out)


# ------------------------------------------------------------- concept purity


def concept_purity(codes: Any, labels: Any, signed: bool = False, top: int | None = None) -> pl.DataFrame:
    """Per column of ``codes`` (n, d) (dense or scipy sparse), how purely it marks one label.

    Returns one row per column: ``latent``, ``n_active`` (rows with a non-zero value),
    ``entropy`` (nats, in [0, log n_classes]: the label entropy of the column's top
    ``m = min(n_active, top)`` rows by value; ``top`` defaults to ``ceil(n / n_classes)``, the
    size of an average class), ``best_class`` and ``best_auroc`` (the class whose rows the
    column's value ranks best, and that AUROC). Columns that never fire have null entropy
    and class and AUROC 0.5.

    ``signed=True`` scores each column on both signs and keeps the better one (``sign`` column
    +1/-1), for dense embedding dimensions that can mark a class by low values.
    """
    from scipy.stats import rankdata

    y = _labels(labels, codes.shape[0])
    classes, y_idx = np.unique(y, return_inverse=True)
    n, C = y.shape[0], classes.shape[0]
    if C < 2:
        raise ConfigError("concept purity needs at least two distinct labels")
    m_top = top if top is not None else math.ceil(n / C)
    csc = sparse.csc_matrix(codes) if sparse.issparse(codes) else None
    dense = None if csc is not None else as_matrix(codes, "codes")
    onehot = y_idx[None, :] == np.arange(C)[:, None]  # (C, n)

    rows: dict[str, list] = {k: [] for k in ("latent", "n_active", "entropy", "best_class", "best_auroc", "sign")}
    for j in range(codes.shape[1]):
        col = csc[:, j].toarray().ravel().astype(np.float64) if csc is not None else dense[:, j]
        n_active = int(np.count_nonzero(col))
        best = (float("nan"), None, 1, float("nan"))  # auroc, class, sign, entropy
        if n_active:
            for sign in ((1, -1) if signed else (1,)):
                v = sign * col
                ranks = rankdata(v)
                aucs = [_auroc_rank(ranks, onehot[c]) for c in range(C)]
                c_best = int(np.nanargmax(aucs))
                if not best[0] >= aucs[c_best]:
                    m = max(1, min(n_active, m_top))
                    top_rows = np.argsort(-v, kind="stable")[:m]
                    p = np.bincount(y_idx[top_rows], minlength=C) / m
                    ent = float(-(p[p > 0] * np.log(p[p > 0])).sum())
                    best = (aucs[c_best], classes[c_best], sign, ent)
        rows["latent"].append(j)
        rows["n_active"].append(n_active)
        rows["entropy"].append(None if not n_active else best[3])
        rows["best_class"].append(None if best[1] is None else str(best[1]))
        rows["best_auroc"].append(0.5 if not n_active else best[0])
        rows["sign"].append(best[2])
    df = pl.DataFrame(rows, schema={"latent": pl.Int64, "n_active": pl.Int64, "entropy": pl.Float64,
                                    "best_class": pl.Utf8, "best_auroc": pl.Float64, "sign": pl.Int8})
    return df if signed else df.drop("sign")


def best_per_class(codes: Any, labels: Any, signed: bool = False) -> pl.DataFrame:
    """For each class, the single column of ``codes`` whose value best ranks its rows:
    ``class``, ``n`` (rows of the class), ``best_latent``, ``auroc``."""
    from scipy.stats import rankdata

    y = _labels(labels, codes.shape[0])
    classes, y_idx = np.unique(y, return_inverse=True)
    csc = sparse.csc_matrix(codes) if sparse.issparse(codes) else None
    dense = None if csc is not None else as_matrix(codes, "codes")
    best = np.full(classes.shape[0], 0.5)
    arg = np.full(classes.shape[0], -1)
    for j in range(codes.shape[1]):
        col = csc[:, j].toarray().ravel().astype(np.float64) if csc is not None else dense[:, j]
        if not np.any(col):
            continue
        for sign in ((1, -1) if signed else (1,)):
            ranks = rankdata(sign * col)
            for c in range(classes.shape[0]):
                a = _auroc_rank(ranks, y_idx == c)
                if a > best[c]:
                    best[c], arg[c] = a, j
    return pl.DataFrame({"class": [str(c) for c in classes], "n": np.bincount(y_idx).tolist(),
                         "best_latent": arg.tolist(), "auroc": best.tolist()})


class PurityComparison(NamedTuple):
    """Concept purity of SAE latents against the raw embedding dimensions."""

    latents: pl.DataFrame
    """:func:`concept_purity` of the SAE codes (one-sided: a latent marks a class by firing)."""
    raw: pl.DataFrame
    """:func:`concept_purity` of the embedding dimensions, each on its better sign."""
    per_class: pl.DataFrame
    """class, n, sae_latent, sae_auroc, raw_dim, raw_auroc: the best single column per class."""
    summary: pl.DataFrame
    """One row each for "sae" and "raw": columns, used (ever non-zero), median_entropy and
    median_best_auroc over used columns, mean_class_auroc (mean over classes of the best
    single-column AUROC), max_entropy (= log n_classes, the entropy of a uniform label mix)."""


def compare_purity(codes: Any, embedding: Any, labels: Any) -> PurityComparison:
    """Concept purity of SAE ``codes`` (n, d_sae) against the dense ``embedding`` (n, d) they encode."""
    y = _labels(labels, codes.shape[0])
    if embedding.shape[0] != codes.shape[0]:
        raise ConfigError(f"codes have {codes.shape[0]} rows but the embedding has {embedding.shape[0]}")
    lat = concept_purity(codes, y)
    raw = concept_purity(embedding, y, signed=True)
    pc_sae = best_per_class(codes, y)
    pc_raw = best_per_class(embedding, y, signed=True)
    per_class = pc_sae.rename({"best_latent": "sae_latent", "auroc": "sae_auroc"}).with_columns(
        raw_dim=pc_raw["best_latent"], raw_auroc=pc_raw["auroc"])
    n_classes = np.unique(y).shape[0]

    def summarise(name: str, df: pl.DataFrame, pc: pl.DataFrame) -> dict[str, Any]:
        used = df.filter(pl.col("n_active") > 0)
        return {"features": name, "columns": df.height, "used": used.height,
                "median_entropy": used["entropy"].median() if used.height else None,
                "median_best_auroc": used["best_auroc"].median() if used.height else None,
                "mean_class_auroc": float(pc["auroc"].mean()), "max_entropy": math.log(n_classes)}

    summary = pl.DataFrame([summarise("sae", lat, pc_sae), summarise("raw", raw, pc_raw)])
    return PurityComparison(latents=lat, raw=raw, per_class=per_class, summary=summary)


# --------------------------------------------------------------- linear probe


class ProbeScore(NamedTuple):
    """Cross-validated accuracy of a linear probe."""

    mean: float
    """Mean accuracy over the folds, in [0, 1]."""
    std: float
    """Standard deviation of the fold accuracies."""


def linear_probe(X: Any, y: Any, cv: int = 5, seed: int = 0, C: float = 1.0, max_iter: int = 2000) -> ProbeScore:
    """Accuracy of a standardised logistic regression predicting ``y`` from ``X`` (n, d), by
    stratified ``cv``-fold cross-validation (shuffled with ``seed``; scikit-learn).

    ``X`` may be scipy sparse (then scaled without centring, keeping it sparse). Columns
    that are constant (e.g. dead latents) carry no information and are harmless.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    is_sparse = sparse.issparse(X)
    feats = sparse.csr_matrix(X, dtype=np.float64) if is_sparse else as_matrix(X, "X")
    if feats.shape[1] == 0:
        raise ConfigError("the linear probe needs at least one feature column")
    labels = _labels(y, feats.shape[0])
    _, counts = np.unique(labels, return_counts=True)
    if counts.shape[0] < 2:
        raise ConfigError("the linear probe needs at least two distinct labels")
    folds = min(cv, int(counts.min()))
    if folds < 2:
        raise ConfigError(f"every label needs at least 2 rows for cross-validation; the rarest has {counts.min()}")
    model = make_pipeline(StandardScaler(with_mean=not is_sparse), LogisticRegression(C=C, max_iter=max_iter))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with _blas_threads(feats.shape[0] * feats.shape[1]):
        acc = cross_val_score(model, feats, labels, cv=splitter, n_jobs=1)
    return ProbeScore(mean=float(acc.mean()), std=float(acc.std()))


def _blas_threads(size: int):
    """One BLAS thread for small problems (below 1e7 entries): the solver's many tiny products
    lose far more to thread hand-offs than they gain, by 50x on a busy 2-core machine."""
    import contextlib

    if size >= 10_000_000:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


# ------------------------------------------------------------ SAE concepts


def sae_concepts(codes: Any, labels: Any = None, ids: list[str] | None = None, top: int = 5) -> pl.DataFrame:
    """What each latent of SAE ``codes`` (n, d_sae) fires on, most frequent latents first.

    Columns: ``latent``, ``freq`` (share of rows where it fires), ``max_act``,
    ``top_rows`` (the ids, or row numbers, of its ``top`` strongest rows), and with labels
    ``top_class`` (the commonest label among its ``m = min(n_active, ceil(n / n_classes))``
    strongest rows, as in :func:`concept_purity`) with ``class_share`` (that label's share of
    those rows). Dead latents are left out.
    """
    Z = np.abs(as_matrix(codes, "codes"))
    n = Z.shape[0]
    names = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
    if len(names) != n:
        raise ConfigError(f"ids has {len(names)} entries but codes have {n} rows")
    y = None if labels is None else _labels(labels, n)
    classes, y_idx = (np.unique(y, return_inverse=True) if y is not None else (None, None))
    rows = []
    for j in np.flatnonzero(Z.max(0) > 0):
        col = Z[:, j]
        order = np.argsort(-col, kind="stable")[: min(top, int(np.count_nonzero(col)))]
        row: dict[str, Any] = {"latent": int(j), "freq": float(np.count_nonzero(col) / n),
                               "max_act": float(col.max()), "top_rows": [names[i] for i in order]}
        if y is not None:
            m = max(1, min(int(np.count_nonzero(col)), math.ceil(n / classes.shape[0])))
            counts = np.bincount(y_idx[np.argsort(-col, kind="stable")[:m]], minlength=classes.shape[0])
            row["top_class"] = str(classes[int(counts.argmax())])
            row["class_share"] = float(counts.max() / m)
        rows.append(row)
    if not rows:
        return pl.DataFrame(schema={"latent": pl.Int64, "freq": pl.Float64, "max_act": pl.Float64,
                                    "top_rows": pl.List(pl.Utf8)})
    return pl.DataFrame(rows).sort(["freq", "latent"], descending=[True, False])


# -------------------------------------------------------------- stored datasets


@dataclass(frozen=True)
class ProbeReport:
    """SAE codes vs dense embedding on one labelled dataset."""

    dataset: str
    label_field: str
    n_docs: int
    n_classes: int
    codes_accuracy: float
    codes_accuracy_std: float
    dense_accuracy: float
    dense_accuracy_std: float
    purity: pl.DataFrame
    """Per SAE latent: n_active, entropy, best_class, best_auroc (from compare_purity)."""
    per_class: pl.DataFrame
    """Per class: the best single SAE latent and the best single raw dimension, with AUROCs."""
    summary: pl.DataFrame
    """Median label entropy and best single-feature AUROC: SAE latents vs raw dimensions."""

    def table(self) -> pl.DataFrame:
        """One row per representation (SAE codes, dense embedding): probe accuracy and its
        spread, median best AUROC, mean class AUROC, median entropy."""
        return pl.DataFrame({
            "features": ["sae codes", "dense embedding"],
            "probe_accuracy": [self.codes_accuracy, self.dense_accuracy],
            "accuracy_std": [self.codes_accuracy_std, self.dense_accuracy_std],
            "median_best_auroc": self.summary["median_best_auroc"].to_list(),
            "mean_class_auroc": self.summary["mean_class_auroc"].to_list(),
            "median_entropy": self.summary["median_entropy"].to_list(),
        })


def probe_dataset(store_or_path: Store | str | os.PathLike, dataset: str, label_field: str, *, models: Models,
                  cv: int = 5, seed: int = 0) -> ProbeReport:
    """Linear-probe accuracy and concept purity of a dataset's stored SAE codes vs its
    dense embedding (``models.document_vectors``: the mean reader activation at the SAE's
    layer, the vector the codes decompose)."""
    with opened(store_or_path) as store:
        scope = resolve_scope(store, dataset)
        docs = documents_frame(store, scope, fields=[label_field])
        labels = docs[label_field].cast(pl.String).to_numpy()
        n_classes = len(set(labels.tolist()))
        if n_classes < 2:
            raise ConfigError(f"column {label_field!r} of {dataset!r} has {n_classes} class; a probe needs two")
        counts = np.unique(labels, return_counts=True)[1]
        if counts.min() < cv:
            raise ConfigError(f"the smallest class of {label_field!r} has {counts.min()} documents; "
                              f"{cv}-fold cross-validation needs at least {cv}")
        codes = latent_matrix(store, scope, doc_ids=docs["doc_id"].to_numpy()).X
        dense = models.document_vectors(scope.sae_id, docs["text"].to_list())
    a_codes = linear_probe(codes, labels, cv=cv, seed=seed)
    a_dense = linear_probe(dense, labels, cv=cv, seed=seed)
    purity = compare_purity(codes, dense, labels)
    return ProbeReport(dataset, label_field, docs.height, n_classes, a_codes.mean, a_codes.std,
                       a_dense.mean, a_dense.std, purity.latents, purity.per_class, purity.summary)


@dataclass(frozen=True)
class OODReport:
    in_dataset: str
    out_dataset: str
    auroc: float
    """AUROC of the OOD score telling out-dataset documents from held-out in-dataset ones."""
    auroc_recon_only: float
    auroc_codes_only: float
    n_train: int
    n_test_in: int
    n_test_out: int

    def table(self) -> pl.DataFrame:
        """The AUROC of the score and of each of its two terms, with the test sizes."""
        return pl.DataFrame({"score": ["codes + reconstruction", "reconstruction error", "code distance"],
                             "auroc": [self.auroc, self.auroc_recon_only, self.auroc_codes_only],
                             "n_test_in": [self.n_test_in] * 3, "n_test_out": [self.n_test_out] * 3})


def probe_ood(store_or_path: Store | str | os.PathLike, in_dataset: str, out_dataset: str, *, models: Models,
              holdout: float = 0.3, seed: int = 0) -> OODReport:
    """How well the SAE tells ``out_dataset`` documents from unseen ``in_dataset`` ones.

    The in-dataset is split (seeded) into reference rows and held-out rows; each
    held-out and out-of-distribution document gets the score of
    :func:`~saedata.analysis.probe.ood_scores` (SAE reconstruction error of its dense
    embedding + k-NN cosine distance of its code), and the AUROC is reported for the
    score and for each of its two terms alone.
    """
    with opened(store_or_path) as store:
        sae_id = resolve_scope(store, [in_dataset, out_dataset]).sae_id
        docs_in = documents_frame(store, resolve_scope(store, in_dataset), fields=[])
        docs_out = documents_frame(store, resolve_scope(store, out_dataset), fields=[])
        if docs_in.height < 10:
            raise ConfigError(f"dataset {in_dataset!r} has {docs_in.height} documents; OOD needs at least 10")
        E_in = models.document_vectors(sae_id, docs_in["text"].to_list())
        E_out = models.document_vectors(sae_id, docs_out["text"].to_list())
    sae = models.sae(sae_id)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(E_in))
    n_test = max(1, int(round(holdout * len(E_in))))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    X_test = np.concatenate([E_in[test_idx], E_out])
    is_out = np.r_[np.zeros(len(test_idx), bool), np.ones(len(E_out), bool)]
    scores = ood_scores(sae, E_in[train_idx], X_test)
    return OODReport(in_dataset, out_dataset, ood_auroc(scores.score, is_out),
                     ood_auroc(scores.recon_error, is_out), ood_auroc(scores.code_distance, is_out),
                     len(train_idx), len(test_idx), len(E_out))
