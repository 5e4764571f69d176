"""Embed a corpus into a store: Documents -> reader -> SAE codes per token -> pooled per document -> store.

Each chunk of ``commit_docs`` documents is stored in one transaction together with its
activations (each with the text position where the latent peaked) and word counts, so
an interrupted run (Ctrl-C, kill, crash) leaves
a clean prefix of the corpus in the store; rerunning the same command skips that
prefix and carries on. Adding another corpus to the same store appends a dataset and
reuses the SAE. Labels and latent statistics are refreshed when a dataset completes
(:mod:`saedata.embed.finish`). The per-chunk work is :func:`saedata.embed.encode.embed_chunk`,
which each Ray worker runs too.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from saedata.config import EmbedConfig, InputConfig, ReaderConfig, TrainConfig
from saedata.console import Log, progress_bar, silent
from saedata.corpus import (
    STDIN,
    CorpusReader,
    Document,
    ImageCorpusReader,
    corpus_size,
    dataset_name,
    open_corpus,
    rechunk,
    same_source,
    source_fingerprint,
)
from saedata.embed.encode import embed_chunk
from saedata.embed.finish import finish_datasets
from saedata.embed.models import load_models, sae_to_use
from saedata.errors import ConfigError, InputError, SAEFormatError
from saedata.reader import CachedReader, ReadCache
from saedata.sae.formats import resolve_sae, sae_fingerprint
from saedata.store import DatasetState, Store


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
    replace: bool = False,
    reads: ReadCache | None = None,
) -> EmbedResult:
    """Embed a corpus into the store at ``db`` as interpretable (SAE latent) vectors.

    ``sae`` is an SAE directory (saedata, SAELens or sparsify). Without it, the store's
    SAE is reused when it has one for the same reader; otherwise an SAE is trained on
    this corpus first and saved beside the store (``run.sae/``). Rerunning after an
    interruption resumes; rerunning a complete dataset does nothing. A folder (or
    ``input_cfg.format="images"``) is read as images with a vision ``reader_cfg.model``;
    unreadable files are skipped and counted, and listed through ``log`` when ``verbose``.

    The store keeps a fingerprint of the corpus (size and SHA-256): a dataset whose file
    has changed since (or that came from another file) is an InputError, unless
    ``replace``, which embeds the file again in place of the old rows. The first documents
    are read and checked before anything else happens, and a store file this call created
    is removed again when it fails before storing anything.

    ``reads``: reader outputs kept by the pass that trained the SAE (when an SAE is
    trained here, this corpus is read once for both); :func:`saedata.diff_files` passes
    the ones of the two corpora it trains on.
    """
    source = str(source)
    corpus = open_corpus(source, input_cfg)
    images = corpus.format == "images"
    name = name or dataset_name(source)
    batches = _checked_start(corpus)
    fingerprint = source_fingerprint(source)
    created = not Path(db).exists()
    try:
        return _embed(corpus, batches, fingerprint, name, db, sae, input_cfg, reader_cfg, embed_cfg, train_cfg,
                      progress, log, verbose, replace, images, reads)
    except BaseException:
        if created:
            _remove_if_empty(db)
        raise


def _embed(corpus, batches, fingerprint, name, db, sae, input_cfg, reader_cfg, embed_cfg, train_cfg, progress,
           log, verbose, replace, images, reads) -> EmbedResult:
    source = corpus.source
    with Store(db, read_only=False) as store:
        t0 = time.perf_counter()
        existing = store.dataset_state(name) if store.has_dataset(name) else None
        existing, replacing = _check_source(store, existing, source, fingerprint, replace, log)
        if existing is not None and existing.complete:
            log(f"dataset {name!r} is already complete in {db} ({existing.n_docs} documents); nothing to do")
            return EmbedResult(name, existing.dataset_id, existing.sae_id or 0, None, existing.n_docs,
                               0, 0, 0, 0, time.perf_counter() - t0, False, already_complete=True)
        reads = reads if reads is not None else ReadCache()
        sae_path, trained = sae_to_use(_store_sae(store, sae, existing, reader_cfg, log), default_sae_dir(db),
                                       [source if source != STDIN else "-"], input_cfg=input_cfg,
                                       reader_cfg=reader_cfg, train_cfg=train_cfg, progress=progress, log=log,
                                       read_docs=embed_cfg.commit_docs, keep=reads)
        t0 = time.perf_counter()  # embedding time, without SAE training
        reader, model, reader_cfg = load_models(sae_path, reader_cfg, images=images, sae_dtype=embed_cfg.sae_dtype)
        if len(reads):  # the documents were read to train the SAE: embed from what was read
            reader = CachedReader(reader, reads)
        # Read (and so validate) the first documents before writing anything: a corpus
        # that is bad from the start leaves no trace in the store.
        chunks = _chunks(batches, source, embed_cfg.commit_docs, existing.n_docs if existing else 0,
                         existing.last_ext_id if existing else None)
        first = next(chunks, None)
        if first is None and existing is None:
            raise InputError("no documents to embed (the corpus is empty or every document is blank)",
                             path=corpus.source)
        if first is not None:
            chunks = itertools.chain([first], chunks)
        sae_id = store.register_sae(
            name=Path(sae_path).name, cfg={**model.cfg.to_dict(), "reader": reader_cfg.model,
                                           "layer": reader.layer, "hook": reader.hook, "head": reader.head},
            path=str(Path(sae_path).resolve()), fingerprint=sae_fingerprint(sae_path),
            also_known_as=[sae_fingerprint(sae_path, legacy=True)],
        )
        if existing is None:
            args = {"input": input_cfg.to_dict(), "reader": reader_cfg.to_dict(), "embed": embed_cfg.to_dict(),
                    "source": fingerprint}
            with store.transaction():  # the old rows go in the same transaction that starts the new dataset
                if replacing is not None:
                    _remove(store, replacing)
                state = store.create_dataset(name, corpus.source, sae_id, args)
        else:
            state = existing
            if state.sae_id != sae_id:
                raise ConfigError(
                    f"dataset {name!r} in {db} was started with SAE {state.sae_id}, not {sae_path}; "
                    "rerun with the original --sae, or pass --name for a new dataset"
                )
            started = bool(store.dataset_args(state.dataset_id).get("embed", {}).get("store_tokens", False))
            if started != embed_cfg.store_tokens:
                raise ConfigError(
                    f"dataset {name!r} in {db} was started {'with' if started else 'without'} --store-tokens; "
                    "rerun with the same options to resume, or pass --name for a new dataset"
                )
            log(f"resuming dataset {name!r}: {state.n_docs} documents already stored")
        n_new, n_acts, n_empty, n_trunc = _run(store, chunks, corpus, reader, model, sae_id, state, embed_cfg,
                                               progress, log, verbose)
        if isinstance(reader, CachedReader) and reader.hits:
            log(f"embedded {reader.hits} of its chunks from the activations read to train the SAE")
        finish_datasets(store, [state.dataset_id], sae_id, top_docs=embed_cfg.label_top_docs,
                        n_words=embed_cfg.label_words)
        final = store.dataset_state(name)
    return EmbedResult(name, state.dataset_id, sae_id, str(sae_path), final.n_docs, n_new, n_empty,
                       n_trunc, n_acts, time.perf_counter() - t0, trained)


def _store_sae(store: Store, sae: str | os.PathLike | None, existing, reader_cfg: ReaderConfig,
               log: Log) -> Path | None:
    """The SAE directory given, the one a resumed dataset was started with, or the
    store's SAE for this reader; None when the store has none."""
    if sae is not None:
        return resolve_sae(sae)
    if existing is not None and existing.sae_id is not None:
        return _existing_sae_dir(store.sae_info(existing.sae_id)["path"], existing.sae_id)
    for row in store.saes().iter_rows(named=True):
        if reader_cfg.model is None or row["reader"] == reader_cfg.model:
            log(f"reusing SAE {row['sae_id']} from {row['path']} (pass --sae to choose another)")
            return _existing_sae_dir(row["path"], row["sae_id"])
    return None


