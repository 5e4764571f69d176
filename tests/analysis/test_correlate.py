"""Concept correlation: latent pairs (NPMI, phi, tests, q-values, examples) and latent-metadata association."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

import saedata
from saedata.analysis.correlate import correlate, correlate_metadata, independence_pvalues, npmi_from_counts
from saedata.cli import main
from saedata.demo import TOPICS
from saedata.errors import ConfigError, NotFoundError
from tests.helpers import copy_demo_store

PETS_WORDS = {w for part in TOPICS["pets"].values() for phrase in part for w in re.findall(r"[a-z]+", phrase)}
PETS_WORDS -= {"the", "my", "our", "a", "of", "its", "at", "to", "with", "next", "old", "box", "bowl", "toy"}


@pytest.fixture(scope="module")
def db(demo_store) -> str:
    return demo_store["db"]


@pytest.fixture(scope="module")
def pairs(db):
    return correlate(db, min_support=10, top=30)


@pytest.fixture(scope="module")
def with_empty(demo_store, tmp_path_factory) -> str:
    """A copy of the demo store with a complete but empty dataset "empty"."""
    path = copy_demo_store(demo_store, tmp_path_factory.mktemp("corr-empty"))
    with saedata.Store(path, read_only=False) as store:
        state = store.create_dataset("empty", "none.jsonl", 1, {})
        store.complete_dataset(state.dataset_id)
    return str(path)


def test_pairs_have_bounded_scores_and_consistent_qvalues(pairs):
    p = pairs.pairs
    assert p.height == 30 and p["rank"].to_list() == list(range(1, 31))
    assert p["npmi"].is_between(-1, 1).all() and p["phi"].is_between(-1, 1).all()
    assert (p["q"] >= p["p"] - 1e-15).all() and p["q"].is_between(0, 1).all()
    assert (p["n_ij"] >= 10).all() and (p["n_ij"] <= p[["n_i", "n_j"]].min_horizontal()).all()
    # significant pairs first, then NPMI descending within them
    sig = p["significant"].to_list()
    assert sig == sorted(sig, reverse=True)
    top = p.filter(pl.col("significant"))["npmi"].to_list()
    assert top == sorted(top, reverse=True)
    assert pairs.n_tested >= pairs.n_significant >= p["significant"].sum()
    assert pairs.n_docs == 320 and pairs.datasets == ("a", "b")
    # q-values over the whole family: the smaller the p, the smaller (or equal) the q
    by_p = p.sort("p")
    assert by_p["q"].to_list() == sorted(by_p["q"].to_list())


def test_examples_are_documents_where_both_latents_fire(pairs, db):
    ex = pairs.examples
    assert ex.height > 0 and ex.group_by("rank").len()["len"].max() <= 3
    with saedata.open(db) as store:
        for row in ex.head(6).iter_rows(named=True):
            active = set(store.sql("SELECT latent FROM activations WHERE doc_id = ? AND value > 0",
                                   [row["doc_id"]])["latent"].to_list())
            assert {row["latent_i"], row["latent_j"]} <= active
            assert row["word_i"] and row["word_i"] in row["text"].lower()


def test_planted_pets_latents_cooccur(db):
    """Latents that fire on the pets template words fire in the same (pets) documents."""
    r = correlate(db, label_pattern=r"\b(kitten|puppy|dog|cat)\b", min_support=5, top=10)
    best = r.pairs.row(0, named=True)
    assert best["npmi"] > 0.5 and best["significant"]
    for row in r.examples.filter(pl.col("rank") == 1).iter_rows(named=True):
        assert PETS_WORDS & set(re.findall(r"[a-z]+", row["text"].lower()))


def test_label_filter_restricts_both_sides(db):
    r = correlate(db, label_pattern="happy|hated", min_support=5, top=20)
    assert r.pairs.height > 0
    for col in ("label_i", "label_j"):
        assert r.pairs[col].str.contains("happy|hated").all()
    assert r.matrix.shape[0] == r.matrix_latents.height >= 2
    assert np.allclose(np.diag(r.matrix), 1) and np.allclose(r.matrix, r.matrix.T)


def test_sparse_counts_equal_the_sql_recipe(db):
    """The matrix product counts exactly what the cooccur macro's self-join counts."""
    from saedata.analysis.correlate import cooccurrence
    from saedata.analysis.scope import latent_matrix, resolve_scope

    with saedata.open(db) as store:
        scope = resolve_scope(store, None)
        lm = latent_matrix(store, scope)
        sql = store.macro("cooccur", scope.sae_id, scope.dataset_ids, min_support=10)
        n_sql = store.macro("supported_latents", scope.sae_id, scope.dataset_ids, min_support=10).height
    counts, n_latents = cooccurrence(lm.active(), 10)
    key = ["latent_i", "latent_j"]
    assert counts.height == sql.height > 1000 and n_latents == n_sql
    joined = counts.join(sql, on=key, suffix="_sql")
    assert joined.height == sql.height
    for c in ("n_ij", "n_i", "n_j", "n_docs"):
        assert (joined[c] == joined[f"{c}_sql"]).all(), c
    # restricted to some latents, and in blocks smaller than the latents
    import saedata.analysis.correlate as corr

    keep = sorted(set(sql["latent_i"].head(40).to_list()))
    old, corr.COOCCUR_BLOCK = corr.COOCCUR_BLOCK, 7
    try:
        small, _ = cooccurrence(lm.active(), 10, keep)
    finally:
        corr.COOCCUR_BLOCK = old
    want = sql.filter(pl.col("latent_i").is_in(keep) & pl.col("latent_j").is_in(keep))
    assert small.sort(key).select(key + ["n_ij"]).equals(want.sort(key).select(key + ["n_ij"]).cast(small.select(
        key + ["n_ij"]).schema))


