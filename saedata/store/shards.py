"""Concept tables as Parquet shards: what ``saedata embed --engine ray --out DIR`` writes.

A shard folder holds the store's tables as Parquet files, partitioned by dataset
(Hive style, so Spark, Polars or any Parquet engine reads them too), and a
``manifest.json`` that says which files are complete::

    shards/
      manifest.json                                   SAE, reader, datasets, finished parts
      documents/dataset=a/part-00000.parquet          the documents table's columns
      activations/dataset=a/part-00000.parquet        the activations table's columns
      word_counts/dataset=a/part-00000.parquet        (word, df): partial label statistics
      label_candidates/dataset=a/part-00000.parquet   each latent's strongest rows in the part
      latent_counts/dataset=a/part-00000.parquet      the latent_counts table's columns
      latents.parquet                                 labels and frequencies, written at the end
      latent_counts.parquet                           the parts' latent counts summed, written at the end

A part is listed in the manifest only after all its files are in place (each written
to a hidden temporary name, then renamed), so a reader of the manifest never sees
half a part; files that no manifest lists are ignored and overwritten on resume.

:func:`open_shards` (and ``saedata.open(folder)``) gives a read-only :class:`Store`
whose tables are DuckDB views over the listed files, so every analysis and
``saedata sql`` runs over the shards in place; :func:`copy_into` copies them into a
store file (``saedata import``, which then finishes the datasets as embedding does).
This module is the format only: it imports nothing above the store.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from saedata.errors import ConfigError, NotFoundError, SchemaVersionError, StoreError
from saedata.store.store import Store, define_own_sql, length_floor, read_query_file, restrict_files

FORMAT = "saedata-shards"
FORMAT_VERSION = 2
"""Version of the folder layout; a newer one is refused. Version 2 added the token counts
(activations.tokens, latent_counts.tokens); a version-1 folder reads them as NULL."""
MANIFEST = "manifest.json"
MERGED_COUNTS = "latent_counts.parquet"
"""Every part's latent_counts summed, written when the run finishes."""
TABLES = ("documents", "activations", "word_counts", "label_candidates", "latent_counts")
"""The per-part files, one folder each."""
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
"""Dataset names that are safe as a Hive partition value and a folder name."""

_SCHEMAS: dict[str, dict[str, Any]] = {
    "documents": {"doc_id": pl.Int64, "dataset_id": pl.Int32, "ext_id": pl.String, "text": pl.String,
                  "meta": pl.String, "n_tokens": pl.Int32},
    "activations": {"doc_id": pl.Int64, "sae_id": pl.Int32, "latent": pl.Int32, "value": pl.Float32,
                    "peak": pl.Int32, "tokens": pl.Int32},
    "word_counts": {"word": pl.String, "df": pl.Int64},
    "label_candidates": {"doc_id": pl.Int64, "sae_id": pl.Int32, "latent": pl.Int32, "value": pl.Float32,
                         "peak": pl.Int32},
    "latent_counts": {"dataset_id": pl.Int32, "sae_id": pl.Int32, "len_floor": pl.Int32, "latent": pl.Int32,
                      "tokens": pl.Int32, "n_active": pl.Int64},
}


# -- manifest ---------------------------------------------------------------------------------------


@dataclass
class Manifest:
    """What a shard folder holds. ``parts`` maps "dataset/index" to the finished part's
    counts; ``datasets`` lists each dataset's id, source and planned parts."""

    sae: dict[str, Any]
    """sae_id, name, path, fingerprint, d_in, d_sae, activation, reader, layer, cfg."""
    reader: dict[str, Any]
    embed: dict[str, Any]
    datasets: list[dict[str, Any]] = field(default_factory=list)
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)
    complete: bool = False
    labelled: bool = False
    version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": self.version, "sae": self.sae, "reader": self.reader,
                "embed": self.embed, "datasets": self.datasets, "parts": self.parts,
                "complete": self.complete, "labelled": self.labelled}

    def dataset(self, name: str) -> dict[str, Any] | None:
        return next((d for d in self.datasets if d["name"] == name), None)

    def total(self, key: str, dataset: str | None = None) -> int:
        """Sum of ``key`` (n_docs, n_activations, n_truncated) over the finished parts (of one dataset)."""
        return sum(p[key] for p in self.parts.values() if dataset is None or p["dataset"] == dataset)

    def files(self, table: str, dataset: str | None = None) -> list[str]:
        """Relative paths of ``table``'s files of the finished parts (of one dataset)."""
        return [_part_file(table, p["dataset"], p["index"]) for _, p in sorted(self.parts.items())
                if dataset is None or p["dataset"] == dataset]