def _existing_sae_dir(path: str | None, sae_id: int) -> Path:
    if not path or not Path(path).exists():
        raise SAEFormatError(
            f"SAE {sae_id} of this store was loaded from {path}, which no longer exists; pass --sae"
        )
    return Path(path)


def _checked_start(corpus: CorpusReader | ImageCorpusReader) -> Iterator[list[Document]]:
    """The corpus's batches, the first already read: a corpus that is bad from its start
    (a missing field, bad JSON, a wrong format) fails here, before any model loads or any
    file is written."""
    batches = iter(corpus)
    first = next(batches, None)
    return batches if first is None else itertools.chain([first], batches)


def _check_source(store: Store, existing: DatasetState | None, source: str, fingerprint: dict | None,
                  replace: bool, log: Log) -> tuple[DatasetState | None, DatasetState | None]:
    """(the dataset to resume or leave as it is, the dataset to replace): an existing
    dataset must come from this very file, unchanged; with ``replace`` a changed one is
    embedded again (an unfinished run of this very file still resumes)."""
    if existing is None:
        return None, None
    stored = store.dataset_args(existing.dataset_id).get("source")
    moved = source != STDIN and existing.source not in (None, STDIN) and \
        Path(existing.source).resolve() != Path(source).resolve()
    if not moved and same_source(stored, fingerprint):
        return existing, None
    if moved:
        what = f"dataset {existing.name!r} was embedded from {existing.source}, not from this file"
    else:
        what = (f"the file changed since dataset {existing.name!r} was embedded from it "
                f"({stored['size']} bytes then, {fingerprint['size']} now; its SHA-256 differs)")
    if not replace:
        raise InputError(f"{what}; pass --replace to embed it again in its place, or --name for a new dataset",
                         path=source)
    log(f"replacing dataset {existing.name!r} ({existing.n_docs} documents): {what}")
    return None, existing


