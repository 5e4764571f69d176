"""A store from someone else is data, not code: its stored SQL never runs, and SQL on a
store reads no other file (but in `saedata sql`, which is the user's own SQL)."""

from __future__ import annotations

import shutil

import duckdb
import pytest
from click.testing import CliRunner

import saedata
from saedata.cli import main
from saedata.errors import SchemaVersionError, StoreError
from tests.helpers import copy_demo_store

SECRET_READ = "SELECT content AS label FROM read_text('/etc/hostname')"


@pytest.fixture
def hostile(demo_store, tmp_path):
    """The demo store with its macros and view rewritten to read a local file."""
    db = copy_demo_store(demo_store, tmp_path)
    with saedata.open(db) as store:
        expected = {"show": store.doc_concepts(3), "concepts": store.concepts("a").head(20),
                    "top": store.macro("top_docs", 1, 5, n=3)}
    con = duckdb.connect(str(db))
    con.execute(f"CREATE OR REPLACE MACRO doc_concepts(doc) AS TABLE {SECRET_READ}")
    con.execute(f"CREATE OR REPLACE MACRO top_docs(sae, lat, n := 10) AS TABLE {SECRET_READ}")
    con.execute(f"CREATE OR REPLACE VIEW concepts AS {SECRET_READ}")
    con.close()
    return db, expected


def test_stored_macros_and_views_never_run(hostile):
    db, expected = hostile
    with saedata.open(db) as store:
        assert store.doc_concepts(3).equals(expected["show"])
        assert store.concepts("a").head(20).equals(expected["concepts"])
        assert store.macro("top_docs", 1, 5, n=3).equals(expected["top"])
    shown = CliRunner().invoke(main, ["show", "3", "--db", str(db), "--format", "csv"])
    assert shown.exit_code == 0 and "label" in shown.stdout.splitlines()[0]
    assert open("/etc/hostname").read().strip() not in shown.stdout


def test_sql_on_a_store_reads_no_other_file(demo_store, tmp_path):
    with saedata.open(demo_store["db"]) as store:
        with pytest.raises(StoreError, match="disabled"):
            store.sql("SELECT * FROM read_text('/etc/hostname')")
        with pytest.raises(StoreError, match="disabled"):
            store.sql(f"COPY (SELECT 1) TO '{tmp_path / 'out.csv'}'")
    assert not (tmp_path / "out.csv").exists()


def test_saedata_sql_is_the_users_own_sql_and_may_read_files(demo_store):
    result = CliRunner().invoke(main, ["sql", "--db", demo_store["db"], "--format", "csv",
                                       "SELECT count(*) AS n FROM read_text('/etc/hostname')"])
    assert result.exit_code == 0 and result.stdout.splitlines() == ["n", "1"]
    assert "may read and" in CliRunner().invoke(main, ["sql", "--help"]).stdout


def test_a_table_replaced_by_a_view_is_refused(demo_store, tmp_path):
    db = copy_demo_store(demo_store, tmp_path)
    con = duckdb.connect(str(db))
    con.execute("ALTER TABLE documents RENAME TO documents_real")
    con.execute("CREATE VIEW documents AS SELECT * FROM documents_real")
    con.close()
    with pytest.raises(SchemaVersionError, match="documents should be a table but is a view"):
        saedata.open(db)
    result = CliRunner().invoke(main, ["datasets", "--db", str(db)])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1


def test_a_schema_version_that_is_not_a_number_is_one_line(demo_store, tmp_path):
    db = copy_demo_store(demo_store, tmp_path)
    con = duckdb.connect(str(db))
    con.execute("UPDATE saedata_meta SET value = 'x1' WHERE key = 'schema_version'")
    con.close()
    result = CliRunner().invoke(main, ["latents", "--db", str(db)])
    assert result.exit_code == 1 and "unreadable store schema version 'x1'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_shard_folder_reads_no_file_outside_it(tmp_path):
    from saedata.store import shards

    folder = tmp_path / "shards"
    folder.mkdir()
    manifest = shards.Manifest(sae={"sae_id": 1, "name": "s", "d_in": 2, "d_sae": 4, "activation": "topk",
                                    "fingerprint": "f", "cfg": {}}, reader={}, embed={}, complete=True,
                               labelled=False)
    shards.write_manifest(folder, manifest)
    with saedata.open(folder) as store:
        assert store.sql("SELECT count(*) AS n FROM documents")["n"][0] == 0
        with pytest.raises(StoreError, match="disabled"):
            store.sql("SELECT * FROM read_text('/etc/hostname')")
    shutil.rmtree(folder)
