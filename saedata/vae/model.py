"""The VAE of the probes, read top to bottom like the paper.

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
paper's lagged update: :mod:`saedata.vae.train`), and the ELBO keeps its form with
KL(q || N(0, diag(s^2))):

    KL_l = 1/2 (log s_l^2 - log sigma_l^2 + (mu_l^2 + sigma_l^2) / s_l^2 - 1).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from saedata.analysis.probe import as_matrix
from saedata.config import VAEConfig

MIN_VAR = 1e-6
"""Floor of the ARD variances s^2 (an axis can collapse to zero spread)."""


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


@torch.no_grad()
def recon_mse(model: VAE, x: Tensor) -> float:
    """Mean squared error per feature of decode(mu(x)) against ``x`` (input units); NaN without rows."""
    if x.shape[0] == 0:
        return float("nan")
    was = model.training
    model.eval()
    mu, _ = model.encode(x)
    err = float((model.decode(mu) - x).pow(2).mean())
    model.train(was)
    return err


def as_rows(X: Any, d_in: int | None = None, what: str = "data") -> np.ndarray:
    """``X`` (numpy or torch) as a contiguous float32 (n, d_in) array, checked."""
    return as_matrix(X, what, dtype=np.float32, d_in=d_in, owner="the VAE")


@contextlib.contextmanager
def small_model_threads(params: int, batch_size: int, device: torch.device) -> Iterator[None]:
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
