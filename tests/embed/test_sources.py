"""A store knows what each dataset was embedded from: a changed or different file is an
error that says so (or, with --replace, is embedded again in place of the old rows), and
input that is bad from its first line fails at once, leaving no store behind."""

from __future__ import annotations

import os
import time

import pytest
import torch
from click.testing import CliRunner

import saedata
from saedata.cli import main
from saedata.config import InputConfig, ReaderConfig, SAEConfig
from saedata.demo import make_corpus, write_jsonl
from saedata.errors import InputError
from saedata.sae import SparseAutoencoder, save_sae
from tests.embed.test_faults import snapshot


@pytest.fixture
def setup(tmp_path, tiny_bert):
    torch.manual_seed(0)
    save_sae(SparseAutoencoder(SAEConfig(d_in=32, d_sae=96, k=8, reader=tiny_bert)), tmp_path / "sae")
    a = write_jsonl(make_corpus(60, seed=1), tmp_path / "a.jsonl")
    b = write_jsonl(make_corpus(40, seed=2, id_prefix="b"), tmp_path / "b.jsonl")
    return {"root": tmp_path, "a": str(a), "b": str(b), "sae": str(tmp_path / "sae"), "model": tiny_bert}


def _embed(setup, path, db, input_cfg=InputConfig(id_field="id"), **kw):
    return saedata.embed(path, db, setup["sae"], input_cfg=input_cfg,
                         reader_cfg=ReaderConfig(model=setup["model"], device="cpu"), **kw)


def test_a_changed_file_is_an_error_and_replace_embeds_it_again(setup, tmp_path):
    db = tmp_path / "run.duckdb"
    _embed(setup, setup["a"], db)
    _embed(setup, setup["b"], db)
    before = snapshot(db)
    write_jsonl(make_corpus(50, seed=7), setup["a"])  # same name, new documents
    with pytest.raises(InputError, match=r"a\.jsonl: the file changed since dataset 'a' was embedded"):
        _embed(setup, setup["a"], db)
    assert snapshot(db) == before  # nothing stored was changed
    result = _embed(setup, setup["a"], db, replace=True)
    assert not result.already_complete and result.n_docs == 50
    # the same as embedding the new file and b afresh (doc ids aside)
    fresh = tmp_path / "fresh.duckdb"
    _embed(setup, setup["b"], fresh)
    _embed(setup, setup["a"], fresh)
    got, want = snapshot(db), snapshot(fresh)
    assert sorted(r[3] for r in got["documents"]) == sorted(r[3] for r in want["documents"])
    assert got["word_counts"] == want["word_counts"] and got["latents"] == want["latents"]
    with saedata.open(db) as store:
        assert store.datasets()["name"].to_list() == ["b", "a"] and store.datasets()["complete"].all()


def test_a_touched_but_unchanged_file_is_the_same(setup, tmp_path):
    db = tmp_path / "run.duckdb"
    _embed(setup, setup["a"], db)
    later = time.time() + 100
    os.utime(setup["a"], (later, later))
    assert _embed(setup, setup["a"], db).already_complete


def test_another_file_under_a_taken_name_is_an_error(setup, tmp_path):
    db = tmp_path / "run.duckdb"
    _embed(setup, setup["a"], db)
    with pytest.raises(InputError, match="dataset 'a' was embedded from .*a.jsonl, not from this file"):
        _embed(setup, setup["b"], db, name="a")
    r = CliRunner().invoke(main, ["embed", setup["b"], "--name", "a", "--db", str(db), "--sae", setup["sae"],
                                  "--model", setup["model"], "--device", "cpu", "--id-field", "id"])
    assert r.exit_code == 1 and "--replace" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_diff_of_files_notices_a_changed_file(setup, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["diff", "a.jsonl", "b.jsonl", "--sae", setup["sae"], "--model", setup["model"], "--device", "cpu",
            "--id-field", "id", "--format", "csv", "-q", "--by-latent"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.stderr
    write_jsonl(make_corpus(60, seed=8), tmp_path / "a.jsonl")
    stale = CliRunner().invoke(main, args)
    assert stale.exit_code == 1 and "a.jsonl: the file changed since dataset 'a'" in stale.stderr
    fresh = CliRunner().invoke(main, args + ["--replace"])
    assert fresh.exit_code == 0, fresh.stderr
    assert fresh.stdout != first.stdout


def test_a_bad_first_line_fails_at_once_and_leaves_no_store(setup, tmp_path, monkeypatch):
    def no_models(*_args, **_kwargs):
        raise AssertionError("a model was loaded (or an SAE trained) before the input was checked")

    monkeypatch.setattr("saedata.embed.local.sae_to_use", no_models)
    monkeypatch.setattr("saedata.embed.local.load_models", no_models)
    db = tmp_path / "new.duckdb"
    with pytest.raises(InputError, match="no field 'body'"):
        saedata.embed(setup["a"], db, input_cfg=InputConfig(text_field="body"))  # no SAE: would train first
    assert not db.exists() and not (tmp_path / "new.duckdb.wal").exists() and not (tmp_path / "new.sae").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "id": "1"}\n{"text": oops}\n')
    with pytest.raises(InputError, match="bad.jsonl:2"):
        _embed(setup, str(bad), db)
    assert not db.exists()
    monkeypatch.undo()
    with pytest.raises(InputError, match="bad.jsonl:2"):  # a bad line past the first batch: a store is made
        _embed(setup, str(bad), db, input_cfg=InputConfig(id_field="id", batch_size=1))
    assert not db.exists()  # ... and removed again, as nothing was stored
