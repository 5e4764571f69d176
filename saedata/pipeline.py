"""The embedding pipeline: Documents -> reader -> SAE codes per token -> pooled per document -> store.

Each chunk of ``commit_docs`` documents is stored in one transaction together with its
activations (each with the text position where the latent peaked) and word counts, so
an interrupted run (Ctrl-C, kill, crash) leaves
a clean prefix of the corpus in the store; rerunning the same command skips that
prefix and carries on. Adding another corpus to the same store appends a dataset and
reuses the SAE. Labels and latent statistics are refreshed when a dataset completes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import polars as pl

from saedata.config import EmbedConfig, InputConfig, ReaderConfig, TrainConfig
from saedata.console import Log, progress_bar, silent
from saedata.errors import ConfigError, InputError, SAEFormatError
from saedata.io import CorpusReader, Document, count_documents, open_corpus
from saedata.label import label_latents, word_document_frequency
from saedata.store import Store

if TYPE_CHECKING:
    import torch

    from saedata.reader import TokenBatch
    from saedata.sae import SparseAutoencoder


@dataclass(frozen=True)
class EmbedResult:
    """What one ``embed`` call did."""

    dataset: str
    dataset_id: int
    sae_id: int
    sae_path: str | None
    n_docs: int
    """Documents of the dataset now in the store."""
    n_new: int
    """Documents stored by this call (less than n_docs when resuming)."""
    n_empty: int
    n_truncated: int
    n_activations: int
    """Non-zero pooled activations stored by this call."""
    seconds: float
    """Wall time of the embedding itself (loading, reading, encoding, storing, labelling),
    without the time spent training an SAE first."""
    trained_sae: bool
    already_complete: bool = False

    @property
    def docs_per_second(self) -> float:
        return self.n_new / self.seconds if self.seconds > 0 else 0.0


class Pooled(NamedTuple):
    """Pooled document codes of one batch, one entry per non-zero (document, latent)."""

    doc: torch.Tensor
    """(nnz,) int64 document index within the batch."""
    latent: torch.Tensor
    """(nnz,) int64 latent index."""
    value: torch.Tensor
    """(nnz,) float32 pooled value."""
    peak: torch.Tensor
    """(nnz,) int64 token row (into the batch's token arrays) where |code| peaked."""


def pool_codes(
    rows: torch.Tensor,
    latents: torch.Tensor,
    values: torch.Tensor,
    doc_index: torch.Tensor,
    n_tokens: torch.Tensor,
    d_sae: int,
    pooling: str = "max",
) -> Pooled:
    """Pool token codes per document.

    ``rows``, ``latents``, ``values``: the non-zero token codes as (token row, latent,
    value) triplets; ``doc_index`` (n_tokens,) maps token rows to documents;
    ``n_tokens`` (n_docs,) tokens per document. ``max`` keeps the value of largest
    magnitude with its sign (the plain max for non-negative codes), ``sum`` adds,
    ``mean`` divides the sum by the document's token count.
    """
    import torch

    key = doc_index[rows] * d_sae + latents
    uniq, inv = torch.unique(key, return_inverse=True)
    m = uniq.numel()
    magnitude = values.abs()
    peak_mag = torch.zeros(m, device=values.device).scatter_reduce(
        0, inv, magnitude, "amax", include_self=False
    )
    is_peak = magnitude == peak_mag[inv]
    peak = torch.full((m,), -1, dtype=torch.int64, device=values.device).scatter_reduce(
        0, inv, torch.where(is_peak, rows, -1), "amax", include_self=True
    )
    if pooling == "max":
        at_peak = is_peak & (rows == peak[inv])
        value = torch.zeros(m, device=values.device).scatter(0, inv[at_peak], values[at_peak])
    else:
        value = torch.zeros(m, device=values.device).scatter_add(0, inv, values)
        if pooling == "mean":
            value = value / n_tokens[torch.div(uniq, d_sae, rounding_mode="floor")].clamp(min=1)
    return Pooled(torch.div(uniq, d_sae, rounding_mode="floor"), uniq % d_sae, value, peak)


def encode_tokens(sae: SparseAutoencoder, acts: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SAE-encode token activations in chunks; returns non-zero (row, latent, value) triplets."""
    import torch

    rows, lats, vals = [], [], []
    with torch.inference_mode():
        for start in range(0, acts.shape[0], chunk):
            codes = sae.encode_sparse(acts[start : start + chunk])
            nz = codes.values != 0
            r = torch.arange(start, start + codes.values.shape[0], device=acts.device)
            rows.append(r[:, None].expand_as(codes.values)[nz])
            lats.append(codes.indices[nz])
            vals.append(codes.values[nz].float())
    if not rows:
        empty = torch.zeros(0, dtype=torch.int64, device=acts.device)
        return empty, empty, torch.zeros(0, device=acts.device)
    return torch.cat(rows), torch.cat(lats), torch.cat(vals)


def round_significant(values: np.ndarray, digits: int | None) -> np.ndarray:
    """``values`` rounded to ``digits`` significant decimal digits, as float32 (None: unchanged)."""
    if digits is None:
        return values.astype(np.float32)
    v = values.astype(np.float64)
    out = np.zeros_like(v)
    nz = v != 0
    scale = 10.0 ** (digits - 1 - np.floor(np.log10(np.abs(v[nz]))))
    out[nz] = np.round(v[nz] * scale) / scale
    return out.astype(np.float32)


def sae_fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 over an SAE directory's config and weight files (identifies the SAE in a store)."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(root.glob("*.json")) + sorted(root.glob("*.safetensors")):
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def default_dataset_name(source: str) -> str:
    if source == "-":
        return "stdin"
    name = Path(source).name
    for ext in (".gz", ".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".pq", ".txt", ".text"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
    return name or "dataset"


def default_sae_dir(db: str | os.PathLike) -> Path:
    """Where ``embed`` saves the SAE it trains when none is given: ``run.duckdb`` -> ``run.sae/``."""
    return Path(db).with_suffix(".sae")


def embed(
    source: str | os.PathLike,
    db: str | os.PathLike = "run.duckdb",
    sae: str | os.PathLike | None = None,
    *,
    name: str | None = None,
    input_cfg: InputConfig = InputConfig(),
    reader_cfg: ReaderConfig = ReaderConfig(),
    embed_cfg: EmbedConfig = EmbedConfig(),
    train_cfg: TrainConfig = TrainConfig(),
    progress: bool = False,
    log: Log = silent,
    verbose: bool = False,
) -> EmbedResult:
    """Embed a corpus into the store at ``db`` as interpretable (SAE latent) vectors.

    ``sae`` is an SAE directory (saedata, SAELens or sparsify). Without it, the store's
    SAE is reused when it has one for the same reader; otherwise an SAE is trained on
    this corpus first and saved beside the store (``run.sae/``). Rerunning after an
    interruption resumes; rerunning a complete dataset does nothing. A folder (or
    ``input_cfg.format="images"``) is read as images with a vision ``reader_cfg.model``;
    unreadable files are skipped and counted, and listed through ``log`` when ``verbose``.
    """
    source = str(source)
    corpus = open_corpus(source, input_cfg)
    images = corpus.format == "images"
    name = name or default_dataset_name(source)
    with Store(db, read_only=False) as store:
        t0 = time.perf_counter()
        existing = _existing_dataset(store, name)
        if existing is not None and existing.complete:
            log(f"dataset {name!r} is already complete in {db} ({existing.n_docs} documents); nothing to do")
            return EmbedResult(name, existing.dataset_id, existing.sae_id or 0, None, existing.n_docs,
                               0, 0, 0, 0, time.perf_counter() - t0, False, already_complete=True)
        sae_path, trained = _resolve_sae_path(store, sae, existing, reader_cfg, db, source,
                                              input_cfg, train_cfg, progress, log)
        from saedata.reader import open_reader
        from saedata.sae import load_sae
        from saedata.sae.formats import check_d_in

        t0 = time.perf_counter()  # embedding time, without SAE training

        model = load_sae(sae_path, device="cpu")
        reader_cfg = _reader_for_sae(reader_cfg, model.cfg)
        reader = open_reader(reader_cfg, images=images)
        check_d_in(model, reader.d_model, reader.describe())
        model = model.to(reader.device).eval()
        # Read (and so validate) the first documents before writing anything: a corpus
        # that is bad from the start leaves no trace in the store.
        chunks = _chunks(corpus, embed_cfg.commit_docs, existing.n_docs if existing else 0,
                         existing.last_ext_id if existing else None)
        first = next(chunks, None)
        if first is None and existing is None:
            raise InputError("no documents to embed (the corpus is empty or every document is blank)",
                             path=corpus.source)
        if first is not None:
            chunks = itertools.chain([first], chunks)
        sae_id = store.register_sae(
            name=Path(sae_path).name, cfg={**model.cfg.to_dict(), "reader": reader_cfg.model,
                                           "layer": reader.layer},
            path=str(Path(sae_path).resolve()), fingerprint=sae_fingerprint(sae_path),
        )
        if existing is None:
            args = {"input": input_cfg.to_dict(), "reader": reader_cfg.to_dict(), "embed": embed_cfg.to_dict()}
            state = store.create_dataset(name, corpus.source, sae_id, args)
        else:
            state = existing
            if state.sae_id != sae_id:
                raise ConfigError(
                    f"dataset {name!r} in {db} was started with SAE {state.sae_id}, not {sae_path}; "
                    "rerun with the original --sae, or pass --name for a new dataset"
                )
            log(f"resuming dataset {name!r}: {state.n_docs} documents already stored")
        n_new, n_acts, n_empty, n_trunc = _run(store, chunks, corpus, source, input_cfg, reader, model,
                                               sae_id, state, embed_cfg, progress, log, verbose)
        store.finish_dataset(state.dataset_id)
        store.refresh_latent_stats(sae_id)
        store.fold_word_counts(sae_id)
        label_latents(store, sae_id, top_docs=embed_cfg.label_top_docs, n_words=embed_cfg.label_words)
        store.checkpoint()
        final = store.dataset_state(name)
    return EmbedResult(name, state.dataset_id, sae_id, str(sae_path), final.n_docs, n_new, n_empty,
                       n_trunc, n_acts, time.perf_counter() - t0, trained)


def _existing_dataset(store: Store, name: str):
    row = store.one("SELECT 1 FROM datasets WHERE name = ?", [name])
    return store.dataset_state(name) if row else None


def _reader_for_sae(reader_cfg: ReaderConfig, sae_cfg) -> ReaderConfig:
    """Fill an unset reader model/layer from the SAE's own metadata."""
    changes = {}
    if reader_cfg.model is None and sae_cfg.reader:
        changes["model"] = sae_cfg.reader
    if reader_cfg.layer is None and sae_cfg.layer is not None:
        changes["layer"] = sae_cfg.layer
    return reader_cfg.replace(**changes) if changes else reader_cfg


def _resolve_sae_path(store, sae, existing, reader_cfg, db, source, input_cfg, train_cfg, progress, log):
    """The SAE directory to use, and whether it was trained now."""
    if sae is not None:
        return Path(sae), False
    if existing is not None and existing.sae_id is not None:
        path = store.one("SELECT path FROM saes WHERE sae_id = ?", [existing.sae_id])[0]
        return _existing_sae_dir(path, existing.sae_id), False
    saes = store.saes()
    if saes.height:
        want_model = reader_cfg.model
        for row in saes.iter_rows(named=True):
            if want_model is None or row["reader"] == want_model:
                log(f"reusing SAE {row['sae_id']} from {row['path']} (pass --sae to choose another)")
                return _existing_sae_dir(row["path"], row["sae_id"]), False
    out = default_sae_dir(db)
    if (out / "cfg.json").exists():
        log(f"no --sae given: using the SAE trained earlier at {out}/")
        return out, False
    log(f"no --sae given: training an SAE on {source} first (saved to {out}/)")
    from saedata.fit import train

    train(source, out, input_cfg=input_cfg, reader_cfg=reader_cfg, train_cfg=train_cfg,
          progress=progress, log=log)
    return out, True


def _existing_sae_dir(path: str | None, sae_id: int) -> Path:
    if not path or not Path(path).exists():
        raise SAEFormatError(
            f"SAE {sae_id} of this store was loaded from {path}, which no longer exists; pass --sae"
        )
    return Path(path)


def _chunks(corpus: CorpusReader, size: int, skip: int, last_stored: str | None) -> Iterator[list[Document]]:
    """Re-chunk the corpus into lists of ``size`` documents after skipping the stored ``skip``.

    When resuming, the last skipped document must be the last one stored; otherwise the
    corpus changed since the interrupted run and resuming would mix two corpora.
    """
    buf: list[Document] = []
    seen = 0
    for batch in corpus:
        if seen < skip:
            take = min(skip - seen, len(batch))
            seen += take
            if seen == skip and last_stored is not None and batch[take - 1].ext_id != last_stored:
                raise InputError(
                    f"the corpus changed since this dataset was started: document {skip} is "
                    f"{batch[take - 1].ext_id!r} here but {last_stored!r} in the store; "
                    "pass --name to embed it as a new dataset",
                    path=corpus.source,
                )
            batch = batch[take:]
        buf.extend(batch)
        while len(buf) >= size:
            yield buf[:size]
            buf = buf[size:]
    if seen < skip:
        raise InputError(
            f"the corpus has only {seen} documents but the store already holds {skip} of this "
            "dataset; pass --name to embed it as a new dataset",
            path=corpus.source,
        )
    if buf:
        yield buf


def _run(store, chunks, corpus, source, input_cfg, reader, model, sae_id, state, embed_cfg, progress, log,
         verbose=False):
    """Embed ``chunks`` (the corpus after the stored prefix); returns (new, activations, empty, truncated)."""
    next_id = store.next_doc_id()
    if corpus.format == "images":
        total = len(corpus)
    else:
        total = count_documents(source, input_cfg) if source != "-" else None
    n_new = n_acts = n_trunc = 0
    bar = progress_bar(total, f"embed {state.name}", progress)
    bar.update(state.n_docs)
    try:
        for docs in chunks:
            part = embed_chunk(docs, next_id, reader, model, sae_id, state.dataset_id, embed_cfg,
                               images=corpus.format == "images")
            store.append_batch(part.documents, part.activations, part.word_counts, sae_id,
                               (state.dataset_id, part.n_truncated))
            next_id += len(docs)
            n_new += len(docs)
            n_acts += part.activations.height
            n_trunc += part.n_truncated
            bar.update(len(docs))
    except KeyboardInterrupt:
        bar.close()
        log(f"interrupted: {state.n_docs + n_new} documents of {state.name!r} are stored; "
            "rerun the same command to resume")
        raise
    except InputError as e:
        bar.close()
        e.args = (f"{e.args[0]} ({state.n_docs + n_new} documents of {state.name!r} are stored; "
                  "fix the input and rerun the same command to resume)",)
        raise
    bar.close()
    # Every run reads the corpus from its start, so the reader's count is the dataset's.
    store.set_empty_count(state.dataset_id, corpus.n_empty)
    if verbose:
        for path, reason in getattr(corpus, "skipped", []):
            log(f"skipped {path}: {reason}")
    if corpus.format == "images" and corpus.n_empty:
        log(f"{corpus.n_empty} files were skipped (not images or unreadable)"
            + ("" if verbose else "; --verbose lists them"))
    if n_trunc:
        log(f"{n_trunc} documents were longer than {reader.max_tokens} tokens and were truncated "
            "(raise --max-tokens to keep more)")
    return n_new, n_acts, corpus.n_empty, n_trunc


class EmbeddedChunk(NamedTuple):
    """One chunk of documents embedded: rows for the store's tables."""

    documents: pl.DataFrame
    """The ``documents`` table's columns."""
    activations: pl.DataFrame
    """The ``activations`` table's columns."""
    word_counts: pl.DataFrame
    """(word, df): the chunk's share of the background word counts labels contrast with."""
    n_truncated: int


def embed_chunk(docs: list[Document], first_id: int, reader, model: SparseAutoencoder, sae_id: int,
                dataset_id: int, embed_cfg: EmbedConfig, images: bool = False) -> EmbeddedChunk:
    """Read, encode and pool ``docs`` (doc ids ``first_id``, ``first_id + 1``, ...): the
    unit of work that the single-process run and each distributed worker share."""
    ids = np.arange(first_id, first_id + len(docs), dtype=np.int64)
    texts = [d.text for d in docs]
    batch = reader.read(texts)
    pooled = _pool_batch(model, batch, embed_cfg)
    doc_np, lat_np, val_np, peak_np = (t.cpu().numpy() for t in pooled)
    if images:
        peak = pl.Series("peak", [None] * len(doc_np), dtype=pl.Int32)  # no text position
    else:
        # The peak token's last character: inside its word even when the token
        # carries a leading space (GPT-2 style byte-level BPE).
        peak = np.maximum(batch.offsets[peak_np, 1] - 1, batch.offsets[peak_np, 0]).astype(np.int32)
    acts = pl.DataFrame(
        {"doc_id": ids[doc_np], "sae_id": np.full(len(doc_np), sae_id, dtype=np.int32),
         "latent": lat_np.astype(np.int32), "value": round_significant(val_np, embed_cfg.value_digits),
         "peak": peak}
    )
    doc_frame = pl.DataFrame(
        {"doc_id": ids, "dataset_id": np.full(len(docs), dataset_id, dtype=np.int32),
         "ext_id": [d.ext_id for d in docs], "text": texts,
         "meta": [json.dumps(d.meta, ensure_ascii=False) if d.meta else None for d in docs],
         "n_tokens": batch.n_tokens.astype(np.int32)},
        schema_overrides={"meta": pl.String},
    )
    return EmbeddedChunk(doc_frame, acts, word_document_frequency(texts), int(batch.truncated.sum()))


def _pool_batch(model: SparseAutoencoder, batch: TokenBatch, embed_cfg: EmbedConfig) -> Pooled:
    import torch

    rows, lats, vals = encode_tokens(model, batch.acts, embed_cfg.encode_tokens)
    n_tokens = torch.as_tensor(batch.n_tokens, device=batch.acts.device)
    pooled = pool_codes(rows, lats, vals, batch.doc_index, n_tokens, model.d_sae, embed_cfg.pooling)
    if embed_cfg.min_value > 0:
        keep = pooled.value.abs() > embed_cfg.min_value
        pooled = Pooled(*(t[keep] for t in pooled))
    else:
        keep = pooled.value != 0
        if not bool(keep.all()):
            pooled = Pooled(*(t[keep] for t in pooled))
    return pooled
