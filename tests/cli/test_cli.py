"""The CLI: every command has help and is in the README, data on stdout, errors one line on stderr."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import saedata
from saedata.cli import main
from saedata.config import SAEConfig
from saedata.sae import SparseAutoencoder, save_sae

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def sae_dir(tmp_path):
    torch.manual_seed(0)
    save_sae(SparseAutoencoder(SAEConfig(d_in=32, d_sae=96, k=8)), tmp_path / "sae")
    return str(tmp_path / "sae")


@pytest.fixture
def db(tmp_path, runner, corpus, tiny_bert, sae_dir):
    path = str(tmp_path / "run.duckdb")
    result = runner.invoke(main, ["embed", corpus, "--sae", sae_dir, "--db", path, "--model", tiny_bert,
                                  "--device", "cpu", "--id-field", "id", "--quiet"])
    assert result.exit_code == 0, result.stderr
    assert re.search(r"corpus: 120 documents in .*run.duckdb", result.stdout)
    assert result.stderr == ""
    return path


def test_every_command_has_help_and_is_in_the_readme(runner):
    readme = README.read_text()
    for name, cmd in main.commands.items():
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, name
        assert cmd.help and len(cmd.help.split()) > 5, name
        assert f"saedata {name}" in readme, f"README does not show `saedata {name}`"


def test_version(runner):
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and "0.1.0" in result.stdout


def test_latents_formats(runner, db):
    table = runner.invoke(main, ["latents", "--db", db, "--top", "5"])
    assert table.exit_code == 0 and "label" in table.stdout and "freq" in table.stdout
    js = runner.invoke(main, ["latents", "--db", db, "--top", "5", "--format", "json"])
    rows = json.loads(js.stdout)
    assert len(rows) == 5 and {"latent", "label", "freq", "max_act"} <= set(rows[0])
    assert [r["freq"] for r in rows] == sorted((r["freq"] for r in rows), reverse=True)
    csv = runner.invoke(main, ["latents", "--db", db, "--top", "3", "--format", "csv"])
    assert csv.stdout.splitlines()[0] == "latent,label,label_source,freq,max_act,score"  # no LLM scores: no columns
    assert "score" not in table.stdout and "llm_" not in table.stdout  # no label scored yet: no empty columns
    assert len(csv.stdout.splitlines()) == 4


def test_show_and_sql(runner, db):
    shown = runner.invoke(main, ["show", "--db", db, "3"])
    assert shown.exit_code == 0 and shown.stdout.startswith("doc 3 (corpus:d00003")
    by_ext = runner.invoke(main, ["show", "--db", db, "d00003", "--dataset", "corpus", "--format", "json"])
    assert by_ext.exit_code == 0
    concepts = json.loads(by_ext.stdout)
    values = [c["value"] for c in concepts]
    assert values == sorted(values, reverse=True) and len(values) > 0
    out = runner.invoke(main, ["sql", "--db", db, "--format", "csv",
                               "SELECT count(DISTINCT doc_id) AS n FROM activations"])
    assert out.exit_code == 0 and out.stdout.splitlines() == ["n", "120"]
    params = runner.invoke(main, ["sql", "--db", db, "--format", "csv", "-p", "k", "10",
                                  "SELECT count(*) AS n FROM documents WHERE doc_id < $k"])
    assert params.exit_code == 0 and params.stdout.splitlines() == ["n", "10"]
    attack = runner.invoke(main, ["sql", "--db", db, "--format", "csv", "-p", "id", "x' OR '1'='1",
                                  "SELECT count(*) AS n FROM documents WHERE ext_id = $id"])
    assert attack.stdout.splitlines() == ["n", "0"]  # a value is data, never SQL
    piped = runner.invoke(main, ["sql", "--db", db, "--format", "csv", "-"], input="SELECT 41 + 1 AS x\n")
    assert piped.exit_code == 0 and piped.stdout.splitlines() == ["x", "42"]
    datasets = runner.invoke(main, ["datasets", "--db", db, "--format", "json"])
    assert json.loads(datasets.stdout)[0]["n_docs"] == 120


def test_export(runner, db, tmp_path):
    import polars as pl

    out = tmp_path / "concepts.parquet"
    result = runner.invoke(main, ["export", "concepts", str(out), "--db", db])
    assert result.exit_code == 0 and result.stderr.strip() == f"wrote {out}"
    exported = pl.read_parquet(out)
    with saedata.open(db) as store:
        n_acts = store.one("SELECT count(*) FROM activations")[0]
        labelled = store.sql("SELECT label FROM concepts ORDER BY doc_id, latent")["label"]
    assert exported.height == n_acts and exported.sort("doc_id", "latent")["label"].equals(labelled)


def test_user_errors_are_one_line_exit_1(runner, db, tmp_path, sae_dir, tiny_bert):
    cases = [
        (["show", "--db", db, "99999"], "no document 99999"),
        (["sql", "--db", db, "SELECT nope"], "SQL error"),
        (["latents", "--db", str(tmp_path / "none.duckdb")], "no store at"),
        (["export", "nosuch", str(tmp_path / "x.parquet"), "--db", db], "no table 'nosuch'"),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": oops}\n')
    cases.append((["embed", str(bad), "--sae", sae_dir, "--db", str(tmp_path / "b.duckdb"), "--model", tiny_bert,
                   "--device", "cpu", "-q"], "bad.jsonl:2"))
    for args, message in cases:
        result = runner.invoke(main, args)
        assert result.exit_code == 1, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr


def test_usage_errors_exit_2(runner):
    assert runner.invoke(main, ["embed"]).exit_code == 2
    assert runner.invoke(main, ["latents", "--sort", "nope"]).exit_code == 2
    assert runner.invoke(main, ["nosuchcommand"]).exit_code == 2


def test_demo_writes_a_pair_with_planted_differences(runner, tmp_path):
    result = runner.invoke(main, ["demo", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")])
    assert result.exit_code == 0 and "300 to" in result.stderr and "4x" in result.stderr
    a, b = ([json.loads(x) for x in (tmp_path / f"{n}.jsonl").read_text().splitlines()] for n in "ab")
    assert len(a) == len(b) == 300
    share = {name: sum(d["topic"] in ("pets", "science") for d in docs) / 300 for name, docs in (("a", a), ("b", b))}
    questions = {name: sum(d["is_question"] for d in docs) / 300 for name, docs in (("a", a), ("b", b))}
    assert share["b"] > 2 * share["a"] and questions["b"] > 2 * questions["a"]
    assert runner.invoke(main, ["demo", "x.jsonl", "y.jsonl", "z.jsonl"]).exit_code == 2


def test_demo_writes_a_planted_corpus(runner, tmp_path):
    path = tmp_path / "demo.jsonl"
    result = runner.invoke(main, ["demo", str(path), "-n", "50"])
    assert result.exit_code == 0
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(rows) == 50 and {"id", "text", "topic", "sentiment", "is_question"} <= set(rows[0])


def _fingerprint(db):
    import saedata

    with saedata.open(db) as s:
        return (s.datasets().select("name", "n_docs", "complete").rows(),
                s.sql("SELECT count(*), sum(value)::DOUBLE, sum(doc_id * latent) FROM activations").rows(),
                s.sql("SELECT count(*), count(label) FROM latents").rows())


def _bad_inputs(tmp_path, sae_dir):
    """(name, corpus file, extra args, expected message) for every kind of bad input."""
    d = tmp_path / "bad"
    d.mkdir()
    (d / "json.jsonl").write_text('{"text": "ok", "id": "1"}\n{"text": "broken", "id": 2,\n')
    (d / "field.jsonl").write_text('{"body": "no text field here", "id": "1"}\n')
    (d / "utf8.jsonl").write_bytes(b'{"text": "fine", "id": "1"}\n{"text": "caf\xe9 \xff", "id": "2"}\n')
    (d / "dup.jsonl").write_text('{"text": "a", "id": "x"}\n{"text": "b", "id": "y"}\n{"text": "c", "id": "x"}\n')
    (d / "corpus.xlsx").write_text("not a corpus")
    (d / "blank.txt").write_text("\n \n")
    corrupt = d / "corrupt_sae"
    corrupt.mkdir()
    (corrupt / "cfg.json").write_text((Path(sae_dir) / "cfg.json").read_text())
    (corrupt / "sae.safetensors").write_bytes((Path(sae_dir) / "sae.safetensors").read_bytes()[:100])
    wide = d / "wide_sae"
    torch.manual_seed(0)
    save_sae(SparseAutoencoder(SAEConfig(d_in=48, d_sae=96, k=8)), wide)
    good = d / "good.jsonl"
    good.write_text('{"text": "a fine document", "id": "1"}\n')
    ids = ["--id-field", "id"]
    return [
        ("malformed JSON", d / "json.jsonl", ids, "json.jsonl:2"),
        ("missing text field", d / "field.jsonl", ids, "no field 'text'"),
        ("invalid UTF-8", d / "utf8.jsonl", ids, "utf8.jsonl:2"),
        ("duplicate id", d / "dup.jsonl", ids, "duplicate id 'x'"),
        ("unknown file type", d / "corpus.xlsx", [], "corpus.xlsx"),
        ("only blank documents", d / "blank.txt", [], "no documents to embed"),
        ("corrupt SAE", good, ids + ["--sae", str(corrupt)], "corrupt_sae"),
        ("mismatched SAE", good, ids + ["--sae", str(wide)], "d_in=48"),
        ("missing file", d / "nope.jsonl", ids, "nope.jsonl"),
    ]


def test_bad_input_is_one_line_exit_1_and_the_store_is_intact(runner, db, tmp_path, sae_dir, tiny_bert):
    before = _fingerprint(db)
    for name, path, extra, message in _bad_inputs(tmp_path, sae_dir):
        args = ["embed", str(path), "--db", db, "--model", tiny_bert, "--device", "cpu", "-q", *extra]
        if "--sae" not in extra:
            args += ["--sae", sae_dir]
        result = runner.invoke(main, args)
        assert result.exit_code == 1, (name, result.stdout, result.stderr)
        assert message in result.stderr, (name, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (name, result.stderr)
        assert _fingerprint(db) == before, name
    # the store still works for reads and new writes
    assert runner.invoke(main, ["latents", "--db", db]).exit_code == 0


def test_newer_store_schema_is_refused_by_every_command(runner, db):
    import duckdb

    con = duckdb.connect(db)
    con.execute("UPDATE saedata_meta SET value = '3' WHERE key = 'schema_version'")
    con.close()
    for args in (["latents", "--db", db], ["sql", "--db", db, "SELECT 1"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 1 and "schema version 3" in result.stderr


def test_train_command_reports_metrics(runner, tmp_path, corpus, tiny_bert):
    out = tmp_path / "sae"
    result = runner.invoke(main, ["train", corpus, "--out", str(out), "--model", tiny_bert, "--device", "cpu",
                                  "--train-tokens", "8000", "--k", "4", "--expansion", "2", "-q"])
    assert result.exit_code == 0, result.stderr
    assert re.search(r"fvu=0\.\d+ +l0=4\.0 +dead=", result.stdout)
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["d_sae"] == 64 and cfg["k"] == 4 and cfg["reader"] == tiny_bert

def test_sae_export_writes_saelens_and_refuses_an_sae_without_a_layer(runner, tmp_path, sae_dir):
    bare = runner.invoke(main, ["sae", "export", sae_dir, str(tmp_path / "out"), "--to", "saelens"])
    assert bare.exit_code == 1 and "records no reader layer" in bare.stderr and "Traceback" not in bare.stderr
    torch.manual_seed(0)
    save_sae(SparseAutoencoder(SAEConfig(d_in=32, d_sae=96, k=8, reader="gpt2", layer=3, hook="mlp_out")),
             tmp_path / "sae3")
    result = runner.invoke(main, ["sae", "export", str(tmp_path / "sae3"), str(tmp_path / "sl"), "--to", "saelens"])
    assert result.exit_code == 0, result.stderr
    assert "blocks.3.hook_mlp_out" in result.stdout
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.3.hook_mlp_out" and cfg["k"] == 8
    result = runner.invoke(main, ["sae", "export", str(tmp_path / "sae3"), str(tmp_path / "sp"), "--to", "sparsify"])
    assert result.exit_code == 0 and "layers.3.mlp" in result.stdout
