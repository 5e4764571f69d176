"""Length-robust presence (saedata/analysis/presence.py): the rule, its SQL twin, what it
changes in a diff, and stores from before token counts."""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest
from scipy import sparse

from saedata.analysis.diff import diff
from saedata.analysis.presence import is_present, scope_rates, tfidf
from saedata.errors import ConfigError
from saedata.store import Store, length_floor
from tests.analysis.test_diff import _build


def test_present_means_more_tokens_than_the_rate_predicts():
    rates = np.array([0.001, 0.05, 0.5])
    # latent 0 is rare: present wherever it fires; latent 1 fires on 5% of tokens: once
    # in a 10-token document is more than its share (0.5), once in 100 tokens is not
    tokens = np.array([1, 1, 1, 6, 5, 1])
    n = np.array([500, 10, 100, 100, 10, 1])
    latents = np.array([0, 1, 1, 1, 2, 2])
    assert is_present(tokens, n, latents, rates).tolist() == [True, True, False, True, False, True]
    # the length class rounds long documents down: 103 tokens count as 100
    assert is_present(np.array([5]), np.array([103]), np.array([1]), rates).tolist() == [False]
    assert length_floor(np.array([103])).tolist() == [100]
    # a row from before token counts (-1) is kept: the caller warns instead
    assert is_present(np.array([-1]), np.array([100]), np.array([1]), rates).tolist() == [True]


def test_tfidf_weights_repeated_and_rare_concepts_at_unit_length():
    tokens = sparse.csr_matrix(np.array([[1, 4, 0], [1, 0, 0], [1, 0, 2], [1, 0, 0]], dtype=np.float32))
    W = tfidf(tokens).toarray()
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), [1, 0, 1, 0], atol=1e-12)  # a concept in every doc: idf 0
    assert W[0, 0] == 0 and W[0, 1] == 1.0 and W[2, 2] == 1.0


@pytest.fixture()
def trap(tmp_path):
    """Latent 0 fires once in nearly every document on both sides (a common latent, say a
    determiner); in B's documents, which are twice as long, it also fires a little more often
    by chance. Latent 1 is B's theme: it fires on many tokens of 40% of B's documents,
    and once, incidentally, in 40% of A's."""
    rng = np.random.default_rng(0)
    a = [{"latents": {0: 1.0, **({1: 0.5} if rng.random() < 0.4 else {})}, "n_tokens": 40} for _ in range(200)]
    b = []
    for _ in range(200):
        theme = rng.random() < 0.4
        d = {"latents": {0: 1.0, 1: 2.0} if theme else {0: 1.0}, "n_tokens": 80,
             "tokens": {0: 2, 1: 12} if theme else {0: 2}}
        b.append(d)
    return _build(tmp_path / "trap.duckdb", {"a": a, "b": b})


def test_excess_presence_finds_the_theme_that_fires_anywhere_hides(trap):
    rows = {r["latent"]: r for r in diff(trap, "a", "b", presence="excess", length_control=False).table.iter_rows(
        named=True)}
    # the theme: fires on 12 of 80 tokens in B (more than its share), once in 40 in A (less)
    assert rows[1]["freq_a"] == 0 and rows[1]["freq_b"] == pytest.approx(0.4, abs=0.08) and rows[1]["q"] < 1e-10
    anywhere = {r["latent"]: r for r in diff(trap, "a", "b", presence="any", length_control=False).table.iter_rows(
        named=True)}
    assert anywhere[1]["q"] > 0.05  # 40% of documents on both sides: no difference when firing anywhere counts
    assert diff(trap, "a", "b").presence == "excess" and "present beyond chance" in diff(trap, "a", "b").summary()


def test_python_presence_equals_the_sql_recipe(demo_store):
    with Store(demo_store["db"], read_only=True) as store:
        ids = [store.dataset_state(n).dataset_id for n in ("a", "b")]
        sae = store.dataset_state("a").sae_id
        rates = scope_rates(store, sae, ids, store.sae_info(sae)["d_sae"])
        sql = store.macro("present_in", sae, ids)
    assert sql.height > 10_000 and 0.2 < sql["present"].mean() < 0.99
    py = is_present(sql["tokens"].to_numpy(), sql["n_tokens"].to_numpy(), sql["latent"].to_numpy(), rates)
    assert (py == sql["present"].to_numpy()).all()
    con = duckdb.connect(demo_store["db"], read_only=True)  # the stored macros, from plain DuckDB
    try:
        n_sql = con.execute("SELECT count(*) FILTER (WHERE present) FROM present_in(1, [1, 2])").fetchone()[0]
    finally:
        con.close()
    assert n_sql == int(py.sum())


def test_a_store_without_token_counts_falls_back_with_a_warning(tmp_path, trap):
    with Store(trap, read_only=False) as store:
        store.con.execute("UPDATE activations SET tokens = NULL")
        store.con.execute("UPDATE latent_counts SET tokens = NULL")
    result = diff(trap, "a", "b", length_control=False)
    assert result.presence == "any"
    assert any("re-embed" in w and "--replace" in w for w in result.warnings)
    with pytest.raises(ConfigError, match="presence must be one of"):
        diff(trap, "a", "b", presence="most")


def test_a_version_1_store_gains_token_columns_when_opened_for_writing(tmp_path):
    path = tmp_path / "v1.duckdb"
    with Store(path, read_only=False) as store:
        store.con.execute("ALTER TABLE activations DROP COLUMN tokens")
        store.con.execute("ALTER TABLE latent_counts DROP COLUMN tokens")
        store.con.execute("UPDATE saedata_meta SET value = '1' WHERE key = 'schema_version'")
    with Store(path, read_only=True) as store:  # read as it is
        assert not store.has_column("activations", "tokens")
        assert store.activations_of(1, [1]).columns == ["doc_id", "latent", "value", "tokens"]
    with Store(path, read_only=False) as store:
        assert store.has_column("activations", "tokens") and store.has_column("latent_counts", "tokens")
        assert store.one("SELECT value FROM saedata_meta WHERE key = 'schema_version'")[0] == "2"
    assert pl.Series([1]).len() == 1


def test_results_that_track_length_are_called_out():
    from saedata.analysis.presence import length_explained, length_tracking_warning

    rng = np.random.default_rng(0)
    n = rng.integers(5, 500, 1000)
    by_length = (n > 100).astype(int) + (n > 300).astype(int)
    assert length_explained(by_length, n) > 0.6
    assert length_explained(rng.integers(0, 3, 1000), n) < 0.02
    assert length_explained(np.full(1000, -1), n) == 0.0  # all noise
    long_docs = (n > 250).astype(float)
    said = length_tracking_warning("target 'long'", long_docs, n, binary=True)
    assert said and "length alone predicts it with AUROC 1.00" in said
    assert length_tracking_warning("target 'coin'", rng.integers(0, 2, 1000).astype(float), n, binary=True) is None
    assert "Spearman" in length_tracking_warning("target 'words'", n * 0.7 + rng.normal(size=1000), n, binary=False)


def test_associate_warns_when_the_target_is_length(demo_store):
    from saedata.analysis.associate import associate

    result = associate(demo_store["db"], "a", "n_words")
    assert any("tracks document length" in w for w in result.warnings)
    # the demo's questions add a sentence to a document: true, and said
    questions = associate(demo_store["db"], "a", "is_question")
    assert any("length alone predicts it with AUROC" in w for w in questions.warnings), questions.warnings
    pets = associate(demo_store["db"], "a", "topic=pets")  # length alone: AUROC 0.75, under the bar
    assert not any("tracks document length" in w for w in pets.warnings), pets.warnings
