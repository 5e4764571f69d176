"""Evaluating an SAE on held-out activations: reconstruction, sparsity, quasi-orthogonality
and concept separability, accumulated batch by batch (no (tokens, d_sae) matrix is ever
made).

Per SAE, over n tokens x_t (original units) with codes f_t and reconstructions x^_t:

    FVU        = sum_t ||x_t - x^_t||^2 / sum_t ||x_t - mean(x)||^2   (metrics.fvu over the whole
                 set; the denominator merged over batches with Chan et al.'s update)
    L0_t       = #{j : f_tj != 0};  reported: mean, std, p10, p90 over tokens
    dead       = fraction of latents with no non-zero code on any of the n tokens
    dense      = fraction of latents non-zero on more than DENSE_RATE of the tokens
    AFA ratio  = mean_t ||f~_t|| / ||z_t||;  eps_LBO = max_t eps_t   (metrics.afa_ratio,
                 metrics.epsilon_lbo, with z = x * input_scale and b_dec as an atom, as afa_score)
    coherence  = max and mean |cos(d_i, d_j)| over decoder rows i != j (metrics.decoder_coherence)

Concept separability (Fereidouni et al. 2025, "Evaluating Sparse Autoencoders for
Monosemantic Representation"): documents labelled with one value of a categorical field;
for concept c and latent j, P = the histogram of j's max-pooled activation over documents
with c, Q = over labelled documents without c, on the same bins (a bin for exactly 0, then
B equal bins over [min(0, lo_j), max(0, hi_j)], lo_j and hi_j latent j's extreme pooled
values; B = round(sqrt(smallest group)) clamped to [2, JS_BINS]), and

    JS(P, Q)   = sqrt( 1/2 KL(P || M) + 1/2 KL(Q || M) ),  M = (P + Q) / 2, logs base 2

the Jensen-Shannon distance, in [0, 1]: 0 for identical distributions, 1 for disjoint ones
(a latent that fires on every document with c and on none without). Each concept is
scored by its best latent; the SAE by the mean of those over concepts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from saedata.sae.activations import SparseCodes
from saedata.sae.metrics import afa_terms, dead_fraction, decoder_coherence, fire_counts

if TYPE_CHECKING:
    from saedata.sae.model import SparseAutoencoder

DENSE_RATE = 0.1
"""A latent is dense when it fires on more than this fraction of the tokens."""
JS_BINS = 16
"""Most bins of non-zero pooled values per latent (the zero bin comes on top). Fewer when
the smallest group of documents is small: ``round(sqrt(n))`` bins, at least 2, so that
sampling noise alone does not make two histograms of the same distribution look apart."""


class SAEMetrics(NamedTuple):
    """Token-level evaluation of one SAE (see the module docstring for the formulas)."""

    n_tokens: int
    fvu: float
    l0: float
    """Mean active latents per token."""
    l0_std: float
    l0_p10: float
    l0_p90: float
    dead: float
    """Fraction of latents that never fired on the tokens."""
    dense: float
    """Fraction of latents that fired on more than ``DENSE_RATE`` of the tokens."""
    afa_ratio: float
    """Mean ||f~|| / ||z||: 1 = codes norm-matched to the input."""
    epsilon_lbo: float
    """Largest per-token lower bound on the decoder's quasi-orthogonality (NaN if none)."""
    coherence_max: float
    """Largest |cos| between two decoder rows."""
    coherence_mean: float
    """Mean |cos| between two decoder rows."""


