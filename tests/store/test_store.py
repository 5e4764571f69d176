"""The concept store: schema, version check, single writer, read helpers, macros, export."""

from __future__ import annotations

import subprocess
import sys

import duckdb
import polars as pl
import pytest

import saedata
from saedata.errors import NotFoundError, SchemaVersionError, StoreError, StoreLockedError
from saedata.store import SCHEMA_VERSION, Store


def _fill(store: Store) -> None:
    """Two datasets, one SAE of 4 latents, three documents."""
    sae_id = store.register_sae("toy", {"d_in": 2, "d_sae": 4, "activation": "topk", "reader": "r"}, None, "fp1")
    a = store.create_dataset("a", "a.jsonl", sae_id, {})
    b = store.create_dataset("b", "b.jsonl", sae_id, {})
    docs = pl.DataFrame({"doc_id": [0, 1, 2], "dataset_id": [a.dataset_id, a.dataset_id, b.dataset_id],
                         "ext_id": ["x", "y", "x"], "text": ["one", "two", "three"],
                         "meta": ['{"k": 1}', None, None], "n_tokens": [1, 1, 1]})
    acts = pl.DataFrame({"doc_id": [0, 0, 1, 2], "sae_id": [sae_id] * 4, "latent": [0, 3, 3, 1],
                         "value": [1.5, 0.5, 2.0, 1.0], "peak": [0, 1, 2, 0], "tokens": [1, 1, 1, 1]})
    store.append_batch(docs, acts)
    store.complete_dataset(a.dataset_id)
    store.complete_dataset(b.dataset_id)
    store.refresh_latent_stats(sae_id)
    store.set_labels(sae_id, pl.DataFrame({"latent": [3], "label": ["numbers"], "label_source": ["keywords"]}))


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "run.duckdb"
    with Store(path, read_only=False) as s:
        _fill(s)
    return path


