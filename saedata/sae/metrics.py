"""Quality metrics for sparse autoencoders: FVU, L0, dead latents, AFA / quasi-orthogonality.

Formulas (n rows, codes f, decoder rows d_j):

    FVU        = sum_n ||x_n - x^_n||^2 / sum_n ||x_n - mean(x)||^2
    L0         = mean_n #{j : f_nj != 0}
    dead       = fraction of latents that never fired (fire counts) or did not fire in the
                 last ``dead_tokens`` tokens (tokens since last fired)
    f~_n       = (f_n1 ||d_1||, ..., f_nh ||d_h||, ||b_dec||)     decoder-norm-weighted codes,
                 with the decoder bias as one more atom (as in the authors' ZF plots)
    AFA ratio  = ||f~_n|| / ||z_n||                               1 = perfectly norm-matched
    eps_n      = | ||z_n||^2 - ||f~_n||^2 | / (||f~_n||_1^2 - ||f~_n||_2^2)
    eps_LBO    = max_n eps_n

``z_n`` is the input in the SAE's normalised units (``x * input_scale``). If the unit
decoder atoms are eps-quasi-orthogonal (|<d_i, d_j>| <= eps, i != j) and z = sum_j f~_j d_j,
then | ||z||^2 - ||f~||^2 | = |sum_{i != j} f~_i f~_j <d_i, d_j>| <= eps (||f~||_1^2 - ||f~||_2^2),
so every eps_n is a lower bound on the quasi-orthogonality eps the SAE's features would
need (Lee et al. 2025, arXiv 2503.24277, "epsilon-LBO"). Rows with a single active atom
give no bound (NaN). The paper's exact aggregation over inputs could not be checked here;
``afa_score`` reports the maximum (the bound implied by the whole set) and the mean.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from saedata.sae.activations import SparseCodes

if TYPE_CHECKING:
    from saedata.sae.model import SparseAutoencoder


def fvu(x: Tensor, recon: Tensor) -> Tensor:
    """Fraction of variance unexplained over the batch: ``||x - x^||^2 / ||x - mean(x)||^2``.

    x, recon: (n, d). Returns a scalar tensor (0 = perfect, 1 = as good as the mean).
    """
    x = x.float()
    total = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
    return (x - recon.float()).pow(2).sum() / total


def mean_l0(codes: SparseCodes | Tensor) -> Tensor:
    """Mean number of non-zero codes per row; ``codes`` dense (n, d_sae) or :class:`SparseCodes`."""
    values = codes.values if isinstance(codes, SparseCodes) else codes
    return (values != 0).sum(-1).float().mean()


def fire_counts(codes: SparseCodes | Tensor, d_sae: int) -> Tensor:
    """(d_sae,) int64: how many rows of the batch activate each latent (value != 0)."""
    if isinstance(codes, SparseCodes):
        # inactive entries (padding) go to one extra bin, dropped: no masked copy of the indices
        routed = torch.where(codes.values != 0, codes.indices, d_sae)
        return torch.bincount(routed.reshape(-1), minlength=d_sae + 1)[:d_sae]
    return (codes != 0).sum(0).to(torch.int64)


def dead_fraction(stats: Tensor, dead_tokens: int | None = None) -> float:
    """Fraction of dead latents.

    With ``dead_tokens=None``, ``stats`` (d_sae,) holds fire counts over an evaluation set
    and a latent is dead when it never fired. Otherwise ``stats`` holds the number of
    tokens since each latent last fired and a latent is dead when that reaches
    ``dead_tokens``.
    """
    if stats.numel() == 0:
        return 0.0
    if dead_tokens is None:
        return float((stats == 0).float().mean())
    return float((stats >= dead_tokens).float().mean())


def _atom_norms(codes: SparseCodes | Tensor, W_dec: Tensor, b_dec: Tensor | None,
                dec_norm: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(||f~_n||_1, ||f~_n||_2^2), each (n,): the L1 norm and squared L2 norm of the
    decoder-norm-weighted codes f_j ||d_j||, with ||b_dec|| as one more atom when given.
    ``dec_norm`` (d_sae,): the decoder row norms, when already known."""
    if dec_norm is None:
        dec_norm = W_dec.norm(dim=1)
    if isinstance(codes, SparseCodes):
        atoms = codes.values * dec_norm[codes.indices]
    else:
        atoms = codes * dec_norm
    l1, l2_sq = atoms.abs().sum(-1), atoms.pow(2).sum(-1)
    if b_dec is not None:
        b = b_dec.norm()
        l1, l2_sq = l1 + b, l2_sq + b * b
    return l1, l2_sq


def _ratio(l2_sq: Tensor, z_norm: Tensor) -> Tensor:
    return l2_sq.sqrt() / z_norm.clamp_min(1e-12)


