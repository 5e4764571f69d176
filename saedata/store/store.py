"""The concept store: one DuckDB file holding datasets, documents, SAEs, latents and activations.

Every write the pipeline makes goes through :class:`Store`; every read helper returns a
polars frame. The schema, views and macros are the ``.sql`` files of ``saedata.queries``,
run in a fixed order (``QUERY_FILES``) when a store is opened for writing; the analyses
call those macros (:meth:`Store.macro`) and the read helpers here, and hold no SQL of
their own. SQL that carries user input is parameterised, never formatted.

DuckDB lets one process hold a database file for writing; a second process that tries
gets :class:`~saedata.errors.StoreLockedError`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl

from saedata.errors import ConfigError, NotFoundError, SchemaVersionError, StoreError, StoreLockedError

SCHEMA_VERSION = 2
QUERY_FILES = ("schema.sql", "views.sql", "words.sql", "latents.sql", "documents.sql", "labels.sql", "diff.sql",
               "correlate.sql", "retrieve.sql", "tokens.sql")
"""The shipped ``queries/*.sql`` files, in the order they are run: tables, views, then the
macros by topic (a macro's file comes after those of the macros it calls)."""
MACRO_FILES = QUERY_FILES[1:]
"""The views and macros, which a shard folder's connection loads over its own tables."""
TABLES = (
    "datasets",
    "documents",
    "saes",
    "latents",
    "activations",
    "word_counts",
    "llm_calls",
)
VIEWS = ("concepts",)


def read_query_file(name: str) -> str:
    """The text of one of the shipped ``.sql`` files (``schema.sql``, ``views.sql``, ...)."""
    return resources.files("saedata.queries").joinpath(name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class DatasetState:
    """Where a dataset stands: how many documents are stored and whether it is complete."""

    dataset_id: int
    name: str
    sae_id: int | None
    n_docs: int
    complete: bool
    last_ext_id: str | None
    source: str | None


class Store:
    """A saedata concept store (a DuckDB file).

    Open with :func:`saedata.open` (read-only by default) or ``Store(path,
    read_only=False)`` to write. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike = "run.duckdb", read_only: bool = False, *,
                 file_access: bool = False, allowed_directories: Sequence[str | os.PathLike] = ()):
        """``file_access``: let SQL on this connection read and write other files (what
        ``saedata sql`` allows its user); otherwise DuckDB may touch no file but the store
        and ``allowed_directories`` (a shard folder being imported)."""
        self.path = Path(path)
        self.read_only = read_only
        self._in_transaction = False
        if read_only and not self.path.exists():
            raise NotFoundError(f"no store at {self.path}; create one with `saedata embed`")
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a folder, not a store file: a shard folder opens read-only with "
                             f"saedata.open() or --shards, and `saedata import {self.path} --db run.duckdb` "
                             "copies it into a store file you can add to")
        if not read_only and self.path.parent and not self.path.parent.exists():
            raise StoreError(f"cannot create store {self.path}: folder {self.path.parent} does not exist")
        self.con = _connect(self.path, read_only)
        try:
            self._check_and_migrate()
            define_own_sql(self.con)
            if not file_access:
                restrict_files(self.con, allowed_directories)
        except BaseException:
            self.con.close()
            raise

    @classmethod
    def over(cls, con: duckdb.DuckDBPyConnection, path: str | os.PathLike) -> Store:
        """A read-only Store over a connection whose store tables are already in place
        (the views over a shard folder's Parquet files)."""
        store = cls.__new__(cls)
        store.path, store.read_only, store._in_transaction, store.con = Path(path), True, False, con
        return store

    # -- lifecycle -------------------------------------------------------------------

    def _check_and_migrate(self) -> None:
        tables = {r[0] for r in self.rows("SELECT table_name FROM duckdb_tables()")}
        views = {r[0] for r in self.rows("SELECT view_name FROM duckdb_views() WHERE NOT internal")}
        disguised = sorted(views & {*TABLES, "saedata_meta", "latent_counts"})
        if disguised:
            # a view runs the SQL stored in the file: a store from someone else could hide
            # anything behind a table's name
            raise SchemaVersionError(f"{self.path} is not a saedata store: {', '.join(disguised)} "
                                     "should be a table but is a view")
        if "saedata_meta" in tables:
            row = self.one(
                "SELECT value FROM saedata_meta WHERE key = 'schema_version'"
            )
            try:
                version = int(row[0]) if row else 0
            except ValueError:
                raise SchemaVersionError(f"{self.path} has an unreadable store schema version {row[0]!r}; "
                                         "it was not written by saedata") from None
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self.path} has store schema version {version}, but this saedata reads "
                    f"up to version {SCHEMA_VERSION}; upgrade saedata to open it"
                )
        elif tables:
            raise SchemaVersionError(
                f"{self.path} is a DuckDB database but not a saedata store "
                f"(tables: {', '.join(sorted(tables)[:5])})"
            )
        elif self.read_only:
            raise StoreError(f"{self.path} is an empty database, not a saedata store")
        if self.read_only:
            return
        for name in QUERY_FILES:
            self._run_script(name)
        self.con.execute(
            "INSERT INTO saedata_meta VALUES ('schema_version', ?) ON CONFLICT DO UPDATE SET value = excluded.value",
            [str(SCHEMA_VERSION)],
        )

    def _run_script(self, name: str) -> None:
        try:
            self.con.execute(read_query_file(name))
        except duckdb.Error as e:
            raise StoreError(f"queries/{name} failed on {self.path}: {_first_line(e)}") from e

    def close(self) -> None:
        """Close the connection (idempotent)."""
        try:
            self.con.close()
        except duckdb.Error:
            pass

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the database file (committed rows are safe in the
        log either way)."""
        fault_point("checkpoint")
        try:
            self.con.execute("CHECKPOINT")
        except duckdb.IOException as e:
            raise StoreError(f"cannot write {self.path}: {_first_line(e)}") from e

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "read-write"
        return f"Store({str(self.path)!r}, {mode})"

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Run the block in one transaction: all of its writes land, or none do. Inside
        another ``transaction()`` block it joins that one (DuckDB has no nested ones)."""
        if self._in_transaction:
            yield self.con
            return
        self.con.execute("BEGIN TRANSACTION")
        self._in_transaction = True
        try:
            yield self.con
            self.con.execute("COMMIT")
        except BaseException as e:
            with contextlib.suppress(duckdb.Error):
                self.con.execute("ROLLBACK")
            if isinstance(e, duckdb.IOException):  # a full disk, a lost file: nothing of this block landed
                raise StoreError(f"cannot write {self.path}: {_first_line(e)}") from e
            raise
        finally:
            self._in_transaction = False

    # -- generic SQL -----------------------------------------------------------------

    def rows(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None) -> list[tuple]:
        """All rows of a query as tuples (fully fetched, so the connection is free after)."""
        return self.con.execute(query, params).fetchall()

    def one(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None) -> tuple | None:
        """The first row of a query, or None."""
        rows = self.rows(query, params)
        return rows[0] if rows else None

    def sql(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None) -> pl.DataFrame:
        """Run any SQL (with ``?`` or ``$name`` parameters) and return the result as polars."""
        try:
            rel = self.con.sql(query, params=params)
            return rel.pl() if rel is not None else pl.DataFrame()
        except duckdb.Error as e:
            raise StoreError(f"SQL error: {_first_line(e)}") from e

    def macro(self, name: str, *args: Any, **kwargs: Any) -> pl.DataFrame:
        """Call one of the store's table macros with parameters; errors name the macro."""
        if not re.fullmatch(r"[a-z_]+", name):
            raise StoreError(f"bad macro name {name!r}")
        placeholders = ["?"] * len(args) + [f"{k} := ?" for k in kwargs]
        query = f"SELECT * FROM {name}({', '.join(placeholders)})"
        try:
            return self.con.sql(query, params=[*args, *kwargs.values()]).pl()
        except duckdb.Error as e:
            raise StoreError(f"macro {name} failed: {_first_line(e)}") from e

    def export(self, table: str, path: str | os.PathLike) -> Path:
        """Write a table or view to a Parquet file; returns the path."""
        if table not in TABLES + VIEWS:
            raise NotFoundError(
                f"no table {table!r}; choose one of {', '.join(TABLES + VIEWS)}"
            )
        import pyarrow.parquet as pq

        out = Path(path)
        if not out.parent.is_dir():
            raise StoreError(f"cannot write {out}: folder {out.parent} does not exist")
        # Identifiers cannot be parameters; `table` was checked against a fixed list above.
        # Written by pyarrow, batch by batch: DuckDB itself may not write files here.
        reader = self.con.sql(f'SELECT * FROM "{table}"').fetch_record_batch(1 << 16)
        tmp = out.with_name(f".{out.name}.tmp")
        try:
            with pq.ParquetWriter(str(tmp), reader.schema) as writer:
                for batch in reader:
                    writer.write_batch(batch)
            os.replace(tmp, out)
        except OSError as e:
            raise StoreError(f"cannot write {out}: {e.strerror or e}") from e
        finally:
            tmp.unlink(missing_ok=True)
        return out

    # -- read helpers (polars) -------------------------------------------------------

    def datasets(self) -> pl.DataFrame:
        """All datasets with their document counts and state."""
        return self.sql(
            "SELECT dataset_id, name, source, n_docs, complete, sae_id, n_empty, n_truncated, "
            "created_at FROM datasets ORDER BY dataset_id"
        )

    def saes(self) -> pl.DataFrame:
        """All SAEs registered in the store."""
        return self.sql(
            "SELECT sae_id, name, reader, layer, d_in, d_sae, activation, path, fingerprint "
            "FROM saes ORDER BY sae_id"
        )

    def documents(self, dataset: str | None = None, limit: int | None = None) -> pl.DataFrame:
        """Documents, optionally of one dataset (by name)."""
        where, params = self._dataset_filter(dataset, alias="d")
        query = (
            "SELECT d.doc_id, ds.name AS dataset, d.ext_id, d.text, d.meta, d.n_tokens "
            f"FROM documents AS d JOIN datasets AS ds USING (dataset_id) {where} ORDER BY d.doc_id"
        )
        if limit is not None:
            query += " LIMIT ?"
            params.append(int(limit))
        return self.sql(query, params)

    def activations(self, dataset: str | None = None, sae_id: int | None = None) -> pl.DataFrame:
        """The long sparse table (doc_id, sae_id, latent, value), optionally filtered."""
        where, params = self._dataset_filter(dataset, alias="d")
        if sae_id is not None:
            where += (" AND " if where else "WHERE ") + "a.sae_id = ?"
            params.append(int(sae_id))
        if dataset is None:
            query = f"SELECT a.* FROM activations AS a {where} ORDER BY a.doc_id, a.latent"
        else:
            query = (
                "SELECT a.* FROM activations AS a JOIN documents AS d USING (doc_id) "
                f"{where} ORDER BY a.doc_id, a.latent"
            )
        return self.sql(query, params)

    def latents(self, sae_id: int | None = None, *, label: str | None = None, sort: str = "latent",
                top: int | None = None) -> pl.DataFrame:
        """Latents with label, label source, document frequency, max activation and label
        scores (offline ``score``, :func:`saedata.label.score_labels`; ``llm_detection`` and
        ``llm_fuzzing``, :mod:`saedata.label.llm`; null until scored): those whose label
        matches the regex ``label``, by ``sort`` (latent ascending; any other column largest
        first), the first ``top``."""
        sae_id = self.resolve_sae(sae_id)
        df = self.sql(
            "SELECT latent, label, label_source, freq, max_act, score, llm_detection, llm_fuzzing FROM latents "
            "WHERE sae_id = ? ORDER BY latent",
            [sae_id],
        )
        if label is not None:
            df = df.filter(label_matches(df, label))
        if sort != "latent":
            df = df.sort(sort, descending=True, nulls_last=True)
        return df.head(top) if top else df

    def latent_scores(self, sae_id: int | None = None) -> pl.DataFrame:
        """(latent, score, detect_precision, detect_recall, llm_detection, llm_fuzzing) of the
        labels scored so far, offline or by an LLM."""
        return self.sql("SELECT latent, score, detect_precision, detect_recall, llm_detection, llm_fuzzing "
                        "FROM latents WHERE sae_id = ? AND (score IS NOT NULL OR llm_detection IS NOT NULL "
                        "OR llm_fuzzing IS NOT NULL) ORDER BY latent", [self.resolve_sae(sae_id)])

    def concepts(self, dataset: str | None = None) -> pl.DataFrame:
        """The ``concepts`` view: activations with document, dataset and label."""
        if dataset is None:
            return self.sql("SELECT * FROM concepts ORDER BY doc_id, latent")
        self.dataset_state(dataset)
        return self.sql("SELECT * FROM concepts WHERE dataset = ? ORDER BY doc_id, latent", [dataset])

    def document(self, doc: int | str, dataset: str | None = None) -> dict[str, Any]:
        """One document as a dict, by doc_id (int) or by ext_id (str, with ``dataset`` if ambiguous)."""
        if isinstance(doc, int) or (isinstance(doc, str) and doc.isdigit() and dataset is None):
            rows = self.sql(
                "SELECT d.*, ds.name AS dataset FROM documents AS d JOIN datasets AS ds "
                "USING (dataset_id) WHERE doc_id = ?",
                [int(doc)],
            )
        else:
            where, params = self._dataset_filter(dataset, alias="d")
            where += (" AND " if where else "WHERE ") + "d.ext_id = ?"
            params.append(str(doc))
            rows = self.sql(
                "SELECT d.*, ds.name AS dataset FROM documents AS d JOIN datasets AS ds "
                f"USING (dataset_id) {where}",
                params,
            )
            if rows.height > 1:
                names = ", ".join(rows["dataset"].to_list())
                raise NotFoundError(f"id {doc!r} is in several datasets ({names}); pass --dataset")
        if rows.height == 0:
            raise NotFoundError(f"no document {doc!r} in {self.path}")
        row = rows.row(0, named=True)
        if row.get("meta"):
            row["meta"] = json.loads(row["meta"])
        return row

    def doc_concepts(self, doc_id: int) -> pl.DataFrame:
        """A document's active concepts, strongest first (the ``doc_concepts`` macro)."""
        return self.macro("doc_concepts", int(doc_id))

    def doc_tokens(self, doc_id: int, k: int = 3) -> pl.DataFrame:
        """A document's tokens where latents fire, in text order, each with its ``k``
        strongest latents (the ``doc_tokens`` macro; empty without --store-tokens)."""
        return self.macro("doc_tokens", int(doc_id), k=int(k))

    def documents_of(self, dataset_ids: Sequence[int]) -> pl.DataFrame:
        """doc_id, dataset, ext_id, text, n_tokens, n_chars, meta (JSON text) of the
        documents of ``dataset_ids``, by doc_id."""
        return self.sql(
            "SELECT d.doc_id, ds.name AS dataset, d.ext_id, d.text, d.n_tokens, length(d.text) AS n_chars, d.meta "
            "FROM documents AS d JOIN datasets AS ds USING (dataset_id) "
            "WHERE d.dataset_id IN (SELECT unnest(?::INTEGER[])) ORDER BY d.doc_id",
            [list(dataset_ids)],
        )

    def documents_by_id(self, doc_ids: Sequence[int]) -> pl.DataFrame:
        """doc_id, dataset, ext_id, text, meta of the documents ``doc_ids`` (any order)."""
        return self.sql(
            "SELECT d.doc_id, ds.name AS dataset, d.ext_id, d.text, d.meta FROM documents AS d "
            "JOIN datasets AS ds USING (dataset_id) WHERE d.doc_id IN (SELECT unnest(?::BIGINT[]))",
            [list(doc_ids)],
        )

    def doc_ids(self, dataset_ids: Sequence[int]) -> np.ndarray:
        """(n_docs,) int64 doc ids of the datasets ``dataset_ids``, ascending."""
        return self.doc_lengths(dataset_ids)["doc_id"].to_numpy()

    def doc_lengths(self, dataset_ids: Sequence[int]) -> pl.DataFrame:
        """(doc_id, n_tokens) of the documents of ``dataset_ids``, by doc_id (n_tokens 0
        where unknown)."""
        return self.sql(
            "SELECT doc_id, coalesce(n_tokens, 0) AS n_tokens FROM documents "
            "WHERE dataset_id IN (SELECT unnest(?::INTEGER[])) ORDER BY doc_id",
            [list(dataset_ids)],
        )

    def activations_of(self, sae_id: int, dataset_ids: Sequence[int],
                       doc_ids: Sequence[int] | None = None) -> pl.DataFrame:
        """(doc_id, latent, value, tokens) of SAE ``sae_id`` in the documents of
        ``dataset_ids`` (tokens NULL in a store from before token counts); only those of
        ``doc_ids`` when given (read by their id range, so a block of neighbouring
        documents costs a block's rows)."""
        sql = ("SELECT a.doc_id, a.latent, a.value, a.tokens FROM activations AS a JOIN documents AS d USING (doc_id) "
               "WHERE a.sae_id = ? AND d.dataset_id IN (SELECT unnest(?::INTEGER[]))")
        if doc_ids is None:
            return self.sql(sql, [sae_id, list(dataset_ids)])
        ids = [int(x) for x in doc_ids]
        if not ids:
            return self.sql(sql + " AND false", [sae_id, list(dataset_ids)])
        return self.sql(sql + " AND a.doc_id BETWEEN ? AND ? AND a.doc_id IN (SELECT unnest(?::BIGINT[]))",
                        [sae_id, list(dataset_ids), min(ids), max(ids), ids])

    # -- lookups -----------------------------------------------------------------------

    def resolve_sae(self, sae_id: int | None) -> int:
        """The given SAE id checked to exist, or the only SAE when None."""
        ids = [r[0] for r in self.rows("SELECT sae_id FROM saes ORDER BY sae_id")]
        if not ids:
            raise NotFoundError(f"{self.path} holds no SAE yet; run `saedata embed` first")
        if sae_id is None:
            if len(ids) > 1:
                raise NotFoundError(
                    f"{self.path} holds {len(ids)} SAEs ({', '.join(map(str, ids))}); pass --sae-id"
                )
            return ids[0]
        if sae_id not in ids:
            raise NotFoundError(f"no SAE {sae_id} in {self.path} (have {', '.join(map(str, ids))})")
        return int(sae_id)

    def sae_info(self, sae_id: int) -> dict[str, Any]:
        """One SAE's row (name, reader, layer, d_in, d_sae, activation, cfg, path, fingerprint)."""
        sae_id = self.resolve_sae(sae_id)
        row = self.sql("SELECT * FROM saes WHERE sae_id = ?", [sae_id]).row(0, named=True)
        row["cfg"] = json.loads(row["cfg"]) if row.get("cfg") else {}
        return row

    def embed_settings(self, sae_id: int) -> dict[str, Any]:
        """The embed settings (``EmbedConfig`` fields) SAE ``sae_id``'s first dataset was embedded with."""
        row = self.one("SELECT args FROM datasets WHERE sae_id = ? ORDER BY dataset_id LIMIT 1", [sae_id])
        args = json.loads(row[0]) if row and row[0] else {}
        return args.get("embed", {})

    def dataset_names(self, sae_id: int | None = None, complete: bool = False) -> list[str]:
        """Names of the datasets (of one SAE; only complete ones), by dataset_id."""
        return [r[0] for r in self.rows(
            "SELECT name FROM datasets WHERE (? IS NULL OR sae_id = ?) AND (complete OR NOT ?) ORDER BY dataset_id",
            [sae_id, sae_id, complete])]

    def has_dataset(self, name: str) -> bool:
        """Whether the store has a dataset called ``name`` (complete or not)."""
        return self.one("SELECT 1 FROM datasets WHERE name = ?", [name]) is not None

    def dataset_state(self, name: str) -> DatasetState:
        """The state of a dataset by name; NotFoundError naming the datasets there are."""
        row = self.one(
            "SELECT dataset_id, name, sae_id, complete, source FROM datasets WHERE name = ?", [name]
        )
        if row is None:
            names = [r[0] for r in self.rows("SELECT name FROM datasets ORDER BY dataset_id")]
            have = f" (have: {', '.join(names)})" if names else " (the store has no datasets yet)"
            raise NotFoundError(f"no dataset {name!r} in {self.path}{have}")
        dataset_id, name, sae_id, complete, source = row
        n_docs, last = self.one(
            "SELECT count(*), arg_max(ext_id, doc_id) FROM documents WHERE dataset_id = ?",
            [dataset_id],
        )
        return DatasetState(dataset_id, name, sae_id, int(n_docs), bool(complete), last, source)

    def _dataset_filter(self, dataset: str | None, alias: str) -> tuple[str, list[Any]]:
        if dataset is None:
            return "", []
        state = self.dataset_state(dataset)
        return f"WHERE {alias}.dataset_id = ?", [state.dataset_id]

    # -- writes (used by the embedding pipeline) ---------------------------------------

    def register_sae(
        self,
        name: str,
        cfg: dict[str, Any],
        path: str | None,
        fingerprint: str,
        also_known_as: Sequence[str] = (),
    ) -> int:
        """Insert an SAE (or find it by fingerprint, or by an older fingerprint of the same
        files in ``also_known_as``, which is then brought up to date) and return its sae_id."""
        row = self.one("SELECT sae_id FROM saes WHERE fingerprint = ?", [fingerprint])
        if row is None and also_known_as:
            row = self.one("SELECT sae_id FROM saes WHERE list_contains(?, fingerprint)", [list(also_known_as)])
            if row is not None:
                self.con.execute("UPDATE saes SET fingerprint = ? WHERE sae_id = ?", [fingerprint, row[0]])
        if row is not None:
            if path is not None:
                self.con.execute("UPDATE saes SET path = ? WHERE sae_id = ?", [path, row[0]])
            return int(row[0])
        (sae_id,) = self.one("SELECT coalesce(max(sae_id), 0) + 1 FROM saes")
        self.con.execute(
            "INSERT INTO saes (sae_id, name, reader, layer, d_in, d_sae, activation, cfg, path, fingerprint) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                sae_id,
                name,
                cfg.get("reader"),
                cfg.get("layer"),
                cfg["d_in"],
                cfg["d_sae"],
                cfg["activation"],
                json.dumps(cfg),
                path,
                fingerprint,
            ],
        )
        self.con.execute(
            "INSERT INTO latents (sae_id, latent) SELECT ?, range FROM range(?)",
            [sae_id, cfg["d_sae"]],
        )
        return int(sae_id)

    def create_dataset(self, name: str, source: str, sae_id: int, args: dict[str, Any]) -> DatasetState:
        """Add an empty, incomplete dataset."""
        (dataset_id,) = self.one("SELECT coalesce(max(dataset_id), 0) + 1 FROM datasets")
        self.con.execute(
            "INSERT INTO datasets (dataset_id, name, source, sae_id, args) VALUES (?, ?, ?, ?, ?)",
            [dataset_id, name, source, sae_id, json.dumps(args)],
        )
        return self.dataset_state(name)

    def dataset_args(self, dataset_id: int) -> dict[str, Any]:
        """The settings a dataset was embedded with (input, reader, embed) and its source's
        fingerprint (``source``: size, mtime_ns, sha256), as stored when it was started."""
        row = self.one("SELECT args FROM datasets WHERE dataset_id = ?", [dataset_id])
        return json.loads(row[0]) if row and row[0] else {}

    def remove_dataset(self, dataset_id: int) -> None:
        """Delete a dataset with its documents, activations and counts, in one transaction
        (or the caller's). The SAE's word counts then need rebuilding from the documents
        left (:meth:`replace_word_counts`); the by-latent index copy is dropped."""
        with self.transaction() as con:
            for table in ("activations", "token_activations"):
                con.execute(f"DELETE FROM {table} WHERE doc_id IN (SELECT doc_id FROM documents WHERE dataset_id = ?)",
                            [dataset_id])
            con.execute("DELETE FROM documents WHERE dataset_id = ?", [dataset_id])
            con.execute("DELETE FROM latent_counts WHERE dataset_id = ?", [dataset_id])
            con.execute("DELETE FROM datasets WHERE dataset_id = ?", [dataset_id])
            con.execute("DROP TABLE IF EXISTS activations_by_latent")

    def texts(self, sae_id: int, without: int | None = None, batch: int = 4096,
              only: Sequence[int] | None = None) -> Iterator[list[str]]:
        """The texts of the documents embedded with SAE ``sae_id`` (but those of dataset
        ``without``; of the datasets ``only`` alone when given), ``batch`` at a time, as
        committed (a cursor of its own)."""
        cursor = self.con.cursor()
        cursor.execute("SELECT d.text FROM documents AS d JOIN datasets AS ds USING (dataset_id) "
                       "WHERE ds.sae_id = ? AND ds.dataset_id IS DISTINCT FROM ? "
                       "AND (?::INTEGER[] IS NULL OR list_contains(?::INTEGER[], ds.dataset_id)) ORDER BY d.doc_id",
                       [sae_id, without, None if only is None else list(only), None if only is None else list(only)])
        while rows := cursor.fetchmany(batch):
            yield [r[0] for r in rows]

    def temp_table(self, name: str, frame: pl.DataFrame) -> None:
        """(Re)create the session's TEMP table ``name`` (an identifier chosen by saedata, never
        by a user) holding ``frame``: a relation a macro can be pointed at; it works on a
        store opened read-only too and is gone when the store closes."""
        if not re.fullmatch(r"_\w+", name):
            raise ValueError(f"temp table names start with an underscore: {name!r}")
        self.con.register("_frame", frame.to_arrow())
        try:
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM _frame")
        finally:
            self.con.unregister("_frame")

    def replace_word_counts(self, sae_id: int, word_counts: pl.DataFrame) -> None:
        """Set SAE ``sae_id``'s background word counts to ``word_counts`` (word, df)."""
        with self.transaction() as con:
            con.execute("DELETE FROM word_counts WHERE sae_id = ?", [sae_id])
            con.register("_words", word_counts.to_arrow())
            try:
                con.execute("INSERT INTO word_counts SELECT ?, word, df FROM _words", [sae_id])
            finally:
                con.unregister("_words")

    def next_doc_id(self) -> int:
        (n,) = self.one("SELECT coalesce(max(doc_id), -1) + 1 FROM documents")
        return int(n)

    def append_batch(
        self,
        documents: pl.DataFrame,
        activations: pl.DataFrame,
        word_counts: pl.DataFrame | None = None,
        sae_id: int | None = None,
        dataset_counts: tuple[int, int] | None = None,
        tokens: pl.DataFrame | None = None,
    ) -> None:
        """Append one batch of documents with their activations, in one transaction.

        ``documents``, ``activations`` and ``tokens`` (optional) have the columns of the
        documents, activations and token_activations tables;
        ``word_counts`` (word, df) is added to the SAE's background word counts;
        ``dataset_counts`` = (dataset_id, n_truncated) updates the dataset's counters.
        """
        with self.transaction() as con:
            fault_point("batch:begin")
            con.register("_batch_docs", documents.to_arrow())
            try:
                con.execute(
                    "INSERT INTO documents (doc_id, dataset_id, ext_id, text, meta, n_tokens) "
                    "SELECT doc_id, dataset_id, ext_id, text, meta, n_tokens FROM _batch_docs"
                )
                self.append_activations(activations)
                if tokens is not None and tokens.height:
                    con.register("_batch_tokens", tokens.to_arrow())
                    con.execute("INSERT INTO token_activations (doc_id, sae_id, token, char_start, char_end, latent, "
                                "value) SELECT doc_id, sae_id, token, char_start, char_end, latent, value FROM _batch_tokens")
                    con.unregister("_batch_tokens")
                if word_counts is not None and word_counts.height:
                    con.register("_batch_words", word_counts.to_arrow())
                    con.execute("INSERT INTO word_counts SELECT ?, word, df FROM _batch_words", [sae_id])
                    con.unregister("_batch_words")
                if dataset_counts is not None:
                    dataset_id, n_truncated = dataset_counts
                    con.execute(
                        "UPDATE datasets SET n_docs = n_docs + ?, n_truncated = n_truncated + ? "
                        "WHERE dataset_id = ?",
                        [documents.height, n_truncated, dataset_id],
                    )
                fault_point("batch:written")
            finally:
                con.unregister("_batch_docs")
        fault_point("batch:committed")

    def append_activations(self, activations: pl.DataFrame) -> None:
        """Insert rows with the activations table's columns (``tokens`` optional), in one
        transaction (or the caller's)."""
        with self.transaction() as con:
            con.register("_batch_acts", activations.to_arrow())
            try:
                counted = "tokens" if "tokens" in activations.columns else "NULL"
                con.execute("INSERT INTO activations (doc_id, sae_id, latent, value, peak, tokens) "
                            f"SELECT doc_id, sae_id, latent, value, peak, {counted} FROM _batch_acts")
            finally:
                con.unregister("_batch_acts")

    def clear_activations(self, dataset_id: int) -> None:
        """Delete a dataset's activations (its documents and token codes stay) and the
        by-latent index copy, in one transaction (or the caller's): the first step of
        re-pooling, whose caller writes the new rows in the same transaction."""
        with self.transaction() as con:
            con.execute("DELETE FROM activations WHERE doc_id IN (SELECT doc_id FROM documents WHERE dataset_id = ?)",
                        [dataset_id])
            con.execute("DROP TABLE IF EXISTS activations_by_latent")

    def set_dataset_args(self, dataset_id: int, args: dict[str, Any]) -> None:
        """Replace the settings stored with a dataset (see :meth:`dataset_args`)."""
        with self.transaction() as con:
            con.execute("UPDATE datasets SET args = ? WHERE dataset_id = ?", [json.dumps(args), dataset_id])

    def fold_word_counts(self, sae_id: int) -> None:
        """Fold the per-batch word count rows of an SAE into one row per word."""
        with self.transaction() as con:
            con.execute(
                "CREATE TEMP TABLE _folded AS SELECT sae_id, word, sum(df)::BIGINT AS df "
                "FROM word_counts WHERE sae_id = ? GROUP BY ALL",
                [sae_id],
            )
            con.execute("DELETE FROM word_counts WHERE sae_id = ?", [sae_id])
            con.execute("INSERT INTO word_counts SELECT * FROM _folded")
            con.execute("DROP TABLE _folded")

    def set_empty_count(self, dataset_id: int, n_empty: int) -> None:
        """Record how many blank documents the corpus had (they are skipped, not stored)."""
        self.con.execute("UPDATE datasets SET n_empty = ? WHERE dataset_id = ?", [n_empty, dataset_id])

    def complete_dataset(self, dataset_id: int) -> None:
        """Mark a dataset complete, set its document count from the stored rows and
        write its ``latent_counts``, in one transaction (or the caller's)."""
        with self.transaction() as con:
            con.execute(
                "UPDATE datasets SET complete = true, "
                "n_docs = (SELECT count(*) FROM documents WHERE dataset_id = ?) WHERE dataset_id = ?",
                [dataset_id, dataset_id],
            )
            con.execute("DELETE FROM latent_counts WHERE dataset_id = ?", [dataset_id])
            con.execute(
                "INSERT INTO latent_counts (dataset_id, sae_id, len_floor, latent, tokens, n_active) "
                "SELECT d.dataset_id, a.sae_id, length_floor(coalesce(d.n_tokens, 0)), a.latent, a.tokens, count(*) "
                "FROM activations AS a JOIN documents AS d USING (doc_id) "
                "WHERE d.dataset_id = ? AND a.value <> 0 GROUP BY ALL ORDER BY ALL",
                [dataset_id],
            )

    def has_latent_counts(self, dataset_ids: Sequence[int], sae_id: int) -> bool:
        """Whether every one of ``dataset_ids`` is complete with its ``latent_counts``
        written for SAE ``sae_id`` (a store from before the table, or a dataset with no
        activations, reads False)."""
        if not self.has_relation("latent_counts"):
            return False
        (n,) = self.one(
            "SELECT count(*) FROM datasets AS ds WHERE ds.dataset_id IN (SELECT unnest(?)) AND ds.complete "
            "AND EXISTS (SELECT 1 FROM latent_counts AS c WHERE c.dataset_id = ds.dataset_id AND c.sae_id = ?)",
            [list(dataset_ids), sae_id],
        )
        return n == len(set(dataset_ids))

    def has_token_counts(self, dataset_ids: Sequence[int], sae_id: int) -> bool:
        """Whether every one of ``dataset_ids`` has its latent counts written with token
        counts (False for datasets embedded before saedata stored them)."""
        if not (self.has_latent_counts(dataset_ids, sae_id) and self.has_column("latent_counts", "tokens")):
            return False
        (n,) = self.one("SELECT count(*) FROM latent_counts WHERE dataset_id IN (SELECT unnest(?)) "
                        "AND sae_id = ? AND tokens IS NULL", [list(dataset_ids), sae_id])
        return n == 0

    def total_tokens(self, dataset_ids: Sequence[int]) -> int:
        """The reader tokens of all the documents of ``dataset_ids`` (n_tokens summed)."""
        return int(self.one("SELECT coalesce(sum(n_tokens), 0) FROM documents WHERE dataset_id IN (SELECT unnest(?))",
                            [list(dataset_ids)])[0])

    def has_column(self, table: str, column: str) -> bool:
        """Whether table (or view) ``table`` of the store has a column ``column`` (not one
        that define_own_sql stands in for)."""
        return bool(self.one("SELECT count(*) FROM duckdb_columns() WHERE table_name = ? AND column_name = ? "
                             "AND database_name = current_database()", [table, column])[0])

    def refresh_latent_stats(self, sae_id: int) -> None:
        """Recompute every latent's freq and max_act from the activations table."""
        with self.transaction() as con:
            con.execute("UPDATE latents SET freq = 0, max_act = NULL WHERE sae_id = ?", [sae_id])
            con.execute(
                "UPDATE latents SET freq = s.freq, max_act = s.max_act "
                "FROM latent_stats(?) AS s WHERE latents.sae_id = ? AND latents.latent = s.latent",
                [sae_id, sae_id],
            )

    def build_latent_index(self) -> int:
        """(Re)build ``activations_by_latent``: the activations sorted by latent, which lets
        property search read only the row groups of the latents it asks for
        (``queries/index.sql``). Returns its row count."""
        self._run_script("index.sql")
        self.checkpoint()
        return int(self.one("SELECT count(*) FROM activations_by_latent")[0])

    def has_relation(self, name: str) -> bool:
        """Whether a table or view ``name`` exists (shard folders have views where files have tables)."""
        return bool(self.one("SELECT count(*) FROM (SELECT table_name FROM duckdb_tables() UNION ALL "
                             "SELECT view_name FROM duckdb_views()) WHERE table_name = ?", [name])[0])

    def has_latent_index(self) -> bool:
        """Whether ``activations_by_latent`` exists and is current (as many rows as
        ``activations``; embedding more documents makes it stale until rebuilt)."""
        if not self.has_relation("activations_by_latent"):
            return False
        built, now = self.one("SELECT (SELECT count(*) FROM activations_by_latent), (SELECT count(*) FROM activations)")
        return built == now

    def latent_index_rows(self) -> int:
        """Rows of ``activations_by_latent`` (0 when it does not exist)."""
        if not self.has_relation("activations_by_latent"):
            return 0
        return int(self.one("SELECT count(*) FROM activations_by_latent")[0])

    def set_labels(self, sae_id: int, labels: pl.DataFrame, replace: Sequence[str] = ()) -> None:
        """Write (latent, label, label_source) rows onto the latents table, in one
        transaction; first clear the labels whose source is in ``replace`` (so a latent
        that no longer gets such a label is left without one, never with a stale one)."""
        with self.transaction() as con:
            con.execute("CREATE OR REPLACE TEMP TABLE _old_labels AS SELECT latent, label FROM latents "
                        "WHERE sae_id = ?", [sae_id])
            if replace:
                con.execute("UPDATE latents SET label = NULL, label_source = NULL "
                            "WHERE sae_id = ? AND list_contains(?, split_part(label_source, ':', 1))",
                            [sae_id, list(replace)])
            con.register("_labels", labels.select("latent", "label", "label_source").to_arrow())
            try:
                con.execute(
                    "UPDATE latents SET label = l.label, label_source = l.label_source "
                    "FROM _labels AS l WHERE latents.sae_id = ? AND latents.latent = l.latent",
                    [sae_id],
                )
            finally:
                con.unregister("_labels")
            # a score belongs to the label it scored
            con.execute("UPDATE latents SET score = NULL, detect_precision = NULL, detect_recall = NULL, "
                        "llm_detection = NULL, llm_fuzzing = NULL FROM _old_labels AS o "
                        "WHERE latents.sae_id = ? AND latents.latent = o.latent "
                        "AND latents.label IS DISTINCT FROM o.label", [sae_id])
            con.execute("DROP TABLE _old_labels")

    def set_label_scores(self, sae_id: int, scores: pl.DataFrame) -> None:
        """Write (latent, score, detect_precision, detect_recall) rows onto the latents table."""
        with self.transaction() as con:
            con.register("_scores", scores.select("latent", "score", "detect_precision", "detect_recall").to_arrow())
            try:
                con.execute(
                    "UPDATE latents SET score = s.score, detect_precision = s.detect_precision, "
                    "detect_recall = s.detect_recall "
                    "FROM _scores AS s WHERE latents.sae_id = ? AND latents.latent = s.latent",
                    [sae_id],
                )
            finally:
                con.unregister("_scores")


    def next_llm_run(self) -> int:
        """The number of the next LLM labelling run (``llm_calls.run``): one more than the last."""
        return int(self.one("SELECT coalesce(max(run), 0) + 1 FROM llm_calls")[0])

    def record_llm_latent(self, sae_id: int, latent: int, calls: pl.DataFrame, label: str | None = None,
                          label_source: str | None = None, detection: float | None = None,
                          fuzzing: float | None = None) -> None:
        """In one transaction, what an LLM run did for one latent: append its ``calls``
        (rows of ``llm_calls`` without created_at), set its label when one was made, then
        its LLM scores when any was computed. A run stopped half-way leaves each latent
        whole: done with all of its rows, or untouched."""
        with self.transaction() as con:
            con.register("_calls", calls.select(*LLM_CALL_COLUMNS).to_arrow())
            try:
                con.execute(f"INSERT INTO llm_calls ({', '.join(LLM_CALL_COLUMNS)}) "
                            f"SELECT {', '.join(LLM_CALL_COLUMNS)} FROM _calls")
            finally:
                con.unregister("_calls")
            if label is not None:
                self.set_labels(sae_id, pl.DataFrame({"latent": [latent], "label": [label],
                                                      "label_source": [label_source]},
                                                     schema={"latent": pl.Int32, "label": pl.String,
                                                             "label_source": pl.String}))
            if detection is not None or fuzzing is not None:
                con.execute("UPDATE latents SET llm_detection = coalesce(?, llm_detection), "
                            "llm_fuzzing = coalesce(?, llm_fuzzing) WHERE sae_id = ? AND latent = ?",
                            [detection, fuzzing, sae_id, latent])


LLM_CALL_COLUMNS = ("run", "sae_id", "latent", "purpose", "model", "prompt", "reply", "error", "prompt_tokens",
                    "completion_tokens", "attempts")
"""The columns of ``llm_calls`` an LLM run writes (created_at is the time of writing)."""


def label_matches(table: pl.DataFrame, pattern: str) -> pl.Series:
    """Boolean mask of the rows whose ``label`` contains the regex ``pattern``; ConfigError
    (naming the problem) when it is not a valid regular expression."""
    try:
        return table["label"].str.contains(pattern).fill_null(False)
    except pl.exceptions.PolarsError as e:
        lines = [ln.strip() for ln in str(e).splitlines()]
        problem = next((ln[len("error: "):] for ln in lines if ln.startswith("error: ")), lines[0] if lines else "")
        raise ConfigError(f"--label {pattern!r} is not a valid regular expression ({problem})") from e


def length_floor(n: np.ndarray) -> np.ndarray:
    """``n`` (token counts >= 0) with all but the 5 leading bits cleared: the length
    classes of ``latent_counts``, as the ``length_floor`` SQL macro computes them."""
    n = np.asarray(n, dtype=np.int64)
    shift = np.maximum(0, np.floor(np.log2(np.maximum(n, 1))).astype(np.int64) - 4)
    return (n >> shift) << shift


FAULT_ENV = "SAEDATA_FAULT_AT"
"""Test hook: ``STEP`` or ``STEP@K`` kills the process (SIGKILL) the K-th time (default the
first) it reaches the named step, as a power cut would; tests/embed/test_faults.py stops a
run at every step this way and checks that a rerun gives the uninterrupted result."""
_fault_counts: dict[str, int] = {}


def fault_point(step: str) -> None:
    """A named step of a write (``batch:begin``, ``batch:written``, ``finish:labels``, ...):
    see ``FAULT_ENV``. Does nothing unless that variable names this step."""
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition("@")
    if name != step:
        return
    _fault_counts[step] = _fault_counts.get(step, 0) + 1
    if _fault_counts[step] == int(nth or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def own_sql(name: str) -> str:
    """A shipped ``.sql`` file with its views and macros made TEMP: defined on this
    connection only, in front of any object of the same name stored in the file."""
    text = read_query_file(name)
    return re.sub(r"\bCREATE OR REPLACE (MACRO|VIEW)\b", r"CREATE OR REPLACE TEMP \1", text)


def define_own_sql(con: duckdb.DuckDBPyConnection) -> None:
    """Define saedata's views and macros from the installed package on ``con``. saedata
    calls only these: a macro or view stored in a store file (perhaps someone else's, perhaps
    rewritten) is data to it, never code it runs. A table that an older store lacks is
    stood in for by an empty TEMP table of the schema's shape, and a column it lacks (a
    store opened read-only, not migrated) by a TEMP view adding it as NULL, so the macros
    bind."""
    schema = read_query_file("schema.sql")
    present = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() UNION ALL "
                                         "SELECT view_name FROM duckdb_views()").fetchall()}
    for table, body in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+) (\(.*?\));", schema, flags=re.DOTALL):
        if table not in present:
            con.execute(f"CREATE TEMP TABLE {table} {body}")
    (db,) = con.execute("SELECT current_database()").fetchone()
    stored = {(t, c) for t, c in con.execute("SELECT table_name, column_name FROM duckdb_columns() "
                                             "WHERE database_name = current_database()").fetchall()}
    missing: dict[str, list[str]] = {}
    for table, column, kind in re.findall(r"ALTER TABLE (\w+) ADD COLUMN IF NOT EXISTS (\w+) (\w+);", schema):
        if any(t == table for t, _ in stored) and (table, column) not in stored:
            missing.setdefault(table, []).append(f"NULL::{kind} AS {column}")
    for table, columns in missing.items():
        con.execute(f'CREATE TEMP VIEW {table} AS SELECT *, {", ".join(columns)} FROM "{db}".main.{table}')
    for name in MACRO_FILES:
        con.execute(own_sql(name))


def restrict_files(con: duckdb.DuckDBPyConnection, allowed: Sequence[str | os.PathLike] = ()) -> None:
    """Let SQL on ``con`` read and write no file but its own database and the folders
    ``allowed`` (for good: DuckDB cannot turn it back on while the database is open)."""
    if allowed:
        dirs = [str(Path(d).resolve()) + os.sep for d in allowed]
        con.execute("SET allowed_directories = ?", [dirs])
    con.execute("SET enable_external_access = false")


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    # Appends are batches of a few hundred thousand rows committed one by one. DuckDB's
    # optimistic writes would put each straight into fresh blocks, and frequent
    # checkpoints would rewrite each table's partial last row group; both free blocks
    # that stay in the file, which then grows ~1.5-2x larger than its data. Committed
    # rows stay safe in the write-ahead log between checkpoints.
    config = {} if read_only else {"enable_optimistic_write": False, "checkpoint_threshold": "256MB"}
    try:
        con = duckdb.connect(str(path), read_only=read_only, config=config)
        con.execute("SET enable_progress_bar = false")  # stderr belongs to saedata's own messages
        return con
    except duckdb.IOException as e:
        msg = _first_line(e)
        if "lock" in msg.lower():
            pid = re.search(r"PID (\d+)", msg)
            who = f" (PID {pid.group(1)})" if pid else ""
            raise StoreLockedError(
                f"{path} is open in another process{who}; a store has one writer at a time, "
                "wait for it to finish"
            ) from e
        raise StoreError(f"cannot open {path}: {msg}") from e
    except duckdb.Error as e:
        raise StoreError(f"{path} is not a DuckDB database ({_first_line(e)})") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
