"""Train an SAE on corpora: Documents -> reader activations -> :class:`~saedata.sae.SAETrainer`.

The reader runs once over (a sample of) the corpora, read one after the other; the token
activations are kept in memory, up to ``max_cached_tokens``, a few held out, and the
trainer cycles over the rest: ``train_cfg.passes`` passes, at least ``MIN_CORPUS_TOKENS``
tokens (at most ``max_epochs`` passes) and at most ``train_cfg.max_tokens``, at
``CORPUS_LR_SCALE`` x Gao et al.'s learning rate, stopping early when the held-out FVU
levels off. When the corpora hold more tokens than that, documents are sampled evenly
across them (not just their head). When they fit, the corpora are read as embedding reads them, and what was
read can be kept (a :class:`~saedata.reader.ReadCache`) so that embedding them right
after does not read them a second time.

``train_cfg.method`` picks what learns the dictionary: an SAE trained by gradient descent
(:class:`~saedata.sae.SAETrainer`), a semi-NMF factorisation of the activations
(:mod:`saedata.sae.snmf`; MLP activations, ``mlp_post``, unless another hook is asked for)
or a gradient SAE (:mod:`saedata.sae.gsae`), which reads each token's next-token-loss
gradient beside its activation. ``train_cfg.chat_sequential`` (FAST) reads every token of
each document, special tokens included, and trains on them in corpus order, document after
whole document, holding out whole documents."""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from saedata.config import InputConfig, ReaderConfig, SAEConfig, TrainConfig
from saedata.console import Log, progress_bar, silent
from saedata.corpus import Document, corpus_size, is_image_source, open_corpus, rechunk
from saedata.embed.encode import reader_texts
from saedata.errors import ConfigError, InputError

if TYPE_CHECKING:
    import torch

    from saedata.reader import ReadCache, Reader
    from saedata.sae import SAETrainer, TrainResult

MAX_CACHED_TOKENS = 1_000_000
"""Token activations held in memory for training (1M x 384 float32 = 1.5 GB)."""
HELDOUT_FRACTION = 0.05
"""Share of the token activations held out to decide when training has levelled off..."""
MIN_HELDOUT = 512
"""...when that is at least this many tokens (fewer: no held-out set, the whole budget runs)."""
MIN_CORPUS_TOKENS = 500_000
"""Fewest training tokens on a corpus of any size (a small corpus is cycled, up to
``max_epochs`` times)."""
CORPUS_LR_SCALE = 8.0
"""Learning rate of corpus training at the default batch (4,096 tokens), in units of Gao
et al.'s ``default_lr``. Their rate suits long runs; corpus runs are a few hundred
steps. On 4,607 Debian package descriptions (benchmarks/README.md) 8x reached in one
pass (459 k tokens, held-out FVU 0.250) what 2 M tokens at 1x reached (0.260); 2x: 0.283
at 800 k tokens, 12x: 0.244 at 459 k, with no dead latents. On the tiny planted corpora
of the tests (batches of 1,024 and fewer tokens, under 100 steps) rates above 2x made
latents less specific, hence the rate per token is kept for smaller batches."""


class ReadActivations(NamedTuple):
    """Token activations read from corpora, and (when asked for) whose they are."""

    chunks: list[torch.Tensor]
    """(n_tokens_i, d_model) float32 rows on CPU, one chunk per batch read."""
    doc_index: list[torch.Tensor]
    """(n_tokens_i,) int64 per chunk: the position in ``docs`` of each row's document
    (empty unless ``keep_docs``)."""
    docs: list[Document]
    """The documents read, in order (empty unless ``keep_docs``)."""


def collect_activations(
    sources: str | list[str],
    reader: Reader,
    input_cfg: InputConfig = InputConfig(),
    max_tokens: int = MAX_CACHED_TOKENS,
    progress: bool = False,
    read_docs: int | None = None,
    keep: ReadCache | None = None,
    grads: bool = False,
    sequential: bool = False,
) -> list[torch.Tensor]:
    """Reader activations of the corpora's tokens, as chunks of (n_tokens, d_model)
    float32 rows on CPU (:func:`read_activations`' chunks)."""
    return read_activations(sources, reader, input_cfg, max_tokens, progress, read_docs, keep,
                            grads=grads, sequential=sequential).chunks


