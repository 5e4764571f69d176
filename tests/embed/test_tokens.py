"""Token evidence: embed --store-tokens keeps every token's codes, `saedata show --tokens`
reads them, and `saedata pool` re-pools a dataset from them without the corpus."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

import saedata
from saedata.cli import main
from saedata.config import EmbedConfig, InputConfig, ReaderConfig
from saedata.embed.local import embed
from saedata.errors import ConfigError
from saedata.store.store import FAULT_ENV
from tests.helpers import copy_demo_store


@pytest.fixture(scope="module")
def tokens_db(demo_store, tmp_path_factory) -> Path:
    """Dataset "a" of the demo store embedded again with --store-tokens (the demo SAE)."""
    db = tmp_path_factory.mktemp("tokens") / "run.duckdb"
    embed(demo_store["a"], db, demo_store["sae"], name="a", input_cfg=InputConfig(id_field="id"),
          reader_cfg=ReaderConfig(device="cpu"), embed_cfg=EmbedConfig(store_tokens=True, commit_docs=64))
    return db


def _frames(db) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    with saedata.open(db) as store:
        return (store.sql("SELECT * FROM token_activations"), store.sql("SELECT * FROM activations"),
                store.sql("SELECT doc_id, text, n_tokens FROM documents"))


def test_token_codes_pool_to_the_stored_activations(tokens_db):
    tokens, acts, docs = _frames(tokens_db)
    assert docs.height == 160 and tokens["doc_id"].n_unique() == 160
    # every token's index lies within its document, and its span holds text of the document
    joined = tokens.join(docs, on="doc_id")
    assert (joined["token"] < joined["n_tokens"]).all() and (joined["token"] >= 0).all()
    pieces = [t[s:e] for t, s, e in joined.select("text", "char_start", "char_end").head(2000).iter_rows()]
    assert all(p.strip() for p in pieces)
    # max over a document's tokens is the stored (max-pooled) value; the token count is `tokens`
    pooled = tokens.group_by("doc_id", "latent").agg(pl.col("value").max().alias("vmax"), pl.len().alias("n"))
    both = acts.join(pooled, on=["doc_id", "latent"], how="full", coalesce=True)
    assert both.height == acts.height == pooled.height
    assert np.allclose(both["value"], both["vmax"], rtol=1e-3)
    assert (both["tokens"] == both["n"]).all()
    # the peak character lies in the span of a token where the latent fired at its maximum
    at_max = tokens.join(acts.select("doc_id", "latent", "value", "peak"), on=["doc_id", "latent"])
    at_max = at_max.filter(pl.col("value") == pl.col("value_right"))
    hit = at_max.filter((pl.col("peak") >= pl.col("char_start")) & (pl.col("peak") < pl.col("char_end")))
    assert hit.select("doc_id", "latent").n_unique() / acts.height > 0.999


def test_repool_max_gives_the_embedded_values_back_and_mean_sum_count_follow_their_definitions(tokens_db, tmp_path):
    db = tmp_path / "run.duckdb"
    shutil.copy(tokens_db, db)
    tokens, before, docs = _frames(db)
    r = saedata.repool(db, "a", "max")
    _, after, _ = _frames(db)
    assert (r.previous, r.pooling, r.n_docs, r.n_token_codes) == ("max", "max", 160, tokens.height)
    key = ["doc_id", "latent"]
    same = before.join(after, on=key, suffix="_new")
    assert same.height == before.height == after.height
    assert (same["value"] == same["value_new"]).all() and (same["tokens"] == same["tokens_new"]).all()
    assert (same["peak"] == same["peak_new"]).mean() > 0.999

    sums = tokens.group_by(key).agg(pl.col("value").sum().alias("s"), pl.len().alias("n")).join(
        docs.select("doc_id", "n_tokens"), on="doc_id")
    for pooling, want in (("mean", pl.col("s") / pl.col("n_tokens")), ("sum", pl.col("s")), ("count", pl.col("n"))):
        r = saedata.repool(db, "a", pooling)
        assert r.previous in ("max", "mean", "sum") and r.n_activations == before.height
        _, got, _ = _frames(db)
        check = got.join(sums.with_columns(want=want), on=key)
        assert check.height == before.height
        assert np.allclose(check["value"], check["want"].cast(pl.Float64), rtol=2e-3), pooling
    with saedata.open(db) as store:
        assert store.dataset_args(1)["embed"]["pooling"] == "count"
        assert store.sql("SELECT max(max_act) FROM latents")[0, 0] == float(sums["n"].max())


def test_cli_pool_and_show_tokens(tokens_db, tmp_path):
    db = tmp_path / "run.duckdb"
    shutil.copy(tokens_db, db)
    runner = CliRunner()
    out = runner.invoke(main, ["pool", "a", "--pooling", "mean", "--db", str(db)])
    assert out.exit_code == 0, out.output
    assert "a: 160 documents pooled with mean (was max) from " in out.stdout
    shown = runner.invoke(main, ["show", "0", "--db", str(db), "--tokens", "--format", "csv", "--top", "0"])
    assert shown.exit_code == 0, shown.output
    table = pl.read_csv(shown.stdout.encode())
    with saedata.open(db) as store:
        text, n_tokens = store.sql("SELECT text, n_tokens FROM documents WHERE doc_id = 0").row(0)
    assert table.height == n_tokens and table["token"].to_list() == list(range(n_tokens))
    assert [text[s:e] for s, e in table.select("char_start", "char_end").iter_rows()] == table["piece"].to_list()
    assert all(len(t.split("; ")) == 3 for t in table["top_latents"].to_list())


def test_no_token_codes_is_a_one_line_error_and_the_store_is_unchanged(demo_store, tmp_path):
    db = copy_demo_store(demo_store, tmp_path)
    before = _frames(db)[1]
    runner = CliRunner()
    out = runner.invoke(main, ["pool", "a", "--pooling", "mean", "--db", str(db)])
    assert out.exit_code == 1
    assert out.stderr.strip().splitlines() == [
        "Error: dataset 'a' was embedded without --store-tokens (160 of its 160 documents have no token codes); "
        "embed it again with --store-tokens (--name for a new dataset)"]
    assert _frames(db)[1].equals(before)
    shown = runner.invoke(main, ["show", "0", "--db", str(db), "--tokens"])
    assert shown.exit_code == 1 and "was embedded without --store-tokens" in shown.stderr
    bad = runner.invoke(main, ["pool", "a", "--pooling", "median", "--db", str(db)])
    assert bad.exit_code == 2 and "'median' is not one of" in bad.stderr


def test_resuming_with_other_token_options_is_refused(demo_store, tokens_db, tmp_path):
    db = tmp_path / "run.duckdb"
    shutil.copy(tokens_db, db)
    with saedata.Store(db, read_only=False) as store:  # as a run stopped before it finished leaves it
        store.sql("UPDATE datasets SET complete = false")
    with pytest.raises(ConfigError, match="was started with --store-tokens; rerun with the same options"):
        embed(demo_store["a"], db, demo_store["sae"], name="a", input_cfg=InputConfig(id_field="id"),
              reader_cfg=ReaderConfig(device="cpu"))


REPOOL = """
import sys
import saedata
saedata.repool(sys.argv[1], "a", "mean")
"""


@pytest.mark.parametrize("step", ["repool:batch", "finish:labels", "repool:finished"])
def test_a_repool_killed_anywhere_leaves_the_dataset_as_it_was(tokens_db, tmp_path, step):
    db = tmp_path / "run.duckdb"
    shutil.copy(tokens_db, db)
    with saedata.open(db) as store:
        before = [store.sql(f"SELECT * FROM {t} ORDER BY ALL") for t in ("activations", "latents", "latent_counts")]
    env = {**os.environ, FAULT_ENV: step}
    proc = subprocess.run([sys.executable, "-c", REPOOL, str(db)], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with saedata.open(db) as store:
        after = [store.sql(f"SELECT * FROM {t} ORDER BY ALL") for t in ("activations", "latents", "latent_counts")]
        assert store.dataset_args(1)["embed"]["pooling"] == "max"
    assert all(a.equals(b) for a, b in zip(before, after, strict=True))
    saedata.repool(db, "a", "mean")  # and the rerun works


def test_latent_pages_mark_every_token_where_the_latent_fires(tokens_db, demo_store, tmp_path):
    lat = 0
    with saedata.open(tokens_db) as store:
        lat = int(store.sql("SELECT latent FROM activations GROUP BY latent ORDER BY count(*) DESC LIMIT 1")[0, 0])
    page = saedata.latent_page(tokens_db, lat)
    tokens, _, _ = _frames(tokens_db)
    for row in page.top.iter_rows(named=True):
        want = tokens.filter((pl.col("doc_id") == row["doc_id"]) & (pl.col("latent") == lat)).sort("token")
        assert row["spans"] == [[s, e] for s, e in want.select("char_start", "char_end").iter_rows()]
        assert any(s <= row["peak"] < e for s, e in row["spans"])
        assert row["snippet"].count("[") >= min(2, len(row["spans"]))
    report = tmp_path / "latent.html"
    saedata.write_report(page, report)
    html = report.read_text()
    assert html.count("<mark>") > page.top.height  # more than the peak word of each document
    plain = saedata.latent_page(demo_store["db"], lat)  # without token codes: the peak word alone
    assert all(s == [] for s in plain.top["spans"].to_list())
    assert all(snip.count("[") == 1 for snip in plain.top["snippet"].to_list())