def _remove(store: Store, dataset: DatasetState) -> None:
    """Remove a dataset and take its documents out of its SAE's word counts."""
    from saedata.label import word_document_frequency

    counts = [word_document_frequency(texts) for texts in store.texts(dataset.sae_id, without=dataset.dataset_id)]
    words = (pl.concat(counts).group_by("word").agg(pl.col("df").sum()) if counts
             else pl.DataFrame(schema={"word": pl.String, "df": pl.Int64}))
    store.remove_dataset(dataset.dataset_id)
    store.replace_word_counts(dataset.sae_id, words)


def _remove_if_empty(db: str | os.PathLike) -> None:
    """Delete a store file (and its write-ahead log) that holds no dataset."""
    path = Path(db)
    try:
        with Store(path, read_only=True) as store:
            if store.datasets().height:
                return
    except Exception:  # noqa: BLE001 - a file that is not a readable store is left alone
        return
    for f in (path, path.with_name(path.name + ".wal")):
        f.unlink(missing_ok=True)


def _chunks(batches: Iterator[list[Document]], source: str, size: int, skip: int,
            last_stored: str | None) -> Iterator[list[Document]]:
    """Re-chunk the corpus into lists of ``size`` documents after skipping the stored ``skip``
    (the lists an uninterrupted run reads, since ``skip`` is a multiple of ``size``).

    When resuming, the last skipped document must be the last one stored; otherwise the
    corpus changed since the interrupted run and resuming would mix two corpora.
    """
    return rechunk(_skipped(batches, source, skip, last_stored), size)


def _skipped(batches: Iterator[list[Document]], source: str, skip: int,
             last_stored: str | None) -> Iterator[list[Document]]:
    seen = 0
    for batch in batches:
        if seen < skip:
            take = min(skip - seen, len(batch))
            seen += take
            if seen == skip and last_stored is not None and batch[take - 1].ext_id != last_stored:
                raise InputError(
                    f"the corpus changed since this dataset was started: document {skip} is "
                    f"{batch[take - 1].ext_id!r} here but {last_stored!r} in the store; "
                    "pass --replace to embed it again, or --name for a new dataset",
                    path=source,
                )
            batch = batch[take:]
        if batch:
            yield batch
    if seen < skip:
        raise InputError(
            f"the corpus has only {seen} documents but the store already holds {skip} of this "
            "dataset; pass --replace to embed it again, or --name for a new dataset",
            path=source,
        )


def _run(store, chunks, corpus, reader, model, sae_id, state, embed_cfg, progress, log, verbose=False):
    """Embed ``chunks`` (the corpus after the stored prefix); returns (new, activations, empty, truncated)."""
    next_id = store.next_doc_id()
    total = corpus_size(corpus)
    n_new = n_acts = n_trunc = 0
    bar = progress_bar(total, f"embed {state.name}", progress)
    bar.update(state.n_docs)
    try:
        for docs in chunks:
            part = embed_chunk(docs, next_id, reader, model, sae_id, state.dataset_id, embed_cfg,
                               images=corpus.format == "images")
            store.append_batch(part.documents, part.activations, part.word_counts, sae_id,
                               (state.dataset_id, part.n_truncated), part.tokens)
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
        if e.path is None and e.line is not None:  # raised past the corpus reader: name the file
            e.args = (f"{corpus.source}:{e.line}: {e.message}",)
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