def test_schema_tables_and_version(store_path):
    con = duckdb.connect(str(store_path), read_only=True)
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert {"datasets", "documents", "saes", "latents", "activations"} <= tables
    assert con.execute("SELECT value FROM saedata_meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    con.close()


def test_read_helpers_return_polars(store_path):
    with saedata.open(store_path) as s:
        assert s.read_only
        ds = s.datasets()
        assert ds["name"].to_list() == ["a", "b"] and ds["n_docs"].to_list() == [2, 1]
        assert ds["complete"].to_list() == [True, True]
        acts = s.activations(dataset="a")
        assert isinstance(acts, pl.DataFrame) and acts.height == 3
        lat = s.latents()
        assert lat.height == 4
        row = lat.filter(pl.col("latent") == 3).row(0, named=True)
        assert row["label"] == "numbers" and row["freq"] == pytest.approx(2 / 3) and row["max_act"] == 2.0
        assert lat.filter(pl.col("latent") == 2)["freq"].item() == 0
        assert s.document(0)["meta"] == {"k": 1}
        assert s.document("y")["doc_id"] == 1
        concepts = s.concepts("a")
        assert set(concepts.columns) >= {"doc_id", "dataset", "latent", "label", "value"}
        assert concepts.filter(pl.col("latent") == 3)["label"].to_list() == ["numbers", "numbers"]


def test_macros_are_stored_in_the_file(store_path):
    # A plain DuckDB session (no saedata) can call the macros.
    con = duckdb.connect(str(store_path), read_only=True)
    top = con.execute("SELECT doc_id, value, at_word FROM top_docs(1, 3, n := 1)").fetchall()
    assert top == [(1, 2.0, "two")]
    freq = dict(con.execute("SELECT latent, n_docs FROM latent_freq('a')").fetchall())
    assert freq == {0: 1, 3: 2}
    concepts = con.execute("SELECT latent FROM doc_concepts(0)").fetchall()
    assert [r[0] for r in concepts] == [0, 3]  # strongest first
    con.close()


def test_sql_and_export(store_path, tmp_path):
    with saedata.open(store_path) as s:
        out = s.sql("SELECT label, count(*) AS n FROM concepts WHERE label IS NOT NULL GROUP BY ALL")
        assert out.rows() == [("numbers", 2)]
        with pytest.raises(StoreError, match="SQL error"):
            s.sql("SELECT nope FROM activations")
        path = s.export("activations", tmp_path / "acts.parquet")
        assert pl.read_parquet(path).height == 4
        with pytest.raises(NotFoundError, match="no table"):
            s.export("activations; DROP TABLE documents", tmp_path / "x.parquet")
        with pytest.raises(StoreError, match="macro top_docs failed"):
            s.macro("top_docs", "not-an-int", 1)


def test_missing_things_name_what_exists(store_path):
    with saedata.open(store_path) as s:
        with pytest.raises(NotFoundError, match=r"no dataset 'c'.*have: a, b"):
            s.dataset_state("c")
        with pytest.raises(NotFoundError, match="no document 99"):
            s.document(99)
        with pytest.raises(NotFoundError, match="several datasets"):
            s.document("x")
        with pytest.raises(NotFoundError, match="no SAE 7"):
            s.latents(7)
    with pytest.raises(NotFoundError, match="no store at"):
        saedata.open(store_path.parent / "missing.duckdb")


def test_newer_schema_is_refused_and_left_intact(store_path):
    con = duckdb.connect(str(store_path))
    con.execute("UPDATE saedata_meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(SchemaVersionError, match="schema version 99"):
        Store(store_path, read_only=False)
    con = duckdb.connect(str(store_path), read_only=True)
    assert con.execute("SELECT count(*) FROM activations").fetchone()[0] == 4
    con.close()


def test_foreign_files_are_refused(tmp_path):
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE t (x INT)")
    con.close()
    with pytest.raises(SchemaVersionError, match="not a saedata store"):
        Store(other, read_only=False)
    junk = tmp_path / "junk.duckdb"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError):
        Store(junk, read_only=False)
    assert junk.read_bytes().startswith(b"this is not")


def test_second_writer_gets_a_clear_error(store_path):
    code = (
        "import sys; from saedata.store import Store\n"
        f"s = Store({str(store_path)!r}, read_only=False)\n"
        "print('ready', flush=True); sys.stdin.readline()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError, match="open in another process.*one writer at a time"):
            Store(store_path, read_only=False)
    finally:
        holder.communicate("\n", timeout=30)
    with saedata.open(store_path) as s:  # the data is still there
        assert s.activations().height == 4


def test_transaction_rolls_back_on_error(store_path):
    with Store(store_path, read_only=False) as s:
        bad_docs = pl.DataFrame({"doc_id": [10], "dataset_id": [1], "ext_id": ["z"], "text": ["t"],
                                 "meta": [None], "n_tokens": [1]}, schema_overrides={"meta": pl.String})
        dup = pl.DataFrame({"doc_id": [0], "dataset_id": [1], "ext_id": ["dup"], "text": ["t"],
                            "meta": [None], "n_tokens": [1]}, schema_overrides={"meta": pl.String})
        acts = pl.DataFrame({"doc_id": [10], "sae_id": [1], "latent": [0], "value": [1.0], "peak": [0], "tokens": [1]})
        with pytest.raises(duckdb.Error):
            s.append_batch(pl.concat([bad_docs, dup]), acts)  # doc_id 0 already exists
        assert s.sql("SELECT count(*) AS n FROM documents")["n"].item() == 3
        assert s.sql("SELECT count(*) AS n FROM activations")["n"].item() == 4


def test_a_write_that_fails_on_disk_is_one_line_and_lands_nothing(store_path):
    """A full disk (here: DuckDB's IO error raised inside a write) rolls the block back and
    reads as one StoreError naming the store."""
    with Store(store_path, read_only=False) as s:
        before = s.sql("SELECT count(*) AS n FROM documents")["n"][0]
        with pytest.raises(StoreError, match=r"cannot write .*run.duckdb: .*No space left on device"):
            with s.transaction() as con:
                con.execute("DELETE FROM documents")
                raise duckdb.IOException("IO Error: No space left on device")
        assert s.sql("SELECT count(*) AS n FROM documents")["n"][0] == before