def test_pairs_count_presence_by_default(db, pairs):
    from saedata.analysis.scope import latent_matrix, resolve_scope

    with saedata.open(db) as store:
        lm = latent_matrix(store, resolve_scope(store, None))
    present = np.asarray(lm.present().sum(0)).ravel()
    fires = np.asarray(lm.active().sum(0)).ravel()
    row = pairs.pairs.row(0, named=True)
    assert row["n_i"] == present[row["latent_i"]] and row["n_j"] == present[row["latent_j"]]
    assert (present <= fires).all() and present.sum() < fires.sum()
    anywhere = correlate(db, min_support=10, top=30, presence="any")
    first = anywhere.pairs.row(0, named=True)
    assert first["n_i"] == fires[first["latent_i"]]


def test_length_control_of_a_numeric_column():
    """A latent that only grows with length correlates with a column that tracks length,
    but not once length is held fixed; one that goes with the column itself still does."""
    from scipy import sparse

    from saedata.analysis.correlate import _length_adjusted

    rng = np.random.default_rng(0)
    n = 2000
    lengths = rng.integers(10, 400, n).astype(float)
    own = rng.normal(size=n)
    y = np.log(lengths) + own  # tracks length, and has a part of its own
    by_length = (rng.random(n) < lengths / 400).astype(float)
    by_column = (own > 0.5).astype(float)
    X = sparse.csc_matrix(np.column_stack([by_length, by_column]))
    from saedata.analysis.stats import spearman_columns

    rho = spearman_columns(X, y)
    adjusted, warnings = _length_adjusted(X, y, lengths, rho, "score")
    assert rho[0] > 0.3 and abs(adjusted["rho_adj"][0]) < 0.05 and adjusted["q_adj"][0] > 0.05
    assert adjusted["rho_adj"][1] > 0.3 and adjusted["q_adj"][1] < 1e-10
    assert any("tracks document length" in w for w in warnings)
    none, said = _length_adjusted(X, lengths * 2, lengths, rho, "n_chars")
    assert none is None and "document length in other words" in said[0]


