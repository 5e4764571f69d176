"""Semi-nonnegative matrix factorisation of activations, as an SAE.

Shafran, Geiger and Geva (2025), "Decomposing MLP Activations into Interpretable Features
via Semi-Nonnegative Matrix Factorization" (arXiv 2506.10920), factor a matrix of MLP
activations (rows: tokens, columns: neurons) as

    X ~ Z D        Z >= 0  (n, d_sae): how much of each feature a token holds
                   D       (d_sae, d_in): each feature a sparse, signed combination of neurons

by the alternating updates of Ding, Li and Jordan (2010), "Convex and Semi-Nonnegative
Matrix Factorizations", with the paper's winner-take-all sparsity on the features. One
iteration of :func:`semi_nmf`:

    D <- WTA_s((Z^T Z + eps I)^-1 Z^T X)            least squares, then each row keeps its s
                                                    largest |weights| (s = sparsity x d_in),
                                                    refitted by least squares on what it kept
    rows of D to unit norm, columns of Z rescaled   (Z D unchanged)
    Z <- Z * sqrt((P+ + Z Q-) / (P- + Z Q+))         P = X D^T, Q = D D^T; A+ = (|A| + A) / 2,
                                                    A- = (|A| - A) / 2 (Ding et al.'s eq. 9)

Ding et al. prove that the Z update never raises ``||X - Z D||^2``, and the unconstrained
least squares cannot either; winner-take-all can. So when the truncated least squares
would raise the error, D takes instead one projected-gradient step from where it is,
``WTA_s(D - (Z^T Z D - Z^T X) / L)`` with ``L >= ||Z^T Z||_2``, refitted on its support:
the step minimises a quadratic that lies above the error and touches it at the current D,
and the refit (a few conjugate-gradient steps on the support) lowers it further, so
neither can raise it. Hence the error :func:`semi_nmf` records never rises from one
iteration to the next (up to float rounding).

The paper has no encoder: it reads a feature on new text as the activation's projection on
the feature's (unit) direction. An snmf SAE (:func:`snmf_sae`) starts from exactly those
projections (``W_enc = D^T``, ``b_enc = 0``) and refines them into the codes the
factorisation itself would give a token -- non-negative, least squares over the features
-- keeping at most ``k`` per token, by ``snmf_steps`` projected-gradient steps
(:func:`saedata.sae.activations.snmf`). As in the paper, activations are factorised as
they are, not centred (``b_dec = 0``); saedata's input scale ``s`` (E||x s||^2 = d_in)
only changes the units.

The factorisation is full-batch: it keeps Z (rows x d_sae) in memory, so at most
``MAX_CODES / d_sae`` token rows are factorised (sampled evenly); it suits the paper's
scale, a few hundred features (its scripts default to 100).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from saedata.config import SAEConfig, TrainConfig
from saedata.errors import ConfigError
from saedata.reader import resolve_device
from saedata.sae.formats import save_sae
from saedata.sae.model import SparseAutoencoder

MAX_CODES = 1 << 28
"""Most entries of the code matrix Z held while factorising (1 GiB of float32)."""
RIDGE = 1e-6
"""eps of the least-squares D update, relative to the mean diagonal of Z^T Z."""
TINY = 1e-12


class Factorisation(NamedTuple):
    """What :func:`semi_nmf` found: ``X ~ Z D``."""

    D: Tensor
    """(d_sae, d_in) features, unit rows, at most ``ceil(sparsity x d_in)`` non-zeros each."""
    Z: Tensor
    """(n, d_sae) non-negative codes of the rows factorised."""
    errors: list[float]
    """``||X - Z D||^2`` after initialisation and after every iteration (non-increasing)."""
    fallbacks: int
    """Iterations whose D update took the projected-gradient step (the truncated least
    squares would have raised the error)."""


def _pos(a: Tensor) -> Tensor:
    return (a.abs() + a) / 2


def _neg(a: Tensor) -> Tensor:
    return (a.abs() - a) / 2


def winner_take_all(D: Tensor, keep: int) -> Tensor:
    """Each row of ``D`` (d_sae, d_in) with only its ``keep`` largest |entries| left."""
    if keep >= D.shape[1]:
        return D
    idx = D.abs().topk(keep, dim=1).indices
    return torch.zeros_like(D).scatter(1, idx, D.gather(1, idx))


def _support(D: Tensor, keep: int) -> Tensor:
    """(d_sae, d_in) bool: where each row of ``D`` has one of its ``keep`` largest |entries|."""
    if keep >= D.shape[1]:
        return torch.ones_like(D, dtype=torch.bool)
    return torch.zeros_like(D, dtype=torch.bool).scatter(1, D.abs().topk(keep, dim=1).indices, True)


def _refit(ZtZ: Tensor, ZtX: Tensor, D: Tensor, mask: Tensor, steps: int) -> Tensor:
    """Least squares of the features on a fixed support: ``steps`` conjugate-gradient steps
    from ``D`` (zero off ``mask``) on ``||X - Z D||^2`` over the D with that support, each
    column (neuron) its own quadratic. Conjugate gradients never raise a quadratic."""
    m = mask.to(D.dtype)
    D = D * m
    r = m * (ZtX - ZtZ @ D)  # minus half the gradient
    p = r.clone()
    rr = (r * r).sum(0)
    for _ in range(steps):
        Ap = m * (ZtZ @ p)
        curv = (p * Ap).sum(0)
        alpha = torch.where(curv > TINY, rr / curv.clamp_min(TINY), torch.zeros_like(rr))
        D = D + alpha * p
        r = r - alpha * Ap
        rr_new = (r * r).sum(0)
        p = r + torch.where(rr > TINY, rr_new / rr.clamp_min(TINY), torch.zeros_like(rr)) * p
        rr = rr_new
    return D


def _error(X: Tensor, Z: Tensor, D: Tensor) -> float:
    """``||X - Z D||^2``, from the residual itself (no cancellation), summed in float64."""
    total = 0.0
    for start in range(0, X.shape[0], 16384):
        total += float((X[start : start + 16384] - Z[start : start + 16384] @ D).double().pow(2).sum())
    return total


def _gram_error(ZtZ: Tensor, ZtX: Tensor, D: Tensor) -> float:
    # ||X - Z D||^2 - ||X||^2 = <Z^T Z, D D^T> - 2 <Z^T X, D>: compares two D for the same Z
    return float((ZtZ * (D @ D.T)).double().sum()) - 2 * float((ZtX * D).double().sum())


def _spectral_bound(ZtZ: Tensor) -> float:
    """An upper bound of the largest eigenvalue of ``Z^T Z``: its largest row sum, since
    Z >= 0 makes every entry non-negative (Perron-Frobenius)."""
    return float(ZtZ.sum(1).max()) + TINY


def _init(X: Tensor, d_sae: int, generator: torch.Generator, rounds: int = 10) -> tuple[Tensor, Tensor]:
    """Ding et al.'s k-means start, on directions (spherical k-means, seeded): features are
    the unit mean directions of ``d_sae`` clusters of rows, each row's code its cosine with
    its cluster's feature plus 0.2 everywhere (multiplicative updates never move an entry
    off zero)."""
    n = X.shape[0]
    U = X / X.norm(dim=1, keepdim=True).clamp_min(TINY)
    rows = torch.randperm(n, generator=generator)[: min(n, d_sae)]
    if d_sae > n:
        rows = torch.cat([rows, torch.randint(n, (d_sae - n,), generator=generator)])
    D = U[rows.to(X.device)].clone()
    for _ in range(rounds):
        label = (U @ D.T).argmax(1)
        sums = torch.zeros_like(D).index_add_(0, label, U)
        norms = sums.norm(dim=1, keepdim=True)
        D = torch.where(norms > TINY, sums / norms.clamp_min(TINY), D)  # an empty cluster keeps its feature
    label = (U @ D.T).argmax(1)
    Z = torch.full((n, d_sae), 0.2, device=X.device, dtype=X.dtype)
    Z[torch.arange(n, device=X.device), label] += (X * D[label]).sum(1).clamp_min(0)
    return D, Z


def semi_nmf(X: Tensor, d_sae: int, *, sparsity: float = 1.0, iters: int = 200, seed: int = 0,
             refit_steps: int = 4, log: Callable[[int, float], None] | None = None) -> Factorisation:
    """Factor ``X`` (n, d_in) as ``Z D`` with ``Z >= 0`` by the updates in the module
    docstring; ``sparsity`` is the share of the d_in columns each feature keeps. Runs on
    X's device; CPU runs are deterministic for a seed. ``log(iteration, error)`` is called
    every iteration."""
    if X.ndim != 2 or X.shape[0] == 0:
        raise ConfigError(f"semi-NMF needs a non-empty (n, d_in) matrix, got shape {tuple(X.shape)}")
    X = X.float()
    keep = max(1, math.ceil(sparsity * X.shape[1]))
    g = torch.Generator().manual_seed(seed)
    D, Z = _init(X, d_sae, g)
    D = winner_take_all(D, keep)
    eye = torch.eye(d_sae, device=X.device, dtype=X.dtype)
    errors = [_error(X, Z, D)]
    fallbacks = 0
    for it in range(iters):
        ZtZ, ZtX = Z.T @ Z, Z.T @ X
        # D: the paper's least squares then winner-take-all, refitted on the support it keeps ...
        ridge = RIDGE * float(ZtZ.diagonal().mean()) + TINY
        ls = torch.linalg.solve(ZtZ + ridge * eye, ZtX)
        D_new = ls if keep >= X.shape[1] else _refit(ZtZ, ZtX, ls, _support(ls, keep), refit_steps)
        if _gram_error(ZtZ, ZtX, D_new) > _gram_error(ZtZ, ZtX, D):
            # ... or, when that does worse, a projected-gradient step refitted on its support
            moved = D - (ZtZ @ D - ZtX) / _spectral_bound(ZtZ)
            D_new = _refit(ZtZ, ZtX, moved, _support(moved, keep), refit_steps)
            fallbacks += 1
        # unit features; the codes carry the scale (Z D unchanged)
        norms = D_new.norm(dim=1)
        alive = norms > TINY
        D = torch.where(alive[:, None], D_new / norms.clamp_min(TINY)[:, None], D_new)
        Z = Z * torch.where(alive, norms, torch.zeros_like(norms))
        # Z: Ding et al.'s multiplicative update
        P, Q = X @ D.T, D @ D.T
        Z = Z * ((_pos(P) + Z @ _neg(Q)) / (_neg(P) + Z @ _pos(Q)).clamp_min(TINY)).sqrt()
        errors.append(_error(X, Z, D))
        if log is not None:
            log(it + 1, errors[-1])
    return Factorisation(D, Z, errors, fallbacks)


def sample_rows(X: Tensor, most: int) -> Tensor:
    """At most ``most`` rows of ``X``, evenly spaced (all of them when there are fewer)."""
    if X.shape[0] <= most:
        return X
    return X[torch.linspace(0, X.shape[0] - 1, most).long()]


@torch.no_grad()
def snmf_sae(sae_cfg: SAEConfig, D: Tensor, input_scale: float) -> SparseAutoencoder:
    """The snmf SAE of features ``D`` (d_sae, d_in) found in inputs scaled by ``input_scale``:
    ``W_dec = D``, ``W_enc = D^T`` (the paper's projections start the codes), zero biases."""
    sae = SparseAutoencoder(sae_cfg)
    sae.W_dec.copy_(D)
    sae.W_enc.copy_(D.T)
    sae.b_enc.zero_()
    sae.b_dec.zero_()
    sae.input_scale.fill_(input_scale)
    return sae.eval()


class SNMFResult(NamedTuple):
    """What :func:`train_snmf` made."""

    sae: SparseAutoencoder
    metrics: dict[str, float]
    history: list[dict[str, float]]
    """Per-iteration ``{"step", "error", "fvu"}`` of the factorisation."""


@torch.no_grad()
def train_snmf(sae_cfg: SAEConfig, train_cfg: TrainConfig, acts: Tensor, heldout: Tensor | None = None,
               out_dir: str | os.PathLike | None = None, log: Callable[[str], None] | None = None) -> SNMFResult:
    """Factorise (up to ``MAX_CODES / d_sae`` evenly spaced rows of) ``acts`` (n, d_in) and
    return the snmf SAE, saved to ``out_dir`` with ``metrics.json`` when given.

    Metrics: ``factor_fvu`` (the factorisation's own fraction of variance unexplained,
    dense codes), ``fvu`` and ``l0`` of the SAE's k-sparse codes on the rows factorised,
    ``heldout_fvu`` on ``heldout``, ``iterations``, ``fallbacks``, ``tokens`` (rows
    factorised), ``seconds``, ``input_scale``."""
    from saedata.sae.train import METRICS_FILE

    if sae_cfg.activation != "snmf":
        raise ConfigError(f"semi-NMF makes snmf SAEs, not {sae_cfg.activation}")
    device = resolve_device(train_cfg.device)
    started = time.perf_counter()
    rows = sample_rows(acts, max(1, MAX_CODES // sae_cfg.d_sae)).to(device, torch.float32)
    if not bool(torch.isfinite(rows).all()):
        raise ConfigError("training data contains NaN or infinite values")
    mean_sq = float(rows.pow(2).sum(-1).mean())
    if mean_sq <= 0:
        raise ConfigError("training data is all zeros; cannot factorise it")
    scale = math.sqrt(sae_cfg.d_in / mean_sq)
    X = rows * scale
    total = float((X - X.mean(0)).double().pow(2).sum())
    every = max(1, train_cfg.snmf_iters // 10)

    def report(it: int, error: float) -> None:
        if log is not None and (it % every == 0 or it == train_cfg.snmf_iters):
            log(f"semi-NMF: iteration {it}/{train_cfg.snmf_iters}, FVU {error / total:.4f}")

    fact = semi_nmf(X, sae_cfg.d_sae, sparsity=train_cfg.snmf_sparsity, iters=train_cfg.snmf_iters,
                    seed=train_cfg.seed, log=report)
    sae = snmf_sae(sae_cfg, fact.D, scale).to(device)
    history = [{"step": float(i), "error": e, "fvu": e / total} for i, e in enumerate(fact.errors)]
    metrics = {"factor_fvu": fact.errors[-1] / total, **_fvu_l0(sae, rows), "iterations": float(train_cfg.snmf_iters),
               "fallbacks": float(fact.fallbacks), "tokens": float(rows.shape[0]), "dead_fraction":
               float((fact.Z.sum(0) == 0).float().mean()), "input_scale": scale}
    if heldout is not None:
        metrics["heldout_fvu"] = _fvu_l0(sae, heldout.to(device, torch.float32))["fvu"]
    metrics["seconds"] = time.perf_counter() - started
    if out_dir is not None:
        save_sae(sae, out_dir)
        Path(out_dir, METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return SNMFResult(sae, metrics, history)


def _fvu_l0(sae: SparseAutoencoder, x_all: Tensor) -> dict[str, float]:
    """FVU and mean L0 of the SAE's codes on the rows of ``x_all`` (original units)."""
    mean = x_all.mean(0)
    err = var = active = 0.0
    for start in range(0, x_all.shape[0], 4096):
        x = x_all[start : start + 4096]
        codes = sae.encode_sparse(x)
        err += float((sae.decode_sparse(codes) - x).pow(2).sum())
        var += float((x - mean).pow(2).sum())
        active += float((codes.values != 0).sum())
    return {"fvu": err / max(var, TINY), "l0": active / max(x_all.shape[0], 1)}
