"""Latents that predict a document property: the HypotheSAEs use case, without an LLM.

Given a metadata column (the *target*), fit a sparse model on latent presence (1 where
|pooled value| > ``threshold``) that keeps about ``n_latents`` latents, report how well
it predicts held-out documents, and give every latent an effect size, a p-value and a
Benjamini-Hochberg q-value:

    result = saedata.associate("run.duckdb", "reviews", "is_positive", n_latents=10)
    result.model_score                      # cross-validated AUC (binary) or R^2 (numeric)
    result.table.filter(pl.col("selected"))

- **binary** targets (bool, 0/1, or any column with two values): L1-regularised
  logistic regression, its C the smallest on a path that keeps ``n_latents`` latents;
  effects are the difference in activation frequency between the two classes and the
  log odds ratio, with a two-proportion (chi-square) test;
- **numeric** targets: the Lasso, its alpha the largest on a path that keeps
  ``n_latents`` latents; effects are Spearman's rho between presence and the target,
  and the target's mean where the latent is active and where it is not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl
from scipy import sparse, stats

from saedata.analysis.scope import documents_frame, latent_labels, latent_matrix, opened, resolve_scope
from saedata.analysis.stats import bh_qvalues, correlation_pvalues, two_proportion_test
from saedata.errors import ConfigError
from saedata.store import Store

MIN_DOCS = 10
"""Fewest documents (with a target value) to fit and cross-validate a model on."""
MIN_CLASS = 5
"""Fewest documents of each class of a binary target."""
N_PATH = 40
"""Points on the regularisation path searched for the sparsity wanted."""


@dataclass(frozen=True)
class AssociateResult:
    """Latents associated with a target column.

    ``table``: one row per latent active in at least one document, the model's chosen
    latents first (largest |coef| first), then by q-value. Columns: latent, label,
    selected, coef (in the model: log-odds (binary) or target units (numeric) per
    presence), then for a binary target freq_pos, freq_neg (activation frequency in
    each class), diff (freq_pos - freq_neg) and log_or; for a numeric one freq,
    mean_active, mean_inactive and rho (Spearman); then p and q.
    """

    table: pl.DataFrame
    model_score: float
    """Cross-validated ROC AUC (binary) or R^2 (numeric) of the sparse model."""
    kind: Literal["binary", "numeric"]
    target: str = ""
    score_name: str = ""
    positive: Any = None
    """The target value counted as 1 (binary targets)."""
    n_docs: int = 0
    penalty: float = 0.0
    """The chosen C (binary) or alpha (numeric)."""
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        n_sel = int(self.table["selected"].sum()) if self.table.height else 0
        what = f"binary target {self.target} (positive: {self.positive!r})" if self.kind == "binary" else \
            f"numeric target {self.target}"
        return (f"{what}, {self.n_docs} documents: {n_sel} latents chosen, cross-validated "
                f"{'AUC' if self.kind == 'binary' else 'R^2'} {self.model_score:.3f}")


def associate(
    store_or_path: Store | str | os.PathLike,
    dataset: str | None,
    target: str,
    *,
    n_latents: int = 10,
    threshold: float = 0.0,
    sae_id: int | None = None,
    seed: int = 0,
) -> AssociateResult:
    """Find the latents that predict metadata column ``target`` of ``dataset`` (all
    datasets of the SAE when None). Same store and seed -> the same table."""
    if n_latents < 1:
        raise ConfigError(f"--n-latents must be >= 1 (got {n_latents})")
    if threshold < 0:
        raise ConfigError(f"--threshold must be >= 0 (got {threshold:g})")
    with opened(store_or_path) as store:
        return _associate(store, dataset, target, n_latents, threshold, sae_id, seed)


def _associate(store: Store, dataset: str | None, target: str, n_latents: int, threshold: float,
               sae_id: int | None, seed: int) -> AssociateResult:
    scope = resolve_scope(store, dataset, sae_id)
    sae = scope.sae_id
    docs = documents_frame(store, scope, fields=[target]).select("doc_id", target)
    warnings: list[str] = list(scope.warnings)
    known = docs.filter(pl.col(target).is_not_null())
    if known.height < docs.height:
        warnings.append(f"{docs.height - known.height} documents have no {target!r} and are left out")
    where = " + ".join(scope.names)
    if known.height < MIN_DOCS:
        raise ConfigError(f"only {known.height} documents of {where} have a {target!r}; associate needs at least "
                          f"{MIN_DOCS}")
    kind, y, positive = _target(known[target], target, where)
    X = latent_matrix(store, scope, doc_ids=known["doc_id"].to_numpy()).active(threshold).astype(np.float64)
    X = sparse.csr_matrix(X)
    n_active = np.asarray(X.sum(0)).ravel()
    cols = np.flatnonzero(n_active > 0)
    if len(cols) == 0:
        raise ConfigError(f"no latent is active above threshold {threshold:g} in {where}")
    Xc = X[:, cols].tocsc()
    varying = np.flatnonzero(n_active[cols] < X.shape[0])
    if kind == "binary":
        coef, penalty, score = _fit_binary(Xc[:, varying], y, n_latents, seed)
        effects = _binary_effects(Xc, y)
        score_name = "cv_auc"
    else:
        coef, penalty, score = _fit_numeric(Xc[:, varying], y, n_latents, seed)
        effects = _numeric_effects(Xc, y)
        score_name = "cv_r2"
    full_coef = np.zeros(len(cols))
    full_coef[varying] = coef
    p = effects.pop("p")
    table = pl.DataFrame({
        "latent": cols.astype(np.int32),
        "selected": full_coef != 0,
        "coef": full_coef,
        **effects,
        "p": p,
        "q": bh_qvalues(p),
    })
    labels = latent_labels(store, sae).select(pl.col("latent").cast(pl.Int32), "label")
    table = table.join(labels, on="latent", how="left")
    table = (table.select(["latent", "label"] + [c for c in table.columns if c not in ("latent", "label")])
             .with_columns(_abs=pl.col("coef").abs())
             .sort(["selected", "_abs", "q", "p", "latent"], descending=[True, True, False, False, False])
             .drop("_abs"))
    return AssociateResult(table, float(score), kind, target, score_name, positive, known.height, float(penalty),
                           warnings)


def _target(col: pl.Series, target: str, where: str) -> tuple[Literal["binary", "numeric"], np.ndarray, Any]:
    """The kind of target, y as floats (0/1 for binary), and the positive value."""
    values = col.unique().sort().to_list()
    if len(values) == 1:
        raise ConfigError(f"target {target!r} is constant in {where} (every document has {values[0]!r}); "
                          "nothing to predict")
    if len(values) == 2:
        positive = values[1]
        y = (col == positive).to_numpy().astype(np.float64)
        for v in values:
            n = int((col == v).sum())
            if n < MIN_CLASS:
                raise ConfigError(f"target {target!r} has only {n} documents with value {v!r} in {where}; "
                                  f"associate needs at least {MIN_CLASS} of each")
        return "binary", y, positive
    if col.dtype == pl.Boolean:  # pragma: no cover - two values at most
        raise AssertionError
    numeric = col.cast(pl.Float64, strict=False) if col.dtype.is_numeric() or col.dtype == pl.String else None
    if numeric is None or numeric.null_count() > 0 or not np.all(np.isfinite(numeric.to_numpy())):
        raise ConfigError(f"target {target!r} has {len(values)} values in {where} and is not numeric; associate "
                          f"needs a binary or numeric target (try `saedata diff --by {target}`)")
    return "numeric", numeric.to_numpy(), None


def _fit_binary(X: sparse.csc_matrix, y: np.ndarray, n_latents: int, seed: int) -> tuple[np.ndarray, float, float]:
    """L1 logistic regression with C the smallest on a path keeping >= n_latents latents
    (the n_latents largest kept); returns (coef, C, cross-validated AUC)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.svm import l1_min_c

    def model(C: float) -> LogisticRegression:
        return LogisticRegression(l1_ratio=1.0, C=C, solver="liblinear", random_state=seed, max_iter=1000,
                                  tol=1e-6)

    c_min = l1_min_c(X, y, loss="log")
    coef, C = np.zeros(X.shape[1]), c_min
    for C in c_min * np.logspace(0.01, 3, N_PATH):
        coef = model(C).fit(X, y).coef_.ravel()
        if np.count_nonzero(coef) >= n_latents:
            break
    coef = _keep_largest(coef, n_latents)
    folds = min(5, int(min(y.sum(), len(y) - y.sum())))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    score = cross_val_score(model(C), X, y, cv=cv, scoring="roc_auc").mean()
    return coef, float(C), float(score)