class SAEEvaluator:
    """Accumulates :class:`SAEMetrics` of ``sae`` over batches of activations.

        ev = SAEEvaluator(sae)
        for x in batches:            # (n, d_in), the reader's units
            codes = ev.update(x)     # the batch's codes, for whoever pools them
        metrics = ev.result()
    """

    def __init__(self, sae: SparseAutoencoder, dense_rate: float = DENSE_RATE):
        self.sae = sae
        self.dense_rate = dense_rate
        d_sae = sae.d_sae
        self.W_dec = sae.W_dec.detach().float()
        self.b_dec = sae.b_dec.detach().float()
        self.dec_norm = self.W_dec.norm(dim=1)
        self.fires = torch.zeros(d_sae, dtype=torch.int64, device=sae.device)
        self.l0_hist = torch.zeros(d_sae + 1, dtype=torch.int64, device=sae.device)
        self.n = 0
        self.mean = torch.zeros(sae.d_in, dtype=torch.float64, device=sae.device)
        self.m2 = 0.0  # sum_t ||x_t - mean||^2 so far
        self.err = 0.0  # sum_t ||x_t - x^_t||^2
        self.ratio_sum = 0.0
        self.eps_max = float("nan")

    @torch.inference_mode()
    def update(self, x: Tensor) -> SparseCodes:
        """Encode and decode the batch ``x`` (n, d_in), add it to the totals; returns its
        codes (normalised units, float32)."""
        sae = self.sae
        x = x.to(sae.device, torch.float32)
        codes = sae.encode_sparse(x)
        recon = sae.decode_sparse(codes).float()
        codes = SparseCodes(codes.values.float(), codes.indices)
        n = x.shape[0]
        if n == 0:
            return codes
        # FVU: squared error, and the spread about the running mean merged batch by batch
        self.err += float(torch.nn.functional.mse_loss(recon, x, reduction="sum"))
        batch_var, batch_mean = torch.var_mean(x, 0, correction=0)
        batch_m2 = float(batch_var.sum()) * n
        delta = batch_mean.double() - self.mean
        total = self.n + n
        self.m2 += batch_m2 + float(delta.pow(2).sum()) * self.n * n / total
        self.mean += delta * (n / total)
        self.n = total
        # sparsity
        active = codes.values != 0
        self.l0_hist += torch.bincount(active.sum(-1), minlength=self.l0_hist.numel())
        self.fires += fire_counts(codes, sae.d_sae)
        # AFA ratio and eps-LBO, as afa_score computes them
        ratio, eps = afa_terms(codes, x * sae.input_scale.float(), self.W_dec, self.b_dec, self.dec_norm)
        self.ratio_sum += float(ratio.sum())
        eps = eps[~torch.isnan(eps)]
        if eps.numel():
            top = float(eps.max())
            self.eps_max = top if self.eps_max != self.eps_max else max(self.eps_max, top)
        return codes

    def result(self) -> SAEMetrics:
        """The metrics over every batch so far (NaN where no token was seen)."""
        nan = float("nan")
        coherence = decoder_coherence(self.W_dec)
        if self.n == 0:
            return SAEMetrics(0, nan, nan, nan, nan, nan, nan, nan, nan, nan, *coherence)
        counts = self.l0_hist.double()
        values = torch.arange(counts.numel(), dtype=torch.float64, device=counts.device)
        mean = float((counts * values).sum()) / self.n
        var = float((counts * (values - mean).pow(2)).sum()) / self.n
        cdf = counts.cumsum(0) / self.n
        return SAEMetrics(
            n_tokens=self.n,
            fvu=self.err / max(self.m2, 1e-12),
            l0=mean,
            l0_std=var ** 0.5,
            l0_p10=_quantile(cdf, 0.1),
            l0_p90=_quantile(cdf, 0.9),
            dead=dead_fraction(self.fires),
            dense=float((self.fires > self.dense_rate * self.n).double().mean()),
            afa_ratio=self.ratio_sum / self.n,
            epsilon_lbo=self.eps_max,
            coherence_max=coherence[0],
            coherence_mean=coherence[1],
        )


def _quantile(cdf: Tensor, q: float) -> float:
    """The smallest value whose cumulative share reaches ``q`` (the lower quantile)."""
    return float(torch.searchsorted(cdf, torch.tensor([q - 1e-12], dtype=cdf.dtype, device=cdf.device))[0])


POOL_ELEMENTS = 1 << 24
"""Most (document, latent) cells :func:`max_pool` holds at once (64 MB of float32)."""


class PooledCodes(NamedTuple):
    """Non-zero document codes, one entry per (document, latent)."""

    doc: Tensor
    """(nnz,) int64 document id."""
    latent: Tensor
    """(nnz,) int64 latent."""
    value: Tensor
    """(nnz,) float32 pooled value."""