def _epsilon(l1: Tensor, l2_sq: Tensor, z_norm: Tensor) -> Tensor:
    cross = l1.pow(2) - l2_sq  # sum_{i != j} |f~_i f~_j|
    gap = (z_norm.pow(2) - l2_sq).abs()
    out = gap / cross
    return torch.where(cross > 1e-12 * l2_sq.clamp_min(1e-30), out, torch.full_like(out, float("nan")))


def afa_ratio(
    codes: SparseCodes | Tensor, z: Tensor, W_dec: Tensor, b_dec: Tensor | None = None
) -> Tensor:
    """Per-input AFA ratio ``||f~_n|| / ||z_n||`` (n,): how far the codes are over- (> 1)
    or under-activated (< 1) relative to the approximate feature activation ``||z_n||``.

    ``z`` (n, d_in) is the vector the codes reconstruct (normalised units); pass ``b_dec``
    to count the decoder bias as an atom (then ``z`` is the uncentred input).
    """
    return _ratio(_atom_norms(codes, W_dec, b_dec)[1], z.norm(dim=-1))


def epsilon_lbo(
    codes: SparseCodes | Tensor, z: Tensor, W_dec: Tensor, b_dec: Tensor | None = None
) -> Tensor:
    """Per-input lower bound on quasi-orthogonality (n,):
    ``| ||z||^2 - ||f~||^2 | / (||f~||_1^2 - ||f~||_2^2)``; NaN where fewer than two atoms
    are active (no cross terms, no bound). See the module docstring."""
    return _epsilon(*_atom_norms(codes, W_dec, b_dec), z.norm(dim=-1))


def afa_terms(
    codes: SparseCodes | Tensor, z: Tensor, W_dec: Tensor, b_dec: Tensor | None = None,
    dec_norm: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(:func:`afa_ratio`, :func:`epsilon_lbo`) of the same inputs, the weighted codes
    computed once; ``dec_norm`` (d_sae,): ``W_dec.norm(dim=1)``, when already known."""
    l1, l2_sq = _atom_norms(codes, W_dec, b_dec, dec_norm)
    z_norm = z.norm(dim=-1)
    return _ratio(l2_sq, z_norm), _epsilon(l1, l2_sq, z_norm)


class AFAScore(NamedTuple):
    """AFA evaluation of an SAE on a set of inputs (Lee et al. 2025)."""

    ratio: Tensor
    """(n,) per-input ||f~|| / ||z||."""
    epsilon: Tensor
    """(n,) per-input lower bounds on eps (NaN where undefined)."""
    ratio_mean: float
    """Mean AFA ratio."""
    epsilon_lbo: float
    """max_n eps_n: the lower bound on eps implied by the whole set (NaN if none defined)."""
    epsilon_mean: float
    """Mean of the defined eps_n."""


@torch.no_grad()
def afa_score(sae: SparseAutoencoder, x: Tensor, batch_size: int = 4096) -> AFAScore:
    """AFA ratio and epsilon-LBO of ``sae`` on inputs ``x`` (n, d_in), original units.

    Uses ``z = x * input_scale`` and counts ``b_dec`` as an atom, as the authors' ZF plots do.
    """
    ratios, eps = [], []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size].to(sae.device, torch.float32)
        codes = sae.encode_sparse(xb)
        z = xb * sae.input_scale
        ratio, epsilon = afa_terms(codes, z, sae.W_dec, sae.b_dec)
        ratios.append(ratio.cpu())
        eps.append(epsilon.cpu())
    ratio = torch.cat(ratios) if ratios else torch.zeros(0)
    epsilon = torch.cat(eps) if eps else torch.zeros(0)
    defined = epsilon[~torch.isnan(epsilon)]
    return AFAScore(
        ratio=ratio,
        epsilon=epsilon,
        ratio_mean=float(ratio.mean()) if ratio.numel() else float("nan"),
        epsilon_lbo=float(defined.max()) if defined.numel() else float("nan"),
        epsilon_mean=float(defined.mean()) if defined.numel() else float("nan"),
    )


@torch.no_grad()
def decoder_coherence(W_dec: Tensor, chunk: int = 4096) -> tuple[float, float]:
    """(max, mean) of ``|<d_i, d_j>| / (||d_i|| ||d_j||)`` over i != j: the decoder's actual
    quasi-orthogonality eps, the quantity eps_LBO bounds from below. W_dec: (d_sae, d_in)."""
    D = W_dec.float()
    D = D / D.norm(dim=1, keepdim=True).clamp_min(1e-12)
    h = D.shape[0]
    if h < 2:
        return 0.0, 0.0
    best, total = 0.0, 0.0
    for start in range(0, h, chunk):
        block = (D[start : start + chunk] @ D.T).abs()
        rows = torch.arange(block.shape[0], device=block.device)
        block[rows, rows + start] = 0.0
        best = max(best, float(block.max()))
        total += float(block.sum())
    return best, total / (h * (h - 1))