def _fit_numeric(X: sparse.csc_matrix, y: np.ndarray, n_latents: int, seed: int) -> tuple[np.ndarray, float, float]:
    """Lasso with alpha the largest on a path keeping >= n_latents latents (the
    n_latents largest kept); returns (coef, alpha, cross-validated R^2)."""
    from sklearn.linear_model import Lasso
    from sklearn.model_selection import KFold, cross_val_score

    def model(alpha: float) -> Lasso:
        return Lasso(alpha=alpha, max_iter=5000, tol=1e-5, random_state=seed, selection="cyclic")

    alpha_max = float(np.max(np.abs(X.T @ (y - y.mean())))) / len(y)
    coef, alpha = np.zeros(X.shape[1]), alpha_max
    if alpha_max > 0:
        for alpha in alpha_max * np.logspace(-0.01, -3, N_PATH):
            coef = model(alpha).fit(X, y).coef_.ravel()
            if np.count_nonzero(coef) >= n_latents:
                break
    coef = _keep_largest(coef, n_latents)
    cv = KFold(n_splits=min(5, len(y) // 2), shuffle=True, random_state=seed)
    score = cross_val_score(model(alpha), X, y, cv=cv, scoring="r2").mean()
    return coef, float(alpha), float(score)


def _keep_largest(coef: np.ndarray, n: int) -> np.ndarray:
    """``coef`` with all but its ``n`` largest |values| set to 0 (ties: lower index)."""
    if np.count_nonzero(coef) <= n:
        return coef
    order = np.lexsort((np.arange(len(coef)), -np.abs(coef)))
    out = np.zeros_like(coef)
    out[order[:n]] = coef[order[:n]]
    return out


def _binary_effects(X: sparse.csc_matrix, y: np.ndarray) -> dict[str, np.ndarray]:
    pos = y == 1
    n_pos, n_neg = float(pos.sum()), float((~pos).sum())
    x_pos = np.asarray(X[pos].sum(0)).ravel()
    x_neg = np.asarray(X[~pos].sum(0)).ravel()
    log_or = np.log((x_pos + 0.5) * (n_neg - x_neg + 0.5) / ((n_pos - x_pos + 0.5) * (x_neg + 0.5)))
    return {"freq_pos": x_pos / n_pos, "freq_neg": x_neg / n_neg, "diff": x_pos / n_pos - x_neg / n_neg,
            "log_or": log_or, "p": two_proportion_test(x_neg, n_neg, x_pos, n_pos)}


def _numeric_effects(X: sparse.csc_matrix, y: np.ndarray) -> dict[str, np.ndarray]:
    """Spearman's rho of each (binary) presence column with y, vectorised.

    Presence takes two values, so its ranks are an affine map of it, and Spearman's rho
    is the Pearson correlation of presence with the ranks of y.
    """
    n = len(y)
    r = stats.rankdata(y)
    k = np.asarray(X.sum(0)).ravel()  # documents where active
    f = k / n
    sum_r = np.asarray(X.T @ r).ravel()
    sum_y = np.asarray(X.T @ y).ravel()
    cov = sum_r / n - f * r.mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = cov / np.sqrt(f * (1 - f) * r.var())
        rho = np.where(np.isfinite(rho), np.clip(rho, -1, 1), 0.0)
        mean_active = sum_y / k
        mean_inactive = np.where(k < n, (y.sum() - sum_y) / np.maximum(n - k, 1), np.nan)
    p = np.where((f > 0) & (f < 1), correlation_pvalues(rho, n), 1.0)
    return {"freq": f, "mean_active": mean_active, "mean_inactive": mean_inactive, "rho": rho, "p": p}