def read_activations(
    sources: str | list[str],
    reader: Reader,
    input_cfg: InputConfig = InputConfig(),
    max_tokens: int = MAX_CACHED_TOKENS,
    progress: bool = False,
    read_docs: int | None = None,
    keep: ReadCache | None = None,
    keep_docs: bool = False,
    purpose: str = "to train an SAE on",
    grads: bool = False,
    sequential: bool = False,
) -> ReadActivations:
    """Reader activations of the corpora's tokens, and with ``keep_docs`` the documents
    read and each row's document.

    Reads at most ``max_tokens`` tokens; when the corpora are larger, every j-th document
    is read, with j set from the token count of the first documents. ``read_docs``: read
    each corpus ``read_docs`` documents at a time, as embedding does (default: all the
    corpora together, ``input_cfg.batch_size`` at a time); with ``keep``, what was read is
    kept there for embedding to take, when every document was read whole (else ``keep``
    is emptied). ``grads``: rows are ``[activation | gradient of the next-token loss]``
    (n_tokens, 2 d_model), from a reader opened with ``grads=True``. ``sequential``: one
    chunk per document read, every token of it (special tokens too) in text order,
    documents in corpus order, whole documents only (the budget ends at a document's end).
    InputError "no documents {purpose}" when nothing was read.
    """
    import torch

    corpora = [open_corpus(s, input_cfg) for s in ([sources] if isinstance(sources, str) else sources)]
    sizes = [corpus_size(c) for c in corpora]
    total = None if None in sizes else sum(sizes)  # type: ignore[arg-type]
    if read_docs:
        batches = itertools.chain.from_iterable(rechunk(c, read_docs) for c in corpora)
    else:
        batches = rechunk(itertools.chain.from_iterable(corpora), input_cfg.batch_size)
    if keep is not None and (grads or sequential):
        keep.clear()  # not what embedding reads: nothing to keep for it
        keep = None
    chunks: list[torch.Tensor] = []
    doc_index: list[torch.Tensor] = []
    kept_docs: list[Document] = []
    n = 0
    stride = 1
    seen = 0
    bar = progress_bar(max_tokens, "read activations", progress, unit="tok")
    for docs in batches:
        chosen = [d for i, d in enumerate(docs, start=seen) if i % stride == 0]
        picked, _ = reader_texts(chosen, reader)
        seen += len(docs)
        if not picked:
            continue
        batch = reader.read(picked, grads=True) if grads else \
            reader.read(picked, keep_special=True) if sequential else reader.read(picked)
        acts = batch.acts.float().cpu()
        if grads:
            assert batch.grads is not None
            acts = torch.cat([acts, batch.grads.float().cpu()], 1)
        if stride == 1 and total and not chunks:
            # Decide the sampling stride from the first batch's tokens per document.
            per_doc = max(acts.shape[0] / len(picked), 1.0)
            stride = max(1, math.ceil(total * per_doc / max_tokens))
        if sequential:
            order = torch.argsort(batch.doc_index.cpu(), stable=True)  # each document's tokens, in text order
            full = False
            for rows in torch.split(acts[order], batch.n_tokens.tolist()):
                if n and n + rows.shape[0] > max_tokens:
                    full = True
                    break
                if rows.shape[0]:
                    chunks.append(rows)
                    n += rows.shape[0]
                    bar.update(rows.shape[0])
            if full or n >= max_tokens:
                break
            continue
        rows = batch.doc_index.cpu() + len(kept_docs)
        take = min(acts.shape[0], max_tokens - n)
        if keep is not None:
            if stride == 1 and take == acts.shape[0] and len(picked) == len(docs):
                keep.keep(picked, batch)
            else:
                keep.clear()
                keep = None
        if take < acts.shape[0]:
            # Keep an even sample of the batch's tokens, not its first ones.
            idx = torch.linspace(0, acts.shape[0] - 1, take).long()
            acts, rows = acts[idx], rows[idx]
        chunks.append(acts)
        if keep_docs:
            doc_index.append(rows)
            kept_docs.extend(chosen)
        n += take
        bar.update(take)
        if n >= max_tokens:
            if keep is not None:
                keep.clear()  # the corpora go on: embedding must read them anyway
            break
    bar.close()
    if n == 0:
        raise InputError(f"no documents {purpose} (the corpus is empty or blank)",
                         path=" + ".join(c.source for c in corpora))
    return ReadActivations(chunks, doc_index, kept_docs)


