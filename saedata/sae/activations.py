"""Sparsifying activation functions, one plain function each.

Every function maps pre-activations ``pre`` of shape ``(n, d_sae)`` (``pre = (x - b_dec)
W_enc + b_enc``) to codes. Functions whose output has a fixed number of active latents per
row return :class:`SparseCodes` (values and indices, ``(n, m)``); the others return dense
codes ``(n, d_sae)`` with zeros where a latent is inactive. Each docstring states the
property that defines the activation; ``tests/test_sae_activations.py`` checks it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class SparseCodes(NamedTuple):
    """Codes stored as the active latents of each row.

    ``values`` and ``indices`` are both ``(n, m)``; row ``i`` is the sum of
    ``values[i, j] * e_{indices[i, j]}``. Padding entries have value 0 (and any valid
    index), so ``m`` may exceed a row's number of active latents.
    """

    values: Tensor
    """(n, m) activation values (float)."""
    indices: Tensor
    """(n, m) latent indices (int64)."""


def relu(pre: Tensor) -> Tensor:
    """ReLU: ``z = max(0, pre)`` (dense, ``(n, d_sae)``). Trained with an L1 penalty."""
    return F.relu(pre)


def _rectangle(u: Tensor) -> Tensor:
    # K(u) = 1{-1/2 < u < 1/2}: the rectangle kernel of the straight-through estimator
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """z = relu(pre) * H(pre - theta) with the pseudo-derivative of Rajamanoharan et al. (2024)."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return F.relu(pre) * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor):  # type: ignore[override]
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad_out * ((pre > threshold) & (pre > 0)).to(pre.dtype)
        # d/dtheta [z H(z - theta)] ~= -(theta / eps) K((z - theta) / eps)
        grad_theta = (-(threshold / eps) * _rectangle((pre - threshold) / eps) * grad_out).sum(0)
        return grad_pre, grad_theta.reshape(threshold.shape), None


