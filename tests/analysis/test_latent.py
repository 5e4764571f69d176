"""saedata latent N: one latent's page, checked against the store's own SQL and correlate."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

import saedata
from saedata.analysis.latent import LatentBook, latent_page, peak_snippet
from saedata.cli import main
from saedata.errors import NotFoundError


@pytest.fixture(scope="module")
def db(demo_store) -> str:
    return demo_store["db"]


@pytest.fixture(scope="module")
def busy(db) -> int:
    """The latent firing in the most documents of the demo store."""
    with saedata.open(db) as s:
        return s.sql("SELECT latent FROM activations GROUP BY latent ORDER BY count(*) DESC, latent LIMIT 1").item()


def test_counts_and_top_documents_match_the_store(db, busy):
    page = latent_page(db, busy, top=5, n_samples=6)
    with saedata.open(db) as s:
        per_ds = dict(s.sql("SELECT ds.name, count(*) FROM activations a JOIN documents d USING (doc_id) "
                            "JOIN datasets ds USING (dataset_id) WHERE a.latent = ? GROUP BY ds.name", [busy]).rows())
        top = s.macro("top_docs", 1, busy, n=5)
        label = s.latents(1).filter(pl.col("latent") == busy)["label"].item()
    assert dict(page.datasets.select("dataset", "n_fires").rows()) == per_ds
    assert page.datasets["n_docs"].to_list() == [160, 160] and page.n_docs == 320
    assert (page.datasets["n_present"] <= page.datasets["n_fires"]).all()
    assert page.label == label
    assert page.top["doc_id"].to_list() == top["doc_id"].to_list()
    assert np.allclose(page.top["value"].to_numpy(), top["value"].to_numpy())
    assert page.top["at_word"].to_list() == top["at_word"].to_list()
    for word, snippet in page.top.select("at_word", "snippet").iter_rows():
        assert f"[{word}]" in snippet
    assert page.quantiles["value"][-1] == pytest.approx(top["value"][0])  # the max


def test_samples_span_the_range_of_values(db, busy):
    page = latent_page(db, busy, n_samples=6)
    values = page.samples["value"].to_numpy()
    assert page.samples.height == 6 and (np.diff(values) >= 0).all()  # weakest first
    assert values[0] < page.quantiles.filter(pl.col("quantile") == 0.25)["value"].item()  # not only the top
    assert values[-1] > page.quantiles.filter(pl.col("quantile") == 0.75)["value"].item()
    assert ((page.samples["quantile"] > 0) & (page.samples["quantile"] <= 1)).all()


def test_cooccurring_latents_score_as_correlate_does(db, busy):
    page = latent_page(db, busy, n_cooccur=5, min_support=5)
    assert page.cooccurs.height == 5 and busy not in page.cooccurs["latent"].to_list()
    assert (np.diff(page.cooccurs["npmi"].to_numpy()) <= 0).all()
    other = int(page.cooccurs["latent"][0])
    pairs = saedata.correlate(db, latents=[busy, other], min_support=5).pairs
    assert pairs["npmi"][0] == pytest.approx(page.cooccurs["npmi"][0])
    assert pairs["n_ij"][0] == page.cooccurs["n_both"][0]


def test_one_dataset_and_a_missing_latent(db, busy):
    page = latent_page(db, busy, "b")
    assert page.datasets["dataset"].to_list() == ["b"] and set(page.top["dataset"]) == {"b"}
    with pytest.raises(NotFoundError, match=r"SAE 1 has no latent 99999 \(it has 0\.\.\d+\)"):
        latent_page(db, 99999)


def test_peak_snippet_marks_the_word():
    text = "The quick brown fox jumps over the lazy dog, then   sleeps.\nAgain."
    assert peak_snippet(text, text.index("fox") + 1) == "The quick brown [fox] jumps over the lazy dog, then sleeps. Again."
    assert peak_snippet(text, text.index(","), width=20) == "...e lazy dog[,] then sl..."  # 10 characters a side
    assert peak_snippet(text, None, width=9) == "The quick..."


def test_cli_prints_the_page_and_writes_the_report(db, busy, tmp_path):
    report = tmp_path / "latent.html"
    result = CliRunner().invoke(main, ["latent", str(busy), "--db", db, "--top", "3", "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert f"latent {busy} of SAE 1:" in result.output and "strongest documents:" in result.output
    assert "across its range of values, weakest first:" in result.output
    page = report.read_text()
    assert "<mark>" in page and "Present together with" in page
    result = CliRunner().invoke(main, ["latent", str(busy), "--db", db, "--format", "json"])
    data = json.loads(result.output)
    assert data["latent"] == busy and len(data["top"]) == 10 and {"snippet", "value"} <= set(data["top"][0])
    result = CliRunner().invoke(main, ["latent", "99999", "--db", db])
    assert result.exit_code == 1 and "SAE 1 has no latent 99999" in result.output
    assert "Traceback" not in result.output


def test_a_book_gives_the_pages_one_latent_at_a_time_would(db, busy):
    """Pages made in batches (their evidence read in one query) equal pages made alone."""
    with saedata.open(db) as s:
        book = LatentBook(s)
        wanted = [busy, 5, 2, busy + 1 if busy + 1 < book.d_sae else 0]
        batched = list(book.pages(wanted, batch=3))
        alone = [book.page(i) for i in wanted]
        with pytest.raises(NotFoundError, match="has no latent -1"):
            list(book.pages([3, -1]))
    assert [p.latent for p in batched] == wanted
    for a, b in zip(batched, alone):
        for part in ("datasets", "quantiles", "top", "samples", "cooccurs"):
            assert getattr(a, part).equals(getattr(b, part)), (a.latent, part)
        assert (a.label, a.weak, a.scores, a.n_docs) == (b.label, b.weak, b.scores, b.n_docs)


def test_overview_counts_firings_per_latent_and_the_dataset_lift(db, busy):
    with saedata.open(db) as s:
        book = LatentBook(s)
        overview = book.overview()
        counts = dict(s.sql("SELECT latent, count(*) FROM activations WHERE value <> 0 GROUP BY latent").rows())
        per_ds = s.sql("SELECT a.latent, ds.name, count(*) AS n FROM activations a JOIN documents d USING (doc_id) "
                       "JOIN datasets ds USING (dataset_id) WHERE a.value <> 0 GROUP BY ALL")
        one = LatentBook(s, "a").overview()
    assert overview.height == book.d_sae == 3072 and overview["latent"].to_list() == list(range(3072))
    assert overview["n_fires"].to_list() == [counts.get(i, 0) for i in range(3072)]
    assert np.allclose(overview["freq"].to_numpy(), overview["n_fires"].to_numpy() / 320)
    # lift by hand for the busiest latent and the one most specific to b: each share counted
    # with one more firing and one more non-firing document
    specific = int(overview.sort("lift", descending=True)["latent"][0])
    for lat in (busy, specific):
        n = {name: per_ds.filter((pl.col("latent") == lat) & (pl.col("name") == name))["n"].sum() for name in "ab"}
        ratio = {"a": (n["a"] + 1) / 162 / ((n["b"] + 1) / 162), "b": (n["b"] + 1) / 162 / ((n["a"] + 1) / 162)}
        best = max(ratio, key=ratio.get)
        row = overview.filter(pl.col("latent") == lat)
        assert row["lift"].item() == pytest.approx(ratio[best]) and row["more_in"].item() == best
    assert overview.filter(pl.col("latent") == specific)["lift"].item() > 3  # b's planted topics
    assert one["lift"].null_count() == one.height and one["more_in"].null_count() == one.height