def train(
    sources: str | os.PathLike | list[str],
    out: str | os.PathLike,
    *,
    d_sae: int | None = None,
    input_cfg: InputConfig = InputConfig(),
    reader_cfg: ReaderConfig = ReaderConfig(),
    train_cfg: TrainConfig = TrainConfig(),
    max_cached_tokens: int = MAX_CACHED_TOKENS,
    progress: bool = False,
    log: Log = silent,
    read_docs: int | None = None,
    keep: ReadCache | None = None,
) -> TrainResult:
    """Train an SAE on the reader's activations of a corpus (or of several, read as one)
    and save it to ``out``.

    The SAE's activation and k come from ``train_cfg``; ``d_sae`` defaults to
    ``train_cfg.expansion`` x the reader width. Returns the
    trainer's result (the SAE and its FVU / L0 / dead-fraction metrics). ``read_docs``
    and ``keep``: read as embedding will, and keep what was read for it
    (:func:`collect_activations`).
    """
    from saedata.reader import Reader, open_reader

    paths = [os.fspath(s) for s in sources] if isinstance(sources, list) else [os.fspath(sources)]
    for path in paths:  # a missing file or a bad first line fails before the reader loads
        if path != "-":
            next(iter(open_corpus(path, input_cfg)), None)
    method, sequential = train_cfg.method, train_cfg.chat_sequential
    images = is_image_source(paths[0], input_cfg)
    if images and (method == "gsae" or sequential):
        raise ConfigError("--method gsae and --chat-sequential read text with a language model, not images")
    if method == "snmf" and reader_cfg.hook is None:
        reader_cfg = reader_cfg.replace(hook="mlp_post")  # the paper factorises the MLP's activations
    reader = Reader(reader_cfg, grads=True) if method == "gsae" else open_reader(reader_cfg, images=images)
    log(f"reading activations of {reader.describe()}" + (" and their next-token-loss gradients" if method == "gsae"
                                                         else ", whole documents in order" if sequential else ""))
    chunks = collect_activations(paths, reader, input_cfg, max_tokens=min(max_cached_tokens, train_cfg.max_tokens),
                                 progress=progress, read_docs=read_docs, keep=keep, grads=method == "gsae",
                                 sequential=sequential)
    sae_cfg = SAEConfig(
        d_in=reader.d_model,
        d_sae=d_sae or train_cfg.expansion * reader.d_model,
        activation=train_cfg.activation,
        k=train_cfg.k,
        reader=reader.cfg.model,
        layer=reader.layer,
        hook=reader.hook,
        head=reader.head,
    )
    acts, heldout = split_heldout_documents(chunks) if sequential else split_heldout(chunks, train_cfg.seed)
    del chunks
    if method == "snmf":
        return _train_snmf(sae_cfg, train_cfg, acts, heldout, out, log)
    train_cfg = train_cfg.replace(max_tokens=corpus_budget(train_cfg, acts.shape[0]),
                                  lr=corpus_lr(train_cfg, sae_cfg.d_sae) if train_cfg.lr is None else train_cfg.lr)
    held = (f" ({heldout.shape[0]:,} more held out: training stops when their FVU levels off)"
            if heldout is not None and train_cfg.stop_tolerance > 0 else "")
    kind = {"gsae": f"g-SAE (topk, beta={train_cfg.gsae_beta})", "vsae": f"variational TopK SAE (KL weight "
            f"{train_cfg.vsae_kl:g})", "gba": f"relu SAE by group bias adaptation ({train_cfg.gba_groups} groups, "
            f"targets adding up to k latents per token)"}.get(method, f"{sae_cfg.activation} SAE")
    log(f"training a {kind} ({sae_cfg.d_in} -> {sae_cfg.d_sae}, k={sae_cfg.k}) "
        f"on {acts.shape[0]:,} token activations for up to {train_cfg.max_tokens:,} tokens{held}")
    trainer = trainer_class(method)(sae_cfg, train_cfg, out_dir=Path(out), progress=progress, log=log)
    result = trainer.fit(acts, heldout)
    m = result.metrics
    held = f", held-out FVU {m['heldout_fvu']:.3f}" if "heldout_fvu" in m else ""
    early = f" (levelled off after {m['tokens']:,} tokens)" if m.get("stopped_early") else ""
    log(f"trained: FVU {m['fvu']:.3f}{held}, mean L0 {m['l0']:.1f}, dead {m['dead_fraction']:.1%}, "
        f"{m['seconds']:.0f} s{early}; saved to {out}/")
    return result


