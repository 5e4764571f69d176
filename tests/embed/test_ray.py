"""Distributed embedding on Ray Data (saedata/distributed.py) and Parquet shards
(saedata/shards.py): the same tables and labels as a single-process run, analyses over
shards in place, import, resume after a worker failure, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner

import saedata
from saedata.cli import main
from saedata.config import EmbedConfig, InputConfig, ReaderConfig, SAEConfig
from saedata.demo import make_corpus, write_jsonl
from saedata.embed.local import embed
from saedata.errors import ConfigError, InputError, NotFoundError, SchemaVersionError, StoreError
from saedata.sae import SparseAutoencoder, save_sae
from saedata.store import Store

ray = pytest.importorskip("ray")

from saedata.embed import ray as distributed
from saedata.store import shards

PART = 32
EMBED = EmbedConfig(commit_docs=PART, label_top_docs=16)
"""Chunks of the single-process run line up with the shard parts, so both read the same batches."""


@pytest.fixture(scope="module")
def local_ray():
    import os

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("dist")
    torch.manual_seed(0)
    sae = root / "sae"
    save_sae(SparseAutoencoder(SAEConfig(d_in=32, d_sae=96, activation="topk", k=8, reader=tiny_bert)), sae)
    a = write_jsonl(make_corpus(100, seed=1, id_prefix="a"), root / "a.jsonl")
    b = write_jsonl(make_corpus(70, seed=2, id_prefix="b", question_rate=0.8), root / "b.jsonl")
    reader = ReaderConfig(model=tiny_bert, device="cpu", batch_size=8)
    db = root / "single.duckdb"
    for path in (a, b):
        embed(str(path), db, str(sae), input_cfg=InputConfig(id_field="id"), reader_cfg=reader, embed_cfg=EMBED)
    return {"root": root, "sae": str(sae), "a": str(a), "b": str(b), "reader": reader, "db": str(db)}


def _run(setup, out, sources=None, **kw):
    return distributed.embed_ray(sources or [setup["a"], setup["b"]], out, setup["sae"],
                                 input_cfg=InputConfig(id_field="id"), reader_cfg=setup["reader"], embed_cfg=EMBED,
                                 part_docs=PART, **kw)


@pytest.fixture(scope="module")
def ray_out(setup, local_ray):
    out = setup["root"] / "shards"
    result = _run(setup, out, num_workers=2)
    return out, result


def _tables(store) -> dict[str, pl.DataFrame]:
    return {
        "documents": store.sql("SELECT d.doc_id, ds.name, d.ext_id, d.text, d.meta::VARCHAR AS meta, d.n_tokens "
                               "FROM documents d JOIN datasets ds USING (dataset_id) ORDER BY doc_id"),
        "activations": store.sql("SELECT doc_id, latent, value, peak FROM activations ORDER BY doc_id, latent"),
        "latents": store.sql("SELECT latent, label, label_source, freq, max_act FROM latents ORDER BY latent"),
    }


def _assert_same(x: dict[str, pl.DataFrame], y: dict[str, pl.DataFrame]) -> None:
    assert x["documents"].equals(y["documents"])
    ax, ay = x["activations"], y["activations"]
    assert ax.select("doc_id", "latent", "peak").equals(ay.select("doc_id", "latent", "peak"))
    np.testing.assert_allclose(ax["value"].to_numpy(), ay["value"].to_numpy(), rtol=2e-3, atol=1e-5)
    lx, ly = x["latents"], y["latents"]
    assert lx.select("latent", "label", "label_source").equals(ly.select("latent", "label", "label_source"))
    np.testing.assert_allclose(lx["freq"].to_numpy(), ly["freq"].to_numpy())


# -- the same result as one process -------------------------------------------------------------------------


def test_ray_run_gives_the_single_process_tables_and_labels(setup, ray_out):
    out, result = ray_out
    assert result.n_docs == 170 and result.n_parts == 4 + 3 and result.n_new_parts == 7
    with saedata.open(setup["db"]) as single, saedata.open(out) as sharded:
        ref = _tables(single)
        _assert_same(ref, _tables(sharded))
        assert ref["latents"]["label"].drop_nulls().len() > 20  # labels exist, not just equal nulls
        assert sharded.datasets()["n_docs"].to_list() == [100, 70]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["labelled"] and len(manifest["parts"]) == 7
    assert not (out / "_input").exists()


def test_import_gives_a_store_equal_to_the_single_process_one(setup, ray_out, tmp_path):
    out, _ = ray_out
    db = tmp_path / "imported.duckdb"
    r = CliRunner().invoke(main, ["import", str(out), "--db", str(db)])
    assert r.exit_code == 0, r.output
    assert "a, b: 170 documents" in r.stdout
    with saedata.open(setup["db"]) as single, saedata.open(db) as imported:
        _assert_same(_tables(single), _tables(imported))
        assert imported.has_latent_counts([1, 2], 1)
    again = CliRunner().invoke(main, ["import", str(out), "--db", str(db)])
    assert again.exit_code == 1 and "already has a dataset 'a'" in again.stderr
    assert again.stderr.count("\n") == 1
    with saedata.open(db) as imported:
        assert imported.one("SELECT count(*) FROM documents")[0] == 170


def test_analyses_and_sql_run_over_shards_in_place(setup, ray_out):
    out, _ = ray_out
    on_shards = saedata.diff(out, "a", "b")
    on_store = saedata.diff(setup["db"], "a", "b")
    cols = ["latent", "n_a", "n_b", "q", "adj_q", "merged"]
    assert on_shards.table.select(cols).equals(on_store.table.select(cols))
    by = saedata.diff(out, by="dataset")
    assert set(by.table["group"].unique()) == {"a", "b"} and by.n_docs == {"a": 100, "b": 70}
    r = CliRunner().invoke(main, ["sql", "SELECT name, n_docs FROM datasets ORDER BY 1", "--shards", str(out),
                                  "--format", "csv"])
    assert r.exit_code == 0 and r.stdout.splitlines() == ["name,n_docs", "a,100", "b,70"]
    r = CliRunner().invoke(main, ["diff", "--shards", str(out), "--by", "dataset", "--format", "csv", "--by-latent"])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0].startswith("group,more_in,latent,label")
    r = CliRunner().invoke(main, ["diff", "--shards", str(out), "--by", "dataset", "--format", "csv"])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0].startswith("group,finding,more_in,description")


def test_any_parquet_engine_reads_the_shards(ray_out):
    out, _ = ray_out
    acts = pl.read_parquet(out / "activations", hive_partitioning=True)
    assert set(acts["dataset"].unique()) == {"a", "b"}
    assert acts.columns[:5] == ["doc_id", "sae_id", "latent", "value", "peak"]
    docs = pl.read_parquet(out / "documents", hive_partitioning=True)
    assert docs.height == 170 and docs["doc_id"].n_unique() == 170


def test_corpora_behind_a_url_are_read_through_fsspec(setup, ray_out, tmp_path):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    for name in ("a", "b"):
        fs.pipe(f"/corpora/{name}.jsonl", Path(setup[name]).read_bytes())
    out = tmp_path / "from-url"
    result = _run(setup, out, sources=["memory://corpora/*.jsonl"], num_workers=2)
    assert result.datasets == ["a", "b"] and result.n_docs == 170
    with saedata.open(setup["db"]) as single, saedata.open(out) as sharded:
        _assert_same(_tables(single), _tables(sharded))
        assert sharded.datasets()["source"].to_list() == ["memory:///corpora/a.jsonl", "memory:///corpora/b.jsonl"]
    assert not (out / "_input").exists()
    fs.pipe("/bad/c.jsonl", b'{"id": "c1", "text": "fine"}\n{"id": "c2", "text": \n')
    with pytest.raises(InputError, match=r"^memory://bad/c.jsonl:2: invalid JSON"):
        _run(setup, tmp_path / "bad", sources=["memory://bad/c.jsonl"])
    with pytest.raises(InputError, match="no files match 'memory://nothing/\\*.jsonl'"):
        _run(setup, tmp_path / "none", sources=["memory://nothing/*.jsonl"])


# -- resume -----------------------------------------------------------------------------------------------


def test_a_failing_worker_stops_the_run_and_a_rerun_resumes(setup, local_ray, tmp_path):
    out = tmp_path / "shards"
    # plan as embed_ray does, then break one input part so its worker fails mid-run
    out.mkdir()
    manifest = distributed._start_manifest(out, Path(setup["sae"]), setup["reader"], EMBED)
    distributed._plan(out, manifest, [setup["a"], setup["b"]], ["a", "b"], InputConfig(id_field="id"), PART,
                      False, lambda m: None)
    bad = out / "_input" / "dataset=a" / "part-00002.parquet"
    good = bad.read_bytes()
    bad.write_bytes(b"not parquet")
    with pytest.raises(distributed.WorkerError, match=r"part a/00002.*parts are done and kept.*rerun") as e:
        _run(setup, out, num_workers=2)
    assert "\n" not in str(e.value)
    manifest = shards.read_manifest(out)
    assert "a/00002" not in manifest.parts and not manifest.complete
    for table in shards.TABLES:
        for f in manifest.files(table):
            assert pl.read_parquet(out / f).height >= 0  # every listed file is whole
    with pytest.raises(StoreError, match="unfinished run"):
        saedata.import_shards(out, tmp_path / "x.duckdb")
    done_before = len(manifest.parts)
    bad.write_bytes(good)
    result = _run(setup, out, num_workers=1)
    assert result.n_new_parts == 7 - done_before and result.n_parts == 7
    with saedata.open(setup["db"]) as single, saedata.open(out) as sharded:
        _assert_same(_tables(single), _tables(sharded))


def test_rerunning_a_finished_run_does_nothing(setup, ray_out):
    out, _ = ray_out
    before = (out / "manifest.json").read_text()
    result = _run(setup, out)
    assert result.n_new_parts == 0 and result.n_docs == 170
    assert json.loads((out / "manifest.json").read_text()) == json.loads(before)


# -- bad input ----------------------------------------------------------------------------------------------


def test_bad_input_is_a_clear_error(setup, ray_out, tmp_path, tiny_bert):
    out, _ = ray_out
    with pytest.raises(InputError, match="no files match"):
        distributed.embed_ray([str(tmp_path / "*.jsonl")], tmp_path / "o", setup["sae"])
    other = tmp_path / "other-sae"
    torch.manual_seed(1)
    save_sae(SparseAutoencoder(SAEConfig(d_in=32, d_sae=96, activation="topk", k=4, reader=tiny_bert)), other)
    with pytest.raises(ConfigError, match="written with SAE .*give another --out"):
        distributed.embed_ray([setup["a"], setup["b"]], out, other, input_cfg=InputConfig(id_field="id"),
                              reader_cfg=setup["reader"], embed_cfg=EMBED)
    with pytest.raises(ConfigError, match="dataset 'b', which this command does not name"):
        _run(setup, out, sources=[setup["a"]])
    newer = tmp_path / "newer"
    shutil.copytree(out, newer)
    data = json.loads((newer / "manifest.json").read_text())
    (newer / "manifest.json").write_text(json.dumps(data | {"version": 99}))
    with pytest.raises(SchemaVersionError, match="format version 99.*upgrade saedata"):
        saedata.open(newer)
    with pytest.raises(StoreError, match="not a store file: a shard folder opens read-only"):
        Store(out, read_only=False)
    with pytest.raises(NotFoundError, match="not a shard folder"):
        saedata.import_shards(tmp_path, tmp_path / "x.duckdb")
    with pytest.raises(ConfigError, match="cannot name a shard partition"):
        distributed.embed_ray([setup["a"]], tmp_path / "o2", setup["sae"], names=["a/b"])


def test_cli_engine_ray(setup, local_ray, tmp_path, tiny_bert):
    out = tmp_path / "cli-shards"
    args = ["embed", setup["a"], "--sae", setup["sae"], "--engine", "ray", "--out", str(out), "--id-field", "id",
            "--model", tiny_bert, "--device", "cpu", "--num-workers", "2", "--part-docs", "40", "-q"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "a: 100 documents in 3 parts" in r.stdout
    r = CliRunner().invoke(main, ["embed", setup["a"], "--engine", "ray", "-q"])
    assert r.exit_code == 2 and "give --out" in r.stderr
    r = CliRunner().invoke(main, ["embed", "missing-*.jsonl", "--engine", "ray", "--out", str(out), "-q"])
    assert r.exit_code == 1 and "no files match 'missing-*.jsonl'" in r.stderr


def _worker_pids() -> list[int]:
    """Processes of the PartWorker actors (Ray names them in their command line)."""
    import os

    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"PartWorker" in f.read():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_a_worker_killed_mid_run_fails_the_run_and_keeps_finished_parts(setup, local_ray, tmp_path):
    import os
    import signal
    import threading
    import time

    corpus = write_jsonl(make_corpus(1280, seed=5, id_prefix="k"), tmp_path / "k.jsonl")
    out, killed = tmp_path / "shards", []

    def kill_a_worker_after_the_first_part():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            manifest = out / "manifest.json"
            if manifest.exists() and json.loads(manifest.read_text())["parts"]:
                for pid in _worker_pids()[:1]:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                if killed:
                    return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_worker_after_the_first_part)
    killer.start()
    try:
        with pytest.raises(distributed.WorkerError, match="parts are done and kept.*rerun") as e:
            _run(setup, out, sources=[corpus], num_workers=2)
    finally:
        killer.join()
    assert killed and "\n" not in str(e.value)
    assert str(e.value).startswith("a Ray worker failed: ") and "died" in str(e.value)
    manifest = shards.read_manifest(out)
    done = len(manifest.parts)
    assert 1 <= done < 40 and not manifest.complete
    for table in shards.TABLES:
        for f in manifest.files(table):
            pl.read_parquet(out / f)  # every listed file is whole
    result = _run(setup, out, sources=[corpus], num_workers=2)
    assert result.n_new_parts == 40 - done and result.n_docs == 1280


IMPORT_STEPS = ["import:copied", "finish:labels", "import:committed", "checkpoint"]


def test_an_import_killed_at_any_step_reruns_to_the_uninterrupted_store(ray_out, tmp_path):
    """A shard import stopped by SIGKILL at each step leaves nothing or everything; rerun, the
    store equals an uninterrupted import."""
    import os
    import signal
    import subprocess
    import sys

    from saedata.store.store import FAULT_ENV
    from tests.embed.test_faults import snapshot

    out, _ = ray_out
    code = "import sys, saedata; saedata.import_shards(sys.argv[1], sys.argv[2])"
    reference = tmp_path / "reference.duckdb"
    saedata.import_shards(out, reference)
    expected = snapshot(reference)
    for step in IMPORT_STEPS:
        db = tmp_path / f"{step.replace(':', '_')}.duckdb"
        env = {**os.environ, FAULT_ENV: step}
        killed = subprocess.run([sys.executable, "-c", code, str(out), str(db)], env=env, capture_output=True,
                                text=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL, (step, killed.stderr[-2000:])
        with saedata.open(db) as store:
            imported = store.datasets().height
        assert imported in (0, 2), step  # all or nothing
        if imported == 0:
            saedata.import_shards(out, db)
        assert snapshot(db) == expected, step
