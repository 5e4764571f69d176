"""The CLI: every command has help and is in the README, data on stdout, errors one line on stderr."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from saedata.cli import main
from saedata.config import SAEConfig
from saedata.sae import SparseAutoencoder, save_sae

README = Path(__file__).resolve().parents[1] / "README.md"


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
    assert csv.stdout.splitlines()[0] == "latent,label,label_source,freq,max_act"
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
    datasets = runner.invoke(main, ["datasets", "--db", db, "--format", "json"])
    assert json.loads(datasets.stdout)[0]["n_docs"] == 120


def test_export(runner, db, tmp_path):
    import polars as pl

    out = tmp_path / "concepts.parquet"
    result = runner.invoke(main, ["export", "concepts", str(out), "--db", db])
    assert result.exit_code == 0 and pl.read_parquet(out).height > 0


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


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, saedata.cli, saedata; saedata.__version__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_demo_writes_a_planted_corpus(runner, tmp_path):
    path = tmp_path / "demo.jsonl"
    result = runner.invoke(main, ["demo", str(path), "-n", "50"])
    assert result.exit_code == 0
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(rows) == 50 and {"id", "text", "topic", "sentiment", "is_question"} <= set(rows[0])
