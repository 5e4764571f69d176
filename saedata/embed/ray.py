"""Distributed embedding on Ray Data: ``saedata embed CORPUS... --engine ray --out shards/``.

The same unit of work as the single-process run (:func:`saedata.embed.encode.embed_chunk`),
spread over a pool of Ray actors, each loading the reader and the SAE once:

1. plan (driver): every corpus is read and validated once with saedata's own readers
   (so a bad line is reported as in a single-process run) and cut into input parts of
   ``part_docs`` documents under ``shards/_input/``. Doc ids are given here, in corpus
   order, so they are the ids a single-process run into an empty store gives;
2. embed (Ray Data): ``from_items(parts) -> map_batches(PartWorker, ActorPoolStrategy)``;
   a worker reads its input part, embeds it and writes the part's Parquet files
   (:mod:`saedata.store.shards`); the driver lists each part in the manifest as it finishes;
3. finish (driver, :func:`saedata.embed.finish.finish_run`): labels from the merged partial
   statistics of all parts (``latents.parquet``), the inputs are removed and the manifest
   marked complete.

Rerunning the same command resumes: listed parts are skipped, unlisted files are
overwritten. A worker error stops the run with that error; the finished parts stay.
On a cluster, ``out`` must be a folder every node sees (a shared filesystem) and
saedata must be installed on every node; ``address`` is the cluster's (``ray start``).
"""

from __future__ import annotations

import gc
import glob
import json
import logging
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from saedata.config import EmbedConfig, InputConfig, ReaderConfig, TrainConfig
from saedata.console import Log, progress_bar, silent
from saedata.corpus import Document, count_documents, dataset_name, open_corpus, source_fingerprint
from saedata.embed.encode import embed_chunk
from saedata.embed.finish import finish_run
from saedata.embed.models import load_models, reader_for_sae, sae_to_use
from saedata.errors import ConfigError, InputError, SaedataError
from saedata.sae.formats import sae_fingerprint
from saedata.store import shards

PART_DOCS = 4096
"""Documents per part (one Ray task and one Parquet file per table)."""


class WorkerError(SaedataError):
    """A Ray worker failed; the parts finished before are kept."""


@dataclass(frozen=True)
class RayEmbedResult:
    out: Path
    datasets: list[str]
    n_docs: int
    n_new: int
    """Documents embedded by this call."""
    n_parts: int
    n_new_parts: int
    """Parts embedded by this call (fewer than n_parts when resuming)."""
    n_activations: int
    seconds: float
    """Wall time of the embed step (planning, Ray, labels), without training an SAE."""
    sae_path: str

    @property
    def docs_per_second(self) -> float:
        return self.n_new / self.seconds if self.seconds > 0 else 0.0


def expand_sources(sources: list[str | os.PathLike]) -> list[str]:
    """Files named by ``sources`` (globs expanded, sorted); a glob that matches nothing is
    an error. A URL (``s3://bucket/corpora/*.jsonl``, ``gs://...``) is listed through
    fsspec, with that filesystem's package installed (s3fs, gcsfs, ...)."""
    out: list[str] = []
    for src in map(os.fspath, sources):
        if _is_url(src):
            out.extend(_expand_url(src))
        elif any(c in src for c in "*?["):
            matches = sorted(p for p in glob.glob(src, recursive=True) if os.path.isfile(p))
            if not matches:
                raise InputError(f"no files match {src!r}")
            out.extend(matches)
        else:
            if src == "-":
                raise InputError("--engine ray reads files, not stdin")
            if not os.path.exists(src):
                raise InputError(f"no such file: {src}")
            if os.path.isdir(src):
                raise InputError(f"{src} is a folder: --engine ray embeds text corpora; embed image folders "
                                 "without --engine ray")
            out.append(src)
    return out