def test_length_control_of_a_categorical_column():
    """Class "long" has long documents: a latent that only grows with length is more
    common there by plain q, not by q_adj; one that goes with the class itself is both."""
    import polars as pl
    from scipy import sparse

    from saedata.analysis.correlate import _categorical

    rng = np.random.default_rng(0)
    n = 2000
    classes = np.where(rng.random(n) < 0.5, "long", "short")
    lengths = np.where(classes == "long", rng.integers(100, 400, n), rng.integers(10, 300, n))
    by_length = rng.random(n) < lengths / 400
    by_class = rng.random(n) < np.where(classes == "long", 0.4, 0.1)
    A = sparse.csr_matrix(np.column_stack([by_length, by_class]).astype(np.float32))
    base = pl.DataFrame({"latent": [0, 1], "label": ["length", "class"], "n_docs": [0, 0], "freq": [0.0, 0.0]},
                        schema={"latent": pl.Int32, "label": pl.String, "n_docs": pl.Int64, "freq": pl.Float64})

    class Scope:
        def describe(self):
            return "test"

    plain = _categorical(A, classes, base, "kind", Scope(), 5, 5, 0.05)[1]
    assert set(plain.filter(pl.col("class") == "long")["latent"]) == {0, 1}
    _, adjusted, _, warnings = _categorical(A, classes, base, "kind", Scope(), 5, 5, 0.05, lengths)
    assert adjusted.filter(pl.col("class") == "long")["latent"].to_list() == [1]
    assert adjusted.columns[-1] == "q_adj" and adjusted["q_adj"].max() < 0.05
    assert any("document lengths differ between the values of 'kind'" in w for w in warnings)


def test_npmi_and_pvalues_match_their_definitions():
    from scipy.stats import chi2_contingency, fisher_exact

    # always together -> 1; never together -> -1; independent -> 0
    assert npmi_from_counts(np.array([10]), np.array([10]), np.array([10]), 100)[0] == pytest.approx(1.0)
    assert npmi_from_counts(np.array([0]), np.array([10]), np.array([10]), 100)[0] == -1.0
    assert npmi_from_counts(np.array([25]), np.array([50]), np.array([50]), 100)[0] == pytest.approx(0.0)
    tables = [(3, 5, 6, 40), (1, 20, 20, 100), (30, 50, 60, 200), (5, 60, 70, 200)]
    for a, n1, n2, n in tables:
        got = independence_pvalues(np.array([a]), np.array([n1]), np.array([n2]), np.array([n]))[0]
        t = np.array([[a, n1 - a], [n2 - a, n - n1 - n2 + a]])
        if (np.outer(t.sum(1), t.sum(0)) / n).min() >= 5:
            want = chi2_contingency(t, correction=False)[1]
        else:
            side = "greater" if a >= n1 * n2 / n else "less"
            want = min(1.0, 2 * fisher_exact(t, alternative=side)[1])
        assert got == pytest.approx(want, rel=1e-9)


def test_metadata_topic_finds_pets_latents(db):
    r = correlate_metadata(db, None, "topic")
    assert r.kind == "categorical" and r.n_docs == 320 and r.n_missing == 0
    assert set(r.classes["class"].unique()) == set(TOPICS)
    pets = r.classes.filter(pl.col("class") == "pets").sort("rank")
    assert pets.height > 0
    assert PETS_WORDS & set(re.findall(r"[a-z]+", pets["label"][0])), pets["label"][0]
    assert (pets["freq_in"] > pets["freq_out"]).all() and (pets["q"] <= 0.05).all()
    assert r.latents["q"].is_between(0, 1).all() and r.latents["cramers_v"].is_between(0, 1).all()
    assert r.frequencies["freq"].is_between(0, 1).all()


def test_metadata_numeric_gives_spearman_rows(db):
    r = correlate_metadata(db, "a", "n_words", label_pattern="happy|hated|dog")
    assert r.kind == "numeric" and r.classes.height == 0 and r.latents.height > 0
    assert {"rho", "p", "q"} <= set(r.latents.columns)
    assert r.latents["rho"].is_between(-1, 1).all() and r.latents["label"].str.contains("happy|hated|dog").all()
    # a boolean column is categorical
    assert correlate_metadata(db, "a", "is_question").kind == "categorical"


def test_reports_are_offline_html(pairs, db, tmp_path):
    html = saedata.write_report(pairs, tmp_path / "corr.html").read_text()
    assert "<mark>" in html and "data:image/png;base64," in html and "NPMI" in html
    assert not re.search(r"(src|href)=[\"']?https?://", html)
    meta = correlate_metadata(db, None, "sentiment")
    html = saedata.write_report(meta, tmp_path / "meta.html").read_text()
    assert "data:image/png;base64," in html and "positive" in html
    assert not re.search(r"(src|href)=[\"']?https?://", html)


