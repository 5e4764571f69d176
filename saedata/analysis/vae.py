"""VAE latent probes: fit a VAE (standard or ARD prior) and report which latent dimensions matter.

    result = fit_vae(X, VAEConfig(d_in=64, d_latent=32, prior="ard"), y=labels)
    result.report          # one row per latent dimension: kl, ard_variance, relevance, active, relevant
    result.summary         # n_relevant, n_active, held-out recon_mse, linear-probe accuracy
    save_vae(result.model, "digits.vae"); probe_encoder(load_encoder("digits.vae"), X, y)

The model (Kingma & Welling, 2014), with inputs centred and scaled (gaussian likelihood):

    q(z|x) = N(mu(x), diag(exp(logvar(x))))        encoder MLP -> (mu, logvar), (n, L) each
    x^ = dec(z)                                     decoder MLP (sigmoid output for bernoulli)
    loss = ||x_s - x^_s||^2  (or BCE)  +  beta * KL(q(z|x) || p(z))

Priors. ``standard``: p(z) = N(0, I). ``ard`` (ARD-VAE, Saha, Joshi & Whitaker, WACV 2025):
each axis has a precision a_l with a Gamma(a0, b0) hyperprior, p(z_l | a_l) = N(0, 1/a_l).
Given encoded data D_z = {z^i}, i = 1..n, the posterior of a_l is Gamma(a0 + n/2,
b0 + sum_i (z_l^i)^2 / 2); with a0 = b0 = 0 and many samples the marginal prior
p(z_l | D_z) (a Student-t) is close to N(0, s_l^2) with

    s_l^2 = b_l / a_l = mean_i (z_l^i)^2        estimated here as mean_i (mu_l^i^2 + sigma_l^i^2)

(the expectation of z^2 under q, instead of one sample of z per row), over ``ard_samples``
training rows drawn afresh at the start of every epoch and held fixed during it (the
paper's lagged update), and the ELBO keeps its form with KL(q || N(0, diag(s^2))):

    KL_l = 1/2 (log s_l^2 - log sigma_l^2 + (mu_l^2 + sigma_l^2) / s_l^2 - 1).

Relevance (the paper's rule, used for both priors): the score of axis l is
w_l * s_l^2, where w_l = mean_x ||d x^ / d mu_l||^2 is the decoder's sensitivity
(squared Jacobian column norm, outputs in normalised units) and s_l^2 the variance
estimated from the encoded data as above; the relevant axes are the fewest, by
decreasing score, holding ``relevance_mass`` (0.99) of the total. Active units (Burda et
al., 2016) are counted too: Var_x(mu_l) / prior variance_l > ``active_threshold`` (0.01);
the prior variance is 1 for the standard prior and s_l^2 for ARD, where axes have no
fixed scale.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import torch
from torch import Tensor, nn

from saedata.config import VAEConfig
from saedata.console import Log, silent
from saedata.errors import ConfigError, DimensionMismatchError, SAEFormatError

FORMAT_NAME = "saedata-vae"
FORMAT_VERSION = 1
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "vae.safetensors"
_MIN_VAR = 1e-6
"""Floor of the ARD variances s^2 (an axis can collapse to zero spread)."""


# ---------------------------------------------------------------------- model


class VAEOutput(NamedTuple):
    """One forward pass; losses are means over the batch rows."""

    recon: Tensor
    """(n, d_in) reconstruction in the input's units (decoded from a sample of q(z|x))."""
    mu: Tensor
    """(n, d_latent) posterior means."""
    logvar: Tensor
    """(n, d_latent) posterior log variances."""
    loss: Tensor
    """Scalar: recon_loss + beta * kl."""
    recon_loss: Tensor
    """Scalar: squared error in normalised units (gaussian) or cross-entropy (bernoulli), summed over features."""
    kl: Tensor
    """Scalar: KL(q(z|x) || p(z)) summed over latent dimensions, nats."""


