"""Finishing: what makes embedded rows a complete dataset, in one copy for every engine.

- :func:`finish_datasets`: mark datasets complete with their ``latent_counts``, then
  refresh the SAE's latent statistics, fold its word counts and relabel its latents;
  the local engine runs it when a corpus is embedded, ``saedata import`` when shards are
  copied in.
- :func:`import_shards`: copy a finished shard folder into a store file, all or nothing.
- :func:`finish_run`: the same statistics and labels for a shard folder at the end of a
  Ray run, written as Parquet beside the parts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from saedata.console import Log, silent
from saedata.label import keyword_labels, label_latents
from saedata.store import Store, shards
from saedata.store.store import fault_point


def finish_datasets(store: Store, dataset_ids: Sequence[int], sae_id: int, top_docs: int, n_words: int,
                    checkpoint: bool = True) -> None:
    """Complete ``dataset_ids`` (document counts and ``latent_counts``) and recompute the
    statistics, word counts and keyword labels of SAE ``sae_id`` over the whole store, in
    one transaction (the caller's, when inside one): a run stopped while finishing leaves
    the datasets incomplete, with the previous statistics and labels, and its rerun
    finishes them."""
    with store.transaction():
        for dataset_id in dataset_ids:
            store.complete_dataset(dataset_id)
        fault_point("finish:complete")
        store.refresh_latent_stats(sae_id)
        fault_point("finish:stats")
        store.fold_word_counts(sae_id)
        fault_point("finish:words")
        label_latents(store, sae_id, top_docs=top_docs, n_words=n_words)
        fault_point("finish:labels")
    fault_point("finish:committed")
    if checkpoint:
        store.checkpoint()


@dataclass(frozen=True)
class ImportResult:
    """What ``saedata import`` copied."""

    datasets: list[str]
    n_docs: int
    n_activations: int
    sae_id: int


def import_shards(folder: str | os.PathLike, db: str | os.PathLike, datasets: Iterable[str] | None = None,
                  log: Log = silent) -> ImportResult:
    """Copy a finished shard folder into the store ``db`` (created if missing) in one
    transaction: its SAE (reused when the store has the same weights), one dataset per
    shard dataset (doc ids moved after the store's), then the datasets finished as
    ``embed`` finishes them. A name the store already has, or an unfinished run, is
    refused and the store is left as it was."""
    folder = Path(folder)
    manifest, wanted = shards.check_importable(folder, datasets)
    embed = manifest.embed
    with Store(db, read_only=False, allowed_directories=[folder]) as store:
        with store.transaction():
            sae_id, ids, n_docs, n_acts = shards.copy_into(store, folder, manifest, wanted)
            fault_point("import:copied")
            finish_datasets(store, ids, sae_id, top_docs=int(embed.get("label_top_docs", 64)),
                            n_words=int(embed.get("label_words", 3)), checkpoint=False)
        fault_point("import:committed")
        store.checkpoint()
    log(f"imported {', '.join(wanted)} from {folder} into {db}: {n_docs} documents, {n_acts} activations")
    return ImportResult(wanted, n_docs, n_acts, sae_id)


def finish_run(folder: str | os.PathLike, top_docs: int, n_words: int) -> int:
    """Merge a shard folder's parts once every part is in: ``latent_counts.parquet`` (the
    parts' counts summed, which makes a diff over shards fast) and ``latents.parquet``,
    the labels made from the merged partial statistics (word counts summed, label
    candidates pooled) with each latent's frequency. Returns how many latents got a
    label; the caller then sets ``labelled`` in the manifest."""
    folder = Path(folder)
    with shards.open_shards(folder) as store:
        shards.write_merged_counts(store, folder)
        sae_id = int(shards.read_manifest(folder).sae["sae_id"])
        labels = keyword_labels(store, sae_id, top_docs=top_docs, n_words=n_words, candidates="label_candidates")
        stats = store.macro("latent_stats", sae_id)
        d_sae = store.sae_info(sae_id)["d_sae"]
        latents = (pl.DataFrame({"latent": pl.int_range(0, d_sae, eager=True).cast(pl.Int32)})
                   .join(labels, on="latent", how="left")
                   .join(stats.select(pl.col("latent").cast(pl.Int32), "freq", "max_act"), on="latent", how="left")
                   .with_columns(sae_id=pl.lit(sae_id, pl.Int32), freq=pl.col("freq").fill_null(0.0))
                   .select("sae_id", "latent", "label", "label_source", "freq",
                           pl.col("max_act").cast(pl.Float32)))
    shards.write_latents(folder, latents)
    return labels.height
