"""The statistics of the analyses, vectorised over latents (numpy / scipy, no store).

Multiple testing: :func:`bh_qvalues` (Benjamini-Hochberg), and :class:`BHSelection` for
millions of p-values of which a few are shown. Two groups:
:func:`two_proportion_test` (pooled z), :func:`cmh_test` (Cochran-Mantel-Haenszel across
length strata, with the Mantel-Haenszel difference and common odds ratio),
:func:`mcnemar_exact` (paired documents), :func:`ks_from_histograms` (lengths).
Association: :func:`npmi_from_counts`, :func:`independence_pvalues` (chi-square or
Fisher for 2x2 tables), :func:`chi2_columns` (2 x K tables), :func:`spearman_columns`
and :func:`correlation_pvalues`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import sparse, special, stats

LENGTH_BINS = 5
"""Length bins (quantiles of both sides' token counts) of the length-controlled comparison."""


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values for p-values ``p`` (NaN stays NaN)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    n = int(ok.sum())
    if n == 0:
        return q
    order = np.argsort(p[ok])
    ranked = p[ok][order] * n / np.arange(1, n + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.clip(ranked, 0, 1)
    q[ok] = out
    return q



class BHSelection:
    """Benjamini-Hochberg at level ``alpha`` over many p-values, sorting only those <= ``alpha``.

    A p-value above ``alpha`` cannot be a discovery (its q is at least p), so the
    discoveries and their q-values follow from the sorted p-values <= ``alpha`` and the
    count of all (NaN excluded): for millions of pairs of which a few hundred thousand
    are that small this is a fraction of a full sort. :meth:`q` of rows that are not
    discoveries falls back to :func:`bh_qvalues` over all.
    """

    def __init__(self, p: np.ndarray, alpha: float) -> None:
        self.p = np.asarray(p, dtype=np.float64)
        self.alpha = alpha
        n = int(np.count_nonzero(~np.isnan(self.p)))
        small = np.flatnonzero(self.p <= alpha)
        self._order = small[np.argsort(self.p[small], kind="stable")]
        ranked = self.p[self._order] * n / np.arange(1, len(small) + 1)
        self._q = np.minimum.accumulate(ranked[::-1])[::-1] if len(small) else ranked
        found = np.flatnonzero(self._q <= alpha)
        self.threshold = float(self.p[self._order[found[-1]]]) if len(found) else -np.inf
        """The largest p-value that is a discovery (-inf when none is)."""

    def significant(self) -> np.ndarray:
        """Boolean mask: q <= alpha."""
        return self.p <= self.threshold

    def q(self, rows: np.ndarray) -> np.ndarray:
        """``bh_qvalues(p)[rows]``, exactly."""
        rows = np.asarray(rows, dtype=np.int64)
        if not (self.p[rows] <= self.threshold).all():
            return bh_qvalues(self.p)[rows]
        where = np.empty(len(self.p), dtype=np.int64)
        where[self._order] = np.arange(len(self._order))
        return np.clip(self._q[where[rows]], 0, 1)


class StratifiedTest(NamedTuple):
    """Cochran-Mantel-Haenszel results, one entry per latent."""

    diff: np.ndarray
    """(n_latents,) Mantel-Haenszel difference in frequency (B - A) across strata."""
    log_or: np.ndarray
    """(n_latents,) log Mantel-Haenszel common odds ratio (B vs A), cells +0.5."""
    p: np.ndarray
    """(n_latents,) CMH chi-square p-value (1 df, no continuity correction)."""


def two_proportion_test(x_a: np.ndarray, n_a: float, x_b: np.ndarray, n_b: float) -> np.ndarray:
    """Two-sided pooled two-proportion z-test of x_a/n_a vs x_b/n_b, elementwise.

    Returns p-values; 1.0 where the pooled proportion is 0 or 1 (nothing to test).
    """
    x_a = np.asarray(x_a, dtype=np.float64)
    x_b = np.asarray(x_b, dtype=np.float64)
    pooled = (x_a + x_b) / (n_a + n_b)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (x_b / n_b - x_a / n_a) / se
    p = 2 * stats.norm.sf(np.abs(z))
    return np.where(se > 0, p, 1.0)


def cmh_test(x_a: np.ndarray, n_a: np.ndarray, x_b: np.ndarray, n_b: np.ndarray) -> StratifiedTest:
    """Cochran-Mantel-Haenszel comparison of B with A across strata, for many latents.

    ``x_a``, ``x_b``: (n_latents, n_strata) active counts; ``n_a``, ``n_b``:
    (n_strata,) documents per stratum, or (n_latents, n_strata) when each row has strata
    of its own. Strata holding fewer than two documents, or documents of one side only,
    carry no information and drop out by construction (a row with none has a NaN diff).
    """
    x_a = np.asarray(x_a, dtype=np.float64)
    x_b = np.asarray(x_b, dtype=np.float64)
    n_a = np.atleast_2d(np.asarray(n_a, dtype=np.float64))
    n_b = np.atleast_2d(np.asarray(n_b, dtype=np.float64))
    n = n_a + n_b
    informative = (n_a > 0) & (n_b > 0)
    m = x_a + x_b  # active in the stratum
    with np.errstate(divide="ignore", invalid="ignore"):
        deviation = np.where(informative, x_b - n_b * m / n, 0.0)  # observed - expected active in B
        var = np.where(informative & (n > 1), n_a * n_b * m * (n - m) / (n * n * (n - 1)), 0.0)
        w = np.where(informative, n_a * n_b / n, 0.0)  # MH weights of the risk difference
        rd = np.where(informative, x_b / n_b - x_a / n_a, 0.0)
        diff = (w * rd).sum(1) / w.sum(1)
        # MH common odds ratio with Haldane's +0.5 in every cell of an informative stratum
        a, b = x_b + 0.5, n_b - x_b + 0.5
        c, d = x_a + 0.5, n_a - x_a + 0.5
        num = np.where(informative, a * d / (n + 2), 0.0).sum(1)
        den = np.where(informative, b * c / (n + 2), 0.0).sum(1)
        log_or = np.log(num / den)
        v = var.sum(1)
        chi2 = deviation.sum(1) ** 2 / v
    p = np.where(v > 0, stats.chi2.sf(chi2, 1), 1.0)
    return StratifiedTest(diff, log_or, p)


def mcnemar_exact(n_a_only: np.ndarray, n_b_only: np.ndarray) -> np.ndarray:
    """Two-sided exact McNemar p-values from discordant pair counts, elementwise.

    Under no difference, the n_a_only + n_b_only discordant pairs split like fair
    coin flips: p = min(1, 2 * P[Binomial(n, 1/2) <= min(n_a_only, n_b_only)]).
    """
    n01 = np.asarray(n_a_only, dtype=np.int64)
    n10 = np.asarray(n_b_only, dtype=np.int64)
    n = n01 + n10
    p = np.minimum(1.0, 2 * stats.binom.cdf(np.minimum(n01, n10), n, 0.5))
    return np.where(n > 0, p, 1.0)


def length_edges(lengths: np.ndarray, counts: np.ndarray, n_bins: int = LENGTH_BINS) -> list[int]:
    """Interior edges of ``n_bins`` quantile bins of a length histogram.

    ``lengths`` (n_values,) distinct token counts, ``counts`` (n_values,) documents of
    each. A document of length L falls in bin ``sum(edge <= L for edge in edges)``;
    ties can make fewer bins.
    """
    if n_bins < 2 or len(lengths) < 2:
        return []
    order = np.argsort(lengths)
    values, weights = np.asarray(lengths)[order], np.asarray(counts, dtype=np.float64)[order]
    shorter = (np.cumsum(weights) - weights) / weights.sum()  # share of documents shorter than each value
    cuts = np.searchsorted(shorter, np.arange(1, n_bins) / n_bins, side="left")
    return sorted({int(values[i]) for i in cuts if 0 < i < len(values)})


def ks_from_histograms(lengths_a: np.ndarray, counts_a: np.ndarray, lengths_b: np.ndarray,
                       counts_b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and (asymptotic) p-value from two length
    histograms (distinct values and their document counts)."""
    values = np.union1d(lengths_a, lengths_b)
    cdf = []
    for lengths, counts in ((lengths_a, counts_a), (lengths_b, counts_b)):
        per = np.zeros(len(values))
        per[np.searchsorted(values, lengths)] = counts
        cdf.append(np.cumsum(per) / per.sum())
    d = float(np.max(np.abs(cdf[0] - cdf[1])))
    n_a, n_b = float(np.sum(counts_a)), float(np.sum(counts_b))
    en = n_a * n_b / (n_a + n_b)
    return d, float(stats.kstwo.sf(d, max(1, round(en))))


def weighted_median(lengths: np.ndarray, counts: np.ndarray) -> float:
    """The median of a histogram (lower median for an even count)."""
    order = np.argsort(lengths)
    cum = np.cumsum(np.asarray(counts)[order])
    return float(np.asarray(lengths)[order][np.searchsorted(cum, (cum[-1] + 1) // 2)])


def npmi_from_counts(nij: np.ndarray, ni: np.ndarray, nj: np.ndarray, N: np.ndarray | float) -> np.ndarray:
    """Normalised PMI of pairs from counts: ln(p_ij / (p_i p_j)) / -ln p_ij; -1 when n_ij = 0, 1 when p_ij = 1."""
    nij, ni, nj = (np.asarray(a, dtype=np.float64) for a in (nij, ni, nj))
    N = np.broadcast_to(np.asarray(N, dtype=np.float64), nij.shape)
    out = np.full(nij.shape, -1.0)
    pos = nij > 0
    pij = nij[pos] / N[pos]
    pmi = np.log(nij[pos] * N[pos] / (ni[pos] * nj[pos]))
    with np.errstate(divide="ignore", invalid="ignore"):
        out[pos] = np.where(pij < 1, pmi / -np.log(pij), 1.0)
    return np.clip(out, -1.0, 1.0)


def independence_pvalues(a: np.ndarray, n1: np.ndarray, n2: np.ndarray, N: np.ndarray) -> np.ndarray:
    """Two-sided p-values of independence for 2x2 tables given (both, row total, column total, N).

    Pearson's chi-square (1 df) where every expected count is at least 5, else Fisher's
    exact test (hypergeometric tail in the observed direction, doubled, at most 1).
    """
    a, n1, n2, N = (np.asarray(x, dtype=np.float64) for x in (a, n1, n2, N))
    N = np.broadcast_to(N, a.shape)
    # the smallest of the four expected counts (row total x column total / N)
    small = np.minimum(n1, N - n1) * np.minimum(n2, N - n2) < 5 * N
    with np.errstate(divide="ignore", invalid="ignore"):
        d = N * a - n1 * n2
        den = n1 * n2 * (N - n1) * (N - n2)
        stat = np.where(den > 0, N * d * d / den, 0.0)
    p = special.erfc(np.sqrt(stat / 2))  # chi-square survival function with 1 df
    if small.any():
        k, M, n, m = a[small], N[small], n1[small], n2[small]
        upper = k >= n * m / M
        tail = np.empty_like(k)
        tail[upper] = stats.hypergeom.sf(k[upper] - 1, M[upper], n[upper], m[upper])
        tail[~upper] = stats.hypergeom.cdf(k[~upper], M[~upper], n[~upper], m[~upper])
        p[small] = np.minimum(1.0, 2 * tail)
    return p


def correlation_pvalues(rho: np.ndarray, n: int) -> np.ndarray:
    """Two-sided p-values of correlations ``rho`` over ``n`` pairs (the t approximation, n - 2 df)."""
    rho = np.asarray(rho, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = rho * np.sqrt((n - 2) / np.maximum(1e-300, 1 - rho**2))
    return 2 * stats.t.sf(np.abs(t), n - 2)


def spearman_columns(X: sparse.spmatrix, x: np.ndarray, block: int = 1024) -> np.ndarray:
    """(n_columns,) Spearman's rho of each column of |X| (n, L) with ``x`` (n,), 0 for a
    constant column; dense blocks of at most n x ``block``."""
    rx = stats.rankdata(x)
    rx = (rx - rx.mean()) / np.linalg.norm(rx - rx.mean())
    rho = np.empty(X.shape[1])
    X = sparse.csc_matrix(X)
    for start in range(0, X.shape[1], block):
        dense = np.abs(X[:, start : start + block].toarray())
        r = stats.rankdata(dense, axis=0)
        r -= r.mean(axis=0)
        norm = np.linalg.norm(r, axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            rho[start : start + dense.shape[1]] = np.where(norm > 0, (rx @ r) / norm, 0.0)
    return np.clip(rho, -1.0, 1.0)


def chi2_columns(observed: np.ndarray, n_k: np.ndarray, n_l: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Chi-square test of independence of a 2 x K table per column: ``observed`` (K, L)
    counts of "fires" per class k and column l, ``n_k`` (K,) class sizes, ``n_l`` (L,)
    column totals, ``n`` rows. Returns (statistic (L,), p (L,)) with K - 1 df."""
    E1 = np.outer(n_k, n_l) / n
    E0 = np.outer(n_k, n - n_l) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        cells = (np.where(E1 > 0, (observed - E1) ** 2 / E1, 0.0)
                 + np.where(E0 > 0, ((n_k[:, None] - observed) - E0) ** 2 / E0, 0.0))
    stat = cells.sum(axis=0)
    return stat, stats.chi2.sf(stat, len(n_k) - 1)