def _mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def kl_per_dim(mu: Tensor, logvar: Tensor, prior_var: Tensor) -> Tensor:
    """(n, L) KL(N(mu, exp(logvar)) || N(0, prior_var)) per row and dimension, nats."""
    # 1/2 (log s^2 - log sigma^2 + (mu^2 + sigma^2) / s^2 - 1)
    return 0.5 * (prior_var.log() - logvar + (mu.pow(2) + logvar.exp()) / prior_var - 1.0)


class VAE(nn.Module):
    """A VAE on flat vectors configured by :class:`~saedata.config.VAEConfig`.

    Buffers: ``x_mean`` (d_in,) and ``x_scale`` (scalar) normalise inputs as
    ``x_s = (x - x_mean) * x_scale`` (identity for bernoulli); ``prior_var`` (d_latent,) is
    the prior's variance per dimension (ones for the standard prior, the ARD estimate s^2
    otherwise).
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        widths = [cfg.d_in, *cfg.hidden]
        self.encoder = _mlp([*widths, 2 * cfg.d_latent])
        self.decoder = _mlp([cfg.d_latent, *widths[::-1]])
        self.register_buffer("x_mean", torch.zeros(cfg.d_in))
        self.register_buffer("x_scale", torch.tensor(1.0))
        self.register_buffer("prior_var", torch.ones(cfg.d_latent))

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_latent(self) -> int:
        return self.cfg.d_latent

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        return self.cfg.image_shape

    @property
    def prior_variance(self) -> Tensor:
        """(d_latent,) variance of the prior per dimension."""
        return self.prior_var

    @property
    def device(self) -> torch.device:
        return self.x_mean.device

    def normalise(self, x: Tensor) -> Tensor:
        """(n, d_in) input units -> normalised units."""
        return (x - self.x_mean) * self.x_scale

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(n, d_in) input units -> (mu, logvar), each (n, d_latent)."""
        h = self.encoder(self.normalise(x))
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode_normalised(self, z: Tensor) -> Tensor:
        """(n, d_latent) -> (n, d_in) mean of p(x|z) in normalised units (probabilities for bernoulli)."""
        out = self.decoder(z)
        return torch.sigmoid(out) if self.cfg.likelihood == "bernoulli" else out

    def decode(self, z: Tensor) -> Tensor:
        """(n, d_latent) -> (n, d_in) reconstruction in input units."""
        return self.decode_normalised(z) / self.x_scale + self.x_mean

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> VAEOutput:
        """Encode ``x`` (n, d_in), sample z with the reparameterisation trick, decode, and score."""
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + eps * (0.5 * logvar).exp()
        logits = self.decoder(z)
        x_s = self.normalise(x)
        if self.cfg.likelihood == "bernoulli":
            recon_loss = nn.functional.binary_cross_entropy_with_logits(logits, x_s, reduction="none").sum(-1).mean()
            recon = torch.sigmoid(logits) / self.x_scale + self.x_mean
        else:
            recon_loss = (logits - x_s).pow(2).sum(-1).mean()
            recon = logits / self.x_scale + self.x_mean
        kl = kl_per_dim(mu, logvar, self.prior_var).sum(-1).mean()
        return VAEOutput(recon=recon, mu=mu, logvar=logvar, loss=recon_loss + self.cfg.beta * kl,
                         recon_loss=recon_loss, kl=kl)


# --------------------------------------------------------------------- report


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
    arr = _as_array(X, encoder.d_in if getattr(encoder, "d_in", None) else None)
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
    ard_var = np.maximum((mu_t.pow(2) + lv_t.exp()).mean(0).numpy().astype(np.float64), _MIN_VAR)
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


# -------------------------------------------------------------------- training


@dataclass(frozen=True)
class VAEResult:
    """What :meth:`VAETrainer.fit` learned and measured."""

    model: VAE
    """The trained VAE (eval mode; ``prior_var`` holds the last ARD estimate)."""
    history: list[dict[str, float]]
    """Per epoch: epoch, loss, recon_loss, kl (training means) and val_mse (held-out, input units)."""
    report: pl.DataFrame
    """Per latent dimension, on the training rows (see :func:`latent_report`)."""
    summary: LatentSummary
    """n_relevant, n_active, held-out recon_mse and, with labels, the relevant dimensions' probe accuracy."""
    train_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """(n_train,) row numbers of ``X`` trained on."""
    holdout_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """(n_holdout,) row numbers of ``X`` held out."""