MAX_D_SAE = 1 << 24
"""Most latents a manifest may claim (a store holds one row per latent)."""


def read_manifest(folder: str | os.PathLike) -> Manifest:
    """The manifest of a shard folder, every field checked (a folder may come from someone
    else): a clear one-line error when it is missing, malformed, from a newer saedata, or
    names anything outside the folder."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise NotFoundError(f"{folder} is not a shard folder (no {MANIFEST}); "
                            "write one with `saedata embed --engine ray --out FOLDER`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise StoreError(f"{path}: unreadable manifest ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StoreError(f"{path} is not a saedata shard manifest")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise StoreError(f"{path}: version is {version!r}, not a number")
    if version > FORMAT_VERSION:
        raise SchemaVersionError(f"{folder} holds shards of format version {version}, but this "
                                 f"saedata reads up to version {FORMAT_VERSION}; upgrade saedata to read it")
    try:
        return _checked(data, version)
    except (KeyError, TypeError, ValueError) as e:
        problem = f"missing {e}" if isinstance(e, KeyError) else str(e)
        raise StoreError(f"{path}: malformed manifest ({problem})") from None


def _checked(data: dict[str, Any], version: int) -> Manifest:
    """A Manifest from a manifest's JSON, with TypeError/ValueError/KeyError for what is wrong."""
    def integer(value: Any, what: str, low: int = 0, high: int | None = None) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
            bound = f" in {low}..{high}" if high is not None else f" >= {low}"
            raise ValueError(f"{what} is {value!r}, not a whole number{bound}")
        return value

    def mapping(value: Any, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise TypeError(f"{what} is not an object")
        return value

    sae = mapping(data["sae"], "sae")
    integer(sae["sae_id"], "sae.sae_id", 1)
    integer(sae["d_in"], "sae.d_in", 1, MAX_D_SAE)
    integer(sae["d_sae"], "sae.d_sae", 1, MAX_D_SAE)
    for key in ("name", "fingerprint", "activation"):
        if not isinstance(sae[key], str):
            raise TypeError(f"sae.{key} is not text")
    datasets = data["datasets"]
    if not isinstance(datasets, list):
        raise TypeError("datasets is not a list")
    names: dict[str, dict[str, Any]] = {}
    for d in datasets:
        mapping(d, "a dataset")
        name = d["name"]
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ValueError(f"dataset name {name!r} is not a safe folder name")
        if name in names:
            raise ValueError(f"dataset {name!r} is listed twice")
        integer(d["dataset_id"], f"dataset {name!r}: dataset_id", 1)
        if not isinstance(d["source"], str):
            raise TypeError(f"dataset {name!r}: source is not text")
        for key in ("n_parts", "n_docs", "first_doc_id", "n_empty"):
            if key in d:
                integer(d[key], f"dataset {name!r}: {key}")
        names[name] = d
    parts = mapping(data["parts"], "parts")
    for key, part in parts.items():
        mapping(part, f"part {key!r}")
        dataset, index = part["dataset"], integer(part["index"], f"part {key!r}: index")
        if dataset not in names or key != part_key(dataset, index):
            raise ValueError(f"part {key!r} is not a part of a listed dataset")
        if index >= names[dataset].get("n_parts", 0):
            raise ValueError(f"part {key!r} is beyond the {names[dataset].get('n_parts', 0)} parts of {dataset!r}")
        for count in ("n_docs", "n_activations", "n_truncated"):
            integer(part[count], f"part {key!r}: {count}")
    return Manifest(sae=sae, reader=mapping(data["reader"], "reader"), embed=mapping(data["embed"], "embed"),
                    datasets=datasets, parts=parts, complete=bool(data["complete"]),
                    labelled=bool(data.get("labelled")), version=version)


def write_manifest(folder: str | os.PathLike, manifest: Manifest) -> None:
    """Replace the manifest atomically (write a temporary file, then rename)."""
    path = Path(folder) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def part_key(dataset: str, index: int) -> str:
    return f"{dataset}/{index:05d}"


def _part_file(table: str, dataset: str, index: int) -> str:
    return f"{table}/dataset={dataset}/part-{index:05d}.parquet"


def check_dataset_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ConfigError(f"dataset name {name!r} cannot name a shard partition: use letters, digits "
                          "and _ . + - (pass --name)")
    return name


# -- writing one part -----------------------------------------------------------------------------------


def write_part(folder: str | os.PathLike, dataset: str, index: int, frames: dict[str, pl.DataFrame]) -> None:
    """Write one part's files (``frames`` has one frame per name in TABLES), each to a
    hidden temporary name first and renamed when written; the caller lists the part in
    the manifest afterwards."""
    folder = Path(folder)
    for table in TABLES:
        frame = frames[table].select([pl.col(c).cast(t) for c, t in _SCHEMAS[table].items()])
        final = folder / _part_file(table, dataset, index)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp")
        frame.write_parquet(tmp, compression="zstd", statistics=True)
        os.replace(tmp, final)


def label_candidates(activations: pl.DataFrame, top_docs: int) -> pl.DataFrame:
    """Each latent's ``top_docs`` strongest rows (|value| descending, then doc_id): the
    part's share of the evidence labels are made from. The strongest rows of a latent
    over the whole corpus are among the union of every part's, so labelling from the
    union gives the labels a single-process run gives."""
    return (activations.with_columns(_mag=pl.col("value").abs())
            .sort(["latent", "_mag", "doc_id"], descending=[False, True, False])
            .group_by("latent", maintain_order=True).head(top_docs)
            .drop("_mag"))


def part_latent_counts(documents: pl.DataFrame, activations: pl.DataFrame) -> pl.DataFrame:
    """The part's latent_counts rows: active documents per latent and length class
    (what ``Store.complete_dataset`` writes for a dataset in a store file)."""
    floors = length_floor(documents["n_tokens"].fill_null(0).to_numpy())
    docs = documents.select("doc_id", "dataset_id").with_columns(len_floor=pl.Series(floors, dtype=pl.Int32))
    keys = ["dataset_id", "sae_id", "len_floor", "latent", "tokens"]
    return (activations.filter(pl.col("value") != 0).join(docs, on="doc_id")
            .group_by(keys).agg(n_active=pl.len().cast(pl.Int64)).sort(keys))


# -- reading shards in place -----------------------------------------------------------------------------


def is_shard_folder(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / MANIFEST).exists()


def connect_shards(folder: str | os.PathLike, file_access: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection whose store tables are views over the shards the
    manifest lists (documents, activations, word_counts, label_candidates,
    latent_counts with one row per part and cell) and small tables for saes, datasets and latents; the store's views and
    macros are loaded on top."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET enable_progress_bar = false")
        con.execute(read_query_file("schema.sql"))
        for table in ("documents", "activations", "word_counts", "latent_counts"):
            con.execute(f"DROP TABLE {table}")
        _insert_sae(con, manifest.sae)
        for d in manifest.datasets:
            con.execute(
                "INSERT INTO datasets (dataset_id, name, source, n_docs, sae_id, complete, n_empty, n_truncated, "
                "args) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [d["dataset_id"], d["name"], d["source"], manifest.total("n_docs", d["name"]),
                 manifest.sae["sae_id"], bool(d.get("complete")), d.get("n_empty", 0),
                 manifest.total("n_truncated", d["name"]),
                 json.dumps({"reader": manifest.reader, "embed": manifest.embed})],
            )
        latents_file = folder / "latents.parquet"
        if manifest.labelled and latents_file.exists():
            # the columns a shard folder has; the rest (label scores) stay NULL
            con.execute("INSERT INTO latents (sae_id, latent, label, label_source, freq, max_act) "
                        "SELECT sae_id, latent, label, label_source, freq, max_act FROM read_parquet(?)",
                        [str(latents_file)])
        else:
            con.execute("INSERT INTO latents (sae_id, latent) SELECT ?, range FROM range(?)",
                        [manifest.sae["sae_id"], manifest.sae["d_sae"]])
        tokens = "tokens" if manifest.version >= 2 else "NULL::INTEGER AS tokens"
        columns = {
            "documents": "doc_id, dataset_id, ext_id, text, meta::JSON AS meta, n_tokens",
            "activations": f"doc_id, sae_id, latent, value, peak, {tokens}",
            "word_counts": f"{int(manifest.sae['sae_id'])}::INTEGER AS sae_id, word, df",
            "label_candidates": "doc_id, sae_id, latent, value, peak",
            # one row per part and cell: read it with sum(n_active) ... GROUP BY, as counted_presence does
            "latent_counts": f"dataset_id, sae_id, len_floor, latent, n_active, {tokens}",
        }
        for table, cols in columns.items():
            files = [str(folder / f) for f in manifest.files(table)]
            if table == "latent_counts" and manifest.labelled and (folder / MERGED_COUNTS).exists():
                files = [str(folder / MERGED_COUNTS)]  # the parts' counts summed when the run finished
            _relation(con, table, files).project(cols).create_view(table)
        define_own_sql(con)
        if not file_access:
            restrict_files(con, [folder])
    except duckdb.Error as e:
        con.close()
        raise StoreError(f"cannot read the shards in {folder}: {str(e).splitlines()[0]}") from e
    return con


