"""`saedata sae eval`: a table row per SAE, JSON, the HTML report, label scores from a store,
and one-line errors (tiny random BERT reader, planted corpus)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import saedata
from saedata.cli import main
from saedata.config import SAEConfig
from saedata.sae import SparseAutoencoder, save_sae


@pytest.fixture
def saes(tmp_path, tiny_bert):
    """Two SAEs on the tiny BERT's last layer (32 wide): TopK and ReLU, random weights;
    and one 16 wide."""
    torch.manual_seed(0)
    out = {}
    for name, cfg in {"topk": SAEConfig(d_in=32, d_sae=96, k=8, reader=tiny_bert, layer=1),
                      "relu": SAEConfig(d_in=32, d_sae=64, activation="relu", reader=tiny_bert, layer=1),
                      "narrow": SAEConfig(d_in=16, d_sae=64, k=8)}.items():
        out[name] = str(save_sae(SparseAutoencoder(cfg), tmp_path / f"{name}.sae"))
    return out


def run(*args: str):
    return CliRunner().invoke(main, ["sae", "eval", *args, "--device", "cpu", "-q"])


def test_table_json_csv_and_report(saes, corpus, tmp_path):
    table = run(saes["topk"], saes["relu"], "--corpus", corpus, "--id-field", "id")
    assert table.exit_code == 0, table.stderr
    lines = table.stdout.strip().splitlines()
    rows = [ln for ln in lines if "┆ topk " in ln or "┆ relu " in ln]  # one row per SAE, in the order given
    assert len(rows) == 2 and "┆ topk " in rows[0] and "┆ relu " in rows[1]
    assert "fvu" in table.stdout and "dead" in table.stdout

    report = tmp_path / "eval.html"
    js = run(saes["topk"], saes["relu"], "--corpus", corpus, "--id-field", "id", "--concept", "topic",
             "--format", "json", "--report", str(report))
    assert js.exit_code == 0, js.stderr
    out = json.loads(js.stdout)
    assert [r["sae"] for r in out["saes"]] == [saes["topk"], saes["relu"]]
    topk = out["saes"][0]
    assert topk["l0"] == 8.0 and topk["l0_p10"] == 8 and topk["activation"] == "topk"
    assert 0 <= topk["dead"] <= 1 and 0 < topk["fvu"] and 0 < topk["js_sep"] <= 1
    assert out["n_docs"] == 120 and out["concept"] == "topic" and out["n_tokens"] > 1000
    topics = {"pets", "science", "sports", "cooking", "travel", "finance", "music", "weather"}
    assert len(out["concepts"]) == 16 and {c["concept"] for c in out["concepts"]} == topics
    assert sum(c["n_docs"] for c in out["concepts"] if c["sae"] == saes["relu"]) == 120
    assert all(0 <= c["js"] <= 1 and 0 <= c["best_latent"] < 96 for c in out["concepts"] if c["sae"] == saes["topk"])
    html = report.read_text()
    assert "data:image/png;base64," in html and "SAE evaluation" in html and "best_latent" in html

    csv = run(saes["topk"], "--corpus", corpus, "--format", "csv", "--tokens", "500")
    assert csv.exit_code == 0, csv.stderr
    header, row = csv.stdout.strip().splitlines()
    assert header.startswith("sae,activation,d_sae,fvu,l0,") and row.startswith(saes["topk"])


def test_label_scores_from_the_store(saes, corpus, tmp_path, tiny_bert):
    db = str(tmp_path / "run.duckdb")
    saedata.embed(corpus, db, saes["topk"], input_cfg=saedata.InputConfig(id_field="id"),
                  reader_cfg=saedata.ReaderConfig(model=tiny_bert, device="cpu"))
    with saedata.open(db, read_only=False) as store:
        store.con.execute("UPDATE latents SET score = CASE WHEN latent < 3 THEN latent / 10 END")  # 0, .1, .2
    result = run(saes["topk"], saes["relu"], "--corpus", corpus, "--db", db, "--format", "json", "--tokens", "800")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["saes"]
    assert [r["label_score"] for r in rows] == [pytest.approx(0.1), None]
    without = run(saes["topk"], "--corpus", corpus, "--format", "json", "--tokens", "800")
    assert "label_score" not in json.loads(without.stdout)["saes"][0]


@pytest.mark.parametrize("case", ["width", "reader", "missing", "concept", "corpus"])
def test_errors_are_one_line_exit_1(case, saes, corpus, tmp_path, tiny_bert):
    args, message = {
        "width": ([saes["topk"], saes["narrow"]], "different widths"),
        "reader": ([saes["narrow"], "--model", tiny_bert], "expects d_in=16, but reader"),
        "missing": ([saes["topk"], str(tmp_path / "nope.sae")], "nope.sae: no such SAE directory"),
        "concept": ([saes["topk"], "--concept", "colour"], "--concept colour: no document has this field"),
        "corpus": ([saes["topk"]], "no such file"),
    }[case]
    where = str(tmp_path / "absent.jsonl") if case == "corpus" else corpus
    result = run(*args, "--corpus", where)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