def max_pool(codes: SparseCodes, doc: Tensor, d_sae: int, max_elements: int = POOL_ELEMENTS) -> PooledCodes:
    """Max-pool token codes per document: for each document and latent, the code of largest
    magnitude over the document's tokens, its sign kept (the plain max for non-negative
    codes) -- the values embedding's max pooling stores (``saedata.embed.encode.pool_codes``,
    which also finds each peak's token; a tie between a positive and a negative code of the
    same magnitude gives the positive one here).

    ``codes`` (n, m) and ``doc`` (n,) int64, each document's rows contiguous. A dense
    (documents, d_sae) buffer is filled, at most ``max_elements`` cells at a time.
    """
    ids, local = torch.unique_consecutive(doc, return_inverse=True)
    signed = bool((codes.values < 0).any())
    step = max(1, max_elements // d_sae)
    parts = []
    for lo in range(0, ids.numel(), step):
        hi = min(ids.numel(), lo + step)
        bounds = torch.searchsorted(local, torch.tensor([lo, hi], device=local.device))
        r0, r1 = int(bounds[0]), int(bounds[1])
        key = ((local[r0:r1] - lo)[:, None] * d_sae + codes.indices[r0:r1]).reshape(-1)
        vals = codes.values[r0:r1].reshape(-1)
        size = (hi - lo) * d_sae
        top = vals.new_zeros(size).scatter_reduce_(0, key, vals, "amax")  # max(0, codes)
        if signed:
            bottom = vals.new_zeros(size).scatter_reduce_(0, key, vals, "amin")  # min(0, codes)
            top = torch.where(-bottom > top, bottom, top)
        cell = top.nonzero()[:, 0]
        parts.append((ids[lo + torch.div(cell, d_sae, rounding_mode="floor")], cell % d_sae, top[cell]))
    if not parts:
        empty = torch.zeros(0, dtype=torch.int64, device=doc.device)
        return PooledCodes(empty, empty, torch.zeros(0, device=doc.device))
    return PooledCodes(*(torch.cat(t) for t in zip(*parts)))


class Separability(NamedTuple):
    """JS separability of one SAE's latents for a set of concepts."""

    js: Tensor
    """(n_concepts, d_sae) JS distance of every latent for every concept (NaN for a
    concept with no document, or none without it)."""
    best_latent: Tensor
    """(n_concepts,) int64 latent with the largest JS distance (-1 where undefined)."""
    best_js: Tensor
    """(n_concepts,) that latent's JS distance."""
    n_with: Tensor
    """(n_concepts,) int64 labelled documents with the concept."""
    n_without: Tensor
    """(n_concepts,) int64 labelled documents without it."""


def js_distance(p: Tensor, q: Tensor) -> Tensor:
    """Jensen-Shannon distance (base 2, in [0, 1]) between histograms along the last
    dimension; each row of ``p`` and ``q`` is normalised to sum to 1 first."""
    p = p.double() / p.double().sum(-1, keepdim=True).clamp_min(1e-300)
    q = q.double() / q.double().sum(-1, keepdim=True).clamp_min(1e-300)
    m = (p + q) / 2

    def kl(a: Tensor) -> Tensor:  # sum a log2(a / m), with 0 log 0 = 0
        return torch.where(a > 0, a * torch.log2(a / m.clamp_min(1e-300)), torch.zeros_like(a)).sum(-1)

    return (0.5 * kl(p) + 0.5 * kl(q)).clamp(0.0, 1.0).sqrt()


def histogram_bins(n_with: Tensor, n_without: Tensor) -> int:
    """Non-zero bins for JS histograms: round(sqrt(n)) for the smallest non-empty group of
    documents n, within [2, JS_BINS]."""
    sizes = torch.cat([n_with, n_without])
    sizes = sizes[sizes > 0]
    if sizes.numel() == 0:
        return JS_BINS
    return int(min(JS_BINS, max(2, round(float(sizes.min()) ** 0.5))))


def js_separability(doc: Tensor, latent: Tensor, value: Tensor, doc_concept: Tensor, n_concepts: int,
                    d_sae: int, bins: int | None = None) -> Separability:
    """JS distance between each latent's pooled activations on documents with and without
    each concept (module docstring).

    ``doc``, ``latent``, ``value`` (nnz,): the non-zero pooled codes (one entry per
    document and latent); ``doc_concept`` (n_docs,) int64: the concept of each document
    (``0 .. n_concepts - 1``), -1 for a document left out (no label). A document with no
    entry for a latent has pooled value 0 there. ``bins``: non-zero bins per latent
    (default: :func:`histogram_bins`).
    """
    doc, latent, value = doc.cpu().long(), latent.cpu().long(), value.cpu().float()
    doc_concept = doc_concept.cpu().long()
    labelled = doc_concept >= 0
    n_with = torch.bincount(doc_concept[labelled], minlength=n_concepts)[:n_concepts]
    n_without = int(labelled.sum()) - n_with
    bins = bins or histogram_bins(n_with, n_without)
    concept = doc_concept[doc]
    keep = (concept >= 0) & (value != 0)
    if not bool(keep.all()):
        concept, latent, value = concept[keep], latent[keep], value[keep]
    # shared bins per latent: 0 is bin 0; non-zero values fall in 1..bins over [lo, hi]
    hi = torch.zeros(d_sae).scatter_reduce(0, latent, value, "amax")
    lo = torch.zeros(d_sae)
    if value.numel() and float(value.min()) < 0:
        lo = lo.scatter_reduce(0, latent, value, "amin")
    scale = bins / (hi - lo).clamp_min(1e-30)
    b = (value - lo[latent]).mul_(scale[latent]).floor_().clamp_(0, bins - 1).long().add_(1)
    key = concept.mul(d_sae).add_(latent).mul_(bins + 1).add_(b)
    with_c = torch.bincount(key, minlength=n_concepts * d_sae * (bins + 1)).reshape(n_concepts, d_sae, bins + 1)
    with_c = with_c.double()
    all_c = with_c.sum(0, keepdim=True)
    without_c = all_c - with_c
    with_c[..., 0] = n_with[:, None].double() - with_c[..., 1:].sum(-1)
    without_c[..., 0] = n_without[:, None].double() - without_c[..., 1:].sum(-1)
    js = js_distance(with_c, without_c).float()
    undefined = (n_with == 0) | (n_without == 0)
    js[undefined] = float("nan")
    if d_sae:
        best_js, best = torch.nan_to_num(js, nan=-1.0).max(-1)
    else:
        best_js, best = torch.full((n_concepts,), -1.0), torch.full((n_concepts,), -1, dtype=torch.int64)
    best = torch.where(undefined, torch.full_like(best, -1), best)
    best_js = torch.where(undefined, torch.full_like(best_js, float("nan")), best_js)
    return Separability(js, best, best_js, n_with, n_without)