def _relation(con: duckdb.DuckDBPyConnection, table: str, files: list[str]) -> duckdb.DuckDBPyRelation:
    """The files of one table as a relation (Hive partitions read), or an empty relation
    of its columns. Paths go to DuckDB as values, never into SQL text."""
    if files:
        return con.read_parquet(files, hive_partitioning=True)
    cols = ", ".join(f"NULL::{_duck_type(t)} AS {c}" for c, t in _SCHEMAS[table].items())
    return con.sql(f"SELECT {cols} WHERE false")


def _duck_type(t: Any) -> str:
    return {pl.Int64: "BIGINT", pl.Int32: "INTEGER", pl.String: "VARCHAR", pl.Float32: "REAL"}[t]


def _insert_sae(con: duckdb.DuckDBPyConnection, sae: dict[str, Any], sae_id: int | None = None) -> None:
    con.execute(
        "INSERT INTO saes (sae_id, name, reader, layer, d_in, d_sae, activation, cfg, path, fingerprint) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [sae["sae_id"] if sae_id is None else sae_id, sae["name"], sae.get("reader"), sae.get("layer"),
         sae["d_in"], sae["d_sae"], sae["activation"], json.dumps(sae.get("cfg", {})), sae.get("path"),
         sae["fingerprint"]],
    )