def trainer_class(method: str) -> type[SAETrainer]:
    """The trainer of a gradient-trained ``--method`` (sae, gsae, vsae, gba)."""
    if method == "gsae":
        from saedata.sae.gsae import GSAETrainer

        return GSAETrainer
    if method == "vsae":
        from saedata.sae.vsae import VSAETrainer

        return VSAETrainer
    if method == "gba":
        from saedata.sae.gba import GBATrainer

        return GBATrainer
    from saedata.sae import SAETrainer

    return SAETrainer


def _train_snmf(sae_cfg: SAEConfig, train_cfg: TrainConfig, acts: torch.Tensor, heldout: torch.Tensor | None,
                out: str | os.PathLike, log: Log) -> TrainResult:
    """Factorise the activations (:func:`saedata.sae.snmf.train_snmf`) into an snmf SAE saved to ``out``."""
    from saedata.sae import TrainResult
    from saedata.sae.snmf import MAX_CODES, train_snmf

    rows = min(acts.shape[0], max(1, MAX_CODES // sae_cfg.d_sae))
    log(f"semi-NMF of {rows:,} token activations ({sae_cfg.d_in} -> {sae_cfg.d_sae} features, each over at most "
        f"{math.ceil(train_cfg.snmf_sparsity * sae_cfg.d_in)} units, {train_cfg.snmf_iters} iterations; "
        f"codes: at most k={sae_cfg.k} per token)")
    r = train_snmf(sae_cfg, train_cfg, acts, heldout, out_dir=out, log=log)
    m = r.metrics
    held = f", held-out FVU {m['heldout_fvu']:.3f}" if "heldout_fvu" in m else ""
    log(f"factorised: FVU {m['factor_fvu']:.3f} (dense codes); the SAE's k-sparse codes: FVU {m['fvu']:.3f}{held}, "
        f"mean L0 {m['l0']:.1f}, {m['seconds']:.0f} s; saved to {out}/")
    return TrainResult(sae=r.sae, metrics=m, history=r.history)


def split_heldout_documents(chunks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(training rows, held-out rows) of per-document chunks, in order: every 20th
    document (1 / HELDOUT_FRACTION) held out whole, when that is at least MIN_HELDOUT tokens
    (else none); the others' rows concatenated in their order."""
    import torch

    every = round(1 / HELDOUT_FRACTION)
    held = [c for i, c in enumerate(chunks) if i % every == every - 1]
    if sum(c.shape[0] for c in held) < MIN_HELDOUT:
        return torch.cat(chunks), None
    return torch.cat([c for i, c in enumerate(chunks) if i % every != every - 1]), torch.cat(held)


def corpus_lr(train_cfg: TrainConfig, d_sae: int) -> float:
    """Learning rate of corpus training: CORPUS_LR_SCALE x Gao et al.'s at the default batch
    of 4,096 tokens, in proportion to smaller batches (the same rate per token), never
    below Gao et al.'s."""
    from saedata.sae.train import default_lr

    return default_lr(d_sae) * max(1.0, CORPUS_LR_SCALE * min(1.0, train_cfg.batch_size / 4096))


def corpus_budget(train_cfg: TrainConfig, n_tokens: int) -> int:
    """Training tokens for a corpus of ``n_tokens`` token activations: ``passes`` over it,
    at least MIN_CORPUS_TOKENS but at most ``max_epochs`` passes, and at most ``max_tokens``."""
    wanted = max(MIN_CORPUS_TOKENS, math.ceil(train_cfg.passes * n_tokens))
    return max(1, min(train_cfg.max_tokens, train_cfg.max_epochs * n_tokens, wanted))


def split_heldout(chunks: list[torch.Tensor], seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(training rows, held-out rows) of the chunks' rows: a seeded random HELDOUT_FRACTION
    (at most EVAL_TOKENS) held out, or None when that would be fewer than MIN_HELDOUT.
    The rows are copied once (the chunks may be kept for embedding)."""
    import torch

    from saedata.sae.train import EVAL_TOKENS

    n = sum(c.shape[0] for c in chunks)
    n_held = min(int(n * HELDOUT_FRACTION), EVAL_TOKENS)
    if n_held < MIN_HELDOUT:
        return torch.cat(chunks), None
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    keep = torch.ones(n, dtype=torch.bool)
    keep[order[:n_held]] = False
    parts = torch.split(keep, [c.shape[0] for c in chunks])
    return (torch.cat([c[k] for c, k in zip(chunks, parts)]),
            torch.cat([c[~k] for c, k in zip(chunks, parts)]))