def _is_url(src: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*://", src) is not None and not src.startswith("file://")


def _filesystem(url: str):
    """(fsspec filesystem, path) for a URL, with a clear error when its package is missing."""
    try:
        import fsspec

        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        raise InputError(f"reading {url.split('://')[0]}:// needs its fsspec package "
                         f"({str(e).splitlines()[0]})") from e
    except ValueError as e:
        raise InputError(f"{url}: {e}") from e


def _expand_url(url: str) -> list[str]:
    fs, path = _filesystem(url)
    if any(c in path for c in "*?["):
        matches = sorted(p for p in fs.glob(path) if fs.isfile(p))
        if not matches:
            raise InputError(f"no files match {url!r}")
        return [fs.unstrip_protocol(p) for p in matches]
    if not fs.isfile(path):
        raise InputError(f"no such file: {url}")
    return [url]


def _source_identity(file: str) -> dict[str, Any]:
    """Where a corpus came from and what it held (size and SHA-256 of a local file; size
    and modification time or etag of a URL), to tell on resume whether it changed since
    it was planned."""
    if _is_url(file):
        fs, path = _filesystem(file)
        info = fs.info(path)
        stamp = next((str(info[k]) for k in ("mtime", "LastModified", "updated", "etag", "ETag", "created")
                      if info.get(k) is not None), None)
        return {"source": file, "size": info.get("size"), "mtime": stamp}
    fingerprint = source_fingerprint(file)
    return {"source": str(Path(file).resolve()), "size": fingerprint["size"], "mtime": fingerprint["mtime_ns"],
            "sha256": fingerprint["sha256"]}


def _local_copy(file: str, staging: Path) -> Path:
    """A remote corpus copied to ``staging`` (read once by the driver, then deleted)."""
    fs, path = _filesystem(file)
    staging.mkdir(parents=True, exist_ok=True)
    local = staging / Path(path).name
    fs.get(path, str(local))
    return local


def embed_ray(
    sources: list[str | os.PathLike],
    out: str | os.PathLike,
    sae: str | os.PathLike | None = None,
    *,
    names: list[str] | None = None,
    input_cfg: InputConfig | None = None,
    reader_cfg: ReaderConfig | None = None,
    embed_cfg: EmbedConfig | None = None,
    train_cfg: TrainConfig | None = None,
    num_workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    address: str | None = None,
    part_docs: int = PART_DOCS,
    progress: bool = False,
    log: Log = silent,
) -> RayEmbedResult:
    """Embed corpora into a shard folder ``out`` with a Ray Data actor pool.

    ``sources``: files or globs, one dataset per file (named after it, or ``names``).
    ``sae``: an SAE directory; without one, an SAE is trained on the first corpus here
    first and saved as ``out/sae/``. ``address``: a Ray cluster (default: the running
    one, else a local Ray on this machine's cores).
    """
    input_cfg, reader_cfg = input_cfg or InputConfig(), reader_cfg or ReaderConfig()
    embed_cfg, train_cfg = embed_cfg or EmbedConfig(), train_cfg or TrainConfig()
    if num_workers < 1 or part_docs < 1 or gpus_per_worker < 0 or cpus_per_worker <= 0:
        raise ConfigError("--num-workers and --part-docs must be >= 1, --gpus-per-worker >= 0, "
                          "--cpus-per-worker > 0")
    if embed_cfg.store_tokens:
        raise ConfigError("--store-tokens works with the local engine only: shards hold no token codes; "
                          "embed with --engine local, or without --store-tokens")
    files = expand_sources(list(sources))
    if names is not None and len(names) != len(files):
        raise ConfigError(f"{len(names)} names for {len(files)} corpora")
    names = [shards.check_dataset_name(n) for n in (names or [dataset_name(f) for f in files])]
    if len(set(names)) != len(names):
        raise ConfigError(f"two corpora would both be dataset {sorted(n for n in names if names.count(n) > 1)[0]!r};"
                          " rename a file or pass --name")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the shards")
    out.mkdir(parents=True, exist_ok=True)
    sae_path, _ = sae_to_use(sae, out / "sae", files[:1], input_cfg=input_cfg, reader_cfg=reader_cfg,
                             train_cfg=train_cfg, progress=progress, log=log)
    t0 = time.perf_counter()
    manifest = _start_manifest(out, sae_path, reader_cfg, embed_cfg)
    _plan(out, manifest, files, names, input_cfg, part_docs, progress, log)
    pending = [(d, i) for d in manifest.datasets for i in range(d["n_parts"])
               if shards.part_key(d["name"], i) not in manifest.parts]
    n_parts = sum(d["n_parts"] for d in manifest.datasets)
    if pending:
        if len(pending) < n_parts:
            log(f"resuming: {n_parts - len(pending)} of {n_parts} parts are already in {out}")
        shards.remove_unlisted(out, manifest)
        manifest.complete = manifest.labelled = False  # labels change with every new part
        shards.write_manifest(out, manifest)
        _run_ray(out, manifest, pending, sae_path, reader_cfg, embed_cfg, num_workers, gpus_per_worker,
                 cpus_per_worker, address, progress, log)
    elif not manifest.complete:
        log(f"all {n_parts} parts are in {out}; finishing")
    for d in manifest.datasets:
        d["complete"] = True
    manifest.complete = True
    shards.write_manifest(out, manifest)
    if not manifest.labelled:
        finish_run(out, top_docs=embed_cfg.label_top_docs, n_words=embed_cfg.label_words)
        manifest.labelled = True
        shards.write_manifest(out, manifest)
    shards.remove_inputs(out)
    n_docs, n_acts = manifest.total("n_docs"), manifest.total("n_activations")
    n_new = sum(manifest.parts[shards.part_key(d["name"], i)]["n_docs"] for d, i in pending)
    return RayEmbedResult(out, names, n_docs, n_new, n_parts, len(pending), n_acts, time.perf_counter() - t0,
                          str(sae_path))


# -- driver steps ------------------------------------------------------------------------------------------------


def _start_manifest(out: Path, sae_path: Path, reader_cfg: ReaderConfig, embed_cfg: EmbedConfig):
    """The folder's manifest: a new one, or the existing one after checking that it
    was written with the same SAE and settings (else resuming would mix two runs)."""
    from saedata.sae import load_sae

    cfg = load_sae(sae_path, device="cpu").cfg  # also checks the SAE loads before any worker starts
    reader = reader_for_sae(reader_cfg, cfg).to_dict()  # and reads at its hook point
    fingerprint = sae_fingerprint(sae_path)
    if (out / shards.MANIFEST).exists():
        manifest = shards.read_manifest(out)
        if manifest.sae["fingerprint"] not in (fingerprint, sae_fingerprint(sae_path, legacy=True)):
            raise ConfigError(f"the shards in {out} were written with SAE {manifest.sae['path']}, not {sae_path}; "
                              "give another --out, or the original --sae to resume")
        for key in ("model", "layer", "max_tokens"):
            if manifest.reader.get(key) != reader.get(key) and reader.get(key) is not None:
                raise ConfigError(f"the shards in {out} were written with reader {key} "
                                  f"{manifest.reader.get(key)!r}, not {reader.get(key)!r}; give another --out")
        if {k: v for k, v in manifest.embed.items()} != embed_cfg.to_dict():
            raise ConfigError(f"the shards in {out} were written with other embed settings "
                              f"({manifest.embed}); give another --out")
        return manifest
    sae = {"sae_id": 1, "name": sae_path.name, "path": str(sae_path.resolve()), "fingerprint": fingerprint,
           "d_in": cfg.d_in, "d_sae": cfg.d_sae, "activation": cfg.activation, "reader": reader["model"],
           "layer": reader["layer"], "cfg": {**cfg.to_dict(), "reader": reader["model"], "layer": reader["layer"]}}
    manifest = shards.Manifest(sae=sae, reader=reader, embed=embed_cfg.to_dict())
    shards.write_manifest(out, manifest)
    return manifest


def _plan(out: Path, manifest: shards.Manifest, files: list[str], names: list[str], input_cfg: InputConfig,
          part_docs: int, progress: bool, log: Log) -> None:
    """Read every corpus once and write its input parts (doc_id, ext_id, text, meta);
    a dataset already planned by an earlier run is checked against its file instead."""
    planned = {d["name"]: d for d in manifest.datasets}
    for name in planned:
        if name not in names:
            raise ConfigError(f"{out} also holds dataset {name!r}, which this command does not name; rerun the "
                              "original command to resume, or give another --out")
    next_id = 0
    for file, name in zip(files, names):
        source = _source_identity(file)
        d = planned.get(name)
        if d is not None and d.get("planned"):
            if (d["source"], d["size"], d.get("sha256", d["mtime"])) != \
                    (source["source"], source["size"], source.get("sha256", source["mtime"])):
                raise InputError(f"the corpus changed since the shards of {name!r} were planned in {out}; "
                                 "give another --out", path=file)
            next_id = d["first_doc_id"] + d["n_docs"]
            continue
        local = _local_copy(file, out / "_input" / "_staged") if _is_url(file) else Path(file)
        try:
            corpus = open_corpus(str(local), input_cfg)
            if corpus.format == "images":
                raise InputError("--engine ray embeds text corpora; embed image folders without --engine ray",
                                 path=file)
            if d is None:
                d = {"dataset_id": len(manifest.datasets) + 1, "name": name, **source}
                manifest.datasets.append(d)
            d.update(source)
            bar = progress_bar(count_documents(str(local), input_cfg), f"plan {name}", progress)
            first_id = next_id
            n_parts, next_id = _write_input_parts(corpus, out / "_input" / f"dataset={name}", part_docs, next_id, bar)
            bar.close()
        except InputError as e:
            if local != Path(file):  # name the corpus as the user gave it, not the local copy
                e.args = tuple(str(a).replace(str(local.resolve()), file) for a in e.args)
                e.path = file
            raise
        finally:
            if local != Path(file):
                local.unlink(missing_ok=True)
        if n_parts == 0:
            raise InputError("no documents to embed (the corpus is empty or every document is blank)", path=file)
        d.update(first_doc_id=first_id, n_docs=next_id - first_id, n_parts=n_parts, n_empty=corpus.n_empty,
                 planned=True, complete=False)
        shards.write_manifest(out, manifest)
        log(f"planned {name}: {next_id - first_id} documents in {n_parts} part{'s' * (n_parts != 1)}")


def _write_input_parts(corpus, folder: Path, part_docs: int, next_id: int, bar) -> tuple[int, int]:
    """Cut ``corpus`` into parts of ``part_docs`` documents (doc_id, ext_id, text, meta)
    numbered from ``next_id``; returns (parts written, the next free doc id)."""
    folder.mkdir(parents=True, exist_ok=True)
    n_parts, buf = 0, []

    def flush(docs: list) -> None:
        nonlocal n_parts, next_id
        pl.DataFrame(
            {"doc_id": np.arange(next_id, next_id + len(docs), dtype=np.int64),
             "ext_id": [x.ext_id for x in docs], "text": [x.text for x in docs],
             "meta": [_json(x.meta) for x in docs], "line": [x.line for x in docs],
             "messages": [None if x.messages is None else json.dumps(x.messages, ensure_ascii=False) for x in docs]},
            schema={"doc_id": pl.Int64, "ext_id": pl.String, "text": pl.String, "meta": pl.String,
                    "line": pl.Int64, "messages": pl.String},
        ).write_parquet(folder / f"part-{n_parts:05d}.parquet")
        n_parts, next_id = n_parts + 1, next_id + len(docs)

    for batch in corpus:
        buf.extend(batch)
        bar.update(len(batch))
        while len(buf) >= part_docs:
            flush(buf[:part_docs])
            buf = buf[part_docs:]
    if buf:
        flush(buf)
    return n_parts, next_id


def _json(meta: dict) -> str | None:
    return json.dumps(meta, ensure_ascii=False) if meta else None


def _run_ray(out: Path, manifest: shards.Manifest, pending: list[tuple[dict, int]], sae_path: Path,
             reader_cfg: ReaderConfig, embed_cfg: EmbedConfig, num_workers: int, gpus_per_worker: float,
             cpus_per_worker: float, address: str | None, progress: bool, log: Log) -> None:
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise ConfigError("--engine ray needs Ray Data: pip install 'saedata[ray]'") from e
    _init_ray(ray, address, num_workers, cpus_per_worker, log)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.max_errored_blocks = 0
    items = [{"dataset": d["name"], "dataset_id": d["dataset_id"], "index": i,
              "input": str((out / "_input" / f"dataset={d['name']}" / f"part-{i:05d}.parquet").resolve())}
             for d, i in pending]
    workers = min(num_workers, len(items))
    reader = reader_cfg.replace(model=manifest.reader["model"], layer=manifest.reader["layer"])
    if gpus_per_worker > 0 and reader.device == "auto":
        reader = reader.replace(device="cuda")
    with warnings.catch_warnings():  # max_restarts/max_task_retries have no named parameter yet
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        ds = _pipeline(ray, items, out, sae_path, reader, embed_cfg, manifest, workers, gpus_per_worker,
                       cpus_per_worker)
    total_docs = sum(d["n_docs"] for d in manifest.datasets)
    bar = progress_bar(total_docs, f"embed ({workers} Ray worker{'s' * (workers > 1)})", progress)
    bar.update(manifest.total("n_docs"))
    failure = None
    try:
        for row in ds.iter_rows():
            key = shards.part_key(row["dataset"], int(row["index"]))
            manifest.parts[key] = {"dataset": row["dataset"], "index": int(row["index"]),
                                   "n_docs": int(row["n_docs"]), "n_activations": int(row["n_activations"]),
                                   "n_truncated": int(row["n_truncated"])}
            if manifest.sae.get("layer") is None:
                manifest.sae["layer"] = manifest.reader["layer"] = manifest.sae["cfg"]["layer"] = int(row["layer"])
            shards.write_manifest(out, manifest)
            bar.update(int(row["n_docs"]))
    except Exception as e:  # Ray wraps the worker's exception; report its message
        failure = _root_message(e)
    bar.close()
    if failure is not None:
        # Ray's exception holds references to the actor pool, which keeps the actors (and
        # their CPUs and GPUs) alive; drop every reference before raising our own
        del ds
        gc.collect()
        done = len(manifest.parts)
        n_parts = sum(d["n_parts"] for d in manifest.datasets)
        raise WorkerError(f"{failure} ({done} of {n_parts} parts are done and kept in {out}; "
                          "rerun the same command to resume)")


def _pipeline(ray, items, out, sae_path, reader, embed_cfg, manifest, workers, gpus_per_worker, cpus_per_worker):
    """The Ray Data pipeline: the part list -> a pool of PartWorker actors (reader and SAE loaded once each)."""
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        PartWorker,
        fn_constructor_kwargs={"out": str(out.resolve()), "sae_path": str(sae_path.resolve()),
                               "reader": reader.to_dict(), "embed": embed_cfg.to_dict(),
                               "sae_id": int(manifest.sae["sae_id"]), "threads": max(1, int(cpus_per_worker))},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_gpus=gpus_per_worker or None,
        num_cpus=cpus_per_worker,
        max_restarts=0,  # a worker that dies fails the run (finished parts are kept)
        max_task_retries=0,
    )