def _as_array(X: Any, d_in: int | None = None, what: str = "data") -> np.ndarray:
    if hasattr(X, "detach"):
        X = X.detach().cpu().numpy()
    arr = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    if arr.ndim != 2:
        raise DimensionMismatchError(f"{what} must be 2-D (n_rows, d_in), got shape {arr.shape}")
    if d_in is not None and arr.shape[1] != d_in:
        raise DimensionMismatchError(f"{what} has {arr.shape[1]} columns, but the VAE expects d_in={d_in}")
    if arr.shape[0] == 0:
        raise ConfigError(f"{what} has no rows")
    if not np.isfinite(arr).all():
        raise ConfigError(f"{what} contains NaN or infinite values")
    return arr


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda when available else cpu."""
    from saedata.sae.train import resolve_device as resolve

    return resolve(device)


@contextlib.contextmanager
def small_model_threads(params: int, batch_size: int, device: torch.device):
    """Run tiny CPU models on one thread: below ~5e7 multiply-adds per step, splitting each
    matmul over threads costs more than it saves (and far more on a busy machine)."""
    if device.type != "cpu" or params * batch_size >= 5e7 or torch.get_num_threads() == 1:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def split_rows(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train_rows, holdout_rows) of ``n`` rows; at least one of each when holdout > 0."""
    perm = np.random.default_rng(seed).permutation(n)
    n_hold = 0 if holdout <= 0 else min(max(1, round(holdout * n)), n - 1)
    if n - n_hold < 1:
        raise ConfigError(f"need at least 2 rows to hold some out, got {n}")
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


