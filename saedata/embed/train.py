"""Train an SAE on corpora: Documents -> reader activations -> :class:`~saedata.sae.SAETrainer`.

The reader runs once over (a sample of) the corpora, read one after the other as one
stream; the token activations are kept in memory, up to ``max_cached_tokens``, and the
trainer cycles over them for ``train_cfg.max_tokens`` tokens. When the corpora hold more
tokens than that, documents are sampled evenly across them (not just their head).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from saedata.config import InputConfig, ReaderConfig, SAEConfig, TrainConfig
from saedata.console import Log, progress_bar, silent
from saedata.corpus import Document, corpus_size, is_image_source, open_corpus
from saedata.errors import InputError

if TYPE_CHECKING:
    import torch

    from saedata.reader import Reader
    from saedata.sae import TrainResult

MAX_CACHED_TOKENS = 1_000_000
"""Token activations held in memory for training (1M x 384 float32 = 1.5 GB)."""


def collect_activations(
    sources: str | list[str],
    reader: Reader,
    input_cfg: InputConfig = InputConfig(),
    max_tokens: int = MAX_CACHED_TOKENS,
    progress: bool = False,
) -> torch.Tensor:
    """Reader activations of the corpora's tokens, (n_tokens, d_model) float32 on CPU.

    Reads at most ``max_tokens`` tokens; when the corpora are larger, every j-th document
    is read, with j set from the token count of the first documents.
    """
    import torch

    corpora = [open_corpus(s, input_cfg) for s in ([sources] if isinstance(sources, str) else sources)]
    sizes = [corpus_size(c) for c in corpora]
    total = None if None in sizes else sum(sizes)  # type: ignore[arg-type]
    batches = corpora[0] if len(corpora) == 1 else _rebatch(corpora, input_cfg.batch_size)
    chunks: list[torch.Tensor] = []
    n = 0
    stride = 1
    seen = 0
    bar = progress_bar(max_tokens, "read activations", progress, unit="tok")
    for docs in batches:
        picked = [d.text for i, d in enumerate(docs, start=seen) if i % stride == 0]
        seen += len(docs)
        if not picked:
            continue
        batch = reader.read(picked)
        acts = batch.acts.float().cpu()
        if stride == 1 and total and not chunks:
            # Decide the sampling stride from the first batch's tokens per document.
            per_doc = max(acts.shape[0] / len(picked), 1.0)
            stride = max(1, math.ceil(total * per_doc / max_tokens))
        take = min(acts.shape[0], max_tokens - n)
        if take < acts.shape[0]:
            # Keep an even sample of the batch's tokens, not its first ones.
            idx = torch.linspace(0, acts.shape[0] - 1, take).long()
            acts = acts[idx]
        chunks.append(acts)
        n += take
        bar.update(take)
        if n >= max_tokens:
            break
    bar.close()
    if n == 0:
        raise InputError("no documents to train an SAE on (the corpus is empty or blank)",
                         path=" + ".join(c.source for c in corpora))
    return torch.cat(chunks)


def _rebatch(corpora: list, size: int) -> Iterator[list[Document]]:
    """The documents of several corpora, one after the other, in batches of ``size``."""
    buf: list[Document] = []
    for corpus in corpora:
        for docs in corpus:
            buf.extend(docs)
            while len(buf) >= size:
                yield buf[:size]
                buf = buf[size:]
    if buf:
        yield buf


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
) -> TrainResult:
    """Train an SAE on the reader's activations of a corpus (or of several, read as one)
    and save it to ``out``.

    The SAE's activation and k come from ``train_cfg``; ``d_sae`` defaults to
    ``train_cfg.expansion`` x the reader width. Returns the
    trainer's result (the SAE and its FVU / L0 / dead-fraction metrics).
    """
    from saedata.reader import open_reader
    from saedata.sae import SAETrainer

    paths = [os.fspath(s) for s in sources] if isinstance(sources, list) else [os.fspath(sources)]
    for path in paths:  # a missing file or a bad first line fails before the reader loads
        if path != "-":
            next(iter(open_corpus(path, input_cfg)), None)
    reader = open_reader(reader_cfg, images=is_image_source(paths[0], input_cfg))
    log(f"reading activations of {reader.describe()}")
    acts = collect_activations(paths, reader, input_cfg,
                               max_tokens=min(max_cached_tokens, train_cfg.max_tokens), progress=progress)
    sae_cfg = SAEConfig(
        d_in=reader.d_model,
        d_sae=d_sae or train_cfg.expansion * reader.d_model,
        activation=train_cfg.activation,
        k=train_cfg.k,
        reader=reader.cfg.model,
        layer=reader.layer,
    )
    budget = min(train_cfg.max_tokens, train_cfg.max_epochs * acts.shape[0])
    train_cfg = train_cfg.replace(max_tokens=budget)
    log(f"training a {sae_cfg.activation} SAE ({sae_cfg.d_in} -> {sae_cfg.d_sae}, k={sae_cfg.k}) "
        f"on {acts.shape[0]} token activations for {train_cfg.max_tokens} tokens")
    result = SAETrainer(sae_cfg, train_cfg, out_dir=Path(out), progress=progress).fit(acts)
    m = result.metrics
    log(f"trained: FVU {m['fvu']:.3f}, mean L0 {m['l0']:.1f}, dead {m['dead_fraction']:.1%}, "
        f"{m['seconds']:.0f} s; saved to {out}/")
    return result