def _init_ray(ray, address: str | None, num_workers: int, cpus_per_worker: float, log: Log) -> None:
    # Ray Data logs each failure and its progress itself; saedata reports both
    for name in ("ray", "ray.data", "ray.data._internal"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, single-user Ray needs no token
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # and reports nothing
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
                              "configure_logging": True}
    if address:
        ray.init(address=address, **kwargs)
        log(f"connected to the Ray cluster at {address}")
    else:
        cpus = max(os.cpu_count() or 1, int(np.ceil(num_workers * cpus_per_worker)))
        ray.init(num_cpus=cpus, **kwargs)


def _root_message(e: BaseException) -> str:
    """The worker's own error out of the exceptions Ray wraps it in: our "worker failed
    on part ..." line when there is one, else the last "SomethingError: ..." line."""
    texts: list[str] = []
    seen: list[BaseException] = []
    err: BaseException | None = e
    while err is not None and all(err is not x for x in seen):
        seen.append(err)
        texts.append(str(err))
        nxt = getattr(err, "cause", None)
        err = nxt if isinstance(nxt, BaseException) else (err.__cause__ or err.__context__)
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for t in texts for ln in t.splitlines()]
    for ln in lines:
        m = re.match(r"^(?:[\w.]+: )?(worker failed on part .*)", ln)  # the message, not the source line
        if m:
            return m.group(1)
    errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception): ", ln)]
    return "a Ray worker failed: " + (errors[-1] if errors else (lines[0] if lines else type(e).__name__))


