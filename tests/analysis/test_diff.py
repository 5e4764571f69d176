"""Dataset diffing (saedata/analysis/diff.py): planted differences found, statistics checked
by hand, length control, duplicate merging, the offline report, the CLI and bad input."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from scipy import stats

import saedata
from saedata.analysis.diff import DiffResult, diff
from saedata.analysis.stats import cmh_test, length_edges, mcnemar_exact, two_proportion_test
from saedata.cli import main
from saedata.demo import make_corpus, write_jsonl
from saedata.errors import ConfigError, NotFoundError
from saedata.store import Store, length_floor

PETS = re.compile(r"dog|cat|pupp|kitten|pet|kibble|litter|leash|vet\b|chew|parrot|hamster|retriever|purr|bark|"
                  r"sniff|squeaky")
SCIENCE = re.compile(r"scien|lab\b|physic|chemist|biolog|astronom|genetic|experiment|particle|hypothes|enzyme|"
                     r"galaxy|protein|quantum|research|replicat|publish|measur|observ|discover|analys")
QUESTION = re.compile(r"\?|\bwhy\b|\bwhat\b|\bdid\b|\bdo\b|\bhave\b|\breally\b|\bnext\b|\bever\b|\bseen\b")


def _build(path, datasets: dict[str, list[dict]], d_sae: int = 8, labels: dict[int, str] | None = None) -> str:
    """A store from hand-made documents: each {"latents": {latent: value}, "n_tokens": n, "meta": {...}}."""
    with Store(path, read_only=False) as store:
        sae_id = store.register_sae("toy", {"d_in": 4, "d_sae": d_sae, "activation": "topk", "reader": "r"},
                                    None, "fp")
        doc_id = 0
        for name, docs in datasets.items():
            state = store.create_dataset(name, f"{name}.jsonl", sae_id, {})
            rows, acts = [], []
            for i, d in enumerate(docs):
                rows.append({"doc_id": doc_id, "dataset_id": state.dataset_id, "ext_id": f"{name}{i}",
                             "text": f"document {i} of {name}", "meta": json.dumps(d.get("meta", {})),
                             "n_tokens": d.get("n_tokens", 10)})
                for lat, value in d["latents"].items():
                    acts.append({"doc_id": doc_id, "sae_id": sae_id, "latent": lat, "value": value, "peak": 0,
                                 "tokens": d.get("tokens", {}).get(lat, 1)})
                doc_id += 1
            if rows:
                acts_frame = pl.DataFrame(acts, schema={"doc_id": pl.Int64, "sae_id": pl.Int32, "latent": pl.Int32,
                                                        "value": pl.Float32, "peak": pl.Int32, "tokens": pl.Int32})
                store.append_batch(pl.DataFrame(rows), acts_frame)
            store.complete_dataset(state.dataset_id)
        store.refresh_latent_stats(sae_id)
        if labels:
            store.set_labels(sae_id, pl.DataFrame({"latent": list(labels), "label": list(labels.values()),
                                                   "label_source": ["test"] * len(labels)}))
    return str(path)


@pytest.fixture(scope="module")
def demo_diff(demo_store):
    return diff(demo_store["db"], "a", "b")


# -- planted differences on the demo store -----------------------------------------------


def test_planted_topics_and_questions_are_top_findings(demo_diff):
    top = demo_diff.table.head(15).filter((pl.col("adj_q") < 0.05) & (pl.col("diff_b_minus_a") > 0)
                                          & (pl.col("adj_diff_b_minus_a") > 0))
    labels = [lab or "" for lab in top["label"].to_list()]
    assert any(PETS.search(lab) for lab in labels), labels
    assert any(SCIENCE.search(lab) for lab in labels), labels
    assert any(QUESTION.search(lab) for lab in labels), labels
    assert demo_diff.length_controlled and demo_diff.n_docs == {"a": 160, "b": 160}
    expected = ["more_in", "latent", "label", "n_a", "n_b", "freq_a", "freq_b", "diff_b_minus_a", "ratio", "p", "q",
                "adj_diff_b_minus_a", "adj_log_or", "adj_p", "adj_q", "merged"]
    assert demo_diff.table.columns == expected
    # b's documents are longer (its questions add a sentence): the warning says so
    assert any("median" in w and "b" in w for w in demo_diff.warnings)


def test_rows_are_two_sided_and_more_in_names_the_side(demo_diff):
    table = demo_diff.table
    assert set(table["more_in"]) <= {"a", "b", ""}
    assert (table.filter(pl.col("more_in") == "b")["adj_diff_b_minus_a"] > 0).all()
    assert (table.filter(pl.col("more_in") == "a")["adj_diff_b_minus_a"] < 0).all()
    rows = demo_diff.rows(5, compact=True)
    # the 5 strongest more common in a, then the 5 in b, each in rank order, though b's
    # differences are the stronger ones (pets, science, questions)
    assert rows["more_in"].to_list() == ["a"] * 5 + ["b"] * 5
    for side in ("a", "b"):
        expected = table.filter(pl.col("more_in") == side)["latent"].head(5).to_list()
        assert rows.filter(pl.col("more_in") == side)["latent"].to_list() == expected
    assert rows.columns == ["more_in", "latent", "label", "freq_a", "freq_b", "diff_b_minus_a",
                            "adj_diff_b_minus_a", "adj_q", "merged"]
    assert demo_diff.rows(0).height == table.height


def test_examples_come_from_both_sides_with_the_peak_word(demo_diff):
    ex = demo_diff.examples
    first = demo_diff.table["latent"][0]
    rows = ex.filter(pl.col("latent") == first)
    assert set(rows["side"]) == {"a", "b"} and rows.height == 6
    for r in rows.iter_rows(named=True):
        assert r["at_word"] and r["at_word"] in r["text"].lower()


def test_reversing_the_sides_flips_the_sign(demo_store, demo_diff):
    back = diff(demo_store["db"], "b", "a")
    fwd = demo_diff.table.sort("latent")
    rev = back.table.sort("latent")
    assert fwd["latent"].to_list() == rev["latent"].to_list()
    np.testing.assert_allclose(rev["diff_b_minus_a"].to_numpy(), -fwd["diff_b_minus_a"].to_numpy())
    np.testing.assert_allclose(rev["adj_diff_b_minus_a"].to_numpy(), -fwd["adj_diff_b_minus_a"].to_numpy(), atol=1e-12)
    np.testing.assert_allclose(rev["p"].to_numpy(), fwd["p"].to_numpy())
    np.testing.assert_allclose(rev["adj_p"].to_numpy(), fwd["adj_p"].to_numpy())
    assert rev["n_a"].to_list() == fwd["n_b"].to_list()


def test_same_input_gives_a_byte_identical_table(demo_store, demo_diff):
    again = diff(demo_store["db"], "a", "b")
    assert DiffResult.display_table(again.table).write_csv() == DiffResult.display_table(demo_diff.table).write_csv()
    assert again.examples.write_csv() == demo_diff.examples.write_csv()


def test_by_column_warnings_name_the_rest_in_words(demo_store):
    # the demo's questions add a sentence: the length warning compares them with the rest
    result = diff(demo_store["db"], "b", by="is_question")
    lengths = [w for w in result.warnings if "document lengths differ" in w]
    assert lengths and all("in the rest" in w and "(rest)" not in w for w in lengths), lengths
    assert set(result.table["more_in"]) <= {"(rest)", "true", "false", ""}


def test_by_column_gives_one_vs_rest_rows_per_value(demo_store):
    result = diff(demo_store["db"], "a", by="topic")
    topics = sorted(t for t in set(make_corpus(160, seed=11, id_prefix="a")[i]["topic"] for i in range(160)))
    assert result.table["group"].unique().sort().to_list() == topics
    assert result.table.columns[0] == "group" and sum(result.n_docs.values()) == 160
    pets = result.table.filter(pl.col("group") == "pets").head(5)
    assert any(PETS.search(lab or "") for lab in pets["label"].to_list())
    assert (pets["diff_b_minus_a"] > 0).all()
    assert set(result.examples["side"].unique()) >= {"pets", "rest"}


# -- statistics -------------------------------------------------------------------------------


def test_two_proportion_test_is_the_chi_square_test():
    x_a, x_b, n_a, n_b = np.array([5, 30, 0]), np.array([15, 30, 0]), 50, 60
    p = two_proportion_test(x_a, n_a, x_b, n_b)
    for i in range(2):
        table = [[x_a[i], n_a - x_a[i]], [x_b[i], n_b - x_b[i]]]
        assert p[i] == pytest.approx(stats.chi2_contingency(table, correction=False)[1])
    assert p[2] == 1.0


def test_cmh_with_one_stratum_is_the_unstratified_test():
    x_a, x_b = np.array([[5], [30]]), np.array([[15], [31]])
    res = cmh_test(x_a, np.array([50]), x_b, np.array([60]))
    np.testing.assert_allclose(res.diff, x_b[:, 0] / 60 - x_a[:, 0] / 50)
    z2 = stats.chi2.isf(two_proportion_test(x_a[:, 0], 50, x_b[:, 0], 60), 1)
    np.testing.assert_allclose(stats.chi2.isf(res.p, 1), z2 * 109 / 110)  # CMH uses n - 1


def test_cmh_sees_through_a_length_confound():
    # Within each length stratum both sides have the same rate; B has more long documents.
    n_a, n_b = np.array([80, 20]), np.array([20, 80])
    x_a, x_b = np.array([[8, 10]]), np.array([[2, 40]])
    raw = two_proportion_test(x_a.sum(), n_a.sum(), x_b.sum(), n_b.sum())
    adj = cmh_test(x_a, n_a, x_b, n_b)
    assert raw < 1e-3
    assert adj.p[0] == pytest.approx(1.0) and adj.diff[0] == pytest.approx(0.0)


def test_mcnemar_exact_matches_the_binomial_test():
    p = mcnemar_exact(np.array([1, 3, 0]), np.array([7, 3, 0]))
    assert p[0] == pytest.approx(stats.binomtest(1, 8, 0.5).pvalue)
    assert p[0] == pytest.approx(18 / 256)
    assert p[1] == 1.0 and p[2] == 1.0


def test_length_edges_are_quantiles():
    assert length_edges(np.array([10, 20, 30, 40]), np.array([25, 25, 25, 25]), 4) == [20, 30, 40]
    assert length_edges(np.array([10]), np.array([100]), 5) == []
    assert length_edges(np.array([10, 11, 12]), np.array([50, 49, 1]), 2) == [11]


# -- hand-built stores ----------------------------------------------------------------------------


def test_paired_diff_uses_mcnemars_exact_test(tmp_path):
    a, b = [], []
    for i in range(12):
        lat_a = {1: 1.0} | ({0: 1.0} if i in (0, 1, 2) else {})
        lat_b = {1: 1.0, 2: 1.0} | ({0: 1.0} if i in (0, 1) or 3 <= i <= 9 else {})
        a.append({"latents": lat_a, "meta": {"prompt_id": f"p{i}"}})
        b.append({"latents": lat_b, "meta": {"prompt_id": f"p{i}"}})
    a.append({"latents": {0: 1.0}, "meta": {"prompt_id": "lonely"}})
    db = _build(tmp_path / "pairs.duckdb", {"a": a, "b": b})
    result = diff(db, "a", "b", paired_on="prompt_id")
    rows = {r["latent"]: r for r in result.table.iter_rows(named=True)}
    assert rows[0]["n_a_only"] == 1 and rows[0]["n_b_only"] == 7
    assert rows[0]["p"] == pytest.approx(18 / 256)  # 2 * P(Binomial(8, 1/2) <= 1)
    assert rows[2]["p"] == pytest.approx(2 / 2**12) and rows[2]["diff_b_minus_a"] == 1.0
    assert rows[1]["p"] == 1.0
    assert result.n_docs == {"a": 12, "b": 12} and "adj_q" not in result.table.columns
    assert any("1 of 13 documents of a have no partner" in w for w in result.warnings)
    with pytest.raises(ConfigError, match="nothing to pair"):
        diff(_build(tmp_path / "nopairs.duckdb", {"a": a[:6], "b": [d | {"meta": {"prompt_id": "x"}} for d in b[:6]]}),
             "a", "b", paired_on="prompt_id")
    with pytest.raises(NotFoundError, match="no metadata field 'nope'.*fields: prompt_id"):
        diff(db, "a", "b", paired_on="nope")


def test_length_difference_warns_and_length_control_removes_it(tmp_path):
    rng = np.random.default_rng(0)

    def docs(lo, hi, n=300):
        out = []
        for length in rng.integers(lo, hi, n):
            lat = {1: 1.0} if rng.random() < 0.3 else {}
            if rng.random() < (length - 5) / 60:  # presence grows with length only
                lat[0] = 1.0
            out.append({"latents": lat, "n_tokens": int(length)})
        return out

    db = _build(tmp_path / "len.duckdb", {"short": docs(10, 40), "long": docs(25, 55)})
    result = diff(db, "short", "long")
    row = result.table.filter(pl.col("latent") == 0).row(0, named=True)
    assert row["q"] < 1e-3  # the raw comparison is fooled by length
    assert row["adj_q"] > 0.05 and abs(row["adj_diff_b_minus_a"]) < abs(row["diff_b_minus_a"]) / 2
    (warning,) = [w for w in result.warnings if "lengths differ" in w]
    assert "median" in warning and "short" in warning and "long" in warning
    raw = diff(db, "short", "long", length_control=False)
    assert "adj_q" not in raw.table.columns and any("rerun with length control" in w for w in raw.warnings)


def test_sql_diff_recipe_matches_the_python_diff(demo_store):
    import duckdb

    con = duckdb.connect(demo_store["db"], read_only=True)  # a plain DuckDB session, as a user would
    try:
        sql = con.sql("SELECT * FROM diff('a', 'b')").pl()
    finally:
        con.close()
    table = diff(demo_store["db"], "a", "b", merge_duplicates=False, examples=0).table
    py = table.join(sql, on="latent", suffix="_sql")
    assert py.height == table.height == sql.height > 1000
    np.testing.assert_allclose(py["freq_b_sql"], py["freq_b"])
    np.testing.assert_allclose(py["diff_b_minus_a_sql"], py["diff_b_minus_a"])
    p_from_z = 2 * stats.norm.sf(np.abs(py["z"].fill_null(0).to_numpy()))
    np.testing.assert_allclose(p_from_z, py["p"].to_numpy(), rtol=1e-6)
    assert (sql["z"].abs().fill_null(0).to_numpy()[:-1] >= sql["z"].abs().fill_null(0).to_numpy()[1:]).all()


def test_length_floor_keeps_five_leading_bits_in_python_and_sql(tmp_path):
    n = np.arange(0, 5000)
    floors = length_floor(n)
    assert floors[:32].tolist() == list(range(32)) and length_floor(np.array([103, 4095])).tolist() == [100, 3968]
    assert np.all(np.diff(floors) >= 0) and np.all(length_floor(floors) == floors)
    assert len(np.unique(floors[64:128])) == 16  # 16 classes per doubling
    with saedata.open(_build(tmp_path / "floor.duckdb", {"x": [{"latents": {0: 1.0}}]})) as store:
        sql = store.sql("SELECT length_floor(range::INTEGER) AS f FROM range(5000) ORDER BY range")["f"]
    assert sql.to_list() == floors.tolist()


def test_counts_written_at_completion_give_the_same_diff_as_a_scan(tmp_path):
    rng = np.random.default_rng(3)

    def docs(p0, n=200):
        return [{"latents": {j: 1.0 for j in range(6) if rng.random() < p0 + 0.05 * j}
                 | ({7: -0.5} if rng.random() < 0.2 else {}),
                 "n_tokens": int(rng.integers(5, 300))} for _ in range(n)]

    db = _build(tmp_path / "counts.duckdb", {"a": docs(0.1), "b": docs(0.3)})
    with saedata.open(db) as store:
        assert store.has_latent_counts([1, 2], 1) and not store.has_latent_counts([1, 2], 2)
        counted = store.sql("SELECT * FROM counted_presence(1, [1, 2], edges := [16, 64]) ORDER BY ALL")
        scanned = store.sql("SELECT * FROM latent_presence(1, 0, [1, 2], edges := [16, 64]) ORDER BY ALL")
        assert counted.equals(scanned.select(counted.columns).cast(counted.schema))
        fast = diff(store, "a", "b")
    with Store(db, read_only=False) as store:
        store.con.execute("DELETE FROM latent_counts")  # a store embedded before the table existed
    with saedata.open(db) as store:
        assert not store.has_latent_counts([1, 2], 1)
        slow = diff(store, "a", "b")
    assert fast.table.equals(slow.table) and fast.table.height == 7
    assert fast.table.filter(pl.col("latent") == 7)["n_a"][0] > 0  # negative values count as active


def test_duplicate_latents_are_merged_into_one_row(tmp_path):
    def side(n_dup):
        return [{"latents": ({1: 2.0, 2: 2.0} if i < n_dup else {}) | ({3: 1.0} if i % 2 else {})}
                for i in range(60)]

    db = _build(tmp_path / "dup.duckdb", {"a": side(10), "b": side(40)},
                labels={1: "dog / puppy", 2: "cat / kitten", 3: "odd"})
    merged = diff(db, "a", "b")
    assert merged.table["latent"].to_list()[0] == 1
    assert 2 not in merged.table["latent"].to_list()
    assert merged.table.row(0, named=True)["merged"] == [2]
    separate = diff(db, "a", "b", merge_duplicates=False)
    assert {1, 2} <= set(separate.table["latent"].to_list())
    assert separate.table["merged"].list.len().sum() == 0


def test_report_is_one_offline_file(demo_diff, tmp_path):
    path = saedata.write_report(demo_diff, tmp_path / "diff.html")
    page = path.read_text()
    assert '<img alt="' in page and 'src="data:image/png;base64,' in page
    top_label = demo_diff.table["label"][0]
    assert top_label.replace("/", "").split()[0] in page
    assert not re.search(r"https?://", page)
    assert "<script" not in page and "<link" not in page
    assert "<mark>" in page and "Warnings" in page


# -- bad input ------------------------------------------------------------------------------------


def test_bad_input_is_a_clear_error(demo_store, tmp_path):
    db = demo_store["db"]
    with pytest.raises(NotFoundError, match=r"no dataset 'c'.*have: a, b"):
        diff(db, "a", "c")
    with pytest.raises(NotFoundError, match=r"no metadata field 'model' in a \(fields: is_question, n_words, "
                                            r"sentiment, topic\)"):
        diff(db, "a", by="model")
    with pytest.raises(ConfigError, match="both sides are dataset 'a'"):
        diff(db, "a", "a")
    with pytest.raises(ConfigError, match="give a second dataset"):
        diff(db, "a")
    with pytest.raises(ConfigError, match="no latent is active above threshold 1000"):
        diff(db, "a", "b", threshold=1000)
    small = _build(tmp_path / "small.duckdb", {"a": [{"latents": {0: 1.0}}] * 3, "b": [{"latents": {1: 1.0}}] * 8,
                                               "empty": []})
    with pytest.raises(ConfigError, match="dataset 'a' has 3 documents; a diff needs at least 5"):
        diff(small, "a", "b")
    with pytest.raises(ConfigError, match="dataset 'empty' has no documents"):
        diff(small, "b", "empty")
    few = diff(small, "a", "b", min_docs=3)
    assert any("only 3 documents in a" in w for w in few.warnings)


# -- CLI ------------------------------------------------------------------------------------------


@pytest.fixture
def two_files(tmp_path):
    a = write_jsonl(make_corpus(40, seed=1, id_prefix="a"), tmp_path / "a.jsonl")
    b = write_jsonl(make_corpus(40, seed=2, question_rate=0.8, id_prefix="b"), tmp_path / "b.jsonl")
    return str(a), str(b)


def test_cli_diff_two_files_embeds_then_diffs(two_files, tiny_bert, tmp_path):
    import torch

    from saedata.config import SAEConfig
    from saedata.sae import SparseAutoencoder, save_sae

    torch.manual_seed(0)
    save_sae(SparseAutoencoder(SAEConfig(d_in=32, d_sae=96, k=8)), tmp_path / "sae")
    db, report = str(tmp_path / "run.duckdb"), tmp_path / "diff.html"
    args = ["diff", *two_files, "--db", db, "--sae", str(tmp_path / "sae"), "--model", tiny_bert, "--device", "cpu",
            "--id-field", "id", "--top", "5", "--report", str(report), "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("a vs b (a: 40, b: 40 documents")
    # a random SAE: nothing differs, so no finding, and the nearest latents instead
    assert lines[1].startswith("no finding: no latent differs at q < 0.05")
    assert "more_in" in lines[3] and "adj_q" in lines[3] and len(lines) == 2 + 4 + 2 * 5  # 5 per side
    assert report.exists() and result.stderr == ""
    with saedata.open(db) as store:
        assert store.datasets()["name"].to_list() == ["a", "b"]
    again = CliRunner().invoke(main, args[:-3] + ["--format", "json"])  # already embedded: diff only
    assert again.exit_code == 0 and json.loads(again.stdout) == []  # no finding
    again = CliRunner().invoke(main, args[:-3] + ["--format", "json", "--by-latent"])
    assert again.exit_code == 0 and len(json.loads(again.stdout)) == 10


def test_cli_diff_reuses_a_file_stored_under_another_name(two_files, tiny_bert, tmp_path):
    import shutil

    import torch

    from saedata.config import SAEConfig
    from saedata.sae import SparseAutoencoder, save_sae

    torch.manual_seed(0)
    save_sae(SparseAutoencoder(SAEConfig(d_in=32, d_sae=96, k=8)), tmp_path / "sae")
    db = str(tmp_path / "run.duckdb")
    model = ["--model", tiny_bert, "--device", "cpu", "--id-field", "id"]
    first = CliRunner().invoke(main, ["embed", two_files[0], "--db", db, "--sae", str(tmp_path / "sae"),
                                      "--name", "earlier", *model, "-q"])
    assert first.exit_code == 0, first.stderr
    copy = tmp_path / "copy" / "a.jsonl"  # the same bytes elsewhere
    copy.parent.mkdir()
    shutil.copy(two_files[0], copy)
    result = CliRunner().invoke(main, ["diff", str(copy), two_files[1], "--db", db, *model, "--format", "json"])
    assert result.exit_code == 0, result.stderr
    assert "already in" in result.stderr and "'earlier'" in result.stderr
    with saedata.open(db) as store:
        assert store.datasets()["name"].to_list() == ["earlier", "b"]
    assert {r["more_in"] for r in json.loads(result.stdout)} <= {"earlier", "b"}
    # another text field is another corpus: embedded under its own name
    other = CliRunner().invoke(main, ["diff", str(copy), two_files[1], "--db", db, *model, "--text-field", "id",
                                      "-q", "--format", "json"])
    assert other.exit_code == 0, other.stderr
    with saedata.open(db) as store:
        assert store.datasets()["name"].to_list() == ["earlier", "b", "a"]


def test_cli_diff_trains_an_sae_on_both_files(two_files, tiny_bert, tmp_path):
    db = tmp_path / "run.duckdb"
    result = CliRunner().invoke(main, ["diff", *two_files, "--db", str(db), "--model", tiny_bert, "--device", "cpu",
                                       "--train-tokens", "3000", "--expansion", "2", "--k", "4", "--format", "csv"])
    assert result.exit_code == 0, result.stderr
    assert "training an SAE on" in result.stderr and "together" in result.stderr
    assert (tmp_path / "run.sae" / "cfg.json").exists()
    assert result.stdout.splitlines()[0].startswith("finding,more_in,description,lead,n_latents")


def test_cli_diff_datasets_and_by(demo_store):
    db = demo_store["db"]
    runner = CliRunner()
    js = runner.invoke(main, ["diff", "a", "b", "--db", db, "--top", "5", "--format", "json", "-q", "--by-latent"])
    assert js.exit_code == 0, js.stderr
    rows = json.loads(js.stdout)
    assert [r["more_in"] for r in rows] == ["a"] * 5 + ["b"] * 5 and rows[0]["merged"] is not None
    found = json.loads(runner.invoke(main, ["diff", "a", "b", "--db", db, "--top", "2", "--format", "json",
                                            "-q"]).stdout)
    assert [r["finding"] for r in found] == sorted(r["finding"] for r in found)
    assert {r["more_in"] for r in found} == {"a", "b"} and len(found) == 4
    assert all(r["lead"] in r["latents"] and r["description"] for r in found)
    by = runner.invoke(main, ["diff", "a", "--by", "sentiment", "--db", db, "--top", "0", "--format", "csv", "-q",
                              "--by-latent"])
    assert by.exit_code == 0, by.stderr
    groups = {line.split(",")[0] for line in by.stdout.splitlines()[1:]}
    assert groups == {"negative", "neutral", "positive"}
    # --top with --by: that many per group and side, every group shown
    per_group = runner.invoke(main, ["diff", "a", "--by", "sentiment", "--db", db, "--top", "2", "--format", "json",
                                     "-q", "--by-latent"])
    shown = [(r["group"], r["more_in"]) for r in json.loads(per_group.stdout)]
    order = list(dict.fromkeys(g for g, _ in shown))
    assert sorted(order) == ["negative", "neutral", "positive"]
    assert shown == [(g, side) for g in order for side in ("(rest)", "(rest)", g, g)]
    warned = runner.invoke(main, ["diff", "a", "b", "--db", db, "--top", "3"])
    assert warned.exit_code == 0 and "warning: document lengths differ" in warned.stderr


@pytest.mark.parametrize("args, message", [
    (["a", "c"], r"no dataset 'c' in .* \(have: a, b\)"),
    (["a", "--by", "model"], r"no metadata field 'model' in a \(fields: is_question, n_words, sentiment, topic\)"),
    (["a", "b", "--paired-on", "prompt"], r"no metadata field 'prompt' in a"),
    (["a", "b", "--min-docs-typo"], None),
    (["a.jsonl", "c.jsonl"], r"a.jsonl: no such file"),
])
def test_cli_diff_bad_input_is_one_line(demo_store, args, message):
    result = CliRunner().invoke(main, ["diff", *args, "--db", demo_store["db"]])
    if message is None:
        assert result.exit_code == 2  # usage error
        return
    assert result.exit_code == 1
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert re.search(message, result.stderr), result.stderr


def test_cli_diff_too_few_documents(tmp_path):
    db = _build(tmp_path / "small.duckdb", {"a": [{"latents": {0: 1.0}}] * 3, "b": [{"latents": {1: 1.0}}] * 8})
    result = CliRunner().invoke(main, ["diff", "a", "b", "--db", db])
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: dataset 'a' has 3 documents; a diff needs at least 5 per side"


def test_demo_store_is_left_unchanged(demo_store, tmp_path):
    copy = tmp_path / "copy.duckdb"
    shutil.copy(demo_store["db"], copy)
    diff(str(copy), "a", "b", examples=0)
    assert copy.read_bytes() == open(demo_store["db"], "rb").read()
