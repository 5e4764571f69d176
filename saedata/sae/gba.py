"""Group Bias Adaptation (GBA): a ReLU SAE whose sparsity comes from its biases, not a penalty.

Chen, Sheen, Xiong, Wang and Yang (2025), "Taming Polysemanticity in LLMs: Provable
Feature Recovery via Sparse Autoencoders" (arXiv 2506.14002), train a ReLU SAE on the
reconstruction error alone and steer each latent's firing frequency with its encoder
bias; the latents are split into groups with different target frequencies, so rare and
common concepts each find latents whose frequency matches theirs ("neuron resonance").
saedata's rendering:

    groups   G contiguous groups of latents; group g has target frequency
             p_g = c * spread^(-g / (G - 1)), with c such that sum_j p_g(j) = k:
             the targets add up to ``k`` active latents per token
    loss     ||x s - relu(pre) W_dec - b_dec||^2         no L1, no L0 term;
                                                         b_enc gets no gradient step
    every T steps (a window of T batches, T such that the rarest target expects >= 10
    firings in it), for each latent j with frequency f_j and largest activation a_j in
    the window:
             f_j > p_g(j):   b_j <- b_j - rate * a_j           fires too often: raise its bar
             f_j = 0:        b_j <- min(b_j + rate * a~, 0)    silent: lower it, a~ the median
                                                               largest activation of the
                                                               latents that fired; never above 0

Between the two the bias stays, so a latent settles anywhere at or below its target
(the paper's rule also only revives latents that stop firing). The result is an ordinary
``relu`` SAE (its biases carry the sparsity) that saves, loads and exports like any.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from saedata.errors import ConfigError
from saedata.sae.model import SparseAutoencoder
from saedata.sae.train import SAETrainer, train_step

MIN_WINDOW_FIRINGS = 10
"""A window holds enough batches for the rarest target to expect this many firings."""


def group_targets(d_sae: int, k: int, groups: int, spread: float) -> Tensor:
    """Each latent's target firing frequency (d_sae,): ``groups`` contiguous groups with
    geometrically spaced targets from the most to the least frequent (ratio ``spread``),
    scaled to add up to ``k`` latents per token (capped at 1)."""
    groups = min(groups, d_sae)
    member = torch.arange(d_sae) * groups // d_sae  # group of each latent, sizes differ by <= 1
    shape = spread ** (-member.double() / max(groups - 1, 1))
    return (shape * (k / float(shape.sum()))).clamp(max=1.0).float()


def window_steps(targets: Tensor, batch_size: int) -> int:
    """Batches per adaptation window: the rarest target expects ``MIN_WINDOW_FIRINGS`` firings."""
    return max(1, math.ceil(MIN_WINDOW_FIRINGS / (float(targets.min()) * batch_size)))


@torch.no_grad()
def adapt_biases(b_enc: Tensor, fires: Tensor, peaks: Tensor, tokens: int, targets: Tensor, rate: float) -> None:
    """One bias adaptation from a window of ``tokens`` tokens: ``fires`` (d_sae,) counts each
    latent's firings, ``peaks`` (d_sae,) its largest activation; updates ``b_enc`` in place."""
    freq = fires.float() / max(tokens, 1)
    fired = fires > 0
    too_often = freq > targets
    b_enc.sub_(rate * peaks * too_often.to(peaks.dtype))
    if not bool(fired.all()):
        typical = float(peaks[fired].median()) if bool(fired.any()) else 1.0  # nothing fired: one unit
        lifted = (b_enc + rate * typical).clamp(max=0.0)
        b_enc.copy_(torch.where(fired, b_enc, torch.maximum(b_enc, lifted)))


class GBATrainer(SAETrainer):
    """:class:`~saedata.sae.train.SAETrainer` for GBA: a ReLU SAE trained on the squared error
    alone, its encoder biases adapted towards per-group target frequencies (``k``,
    ``gba_groups``, ``gba_spread``, ``gba_rate`` of the train config)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.sae_cfg.activation != "relu":
            raise ConfigError(f"GBA trains a ReLU SAE, not {self.sae_cfg.activation}")
        tc = self.train_cfg
        self.targets = group_targets(self.sae_cfg.d_sae, self.sae_cfg.k, tc.gba_groups, tc.gba_spread)
        self.window = window_steps(self.targets, tc.batch_size)
        self._objective_cfg = tc.replace(l1_coeff=0.0)

    def _prepare(self, sae: SparseAutoencoder, device: torch.device, state: dict[str, Any] | None) -> None:
        saved = (state or {}).get("extra", {})
        self.targets = self.targets.to(device)
        self.fires = saved.get("gba_fires", torch.zeros(sae.d_sae, dtype=torch.int64)).to(device)
        self.peaks = saved.get("gba_peaks", torch.zeros(sae.d_sae)).to(device)
        self.seen = int(saved.get("gba_seen", torch.tensor(0)))
        self.batches_seen = int(saved.get("gba_batches", torch.tensor(0)))

    def _parameters(self, sae: SparseAutoencoder) -> list[nn.Parameter]:
        return [p for p in sae.parameters() if p is not sae.b_enc]  # the biases are adapted, not learned

    def _extra_state(self) -> dict[str, Any]:
        return {"gba_fires": self.fires.cpu(), "gba_peaks": self.peaks.cpu(),
                "gba_seen": torch.tensor(self.seen), "gba_batches": torch.tensor(self.batches_seen)}

    def _step(self, sae: SparseAutoencoder, opt: torch.optim.Optimizer, x: Tensor, tokens_since_fired: Tensor):
        out = train_step(sae, opt, x, tokens_since_fired, self._objective_cfg)
        with torch.no_grad():
            codes = out.codes
            assert isinstance(codes, Tensor)
            self.fires += (codes > 0).sum(0)
            self.peaks = torch.maximum(self.peaks, codes.max(0).values)
            self.seen += x.shape[0]
            self.batches_seen += 1
            if self.batches_seen >= self.window:
                adapt_biases(sae.b_enc.data, self.fires, self.peaks, self.seen, self.targets, self.train_cfg.gba_rate)
                self.fires.zero_()
                self.peaks.zero_()
                self.seen = self.batches_seen = 0
        return out