class VAETrainer:
    """Fit a :class:`VAE` (hyperparameters in the config, learning in ``fit``).

    ``progress`` shows a tqdm bar on stderr when it is a terminal; ``log`` receives one line
    per stage. Same data + config -> the same weights on CPU.
    """

    def __init__(self, cfg: VAEConfig, progress: bool = False, log: Log = silent):
        self.cfg = cfg
        self.progress = progress
        self.log = log

    def fit(self, X: Any, y: Any = None) -> VAEResult:
        """Train on ``X`` (n, d_in); with labels ``y`` (n,) also probe the relevant dimensions."""
        cfg = self.cfg
        data = _as_array(X, cfg.d_in)
        if cfg.likelihood == "bernoulli" and (data.min() < 0 or data.max() > 1):
            raise ConfigError(
                f"the bernoulli likelihood needs inputs in [0, 1]; found [{data.min():.3g}, {data.max():.3g}]")
        labels = None if y is None else np.asarray(y)
        if labels is not None and labels.shape != (data.shape[0],):
            raise ConfigError(f"labels must have one entry per row ({data.shape[0]}), got shape {labels.shape}")
        device = resolve_device(cfg.device)
        train_rows, hold_rows = split_rows(data.shape[0], cfg.holdout, cfg.seed)
        train = torch.from_numpy(data[train_rows]).to(device)
        hold = torch.from_numpy(data[hold_rows]).to(device)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = VAE(cfg)
        model.to(device)
        self._normalisation(model, train)
        g_cpu = torch.Generator().manual_seed(cfg.seed)
        g_dev = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        with small_model_threads(sum(p.numel() for p in model.parameters()), cfg.batch_size, device):
            return self._train(model, opt, train, hold, data, labels, g_cpu, g_dev, train_rows, hold_rows)

    def _train(self, model: VAE, opt: torch.optim.Optimizer, train: Tensor, hold: Tensor, data: np.ndarray,
               labels: np.ndarray | None, g_cpu: torch.Generator, g_dev: torch.Generator,
               train_rows: np.ndarray, hold_rows: np.ndarray) -> VAEResult:
        cfg, device, n = self.cfg, train.device, train.shape[0]
        history: list[dict[str, float]] = []
        bar = self._bar()
        model.train()
        try:
            for epoch in range(cfg.epochs):
                if cfg.prior == "ard":
                    self._update_ard(model, train, g_cpu)
                perm = torch.randperm(n, generator=g_cpu).to(device)
                sums = {"loss": 0.0, "recon_loss": 0.0, "kl": 0.0}
                for s in range(0, n, cfg.batch_size):
                    out = model(train[perm[s : s + cfg.batch_size]], generator=g_dev)
                    opt.zero_grad(set_to_none=True)
                    out.loss.backward()
                    opt.step()
                    w = out.mu.shape[0] / n
                    for k in sums:
                        sums[k] += float(getattr(out, k).detach()) * w
                if not all(math.isfinite(v) for v in sums.values()):
                    raise ConfigError(f"VAE training diverged at epoch {epoch + 1} (loss {sums['loss']}); lower lr or beta")
                history.append({"epoch": epoch + 1, **sums, "val_mse": self._mse(model, hold)})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{sums['loss']:.2f}", kl=f"{sums['kl']:.2f}", refresh=False)
        finally:
            if bar is not None:
                bar.close()
        model.eval()
        if cfg.prior == "ard":
            self._update_ard(model, train, g_cpu)
        report, summary = latent_report(model, train, cfg.relevance_mass, cfg.active_threshold, seed=cfg.seed)
        extra: dict[str, Any] = {"recon_mse": self._mse(model, hold)}
        if labels is not None:
            extra.update(_probe_relevant(model, data, labels, report, cfg.seed, self.log))
        summary = LatentSummary(**{**summary.to_dict(), **extra})
        return VAEResult(model=model, history=history, report=report, summary=summary,
                         train_rows=train_rows, holdout_rows=hold_rows)

    @staticmethod
    @torch.no_grad()
    def _normalisation(model: VAE, train: Tensor) -> None:
        if model.cfg.likelihood == "bernoulli":
            return
        mean = train.mean(0)
        var = (train - mean).pow(2).mean()  # mean per-feature variance
        model.x_mean.copy_(mean)
        model.x_scale.fill_(1.0 / math.sqrt(max(float(var), 1e-12)))

    @torch.no_grad()
    def _update_ard(self, model: VAE, train: Tensor, g: torch.Generator) -> None:
        # s_l^2 = mean over a fresh subset of E_q[z_l^2] = mu_l^2 + sigma_l^2  (b_l / a_l with a0 = b0 = 0)
        n = train.shape[0]
        rows = torch.randperm(n, generator=g)[: self.cfg.ard_samples].to(train.device)
        total = torch.zeros(model.d_latent, device=train.device)
        for s in range(0, rows.shape[0], 4096):
            mu, logvar = model.encode(train[rows[s : s + 4096]])
            total += (mu.pow(2) + logvar.exp()).sum(0)
        model.prior_var.copy_((total / rows.shape[0]).clamp_min(_MIN_VAR))

    @staticmethod
    @torch.no_grad()
    def _mse(model: VAE, x: Tensor) -> float:
        if x.shape[0] == 0:
            return float("nan")
        was = model.training
        model.eval()
        mu, _ = model.encode(x)
        err = float((model.decode(mu) - x).pow(2).mean())
        model.train(was)
        return err

    def _bar(self):
        import sys

        if not self.progress or not sys.stderr.isatty():
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.cfg.epochs, desc=f"fit {self.cfg.prior} VAE", unit="epoch", file=sys.stderr,
                    dynamic_ncols=True, leave=False)


def fit_vae(X: Any, cfg: VAEConfig, y: Any = None, progress: bool = False, log: Log = silent) -> VAEResult:
    """Fit a VAE on ``X`` (n, d_in) with ``cfg``; see :class:`VAETrainer`."""
    return VAETrainer(cfg, progress=progress, log=log).fit(X, y)


# ---------------------------------------------------------------- save / load


