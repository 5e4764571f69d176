"""Train a sparse autoencoder on a stream of activations, scikit-learn style.

    trainer = SAETrainer(SAEConfig(d_in=384, d_sae=3072), TrainConfig(max_tokens=2_000_000))
    result = trainer.fit(acts)          # a (n_tokens, d_in) tensor, or an iterable of chunks
    result.sae.encode(x)

The loop follows Gao et al. (2024) and SAELens/sparsify:

* data: a tensor source is cycled with one seeded permutation per epoch; an iterable of
  chunks is drawn through a seeded shuffle buffer of ``buffer_tokens`` rows and iterated
  again (cycled) while fewer than ``max_tokens`` tokens have been trained on;
* normalisation: from the first buffer, ``input_scale`` s with E[||x s||^2] = d_in and
  ``b_dec`` = mean of the scaled data; tied init ``W_enc = W_dec^T`` with unit decoder rows;
* each step: Adam on the objective of ``SparseAutoencoder.forward`` with the gradient
  parallel to each decoder row removed, then decoder rows renormalised; a latent that has
  not fired for ``dead_tokens`` tokens is dead and feeds AuxK;
* batchtopk: after the last step, the inference threshold is the mean of the smallest
  value each batch of the first buffer keeps under the final weights;
* with held-out activations, their FVU every 10% of the budget; training stops when it
  improved by less than ``stop_tolerance`` (relative) since the measurement before;
* checkpoints every ``checkpoint_every`` steps in ``out_dir/checkpoint`` (the SAE plus
  ``trainer_state.pt``); ``fit`` with the same configs and ``out_dir`` resumes from it and
  ends with the same weights as an uninterrupted run. The final SAE is saved to
  ``out_dir`` (``cfg.json``, ``sae.safetensors``, ``metrics.json``).

On CPU training is bit-for-bit deterministic (same data + seed -> identical weights); on
CUDA the scatter/gather backward passes use atomics, so runs agree only to float tolerance.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saedata.config import SAEConfig, TrainConfig
from saedata.errors import ConfigError, DimensionMismatchError, SAEFormatError
from saedata.reader import resolve_device
from saedata.sae.formats import load_sae, save_sae
from saedata.sae.metrics import dead_fraction, fire_counts
from saedata.sae.model import ForwardOutput, SparseAutoencoder

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.json"
EVAL_TOKENS = 16_384
"""Rows of the first buffer used for the final FVU / L0 evaluation (and most held-out rows used)."""
HELDOUT_EVALS = 10
"""Held-out FVU measurements over the budget (every 10%; each is a forward pass over up
to EVAL_TOKENS rows, about three training steps' time at the default batch)..."""
MIN_EVALS = 3
"""...of which at least this many come before training may stop early."""
_RESUME_IGNORED = ("checkpoint_every", "device")
"""TrainConfig fields that may change between an interrupted run and its resumption."""


@dataclass(frozen=True)
class TrainResult:
    """What :meth:`SAETrainer.fit` learned."""

    sae: SparseAutoencoder
    """The trained SAE, in eval mode."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Final fvu, l0, dead_fraction (on the first buffer, eval mode), steps, tokens,
    seconds, loss (last step), lr and input_scale."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Per-step loss, mse, fvu, l0, aux_loss and dead fraction, every ``log_every`` steps."""


def default_lr(d_sae: int) -> float:
    """Gao et al. (2024): ``2e-4 / sqrt(d_sae / 16384)``."""
    return 2e-4 / math.sqrt(d_sae / 16384)


# ------------------------------------------------------------------------ data
def _as_rows(chunk: Any, d_in: int, what: str) -> Tensor:
    t = torch.as_tensor(chunk)
    if t.ndim != 2:
        raise DimensionMismatchError(f"{what} must be 2-D (n_tokens, d_in), got shape {tuple(t.shape)}")
    if t.shape[1] != d_in:
        raise DimensionMismatchError(f"{what} has width {t.shape[1]}, but the SAE expects d_in={d_in}")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise ConfigError(f"{what} must hold numbers, got dtype {t.dtype}")
    return t


class _TensorBatches:
    """Batches of a tensor cycled with one seeded permutation per epoch (``ordered``: the
    rows in their order, every epoch).

    Batch ``i`` holds rows ``[i B, (i+1) B)`` of the concatenated epoch permutations, so any
    batch is computed directly from its index (resuming needs no replay).
    """

    def __init__(self, data: Tensor, batch_size: int, seed: int, buffer_tokens: int, ordered: bool = False):
        self.data = data
        self.n = data.shape[0]
        self.batch_size = batch_size
        self.seed = seed
        self.buffer_tokens = buffer_tokens
        self.ordered = ordered
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.int64)

    def _permutation(self, epoch: int) -> Tensor:
        if self.ordered:
            if self._perm.numel() != self.n:
                self._perm = torch.arange(self.n)
            return self._perm
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._epoch = torch.randperm(self.n, generator=g), epoch
        return self._perm

    def first_buffer(self) -> Tensor:
        return self.data[self._permutation(0)[: self.buffer_tokens].to(self.data.device)]

    def batch(self, index: int) -> Tensor:
        start, need, parts = index * self.batch_size, self.batch_size, []
        while need > 0:
            epoch, offset = divmod(start, self.n)
            take = min(self.n - offset, need)
            parts.append(self._permutation(epoch)[offset : offset + take])
            start, need = start + take, need - take
        return self.data[torch.cat(parts).to(self.data.device)]