class _Step(torch.autograd.Function):
    """H(pre - theta) with the straight-through gradient w.r.t. theta only."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor):  # type: ignore[override]
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        # d/dtheta H(z - theta) ~= -(1 / eps) K((z - theta) / eps)
        grad_theta = (-(1.0 / eps) * _rectangle((pre - threshold) / eps) * grad_out).sum(0)
        return None, grad_theta.reshape(threshold.shape), None


def jumprelu(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """JumpReLU (Rajamanoharan et al. 2024, "Jumping Ahead"): ``z = pre * 1{pre > theta}``.

    Zero at or below the per-latent threshold ``theta`` (``(d_sae,)``, positive), identity
    above it (dense, ``(n, d_sae)``). ``relu`` is applied first, so a non-positive threshold
    behaves like SAELens (``relu(pre) * 1{pre > theta}``). The threshold gets gradients by a
    straight-through estimator with a rectangle kernel of width ``bandwidth``; ``pre``
    gets the ordinary gradient where the latent is active.
    """
    return _JumpReLU.apply(pre, threshold, bandwidth)  # type: ignore[no-any-return]


def step(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """Heaviside step ``1{pre > theta}`` (``(n, d_sae)``); its sum over latents is the L0.

    Used for JumpReLU's L0 penalty: only ``threshold`` receives a (straight-through) gradient.
    """
    return _Step.apply(pre, threshold, bandwidth)  # type: ignore[no-any-return]


def topk(pre: Tensor, k: int) -> SparseCodes:
    """TopK (Gao et al. 2024): keep the ``k`` largest pre-activations of each row, then ReLU.

    Returns exactly ``k`` entries per row (``(n, k)``); entries whose pre-activation was
    negative have value 0.
    """
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return SparseCodes(F.relu(values), indices)


def batchtopk(pre: Tensor, k: int) -> Tensor:
    """BatchTopK (Bussmann et al. 2024): keep the ``k * n`` largest positive pre-activations
    of the whole batch (``n`` rows), zero the rest (dense, ``(n, d_sae)``).

    Rows may use more or fewer than ``k`` latents; the batch mean is ``k`` whenever at least
    ``k * n`` pre-activations are positive.
    """
    n = pre.shape[0]
    flat = pre.reshape(-1)
    values, indices = flat.topk(min(k * n, flat.numel()), sorted=False)
    out = torch.zeros_like(flat).scatter(0, indices, F.relu(values))
    return out.reshape(pre.shape)


def abstopk(pre: Tensor, k: int) -> SparseCodes:
    """AbsTopK: keep the ``k`` pre-activations of largest magnitude ``|pre|`` in each row,
    with their sign (no ReLU). Returns exactly ``k`` entries per row (``(n, k)``)."""
    indices = pre.abs().topk(k, dim=-1, sorted=False).indices
    return SparseCodes(pre.gather(-1, indices), indices)


def topafa(
    pre: Tensor, x_norm: Tensor, max_k: int, dec_norm: Tensor | None = None
) -> SparseCodes:
    """Top-AFA (Lee et al. 2025, "Evaluating and Designing Sparse Autoencoders by
    Approximating Quasi-Orthogonality", arXiv 2503.24277).

    The number of active latents is chosen per row so that the L2 norm of the kept codes
    matches the *approximate feature activation* (AFA), which by the paper's theorem is the
    norm of the dense input ``||z||`` the SAE reconstructs (``x_norm``, ``(n,)``; the model
    passes ``||x * input_scale - b_dec||``). Rule (the "nearest" variant of the authors'
    reference code ``TopAFASAE``):

        f = relu(pre); sort f_j ||d_j|| in decreasing order
        C_m = sqrt(sum_{i <= m} (f_(i) ||d_(i)||)^2)          # norm of the m largest
        k   = argmin_m |C_m - x_norm| (first minimiser), 1 <= k <= max_k

    and the ``k`` largest are kept (with their ReLU values). ``dec_norm`` (``(d_sae,)``) holds
    the decoder row norms ``||d_j||``; ``None`` means unit norms. ``max_k`` caps ``k`` (the
    reference code caps at ``d_sae - 1``). Returns ``(n, m)`` codes with ``m`` the largest
    ``k`` in the batch, padded with zeros.
    """
    acts = F.relu(pre)
    scaled = acts if dec_norm is None else acts * dec_norm
    m = max(1, min(int(max_k), pre.shape[-1]))
    top_scaled, indices = scaled.topk(m, dim=-1, sorted=True)
    cumulative = top_scaled.detach().pow(2).cumsum(-1).sqrt()  # C_1 .. C_m, (n, m)
    k_row = (cumulative - x_norm.detach().unsqueeze(-1)).abs().argmin(-1) + 1  # (n,)
    m_used = int(k_row.max())
    keep = torch.arange(m_used, device=pre.device) < k_row.unsqueeze(-1)
    indices = indices[:, :m_used]
    values = acts.gather(-1, indices) * keep.to(acts.dtype)
    return SparseCodes(values, indices)


def matching_pursuit(residual: Tensor, W_dec: Tensor, steps: int, stop: float = 0.0) -> SparseCodes:
    """Matching pursuit (MP-SAE: Costa et al. 2025, "From Flat to Hierarchical: Extracting
    Sparse Representations with Matching Pursuit", arXiv 2506.03093): the encoder is the
    decoder, unrolled as ``steps`` greedy residual steps

        r_0 = x_s - b_dec
        j_t = argmax_j <r_t, d_j> / ||d_j||          the atom most aligned with the residual
        c_t = relu(<r_t, d_j>) / ||d_j||^2             its coefficient (non-negative codes)
        r_{t+1} = r_t - c_t d_j                        its contribution taken out

    so ``||r_t||`` never grows and each code explains what the earlier ones left (an atom
    may be chosen again; its coefficients add up). A row stops once its residual holds less
    than ``stop`` of its initial squared norm (adaptive sparsity; 0: always ``steps``), and
    the number of steps can change at inference without retraining. ``residual`` (n, d_in)
    is ``x_s - b_dec``; gradients reach it and ``W_dec`` through the coefficients. Returns
    ``(n, steps)`` codes (repeated atoms merged; unused slots 0).
    """
    norm2 = W_dec.pow(2).sum(-1).clamp_min(1e-12)
    norm = norm2.sqrt()
    start = residual.detach().pow(2).sum(-1)
    r = residual
    picks, coefs = [], []
    active = torch.ones(residual.shape[0], dtype=torch.bool, device=residual.device)
    for _ in range(steps):
        dots = r @ W_dec.T  # (n, d_sae)
        j = (dots.detach() / norm).argmax(-1)
        c = F.relu(dots.gather(-1, j[:, None]).squeeze(-1)) / norm2[j]
        c = c * active.to(c.dtype)
        r = r - c[:, None] * W_dec[j]
        picks.append(j)
        coefs.append(c)
        if stop > 0:
            active = active & (r.detach().pow(2).sum(-1) > stop * start)
            if not bool(active.any()):
                break
    dense = torch.zeros(residual.shape[0], W_dec.shape[0], dtype=residual.dtype, device=residual.device)
    dense = dense.scatter_add(1, torch.stack(picks, 1), torch.stack(coefs, 1))  # repeated atoms add up
    values, indices = dense.topk(len(picks), dim=-1, sorted=False)
    return SparseCodes(values, indices)


def keep_top_positive(z: Tensor, k: int) -> Tensor:
    """The Euclidean projection of each row of ``z`` (n, d_sae) onto the non-negative,
    at-most-``k``-sparse vectors: its ``k`` largest entries, ReLU'd, the rest zero (dense)."""
    values, indices = z.topk(min(k, z.shape[-1]), dim=-1, sorted=False)
    return torch.zeros_like(z).scatter(-1, indices, F.relu(values))


def _k_sparse_decode(z: Tensor, k: int, W_dec: Tensor) -> Tensor:
    """``z W_dec`` for rows ``z`` (n, d_sae) with at most ``k`` non-zeros, through their
    non-zeros only (n, d_in)."""
    from saedata.sae.kernels import sparse_decode

    values, indices = z.topk(min(k, z.shape[-1]), dim=-1, sorted=False)
    return sparse_decode(indices, values, W_dec)


def snmf(pre: Tensor, residual: Tensor, W_dec: Tensor, k: int, steps: int, lipschitz: float) -> SparseCodes:
    """Codes of a semi-NMF dictionary (:mod:`saedata.sae.snmf`): non-negative, at most
    ``k`` per row, fitted to reconstruct ``residual`` r (n, d_in) from the rows of ``W_dec``
    by projected gradient descent on ``f(z) = ||r - z W_dec||^2`` over those codes:

        z_0     = a P_k(pre)                          pre = r W_enc + b_enc: the projections,
                                                      a >= 0 the best scale (f(z_0) <= f(0))
        g       = (z_t W_dec - r) W_dec^T
        z_{t+1} = the better of P_k(z_t - g / L)      L = ||W_dec||_2^2 (``lipschitz``)
                            and P_k(z_t - m g)        m = ||g_S||^2 / ||g_S W_dec||^2, the exact
                                                      step along g on z_t's support S

    ``P_k`` (:func:`keep_top_positive`) keeps the ``k`` largest positive entries. The first
    candidate is iterative hard thresholding (Blumensath and Davies 2008) with codes kept
    non-negative as semi-NMF keeps them: it minimises a quadratic that lies above ``f`` and
    touches it at ``z_t``, so it cannot raise ``f``; the second, the normalised step of
    Blumensath and Davies (2010), goes much further when the decoder's rows are correlated
    (large ``L``). Each row takes the better, so no step raises a row's error. Returns
    ``(n, k)`` codes (zeros where fewer than ``k`` are positive)."""
    z = keep_top_positive(pre, k)
    zd = _k_sparse_decode(z, k, W_dec)
    scale = ((residual * zd).sum(-1) / zd.pow(2).sum(-1).clamp_min(1e-30)).clamp_min(0).unsqueeze(-1)
    z, zd = z * scale, zd * scale
    for _ in range(steps):
        grad = (zd - residual) @ W_dec.T
        g_s = grad * (z > 0).to(grad.dtype)
        curv = _k_sparse_decode(g_s, k, W_dec).pow(2).sum(-1, keepdim=True)
        step = torch.where(curv > 0, g_s.pow(2).sum(-1, keepdim=True) / curv.clamp_min(1e-30),
                           torch.full_like(curv, 1.0 / lipschitz))
        safe = keep_top_positive(z - grad / lipschitz, k)
        fast = keep_top_positive(z - step * grad, k)
        safe_d, fast_d = _k_sparse_decode(safe, k, W_dec), _k_sparse_decode(fast, k, W_dec)
        take_fast = ((fast_d - residual).pow(2).sum(-1) <= (safe_d - residual).pow(2).sum(-1)).unsqueeze(-1)
        z, zd = torch.where(take_fast, fast, safe), torch.where(take_fast, fast_d, safe_d)
    values, indices = z.topk(min(k, z.shape[-1]), dim=-1, sorted=False)
    return SparseCodes(values, indices)


ACTIVATION_FNS: dict[str, Callable[..., Any]] = {
    "relu": relu,
    "jumprelu": jumprelu,
    "topk": topk,
    "batchtopk": batchtopk,
    "abstopk": abstopk,
    "topafa": topafa,
    "mp": matching_pursuit,
    "snmf": snmf,
}
"""Activation name (as in ``SAEConfig.activation``) -> function."""