def save_vae(model: VAE, path: str | os.PathLike) -> Path:
    """Write ``model`` to the directory ``path``: ``cfg.json`` (the config plus ``"format":
    "saedata-vae"``) and ``vae.safetensors`` (weights and buffers). A new directory appears
    all at once; files of an existing one are replaced atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SAEFormatError(f"{path}: exists and is not a directory; cannot save a VAE there")
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = {**model.cfg.to_dict(), "format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in model.state_dict().items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        (tmp / CFG_FILE).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
        if not path.exists():
            os.replace(tmp, path)
            return path
        for name in (WEIGHTS_FILE, CFG_FILE):
            os.replace(tmp / name, path / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_vae(path: str | os.PathLike, device: str = "cpu") -> VAE:
    """Read a VAE written by :func:`save_vae`; SAEFormatError names what is wrong."""
    from saedata.sae.formats import _read_json, _read_safetensors

    path = Path(path)
    cfg_dict = _read_json(path / CFG_FILE)
    if cfg_dict.get("format") != FORMAT_NAME:
        raise SAEFormatError(f"{path / CFG_FILE}: not a saedata VAE (format {cfg_dict.get('format')!r})")
    version = cfg_dict.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise SAEFormatError(f"{path / CFG_FILE}: format_version {version!r} is newer than this saedata reads")
    try:
        cfg = VAEConfig.from_dict({k: v for k, v in cfg_dict.items() if k not in ("format", "format_version")})
    except (ConfigError, TypeError) as e:
        raise SAEFormatError(f"{path / CFG_FILE}: invalid VAE config ({e})") from None
    tensors = _read_safetensors(path / WEIGHTS_FILE)
    model = VAE(cfg)
    expected = model.state_dict()
    for name, t in expected.items():
        if name not in tensors:
            raise SAEFormatError(f"{path / WEIGHTS_FILE}: missing tensor {name!r}")
        if tuple(tensors[name].shape) != tuple(t.shape):
            raise SAEFormatError(f"{path / WEIGHTS_FILE}: tensor {name!r} has shape {tuple(tensors[name].shape)}, "
                                 f"expected {tuple(t.shape)} from {CFG_FILE}")
    model.load_state_dict({k: tensors[k].float() for k in expected})
    return model.to(resolve_device(device)).eval()


# ---------------------------------------------------------- foreign encoders


class DiffusersEncoder:
    """A diffusers ``AutoencoderKL`` as a latent encoder for flattened images.

    Input rows are images flattened as (H, W, C) with values in [0, 1] (``image_shape``
    says which); each is converted to 3 channels, resized (bilinear) to the model's
    ``sample_size`` and scaled to [-1, 1]. Latents are the *mean* of the latent
    distribution, ``latent_dist.mean`` (n, c, h, w) with c = ``latent_channels`` and
    h = w = sample_size / 2^(number of down blocks - 1), flattened per image in (c, h, w)
    order: d_latent = c*h*w. The prior is the standard normal the model was trained with.
    """

    has_decoder = True
    batch_size = 8
    """Images per encoder forward pass."""
    sensitivity_rows = 16
    """Rows whose decoder Jacobian (Hutchinson estimate) gives the relevance weights."""

    def __init__(self, model: Any, path: str, image_shape: tuple[int, int, int] | None = None):
        self.model = model.eval()
        self.path = path
        self.image_shape = image_shape
        cfg = model.config
        self.sample_size = int(cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0])
        factor = 2 ** (len(cfg.down_block_types) - 1)
        side = self.sample_size // factor
        self.latent_shape = (int(cfg.latent_channels), side, side)
        self.d_latent = int(np.prod(self.latent_shape))
        self.prior_variance = torch.ones(self.d_latent)

    @property
    def d_in(self) -> int | None:
        return None if self.image_shape is None else int(np.prod(self.image_shape))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _images(self, x: Tensor) -> Tensor:
        if self.image_shape is None:
            raise ConfigError(f"{self.path}: an AutoencoderKL encodes images; give image data (a folder of images)")
        H, W, C = self.image_shape
        img = x.reshape(-1, H, W, C).permute(0, 3, 1, 2).float()
        if C == 1:
            img = img.expand(-1, 3, -1, -1)
        elif C == 4:
            img = img[:, :3]
        img = nn.functional.interpolate(img, size=(self.sample_size, self.sample_size), mode="bilinear",
                                        align_corners=False)
        return img * 2.0 - 1.0

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        dist = self.model.encode(self._images(x)).latent_dist
        return dist.mean.flatten(1), dist.logvar.flatten(1)

    def decode(self, z: Tensor) -> Tensor:
        """(n, d_latent) -> (n, 3 * sample_size^2) decoded images in [-1, 1] units."""
        return self.model.decode(z.reshape(-1, *self.latent_shape)).sample.flatten(1)


def load_encoder(path: str | os.PathLike, device: str = "cpu",
                 image_shape: tuple[int, int, int] | None = None) -> VAE | DiffusersEncoder:
    """A latent encoder from a saedata VAE directory, or a diffusers ``AutoencoderKL``
    directory (``config.json`` with ``_class_name: AutoencoderKL``; needs ``pip install
    'saedata[diffusers]'``). Anything else raises SAEFormatError naming what was found."""
    p = Path(path)
    if not p.exists():
        raise SAEFormatError(f"{p}: no such directory")
    if not p.is_dir():
        raise SAEFormatError(f"{p}: not a directory; give a saedata VAE or a diffusers AutoencoderKL directory")
    if (p / CFG_FILE).is_file():
        from saedata.sae.formats import _read_json

        if _read_json(p / CFG_FILE).get("format") == FORMAT_NAME:
            return load_vae(p, device=device)
    hf_cfg = p / "config.json"
    if (p / "vae" / "config.json").is_file() and not hf_cfg.is_file():  # a whole pipeline: use its VAE
        p, hf_cfg = p / "vae", p / "vae" / "config.json"
    if not hf_cfg.is_file():
        raise SAEFormatError(f"{p}: not a VAE encoder (no saedata {CFG_FILE} and no diffusers config.json)")
    from saedata.sae.formats import _read_json

    meta = _read_json(hf_cfg)
    kind = meta.get("_class_name") or (meta.get("architectures") or [None])[0] or meta.get("model_type") or "unknown"
    if kind != "AutoencoderKL":
        raise SAEFormatError(f"{p}: {kind} is not a VAE encoder; expected a saedata VAE or a diffusers AutoencoderKL")
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise SAEFormatError(
            f"{p}: reading a diffusers AutoencoderKL needs the diffusers package; "
            "pip install 'saedata[diffusers]'") from None
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    try:
        model = AutoencoderKL.from_pretrained(str(p))
    except Exception as e:  # diffusers raises many types for broken directories
        raise SAEFormatError(f"{p}: cannot load the AutoencoderKL ({' '.join(str(e).split())[:200]})") from None
    return DiffusersEncoder(model.to(resolve_device(device)), str(p), image_shape)


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
        extra["recon_mse"] = VAETrainer._mse(encoder, torch.from_numpy(_as_array(X, encoder.d_in)).to(encoder.device))
    if y is not None:
        extra.update(_probe_relevant(encoder, X, np.asarray(y), report, seed, log))
    return report, LatentSummary(**{**summary.to_dict(), **extra})


def _probe_relevant(encoder: Any, X: Any, labels: np.ndarray, report: pl.DataFrame, seed: int,
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

    Z = _as_array(Z, what="latents")
    d = Z.shape[1]
    sae_cfg = SAEConfig(d_in=d, d_sae=expansion * d, activation="topk", k=min(k, expansion * d))
    batch = min(256, Z.shape[0])
    train_cfg = TrainConfig(batch_size=batch, max_tokens=epochs * Z.shape[0], buffer_tokens=Z.shape[0],
                            dead_tokens=5 * Z.shape[0], lr=1e-3, checkpoint_every=0, seed=seed, device="cpu")
    with small_model_threads(2 * d * sae_cfg.d_sae, batch, torch.device("cpu")):
        return SAETrainer(sae_cfg, train_cfg, progress=False).fit(torch.from_numpy(Z))

