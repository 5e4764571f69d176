"""Variational TopK SAEs (vSAE): a Gaussian posterior on the pre-activations, trained with a KL term.

Baker and Li (2025), "Analysis of Variational Sparse Autoencoders" (arXiv 2509.22994),
replace the deterministic pre-activations of a TopK SAE by a sample of a learned Gaussian
posterior and regularise it towards a standard normal prior:

    mu      = (x s - b_dec) W_enc + b_enc                (n, d_sae): the TopK pre-activations
    log s^2 = (x s - b_dec) W_var + b_var                a second encoder head (starts at 0: unit variance)
    u       = mu + exp(log s^2 / 2) eps,  eps ~ N(0, I)  reparameterised sample (training only)
    z       = TopK(u)                                    selection and values from the sample
    loss    = ||x s - z W_dec - b_dec||^2 + kl * KL + AuxK
    KL      = mean_n sum_j (mu^2 + s^2 - 1 - log s^2) / 2     KL(N(mu, s^2) || N(0, 1)), every latent

At inference the posterior mean is used (``z = TopK(mu)``), so a vSAE saves as an ordinary
``topk`` SAE (exportable like any); the variance head exists only while training and is
kept in the trainer's checkpoints. The paper finds the KL term pushes many more latents to
die than in a plain TopK SAE (``benchmarks/bench_sae_designs.py`` measures it here).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from saedata.config import TrainConfig
from saedata.errors import ConfigError
from saedata.sae.activations import topk
from saedata.sae.model import ForwardOutput, SparseAutoencoder, sparse_objective
from saedata.sae.train import SAETrainer, train_step


class VarianceHead(nn.Module):
    """The log-variance encoder ``log s^2 = (x s - b_dec) W_var + b_var`` (zero at start)."""

    def __init__(self, d_in: int, d_sae: int):
        super().__init__()
        self.W_var = nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_var = nn.Parameter(torch.zeros(d_sae))

    def forward(self, centred: Tensor) -> Tensor:
        return torch.addmm(self.b_var, centred, self.W_var)


def gaussian_kl(mu: Tensor, log_var: Tensor) -> Tensor:
    """``KL(N(mu, exp(log_var)) || N(0, 1))`` summed over latents, averaged over rows."""
    return 0.5 * (mu.pow(2) + log_var.exp() - 1.0 - log_var).sum(-1).mean()


def vsae_forward(sae: SparseAutoencoder, head: VarianceHead, x: Tensor, kl_coeff: float,
                 dead_mask: Tensor | None = None, train_cfg: TrainConfig | None = None,
                 generator: torch.Generator | None = None) -> ForwardOutput:
    """The vSAE objective on a batch ``x`` (n, d_in): TopK of a reparameterised posterior
    sample, squared error in normalised units, ``kl_coeff`` times the KL to N(0, 1), and AuxK
    on the posterior means. ``aux_loss`` holds the KL and AuxK terms together."""
    tc = train_cfg or TrainConfig()
    x_s = x * sae.input_scale
    centred = x_s - sae.b_dec
    mu = torch.addmm(sae.b_enc, centred, sae.W_enc)
    log_var = head(centred)
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    codes = topk(mu + (0.5 * log_var).exp() * eps, sae.cfg.k)
    return sparse_objective(sae, x_s, mu, codes, dead_mask, tc, extra=kl_coeff * gaussian_kl(mu, log_var))


class VSAETrainer(SAETrainer):
    """:class:`~saedata.sae.train.SAETrainer` for vSAEs: the SAE must be TopK; the variance
    head is trained beside it and checkpointed with the trainer's state; the result is the
    TopK SAE of the posterior means."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.sae_cfg.activation != "topk":
            raise ConfigError(f"a vSAE is a TopK SAE, not {self.sae_cfg.activation}")
        self.head: VarianceHead | None = None
        self.noise = torch.Generator()

    def _prepare(self, sae: SparseAutoencoder, device: torch.device, state: dict[str, Any] | None) -> None:
        self.head = VarianceHead(sae.d_in, sae.d_sae).to(device)
        self.noise = torch.Generator(device=device).manual_seed(self.train_cfg.seed)  # same seed, same samples
        saved = (state or {}).get("extra", {})
        if saved:
            self.head.load_state_dict({k: v.to(device) for k, v in saved["variance_head"].items()})
            self.noise.set_state(saved["noise"])

    def _parameters(self, sae: SparseAutoencoder) -> list[nn.Parameter]:
        assert self.head is not None
        return list(sae.parameters()) + list(self.head.parameters())

    def _extra_state(self) -> dict[str, Any]:
        assert self.head is not None
        return {"variance_head": {k: v.detach().cpu() for k, v in self.head.state_dict().items()},
                "noise": self.noise.get_state()}

    def _step(self, sae: SparseAutoencoder, opt: torch.optim.Optimizer, x: Tensor, tokens_since_fired: Tensor):
        head, tc = self.head, self.train_cfg
        assert head is not None
        return train_step(sae, opt, x, tokens_since_fired, tc,
                          lambda dead: vsae_forward(sae, head, x, tc.vsae_kl, dead_mask=dead, train_cfg=tc,
                                                    generator=self.noise))
