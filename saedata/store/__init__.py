"""Every read and write of concept tables.

    store = saedata.open("run.duckdb")     # a store file (read-only by default)
    store = saedata.open("shards/")        # or a shard folder: read-only views over its Parquet files

:mod:`~saedata.store.store` holds :class:`Store` (schema, transactions, writes, polars
read helpers); :mod:`~saedata.store.shards` the Parquet shard format that the Ray
engine writes.
"""

from __future__ import annotations

import os

from saedata.store.shards import is_shard_folder, open_shards
from saedata.store.store import SCHEMA_VERSION, DatasetState, Store, label_matches, length_floor, read_query_file

__all__ = ["SCHEMA_VERSION", "DatasetState", "Store", "label_matches", "length_floor", "open", "read_query_file"]


def open(path: str | os.PathLike = "run.duckdb", read_only: bool = True, *,  # noqa: A001
         file_access: bool = False) -> Store:
    """Open a concept store: a DuckDB file (read-only by default, so several readers can
    share it), or a shard folder (read-only views over its Parquet files).

    SQL run on the store (``store.sql``) may read no other file unless ``file_access``
    (what ``saedata sql`` allows): a store, or the SQL stored in it, is never a way to
    read your files. saedata defines its own macros and views on every connection and
    never runs those stored in the file."""
    if read_only and is_shard_folder(path):
        return open_shards(path, file_access=file_access)
    return Store(path, read_only=read_only, file_access=file_access)
