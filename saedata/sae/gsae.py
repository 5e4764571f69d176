"""Gradient SAEs (g-SAE): TopK SAEs whose training selection weighs in the loss gradient.

Olmo, Wilson, Forsey, Hepner, Howe and Wingate (2025), "Features that Make a Difference:
Leveraging Gradients for Improved Dictionary Learning" (Findings of NAACL 2025,
arXiv 2411.10397), keep the k latents that matter most to the model's output, not only
the k largest:

    pre   = (x s - b_dec) W_enc + b_enc                     (n, d_sae), as a TopK SAE
    g_s   = dL/dx / s                                       the next-token loss's gradient at
                                                            the hook, in the SAE's units
    score = pre + beta * pre * |W_dec g_s|                  |d_j . g_s|: how much one unit of
                                                            latent j moves the loss
    z     = relu(pre) on the k largest scores, 0 elsewhere  values stay the pre-activations

and train as a TopK SAE otherwise (squared error, AuxK, unit decoder rows). The gradient is
only known where the model runs, so inference is plain TopK, as in the paper: a g-SAE
saves as an ordinary ``topk`` SAE (exportable to SAELens and sparsify like any).

The activations arrive with their gradients side by side, ``(n, 2 d_in)`` rows
``[x | dL/dx]`` (what :func:`saedata.embed.train.collect_activations` reads with
``grads=True``), so the trainer's batching, shuffling, checkpoints and resumption are
:class:`~saedata.sae.train.SAETrainer`'s own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from saedata.config import TrainConfig
from saedata.errors import ConfigError
from saedata.sae.activations import SparseCodes
from saedata.sae.model import ForwardOutput, SparseAutoencoder, sparse_objective
from saedata.sae.train import SAETrainer, _as_rows, _StreamBatches, _TensorBatches, initialize_sae, train_step


def loss_effect(sae: SparseAutoencoder, grads: Tensor) -> Tensor:
    """``|W_dec g_s|`` (n, d_sae): the first-order change of the loss per unit of each latent,
    from the gradient ``grads`` (n, d_in) of the loss with respect to the input in the
    reader's units (``g_s = grads / s``)."""
    return (grads.to(sae.W_dec.dtype) / sae.input_scale @ sae.W_dec.T).abs()


def gradient_topk(pre: Tensor, effect: Tensor, k: int, beta: float) -> SparseCodes:
    """The g-SAE selection: the ``k`` latents of largest ``pre + beta * pre * effect`` per
    row, with their ReLU'd pre-activations as values (``(n, k)``). ``beta = 0`` is TopK."""
    score = pre + beta * pre * effect
    indices = score.topk(k, dim=-1, sorted=False).indices
    return SparseCodes(torch.relu(pre.gather(-1, indices)), indices)


def gsae_forward(sae: SparseAutoencoder, x: Tensor, grads: Tensor, beta: float,
                 dead_mask: Tensor | None = None, train_cfg: TrainConfig | None = None) -> ForwardOutput:
    """The training objective of a g-SAE on a batch ``x`` (n, d_in) whose loss gradients are
    ``grads`` (n, d_in): the TopK objective (squared error in normalised units plus AuxK)
    with the gradient-informed selection :func:`gradient_topk`."""
    tc = train_cfg or TrainConfig()
    x_s = x * sae.input_scale
    pre = torch.addmm(sae.b_enc, x_s - sae.b_dec, sae.W_enc)
    with torch.no_grad():
        chosen = gradient_topk(pre.detach(), loss_effect(sae, grads), sae.cfg.k, beta)
    codes = SparseCodes(torch.relu(pre.gather(-1, chosen.indices)), chosen.indices)
    return sparse_objective(sae, x_s, pre, codes, dead_mask, tc)


class _Acts:
    """The activation half of a ``[x | grad]`` batch source (for normalisation and evaluation)."""

    def __init__(self, batches: _TensorBatches | _StreamBatches, d_in: int):
        self.batches, self.d_in = batches, d_in

    def first_buffer(self) -> Tensor:
        return self.batches.first_buffer()[:, : self.d_in]


class GSAETrainer(SAETrainer):
    """:class:`~saedata.sae.train.SAETrainer` for g-SAEs: ``fit`` takes rows ``[x | dL/dx]``
    (n, 2 d_in), a tensor or an iterable of chunks; held-out rows are activations alone
    (n, d_in) or the same pairs. The SAE must be TopK; the result is a TopK SAE."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.sae_cfg.activation != "topk":
            raise ConfigError(f"a g-SAE is a TopK SAE, not {self.sae_cfg.activation}")

    def fit(self, source: Tensor | Iterable[Any], heldout: Tensor | None = None):  # type: ignore[override]
        if heldout is not None and heldout.shape[-1] == 2 * self.sae_cfg.d_in:
            heldout = heldout[:, : self.sae_cfg.d_in]
        return super().fit(source, heldout)

    def _batches(self, source: Tensor | Iterable[Any]) -> _TensorBatches | _StreamBatches:
        sc, tc = self.sae_cfg, self.train_cfg
        width = 2 * sc.d_in
        if isinstance(source, Tensor):
            data = _as_rows(source, width, "training data [activations | gradients]")
            if data.shape[0] == 0:
                raise ConfigError("training data has no rows")
            return _TensorBatches(data, tc.batch_size, tc.seed, tc.buffer_tokens, ordered=tc.chat_sequential)
        if tc.chat_sequential:
            raise ConfigError("sequential training keeps the tokens in order: pass them as one tensor, not a stream")
        return _StreamBatches(source, tc.batch_size, tc.buffer_tokens, tc.seed, width)

    def _init_sae(self, batches: _TensorBatches | _StreamBatches) -> SparseAutoencoder:
        return initialize_sae(self.sae_cfg, _Acts(batches, self.sae_cfg.d_in).first_buffer(), self.train_cfg.seed)

    def _step(self, sae: SparseAutoencoder, opt: torch.optim.Optimizer, x: Tensor, tokens_since_fired: Tensor):
        d, tc = self.sae_cfg.d_in, self.train_cfg
        return train_step(sae, opt, x[:, :d], tokens_since_fired, tc, lambda dead: gsae_forward(
            sae, x[:, :d], x[:, d:], tc.gsae_beta, dead_mask=dead, train_cfg=tc))

    def _evaluate(self, sae: SparseAutoencoder, batches: Any, device: torch.device) -> dict[str, float]:
        return super()._evaluate(sae, _Acts(batches, self.sae_cfg.d_in), device)  # type: ignore[arg-type]
