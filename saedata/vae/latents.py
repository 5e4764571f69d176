"""Which latent dimensions of an encoder matter: KL, ARD variance, decoder sensitivity,
relevance and active units, and the linear probe of the relevant ones.

Relevance (ARD-VAE's rule, used for both priors): the score of axis l is w_l * s_l^2,
where w_l = mean_x ||d x^ / d mu_l||^2 is the decoder's sensitivity (squared Jacobian
column norm, outputs in normalised units) and s_l^2 the variance estimated from the
encoded data (mean of mu^2 + sigma^2); the relevant axes are the fewest, by decreasing
score, holding ``relevance_mass`` (0.99) of the total. Active units (Burda et al., 2016)
are counted too: Var_x(mu_l) / prior variance_l > ``active_threshold`` (0.01); the prior
variance is 1 for the standard prior and s_l^2 for ARD, where axes have no fixed scale.
Works for saedata's VAE and for any encoder from :func:`saedata.vae.io.load_encoder`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import Tensor

from saedata.console import Log, silent
from saedata.errors import ConfigError
from saedata.vae.io import DiffusersEncoder
from saedata.vae.model import MIN_VAR, VAE, as_rows, kl_per_dim, recon_mse, small_model_threads


@dataclass(frozen=True)
class LatentSummary:
    """Headline numbers of a per-dimension report."""

    n_dims: int
    """Latent dimensions L."""
    n_relevant: int
    """Dimensions holding ``relevance_mass`` of the relevance score."""
    n_active: int
    """Active units (Burda et al.): Var_x(mu_l) / prior variance_l > threshold."""
    kl: float
    """Mean KL(q(z|x) || p(z)) per row, summed over dimensions, nats."""
    recon_mse: float | None = None
    """Mean squared error per input feature, in input units, of decode(mu): on the held-out rows
    after a fit, on every row given to :func:`probe_encoder` (saedata VAEs only)."""
    probe_accuracy: float | None = None
    """Cross-validated linear-probe accuracy of the relevant dimensions' means (with labels)."""
    probe_std: float | None = None
    """Standard deviation of that accuracy over the folds."""
    n_rows: int = 0
    """Rows the report was computed on."""

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def encode_array(encoder: Any, X: Any, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and log variances of ``X`` (n, d_in), each (n, d_latent) float32 numpy."""
    arr = as_rows(X, encoder.d_in if getattr(encoder, "d_in", None) else None)
    mus, lvs = [], []
    with torch.no_grad():
        for s in range(0, arr.shape[0], batch_size):
            mu, lv = encoder.encode(torch.from_numpy(arr[s : s + batch_size]).to(encoder.device))
            mus.append(mu.float().cpu().numpy())
            lvs.append(lv.float().cpu().numpy())
    return np.concatenate(mus), np.concatenate(lvs)


def decoder_sensitivity(decode: Callable[[Tensor], Tensor], mu: Tensor, probes: int = 16,
                        exact_max_dims: int = 256, seed: int = 0) -> Tensor:
    """(L,) mean over rows of ||d decode(mu) / d mu_l||^2, for ``mu`` (n, L).

    Exact (one forward-mode pass per dimension) when L <= ``exact_max_dims`` and the decoder
    supports forward-mode autodiff; otherwise an unbiased Hutchinson estimate from ``probes``
    random sign vectors v, using E_v[(J^T v)_l^2] = ||J e_l||^2 (one backward pass each).
    """
    n, L = mu.shape
    if L <= exact_max_dims:
        out = torch.zeros(L, device=mu.device)

        def column_norms(tangents: Tensor) -> Tensor:  # (c, n, L) basis directions -> (c,)
            _, cols = torch.func.jvp(decode, (mu,), (tangents,))
            return cols.pow(2).reshape(n, -1).sum(-1).mean()

        with torch.no_grad():
            d_out = decode(mu[:1]).numel()
        chunk = max(1, min(L, 2**24 // max(1, n * d_out)))
        try:
            for start in range(0, L, chunk):
                dims = torch.arange(start, min(start + chunk, L), device=mu.device)
                tangents = torch.zeros(dims.shape[0], n, L, device=mu.device, dtype=mu.dtype)
                tangents[torch.arange(dims.shape[0]), :, dims] = 1.0
                out[dims] = torch.func.vmap(column_norms)(tangents)
            return out.detach()
        except (NotImplementedError, RuntimeError):  # e.g. fused attention kernels lack forward AD
            pass
    g = torch.Generator(device=mu.device).manual_seed(seed)
    acc = torch.zeros(L, device=mu.device)
    m = mu.detach().clone().requires_grad_(True)
    out_x = decode(m)
    for p in range(probes):
        v = torch.randint(0, 2, out_x.shape, generator=g, device=mu.device).to(out_x.dtype) * 2 - 1
        (grad,) = torch.autograd.grad(out_x, m, grad_outputs=v, retain_graph=p < probes - 1)
        acc += grad.pow(2).mean(0)
    return (acc / probes).detach()


def relevant_mask(score: np.ndarray, mass: float) -> np.ndarray:
    """Bool (L,): the fewest dimensions, by decreasing ``score``, holding ``mass`` of its total."""
    score = np.clip(np.nan_to_num(np.asarray(score, dtype=np.float64)), 0.0, None)
    total = score.sum()
    mask = np.zeros(score.shape[0], dtype=bool)
    if total <= 0:
        return mask
    order = np.argsort(-score, kind="stable")
    cum = np.cumsum(score[order]) / total
    n = int(np.searchsorted(cum, mass - 1e-12) + 1)
    mask[order[: min(n, score.shape[0])]] = True
    return mask


def latent_report(
    encoder: Any,
    X: Any,
    relevance_mass: float = 0.99,
    active_threshold: float = 0.01,
    sensitivity_rows: int = 512,
    seed: int = 0,
) -> tuple[pl.DataFrame, LatentSummary]:
    """Per-dimension report of ``encoder``'s latents on ``X`` (n, d_in), and its summary.

    ``encoder`` is a :class:`VAE` or anything from :func:`load_encoder`. Columns: ``dim``,
    ``kl`` (mean KL to the encoder's prior, nats), ``variance`` (Var_x of mu), ``ard_variance``
    (s^2 = mean of mu^2 + sigma^2 over the rows: the ARD prior's estimate from these encoded
    data), ``sensitivity`` (decoder's w_l, on up to ``sensitivity_rows`` rows; null without a
    decoder), ``relevance`` (share of the score w_l s_l^2, or of s_l^2 without a decoder),
    ``active`` and ``relevant`` (bool).
    """
    mu, logvar = encode_array(encoder, X, batch_size=getattr(encoder, "batch_size", 512))
    mu_t, lv_t = torch.from_numpy(mu), torch.from_numpy(logvar)
    prior_var = encoder.prior_variance.detach().float().cpu()
    kl = kl_per_dim(mu_t, lv_t, prior_var).mean(0).numpy()
    variance = mu.var(0).astype(np.float64)
    ard_var = np.maximum((mu_t.pow(2) + lv_t.exp()).mean(0).numpy().astype(np.float64), MIN_VAR)
    sens = _sensitivity(encoder, mu, min(sensitivity_rows, getattr(encoder, "sensitivity_rows", sensitivity_rows)),
                        seed)
    score = ard_var * sens if sens is not None else ard_var
    total = score.sum()
    relevance = score / total if total > 0 else np.zeros_like(score)
    relevant = relevant_mask(score, relevance_mass)
    active = variance / prior_var.numpy().astype(np.float64) > active_threshold
    report = pl.DataFrame({
        "dim": np.arange(mu.shape[1], dtype=np.int64),
        "kl": kl.astype(np.float64),
        "variance": variance,
        "ard_variance": ard_var,
        "sensitivity": [None] * mu.shape[1] if sens is None else sens,
        "relevance": relevance,
        "active": active,
        "relevant": relevant,
    }, schema_overrides={"sensitivity": pl.Float64})
    summary = LatentSummary(n_dims=int(mu.shape[1]), n_relevant=int(relevant.sum()), n_active=int(active.sum()),
                            kl=float(kl.sum()), n_rows=int(mu.shape[0]))
    return report, summary


def _sensitivity(encoder: Any, mu: np.ndarray, rows: int, seed: int) -> np.ndarray | None:
    decode = getattr(encoder, "decode_normalised", None) or getattr(encoder, "decode", None)
    if decode is None or getattr(encoder, "has_decoder", True) is False:
        return None
    idx = np.random.default_rng(seed).permutation(mu.shape[0])[:rows]
    m = torch.from_numpy(mu[np.sort(idx)]).to(encoder.device)
    return decoder_sensitivity(decode, m, seed=seed).cpu().numpy().astype(np.float64)


def probe_encoder(
    encoder: VAE | DiffusersEncoder,
    X: Any,
    y: Any = None,
    relevance_mass: float = 0.99,
    active_threshold: float = 0.01,
    image_shape: tuple[int, int, int] | None = None,
    seed: int = 0,
    log: Log = silent,
) -> tuple[pl.DataFrame, LatentSummary]:
    """The per-dimension report of a given encoder's latents of ``X`` (n, d_in), with the
    relevant dimensions' linear-probe accuracy when labels ``y`` are given.

    Same columns as :func:`latent_report`; the ARD variance is estimated from the encoded
    ``X``; ``recon_mse`` is decode(mu) against ``X`` for a saedata VAE (None otherwise).
    """
    if isinstance(encoder, DiffusersEncoder) and image_shape is not None:
        encoder.image_shape = tuple(image_shape)  # type: ignore[assignment]
    report, summary = latent_report(encoder, X, relevance_mass, active_threshold, seed=seed)
    extra: dict[str, Any] = {}
    if isinstance(encoder, VAE):
        extra["recon_mse"] = recon_mse(encoder, torch.from_numpy(as_rows(X, encoder.d_in)).to(encoder.device))
    if y is not None:
        extra.update(probe_relevant(encoder, X, np.asarray(y), report, seed, log))
    return report, LatentSummary(**{**summary.to_dict(), **extra})


def probe_relevant(encoder: Any, X: Any, labels: np.ndarray, report: pl.DataFrame, seed: int,
                    log: Log) -> dict[str, float]:
    """Linear-probe accuracy of the relevant dimensions' means, or {} (with a log line) when
    there are none or the labels cannot be cross-validated (one class, a class of one row)."""
    from saedata.analysis.probe import linear_probe

    keep = report["relevant"].to_numpy()
    if not keep.any():
        return {}
    mu, _ = encode_array(encoder, X, batch_size=getattr(encoder, "batch_size", 512))
    try:
        score = linear_probe(mu[:, keep], labels, seed=seed)
    except ConfigError as e:
        log(f"no linear probe: {e}")
        return {}
    return {"probe_accuracy": score.mean, "probe_std": score.std}


def latent_sae(Z: np.ndarray, expansion: int = 4, k: int = 4, epochs: int = 200, seed: int = 0):
    """Train one of saedata's TopK SAEs on latent means ``Z`` (n, L); returns its TrainResult."""
    from saedata.config import SAEConfig, TrainConfig
    from saedata.sae.train import SAETrainer

    Z = as_rows(Z, what="latents")
    d = Z.shape[1]
    sae_cfg = SAEConfig(d_in=d, d_sae=expansion * d, activation="topk", k=min(k, expansion * d))
    batch = min(256, Z.shape[0])
    train_cfg = TrainConfig(batch_size=batch, max_tokens=epochs * Z.shape[0], buffer_tokens=Z.shape[0],
                            dead_tokens=5 * Z.shape[0], lr=1e-3, checkpoint_every=0, seed=seed, device="cpu")
    with small_model_threads(2 * d * sae_cfg.d_sae, batch, torch.device("cpu")):
        return SAETrainer(sae_cfg, train_cfg, progress=False).fit(torch.from_numpy(Z))