# -- the worker ---------------------------------------------------------------------------------------------


class PartWorker:
    """A Ray actor: loads the reader and the SAE once, then embeds one input part per call
    and writes its Parquet files; returns the part's counts for the manifest."""

    def __init__(self, out: str, sae_path: str, reader: dict, embed: dict, sae_id: int, threads: int = 1):
        import torch

        torch.set_num_threads(threads)
        self.out = Path(out)
        self.embed_cfg = EmbedConfig.from_dict(embed)
        self.sae_id = sae_id
        self.reader, self.model, _ = load_models(sae_path, ReaderConfig.from_dict(reader),
                                                 sae_dtype=self.embed_cfg.sae_dtype)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in ("dataset", "index", "n_docs", "n_activations", "n_truncated",
                                                "layer")}
        for dataset, dataset_id, index, path in zip(batch["dataset"], batch["dataset_id"], batch["index"],
                                                    batch["input"]):
            try:
                counts = self.embed_part(str(dataset), int(dataset_id), int(index), str(path))
            except Exception as e:
                raise RuntimeError(f"worker failed on part {shards.part_key(str(dataset), int(index))}: "
                                   f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
            for k, v in counts.items():
                out[k].append(v)
        return out

    def embed_part(self, dataset: str, dataset_id: int, index: int, path: str) -> dict[str, Any]:
        frame = pl.read_parquet(path)
        lines = frame["line"] if "line" in frame.columns else [0] * frame.height
        messages = frame["messages"] if "messages" in frame.columns else [None] * frame.height
        docs = [Document(ext_id, text, {}, line, None if m is None else tuple(map(tuple, json.loads(m))))
                for ext_id, text, line, m in zip(frame["ext_id"], frame["text"], lines, messages)]
        size = self.embed_cfg.commit_docs
        chunks = [embed_chunk(docs[s : s + size], int(frame["doc_id"][s]), self.reader, self.model, self.sae_id,
                              dataset_id, self.embed_cfg) for s in range(0, len(docs), size)]
        documents = pl.concat([c.documents for c in chunks]).with_columns(meta=frame["meta"])
        activations = pl.concat([c.activations for c in chunks])
        words = pl.concat([c.word_counts for c in chunks]).group_by("word").agg(pl.col("df").sum()).sort("word")
        shards.write_part(self.out, dataset, index, {
            "documents": documents,
            "activations": activations,
            "word_counts": words,
            "label_candidates": shards.label_candidates(activations, self.embed_cfg.label_top_docs),
            "latent_counts": shards.part_latent_counts(documents, activations),
        })
        return {"dataset": dataset, "index": index, "n_docs": documents.height,
                "n_activations": activations.height, "n_truncated": sum(c.n_truncated for c in chunks),
                "layer": int(self.reader.layer)}
