"""Fit a VAE: the training loop, with the ARD prior's lagged variance update.

    result = fit_vae(X, VAEConfig(d_in=64, d_latent=32, prior="ard"), y=labels)
    result.report          # one row per latent dimension: kl, ard_variance, relevance, active, relevant
    result.summary         # n_relevant, n_active, held-out recon_mse, linear-probe accuracy
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import Tensor

from saedata.config import VAEConfig
from saedata.console import Log, progress_bar, silent
from saedata.errors import ConfigError
from saedata.reader import resolve_device
from saedata.vae.latents import LatentSummary, latent_report, probe_relevant
from saedata.vae.model import MIN_VAR, VAE, as_rows, recon_mse, small_model_threads


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
        data = as_rows(X, cfg.d_in)
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
        bar = progress_bar(cfg.epochs, f"fit {cfg.prior} VAE", self.progress, unit="epoch")
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
                history.append({"epoch": epoch + 1, **sums, "val_mse": recon_mse(model, hold)})
                bar.update(1)
                bar.set_postfix(loss=f"{sums['loss']:.2f}", kl=f"{sums['kl']:.2f}", refresh=False)
        finally:
            bar.close()
        model.eval()
        if cfg.prior == "ard":
            self._update_ard(model, train, g_cpu)
        report, summary = latent_report(model, train, cfg.relevance_mass, cfg.active_threshold, seed=cfg.seed)
        extra: dict[str, Any] = {"recon_mse": recon_mse(model, hold)}
        if labels is not None:
            extra.update(probe_relevant(model, data, labels, report, cfg.seed, self.log))
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
        model.prior_var.copy_((total / rows.shape[0]).clamp_min(MIN_VAR))


def fit_vae(X: Any, cfg: VAEConfig, y: Any = None, progress: bool = False, log: Log = silent) -> VAEResult:
    """Fit a VAE on ``X`` (n, d_in) with ``cfg``; see :class:`VAETrainer`."""
    return VAETrainer(cfg, progress=progress, log=log).fit(X, y)