class _StreamBatches:
    """Batches drawn through a seeded shuffle buffer from an iterable of (rows, d_in) chunks.

    The buffer fills to ``capacity`` rows, is shuffled, and hands out full batches until
    half of it is left, then refills. The source is iterated again whenever it runs out
    (a one-shot iterator simply ends the stream). ``first_buffer`` is the first full
    buffer, kept for normalisation and evaluation.
    """

    def __init__(self, source: Iterable[Any], batch_size: int, capacity: int, seed: int, d_in: int):
        self.source = source
        self.batch_size = batch_size
        self.capacity = max(capacity, 2 * batch_size)
        self.seed = seed
        self.d_in = d_in
        self._first: Tensor | None = None
        self._pushback: list[Tensor] = []
        self._iter = self._generate()

    def _chunks(self) -> Iterator[Tensor]:
        epoch = 0
        while True:
            got = False
            for i, chunk in enumerate(self.source):
                rows = _as_rows(chunk, self.d_in, f"training chunk {i}").to("cpu", torch.float32)
                if rows.shape[0]:
                    got = True
                    yield rows
            if not got:
                if epoch == 0:
                    raise ConfigError("the training source yielded no activations")
                return
            epoch += 1

    def _generate(self) -> Iterator[Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        B, buf, pending, n_pending = self.batch_size, torch.zeros(0, self.d_in), [], 0
        for rows in self._chunks():
            pending.append(rows)
            n_pending += rows.shape[0]
            if buf.shape[0] + n_pending < self.capacity:
                continue
            buf = torch.cat([buf, *pending])
            pending, n_pending = [], 0
            buf = buf[torch.randperm(buf.shape[0], generator=g)]
            if self._first is None:
                self._first = buf[: self.capacity].clone()
            n_out = (buf.shape[0] - self.capacity // 2) // B * B
            for i in range(0, n_out, B):
                yield buf[i : i + B]
            buf = buf[n_out:]
        # a one-shot source ran out: hand out what is left
        buf = torch.cat([buf, *pending])
        if buf.shape[0] == 0:
            return
        buf = buf[torch.randperm(buf.shape[0], generator=g)]
        if self._first is None:
            self._first = buf[: self.capacity].clone()
        if buf.shape[0] < B:
            yield buf
            return
        for i in range(0, buf.shape[0] // B * B, B):
            yield buf[i : i + B]

    def first_buffer(self) -> Tensor:
        if self._first is None:  # draw (and keep) the first batch to fill the buffer
            batch = next(self._iter, None)
            if batch is not None:
                self._pushback.append(batch)
        if self._first is None:
            raise ConfigError("the training source yielded no activations")
        return self._first

    def next(self) -> Tensor | None:
        if self._pushback:
            return self._pushback.pop()
        return next(self._iter, None)


# ------------------------------------------------------------- building blocks
@torch.no_grad()
def initialize_sae(sae_cfg: SAEConfig, sample: Tensor, seed: int) -> SparseAutoencoder:
    """A fresh SAE for training: tied init from ``seed``; ``input_scale`` and ``b_dec``
    estimated from ``sample`` (n, d_in), the first buffer of training data."""
    buf = sample.detach().to("cpu", torch.float32)
    if buf.shape[0] == 0:
        raise ConfigError("the training source yielded no activations")
    if not bool(torch.isfinite(buf).all()):
        raise ConfigError("training data contains NaN or infinite values")
    mean_sq_norm = float(buf.pow(2).sum(-1).mean())
    if mean_sq_norm <= 0:
        raise ConfigError("training data is all zeros; cannot normalise it")
    sae = SparseAutoencoder(sae_cfg)
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    # s such that E[||x s||^2] = d_in  (SAELens "expected_average_only_in")
    scale = math.sqrt(sae_cfg.d_in / mean_sq_norm)
    sae.input_scale.fill_(scale)
    sae.b_dec.copy_((buf * scale).mean(0))
    return sae


def train_step(
    sae: SparseAutoencoder,
    opt: torch.optim.Optimizer,
    x: Tensor,
    tokens_since_fired: Tensor,
    train_cfg: TrainConfig,
    objective: Callable[[Tensor], ForwardOutput] | None = None,
) -> ForwardOutput:
    """One optimisation step on the batch ``x`` (n, d_in); updates ``tokens_since_fired`` (d_sae,).

    Latents idle for ``dead_tokens`` tokens feed AuxK; the decoder gradient parallel to each
    row is removed before the step and the rows are renormalised after it. ``objective``
    maps the dead-latent mask to the batch's :class:`ForwardOutput` (default: the SAE's own
    ``forward`` on ``x``); the training designs (:mod:`saedata.sae.vsae`,
    :mod:`saedata.sae.gba`, :mod:`saedata.sae.gsae`) pass theirs.
    """
    dead_mask = tokens_since_fired >= train_cfg.dead_tokens
    opt.zero_grad(set_to_none=True)
    out = objective(dead_mask) if objective is not None else sae(x, dead_mask=dead_mask, train_cfg=train_cfg)
    out.loss.backward()
    sae.remove_gradient_parallel_to_decoder()
    opt.step()
    sae.set_decoder_norm_to_unit()
    with torch.no_grad():
        fired = fire_counts(out.codes, sae.d_sae) > 0
        tokens_since_fired.add_(x.shape[0]).masked_fill_(fired, 0)
    return out


# --------------------------------------------------------------------- trainer
class SAETrainer:
    """Fit a :class:`SparseAutoencoder` (hyperparameters in ``__init__``, learning in ``fit``).

    ``out_dir`` (optional) receives the final SAE and, with ``checkpoint_every > 0``,
    resumable checkpoints. ``progress`` shows a tqdm bar on stderr when it is a terminal.
    """

    def __init__(
        self,
        sae_cfg: SAEConfig,
        train_cfg: TrainConfig = TrainConfig(),  # noqa: B008  (frozen, never mutated)
        out_dir: str | Path | None = None,
        progress: bool = True,
        log: Callable[[str], None] | None = None,
    ):
        self.sae_cfg = sae_cfg
        self.train_cfg = train_cfg
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.log = log
        """Where progress lines go (tokens, held-out FVU, ETA) when no progress bar is shown."""

    # ------------------------------------------------------------------ fit
    def fit(self, source: Tensor | Iterable[Any], heldout: Tensor | None = None) -> TrainResult:
        """Train on ``source``: a float tensor (n_tokens, d_in) or an iterable of such chunks.

        ``heldout``: (n, d_in) activations not trained on; their FVU is measured every 10%
        of the budget, and training stops early when it levels off (``stop_tolerance``)."""
        sc, tc = self.sae_cfg, self.train_cfg
        device = resolve_device(tc.device)
        batches = self._batches(source)
        total_steps = max(1, tc.max_tokens // tc.batch_size)
        lr = tc.lr if tc.lr is not None else default_lr(sc.d_sae)

        state = self._load_checkpoint(device)
        if state is None:
            sae, step = self._init_sae(batches).to(device), 0
            tokens_since_fired = torch.zeros(sc.d_sae, dtype=torch.int64, device=device)
            history: list[dict[str, float]] = []
            evals: list[list[float]] = []  # [step, held-out FVU]
            tokens, seconds = 0, 0.0
        else:
            sae, step = state["sae"], int(state["step"])
            tokens_since_fired = state["tokens_since_fired"].to(device)
            history, tokens, seconds = list(state["history"]), int(state["tokens"]), float(state["seconds"])
            evals = [list(e) for e in state.get("evals", [])]
            torch.set_rng_state(state["torch_rng"])
            if isinstance(batches, _StreamBatches):  # replay the buffer up to where we were
                for _ in range(step):
                    batches.next()
        sae.train()
        self._prepare(sae, device, state)
        opt = torch.optim.Adam(self._parameters(sae), lr=lr)
        if state is not None:
            opt.load_state_dict(state["optimizer"])

        log_every = max(1, total_steps // 100)
        show_every = max(1, total_steps // 1000)
        eval_every = max(1, total_steps // HELDOUT_EVALS)
        last: dict[str, float] = {}
        pbar = self._progress_bar(total_steps, step)
        started, first_step = time.perf_counter(), step
        stopped = False
        try:
            while step < total_steps:
                x = self._next_batch(batches, step)
                if x is None:
                    warnings.warn(
                        f"training source ran out after {tokens} tokens (< max_tokens={tc.max_tokens}); "
                        "pass a re-iterable source (a list or a tensor) to cycle it",
                        stacklevel=2,
                    )
                    break
                x = x.to(device, torch.float32, non_blocking=True)
                out = self._step(sae, opt, x, tokens_since_fired)
                step += 1
                tokens += x.shape[0]
                log_now = step % log_every == 0 or step == total_steps
                show_now = pbar is not None and (log_now or step % show_every == 0)
                if log_now or show_now:
                    last = {
                        "step": step,
                        "tokens": tokens,
                        "loss": float(out.loss.detach()),
                        "mse": float(out.mse.detach()),
                        "fvu": float(out.fvu.detach()),
                        "l0": float(out.l0),
                        "aux_loss": float(out.aux_loss.detach()),
                        "dead_fraction": dead_fraction(tokens_since_fired, tc.dead_tokens),
                    }
                    if log_now:
                        history.append(last)
                    if pbar is not None and show_now:
                        pbar.update(step - pbar.n)
                        pbar.set_postfix(fvu=f"{last['fvu']:.3f}", l0=f"{last['l0']:.1f}",
                                         dead=f"{last['dead_fraction']:.2f}", refresh=False,
                                         **({"heldout_fvu": f"{evals[-1][1]:.3f}"} if evals else {}))
                if heldout is not None and step % eval_every == 0 and step < total_steps:
                    evals.append([step, self._fvu(sae, heldout, device)])
                    stopped = self._levelled_off(evals)
                    self._report(pbar, step, total_steps, tokens, evals[-1][1], last,
                                 (time.perf_counter() - started) / (step - first_step), stopped)
                    if stopped:
                        break
                due = tc.checkpoint_every > 0 and step % tc.checkpoint_every == 0
                if due and self.out_dir is not None and step < total_steps:
                    elapsed = seconds + time.perf_counter() - started
                    self._save_checkpoint(sae, opt, step, tokens, tokens_since_fired, history, elapsed, evals)
                self._after_step(step)
        finally:
            if pbar is not None:
                pbar.close()
        seconds += time.perf_counter() - started

        if sc.activation == "batchtopk":
            sample = batches.first_buffer()[:EVAL_TOKENS].to(device, torch.float32)
            sae.calibrate_batch_threshold(sample, tc.batch_size)
        sae.eval()
        metrics = self._evaluate(sae, batches, device)
        window = min(tc.dead_tokens, max(tokens, 1))
        metrics.update(
            dead_fraction=dead_fraction(tokens_since_fired, window),
            steps=step,
            tokens=tokens,
            seconds=seconds,
            loss=last.get("loss", float("nan")),
            lr=lr,
            input_scale=float(sae.input_scale),
        )
        if heldout is not None:
            metrics.update(heldout_fvu=self._fvu(sae, heldout, device), stopped_early=stopped)
        if self.out_dir is not None:
            self._save_final(sae, metrics)
        return TrainResult(sae=sae, metrics=metrics, history=history)

    # -------------------------------------------------------------- pieces
    @torch.no_grad()
    def _fvu(self, sae: SparseAutoencoder, x_all: Tensor, device: torch.device) -> float:
        """FVU of ``sae`` (in eval mode) on the rows of ``x_all``."""
        was_training = sae.training
        sae.eval()
        mean = x_all.to(device, torch.float32).mean(0)
        err_sq = var = 0.0
        for start in range(0, x_all.shape[0], 4096):
            x = x_all[start : start + 4096].to(device, torch.float32)
            err_sq += float((sae(x, train_cfg=self.train_cfg).recon - x).pow(2).sum())
            var += float((x - mean).pow(2).sum())
        sae.train(was_training)
        return err_sq / max(var, 1e-12)

    def _levelled_off(self, evals: list[list[float]]) -> bool:
        """Whether the held-out FVU improved by less than ``stop_tolerance`` since the
        measurement before (after at least MIN_EVALS)."""
        tol = self.train_cfg.stop_tolerance
        if tol <= 0 or len(evals) < MIN_EVALS:
            return False
        before, now = evals[-2][1], evals[-1][1]
        return before - now < tol * before

    def _report(self, pbar, step: int, total: int, tokens: int, fvu: float, last: dict[str, float],
                seconds_per_step: float, stopped: bool) -> None:
        """A held-out measurement as a line through ``log`` (a progress bar shows it instead)."""
        if pbar is not None or self.log is None:
            return
        eta = "stopping: it levelled off" if stopped else f"ETA {_duration(seconds_per_step * (total - step))}"
        self.log(f"train SAE: step {step}/{total}, {tokens:,} tokens, held-out FVU {fvu:.3f}, "
                 f"L0 {last.get('l0', float('nan')):.1f}, {eta}")

    def _step(self, sae: SparseAutoencoder, opt: torch.optim.Optimizer, x: Tensor, tokens_since_fired: Tensor):
        return train_step(sae, opt, x, tokens_since_fired, self.train_cfg)

    def _prepare(self, sae: SparseAutoencoder, device: torch.device, state: dict[str, Any] | None) -> None:
        """Set up what a training design keeps beside the SAE (from a checkpoint's ``state``
        when resuming); called once per ``fit`` before the optimiser is made."""

    def _parameters(self, sae: SparseAutoencoder) -> list[torch.nn.Parameter]:
        """What the optimiser updates: the SAE's parameters (a design may add or hold back some)."""
        return list(sae.parameters())

    def _extra_state(self) -> dict[str, Any]:
        """Tensors a training design adds to a checkpoint (restored through ``_prepare``)."""
        return {}

    def _after_step(self, step: int) -> None:
        """Hook called after every optimisation step (tests use it to simulate a crash)."""

    def _batches(self, source: Tensor | Iterable[Any]) -> _TensorBatches | _StreamBatches:
        sc, tc = self.sae_cfg, self.train_cfg
        if isinstance(source, Tensor):
            data = _as_rows(source, sc.d_in, "training data")
            if data.shape[0] == 0:
                raise ConfigError("training data has no rows")
            return _TensorBatches(data, tc.batch_size, tc.seed, tc.buffer_tokens, ordered=tc.chat_sequential)
        if not isinstance(source, Iterable):
            raise ConfigError(
                f"training source must be a tensor or an iterable of tensors, got {type(source).__name__}"
            )
        if tc.chat_sequential:
            raise ConfigError("sequential training keeps the tokens in order: pass them as one tensor, not a stream")
        return _StreamBatches(source, tc.batch_size, tc.buffer_tokens, tc.seed, sc.d_in)

    @staticmethod
    def _next_batch(batches: _TensorBatches | _StreamBatches, step: int) -> Tensor | None:
        if isinstance(batches, _TensorBatches):
            return batches.batch(step)
        return batches.next()

    def _init_sae(self, batches: _TensorBatches | _StreamBatches) -> SparseAutoencoder:
        return initialize_sae(self.sae_cfg, batches.first_buffer(), self.train_cfg.seed)

    @torch.no_grad()
    def _evaluate(
        self, sae: SparseAutoencoder, batches: _TensorBatches | _StreamBatches, device: torch.device
    ) -> dict[str, float]:
        """FVU and L0 in eval mode on (up to ``EVAL_TOKENS`` rows of) the first buffer."""
        x_all = batches.first_buffer()[:EVAL_TOKENS].to(torch.float32)
        mean = x_all.to(device).mean(0)
        err_sq = var = active = 0.0
        for start in range(0, x_all.shape[0], 4096):
            x = x_all[start : start + 4096].to(device)
            out = sae(x, train_cfg=self.train_cfg)
            err_sq += float((out.recon - x).pow(2).sum())
            var += float((x - mean).pow(2).sum())
            active += float(out.l0) * x.shape[0]
        return {"fvu": err_sq / max(var, 1e-12), "l0": active / max(x_all.shape[0], 1)}

    def _progress_bar(self, total: int, initial: int):
        if not self.progress or not sys.stderr.isatty():
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc="train SAE", unit="step", file=sys.stderr, dynamic_ncols=True)

    # -------------------------------------------------------- checkpoints
    def _checkpoint_dir(self) -> Path | None:
        if self.out_dir is None:
            return None
        ckpt = self.out_dir / CHECKPOINT_DIR
        old = self.out_dir / (CHECKPOINT_DIR + ".old")
        if not ckpt.exists() and old.exists():  # crashed while swapping checkpoints
            return old
        return ckpt

    def _configs(self) -> tuple[dict[str, Any], dict[str, Any]]:
        tc = {k: v for k, v in self.train_cfg.to_dict().items() if k not in _RESUME_IGNORED}
        return self.sae_cfg.to_dict(), tc

    def _save_checkpoint(self, sae, opt, step, tokens, tokens_since_fired, history, seconds, evals) -> None:
        assert self.out_dir is not None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        sae_cfg, train_cfg = self._configs()
        state = {
            "version": 1,
            "step": step,
            "tokens": tokens,
            "seconds": seconds,
            "optimizer": opt.state_dict(),
            "tokens_since_fired": tokens_since_fired.detach().cpu(),
            "history": history,
            "evals": evals,
            "torch_rng": torch.get_rng_state(),
            "sae_cfg": sae_cfg,
            "train_cfg": train_cfg,
            "extra": self._extra_state(),
        }
        tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.tmp-", dir=self.out_dir))
        try:
            save_sae(sae, tmp)
            torch.save(state, tmp / STATE_FILE)
            ckpt, old = self.out_dir / CHECKPOINT_DIR, self.out_dir / (CHECKPOINT_DIR + ".old")
            if old.exists():
                shutil.rmtree(old)
            if ckpt.exists():
                os.replace(ckpt, old)
            os.replace(tmp, ckpt)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _load_checkpoint(self, device: torch.device) -> dict[str, Any] | None:
        ckpt = self._checkpoint_dir()
        if ckpt is None or not (ckpt / STATE_FILE).is_file():
            return None
        try:  # weights_only: a checkpoint holding anything but tensors and plain data is refused
            state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
            raise SAEFormatError(f"{ckpt / STATE_FILE}: not a checkpoint saedata can resume from "
                                 f"({str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__}); "
                                 "remove the checkpoint directory to train from the start") from None
        if not isinstance(state, dict):
            raise SAEFormatError(f"{ckpt / STATE_FILE}: not a checkpoint saedata can resume from")
        sae_cfg, train_cfg = self._configs()
        if state.get("sae_cfg") != sae_cfg or state.get("train_cfg") != train_cfg:
            raise ConfigError(
                f"{ckpt} was written by a run with different settings; "
                "use the same configs to resume, or remove the checkpoint directory"
            )
        state["sae"] = load_sae(ckpt, device=device)
        return state

    def _save_final(self, sae: SparseAutoencoder, metrics: dict[str, float]) -> None:
        assert self.out_dir is not None
        save_sae(sae, self.out_dir)
        tmp = self.out_dir / (METRICS_FILE + ".tmp")
        tmp.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.out_dir / METRICS_FILE)
        for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old"):
            shutil.rmtree(self.out_dir / name, ignore_errors=True)


def _duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