def open_shards(folder: str | os.PathLike, file_access: bool = False) -> Store:
    """A read-only :class:`~saedata.store.Store` over a shard folder (its SQL may read no
    file outside the folder unless ``file_access``)."""
    return Store.over(connect_shards(folder, file_access), folder)


# -- at the end of a run ---------------------------------------------------------------------------------


def write_merged_counts(store: Store, folder: str | os.PathLike) -> None:
    """Write ``latent_counts.parquet``: the parts' latent counts summed, one row per
    dataset, length class and latent (what makes a diff over shards fast)."""
    folder = Path(folder)
    tmp = folder / f".{MERGED_COUNTS}.tmp"
    store.con.sql("SELECT dataset_id, sae_id, len_floor, latent, tokens, sum(n_active)::BIGINT AS n_active "
                  "FROM latent_counts GROUP BY ALL ORDER BY ALL").write_parquet(str(tmp))
    os.replace(tmp, folder / MERGED_COUNTS)


def write_latents(folder: str | os.PathLike, latents: pl.DataFrame) -> None:
    """Write ``latents.parquet`` (sae_id, latent, label, label_source, freq, max_act)."""
    tmp = Path(folder) / ".latents.parquet.tmp"
    latents.write_parquet(tmp)
    os.replace(tmp, Path(folder) / "latents.parquet")


# -- copying into a store file ---------------------------------------------------------------------------


def check_importable(folder: str | os.PathLike, datasets: Iterable[str] | None) -> tuple[Manifest, list[str]]:
    """The manifest of a finished shard folder and the dataset names to import (all when
    ``datasets`` is None); errors for an unfinished run or a name the folder lacks."""
    manifest = read_manifest(folder)
    if not manifest.complete:
        done = len(manifest.parts)
        planned = sum(d.get("n_parts", 0) for d in manifest.datasets)
        raise StoreError(f"{folder} is an unfinished run ({done} of {planned} parts); rerun the same "
                         "`saedata embed --engine ray` to finish it, then import")
    names = [d["name"] for d in manifest.datasets]
    wanted = list(datasets) if datasets is not None else names
    for name in wanted:
        if name not in names:
            raise NotFoundError(f"no dataset {name!r} in {folder} (datasets: {', '.join(names)})")
    return manifest, wanted