def test_bad_input_is_a_one_line_error(db, with_empty):
    with pytest.raises(NotFoundError, match=r"no dataset 'nope' .*\(have: a, b\)"):
        correlate(db, "nope")
    with pytest.raises(NotFoundError, match=r"no metadata field 'colour' in a .*topic"):
        correlate_metadata(db, "a", "colour")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        correlate(db, label_pattern="(")
    with pytest.raises(NotFoundError, match="no latent label matches --label 'zzzz'"):
        correlate(db, label_pattern="zzzz")
    with pytest.raises(ConfigError, match=r"too few documents .* 160 in a, --min-support is 500"):
        correlate(db, "a", min_support=500)
    with pytest.raises(ConfigError, match="dataset 'empty' has no documents"):
        correlate(with_empty, "empty")
    with pytest.raises(ConfigError, match="dataset 'empty' has no documents"):
        correlate_metadata(with_empty, "empty", "topic")
    with pytest.raises(ConfigError, match="not numeric"):
        correlate_metadata(db, "a", "topic", kind="numeric")


def test_no_pair_at_high_support_is_a_warning_not_an_empty_table(db):
    r = correlate(db, "a", label_pattern="happy", min_support=150)
    assert r.pairs.height == 0 and r.warnings and "lower --min-support" in r.warnings[0]


def test_cli_correlate(db, tmp_path):
    runner = CliRunner()
    out = runner.invoke(main, ["correlate", "--db", db, "--min-support", "10", "--top", "5",
                               "--report", str(tmp_path / "c.html")])
    assert out.exit_code == 0, out.stderr
    assert "npmi" in out.stdout and "label_i" in out.stdout
    assert "significant" in out.stderr and (tmp_path / "c.html").exists()
    meta = runner.invoke(main, ["correlate", "--db", db, "--with", "topic", "--top", "2", "--format", "csv"])
    assert meta.exit_code == 0, meta.stderr
    rows = pl.read_csv(meta.stdout.encode())
    assert rows.height == 16 and set(rows["class"]) == set(TOPICS)


@pytest.mark.parametrize("args, message", [
    (["--dataset", "nope"], "no dataset 'nope'"),
    (["--with", "colour"], "no metadata field 'colour'"),
    (["--label", "("], "not a valid regular expression"),
    (["--latents", "1,x"], "expected comma-separated integers"),
])
def test_cli_correlate_errors_are_one_line(db, args, message):
    out = CliRunner().invoke(main, ["correlate", "--db", db, *args])
    assert out.exit_code in (1, 2) and out.stdout == ""
    assert message in out.stderr and "Traceback" not in out.stderr
    if out.exit_code == 1:
        assert len(out.stderr.strip().splitlines()) == 1


def test_partial_benjamini_hochberg_equals_the_full_one():
    """BHSelection sorts only the p-values <= alpha, yet gives bh_qvalues' discoveries and q-values,
    ties and NaN included."""
    from saedata.analysis.stats import BHSelection, bh_qvalues

    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=20_000), rng.uniform(0, 1e-4, size=500), np.full(40, 1e-3), [np.nan] * 3])
    rng.shuffle(p)
    full = bh_qvalues(p)
    for alpha in (0.05, 0.01, 1e-9):
        bh = BHSelection(p, alpha)
        assert (bh.significant() == (full <= alpha)).all()
        sig = np.flatnonzero(full <= alpha)
        rows = np.concatenate([sig[:50], np.flatnonzero(~(full <= alpha))[:5]])  # discoveries, then not
        assert np.allclose(bh.q(sig[:50]), full[sig[:50]], rtol=1e-12, equal_nan=True)
        assert np.allclose(bh.q(rows), full[rows], rtol=1e-12, equal_nan=True)
    assert BHSelection(p, 0.05).significant().sum() > 500
    assert BHSelection(p, 1e-9).significant().sum() == 0