def copy_into(store: Store, folder: str | os.PathLike, manifest: Manifest, names: list[str]
              ) -> tuple[int, list[int], int, int]:
    """Copy the named datasets of a shard folder into ``store``, in the caller's
    transaction: the SAE (reused when the store has the same weights), then per dataset
    its documents (doc ids moved after the store's), activations and word counts. Returns
    (sae_id, new dataset ids, documents, activations). The datasets are left incomplete:
    finishing them (counts, statistics, labels) is the caller's next step."""
    folder = Path(folder)
    for name in names:
        if store.one("SELECT 1 FROM datasets WHERE name = ?", [name]):
            raise ConfigError(f"{store.path} already has a dataset {name!r}; import into another store, or "
                              "pass --dataset for the others")
    sae = manifest.sae
    row = store.one("SELECT sae_id FROM saes WHERE fingerprint = ?", [sae["fingerprint"]])
    con = store.con
    try:
        return _copy(con, folder, manifest, names, sae, row)
    except duckdb.Error as e:  # a corrupt or missing part file
        raise StoreError(f"cannot import {folder}: {str(e).splitlines()[0][:300]}") from None


def _copy(con: duckdb.DuckDBPyConnection, folder: Path, manifest: Manifest, names: list[str],
          sae: dict[str, Any], row: tuple | None) -> tuple[int, list[int], int, int]:
    if row is None:
        sae_id = int(con.execute("SELECT coalesce(max(sae_id), 0) + 1 FROM saes").fetchone()[0])
        _insert_sae(con, sae, sae_id)
        con.execute("INSERT INTO latents (sae_id, latent) SELECT ?, range FROM range(?)", [sae_id, sae["d_sae"]])
    else:
        sae_id = int(row[0])
    ids: list[int] = []
    n_docs = n_acts = 0
    for name in names:
        d = manifest.dataset(name)
        doc_files = [str(folder / f) for f in manifest.files("documents", name)]
        act_files = [str(folder / f) for f in manifest.files("activations", name)]
        word_files = [str(folder / f) for f in manifest.files("word_counts", name)]
        dataset_id = int(con.execute("SELECT coalesce(max(dataset_id), 0) + 1 FROM datasets").fetchone()[0])
        (start,) = con.execute("SELECT coalesce(max(doc_id), -1) + 1 FROM documents").fetchone()
        (low,) = con.execute("SELECT coalesce(min(doc_id), 0) FROM read_parquet(?)", [doc_files]).fetchone()
        shift = int(start) - int(low)
        con.execute(
            "INSERT INTO datasets (dataset_id, name, source, sae_id, complete, n_empty, n_truncated, args) "
            "VALUES (?, ?, ?, ?, false, ?, ?, ?)",
            [dataset_id, name, d["source"], sae_id, d.get("n_empty", 0), manifest.total("n_truncated", name),
             json.dumps({"reader": manifest.reader, "embed": manifest.embed, "shards": str(folder)})],
        )
        (top,) = con.execute("SELECT max(latent) FROM read_parquet(?)", [act_files]).fetchone()
        if top is not None and top >= sae["d_sae"]:
            raise StoreError(f"{folder}: dataset {name!r} has latent {top}, but its SAE has {sae['d_sae']} latents; "
                             "the manifest does not describe these shards")
        # every part has all five files, so no list is empty; paths are parameters
        con.execute("INSERT INTO documents SELECT doc_id + ?, ?, ext_id, text, meta::JSON, n_tokens "
                    "FROM read_parquet(?) ORDER BY doc_id", [shift, dataset_id, doc_files])
        tokens = "tokens" if manifest.version >= 2 else "NULL"
        con.execute(f"INSERT INTO activations SELECT doc_id + ?, ?, latent, value, peak, {tokens} "
                    "FROM read_parquet(?) ORDER BY doc_id, latent", [shift, sae_id, act_files])
        con.execute("INSERT INTO word_counts SELECT ?, word, df FROM read_parquet(?)", [sae_id, word_files])
        n_docs += int(con.execute("SELECT count(*) FROM documents WHERE dataset_id = ?", [dataset_id]).fetchone()[0])
        n_acts += int(con.execute("SELECT count(*) FROM read_parquet(?)", [act_files]).fetchone()[0])
        ids.append(dataset_id)
    return sae_id, ids, n_docs, n_acts


def remove_unlisted(folder: str | os.PathLike, manifest: Manifest) -> int:
    """Delete part files that the manifest does not list (left by an interrupted run);
    returns how many."""
    folder = Path(folder)
    listed = {folder / f for t in TABLES for f in manifest.files(t)}
    n = 0
    for table in TABLES:
        for path in (folder / table).rglob("*"):
            if path.is_file() and path not in listed:
                path.unlink()
                n += 1
    return n


def remove_inputs(folder: str | os.PathLike) -> None:
    shutil.rmtree(Path(folder) / "_input", ignore_errors=True)
