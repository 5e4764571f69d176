"""Property retrieval: queries find documents with the property, scores come from the store alone."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

import saedata
from saedata.analysis.retrieve import index_pays_off, map_query
from saedata.analysis.scope import latent_matrix, resolve_scope
from saedata.cli import main
from saedata.embed.models import StoreModels
from saedata.errors import ConfigError, NotFoundError
from saedata.store import Store


@pytest.fixture
def store_copy(demo_store, tmp_path) -> str:
    """A writable copy of the demo store."""
    path = tmp_path / "copy.duckdb"
    shutil.copy(demo_store["db"], path)
    return str(path)


def test_a_question_query_finds_questions(demo_store):
    r = saedata.search(demo_store["db"], "Why did the dog do that?", top=20, eval_field="is_question")
    assert r.docs.height == 20
    assert r.eval_value == "true"
    # about half of the 320 documents are questions; the top 20 almost all are (1.0 measured)
    assert 0.4 < r.base_rate < 0.6
    assert r.precision >= 0.8


def test_a_pets_query_ranks_pets_documents_first(demo_store):
    r = saedata.search(demo_store["db"], "my dog played with the ball", top=20, eval_field="topic", eval_value="pets")
    assert r.base_rate < 0.3  # pets are 1/8 of "a" and 1/3 of "b"
    assert r.precision >= 0.8  # 1.0 measured; a random ranking gets ~0.23
    assert r.docs["rank"].to_list() == list(range(1, 21))
    assert r.docs["score"].is_sorted(descending=True)
    # the evidence names the latents and the words where they peaked
    assert r.docs["matched"].str.contains(r"^\d+ .*\[").all()
    assert set(r.matches["doc_id"].to_list()) == set(r.docs["doc_id"].to_list())


def test_query_maps_to_its_own_latents_and_to_matching_labels(demo_store):
    with saedata.open(demo_store["db"]) as store:
        q = map_query(store, "my dog played with the ball", 1, models=StoreModels(store), query_latents=8)
    sources = set(q["source"].to_list())
    assert sources <= {"query", "label", "query+label"}
    assert (q["source"] != "label").sum() == 8  # the query's own latents, kept to query_latents
    labelled = q.filter(pl.col("source").str.contains("label"))
    assert labelled.height > 0
    assert labelled["label"].str.contains(r"(?i)\b(dog|played|ball)").all()
    assert q["weight"].is_sorted(descending=True) and (q["weight"] > 0).all()


def test_weak_label_latents_are_left_out_unless_the_query_says_them(demo_store):
    from saedata.analysis.words import weak_label, words

    with saedata.open(demo_store["db"]) as store:
        models = StoreModels(store)
        topic = map_query(store, "food and cooking", 1, models=models)
        everything = map_query(store, "food and cooking", 1, models=models, include_weak=True)
        question = map_query(store, "Why did the dog do that?", 1, models=models)
    weak = [lab for lab in everything["label"].to_list() if weak_label(lab)]
    assert weak, "the query activates weak-label latents (punctuation, function words)"
    assert not any(weak_label(lab) for lab in topic.filter(pl.col("source") == "query")["label"].to_list())
    # a weak label is kept when the query itself says it: "?", "do", "that"
    kept = [lab for lab in question["label"].to_list() if weak_label(lab)]
    said = set(words("Why did the dog do that?"))
    assert kept and all(said & set(words(lab or "")) for lab in kept), kept


def test_queries_are_encoded_exactly_like_documents(demo_store):
    with saedata.open(demo_store["db"]) as store:
        docs = store.documents("a", limit=3)
        models = StoreModels(store)
        for doc_id, text in zip(docs["doc_id"].to_list(), docs["text"].to_list()):
            latent, value = models.query_codes(1, text)
            stored = store.sql("SELECT latent, value FROM activations WHERE doc_id = ? ORDER BY latent", [doc_id])
            assert sorted(latent.tolist()) == stored["latent"].to_list()
            order = np.argsort(latent)
            np.testing.assert_allclose(value[order], stored["value"].to_numpy(), rtol=1e-3)


def test_scores_equal_a_direct_numpy_computation(demo_store):
    db = demo_store["db"]
    r = saedata.search(db, "It was terrible.", top=30)
    with saedata.open(db) as store:
        m = latent_matrix(store, resolve_scope(store, None))
        max_act = store.latents()["max_act"].to_numpy().astype(np.float64)
        n_tokens = store.sql("SELECT n_tokens FROM documents ORDER BY doc_id")["n_tokens"].to_numpy()
    lat = r.query_latents["latent"].to_numpy()
    w = r.query_latents["weight"].to_numpy() / max_act[lat]
    # sum of weight x value / max_act over the document's latents, over ln(1 + n_tokens)
    scores = (m.X[:, lat].toarray().astype(np.float64) @ w) / np.log1p(np.maximum(n_tokens, 1))
    order = np.lexsort((m.doc_ids, -scores))[:30]
    assert r.docs["doc_id"].to_list() == m.doc_ids[order].tolist()
    np.testing.assert_allclose(r.docs["score"].to_numpy(), scores[order], rtol=1e-6)


def test_explicit_latents_replace_the_query(demo_store):
    db = demo_store["db"]
    with saedata.open(db) as store:
        top2 = store.sql("SELECT latent FROM latents WHERE freq > 0 ORDER BY freq LIMIT 2")["latent"].to_list()
    r = saedata.search(db, "ignored when latents are given", latents=top2, top=10)
    assert r.query_latents["source"].to_list() == ["explicit", "explicit"]
    assert r.query_latents["weight"].to_list() == [1.0, 1.0]
    assert set(r.matches["latent"].to_list()) <= set(top2)
    assert 0 < r.docs.height <= 10
    assert r.precision is None and r.base_rate is None


def test_dataset_restricts_the_search(demo_store):
    r = saedata.search(demo_store["db"], "Why did the dog do that?", dataset="a", top=15, eval_field="is_question")
    assert set(r.docs["dataset"].to_list()) == {"a"}
    assert r.base_rate < 0.4  # a quarter of "a" are questions
    assert r.precision >= r.base_rate + 0.4  # 0.80 measured vs 0.21


def test_latent_index_gives_identical_results_and_is_dropped_when_stale(demo_store, store_copy):
    plain = saedata.search(store_copy, "my dog played with the ball", top=25)
    assert not plain.used_index
    with Store(store_copy, read_only=False) as store:
        assert store.build_latent_index() == store.one("SELECT count(*) FROM activations")[0]
        assert store.has_latent_index()
    indexed = saedata.search(store_copy, "my dog played with the ball", top=25, use_index=True)
    assert indexed.used_index
    assert indexed.docs.equals(plain.docs)
    assert indexed.matches.equals(plain.matches)
    # one more activation (as after embedding more documents) makes the index stale
    with Store(store_copy, read_only=False) as store:
        store.con.execute("INSERT INTO activations VALUES (0, 1, 0, 0.5, 0, 1)")
        assert not store.has_latent_index()
    assert not saedata.search(store_copy, "my dog played with the ball", top=25).used_index
    with pytest.raises(NotFoundError, match="saedata index"):
        saedata.search(store_copy, "dog", use_index=True)


def test_the_index_is_used_only_on_stores_large_enough_to_gain(store_copy):
    with Store(store_copy, read_only=False) as store:
        store.build_latent_index()
        # 320 documents fill one row group: a scan is as cheap as it gets
        assert not index_pays_off(store, 1, [5, 6])
        assert not saedata.search(store, latents=[5, 6], top=5).used_index
        assert saedata.search(store, latents=[5, 6], top=5, use_index=True).used_index


def test_api_errors(demo_store):
    db = demo_store["db"]
    with pytest.raises(ConfigError, match="query"):
        saedata.search(db, "  ")
    with pytest.raises(ConfigError, match="top"):
        saedata.search(db, "dog", top=0)
    with pytest.raises(NotFoundError, match=r"0\.\.3071"):
        saedata.search(db, latents=[5, 99999])
    with pytest.raises(NotFoundError, match="fields: is_question, n_words, sentiment, topic"):
        saedata.search(db, "dog", eval_field="colour")
    with pytest.raises(ConfigError, match="not boolean.*pets"):
        saedata.search(db, "dog", eval_field="topic")
    with pytest.raises(NotFoundError, match="no dataset 'c'"):
        saedata.search(db, "dog", dataset="c")


# -- CLI ------------------------------------------------------------------------------------


def test_cli_search_prints_documents_latents_and_precision(demo_store):
    runner = CliRunner()
    result = runner.invoke(main, ["search", "Why did the dog do that?", "--db", demo_store["db"], "--top", "10",
                                  "--eval-field", "is_question", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["rank"] for r in rows] == list(range(1, 11))
    assert {"doc_id", "dataset", "ext_id", "score", "matched", "text"} <= set(rows[0])
    assert "latents (full scan), heaviest first:" in result.stderr
    assert "query" in result.stderr
    assert "precision@10: " in result.stderr and "base rate" in result.stderr


def test_cli_search_quiet_table_and_explicit_latents(demo_store):
    runner = CliRunner()
    result = runner.invoke(main, ["search", "--latents", "5,6", "--db", demo_store["db"], "--top", "3", "-q"])
    assert result.exit_code == 0, result.stderr
    assert "rank" in result.stdout and "matched" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["search"], 2, "give a QUERY or --latents"),
        (["search", "--latents", "1,x"], 2, "comma-separated integers"),
        (["search", "--latents", "99999"], 1, "latent ids are 0..3071"),
        (["search", "dog", "--eval-field", "colour"], 1, "fields: is_question, n_words, sentiment, topic"),
        (["search", "dog", "--eval-field", "topic"], 1, "pass --eval-value"),
    ],
)
def test_cli_search_errors(demo_store, args, code, message):
    result = CliRunner().invoke(main, [*args, "--db", demo_store["db"]])
    assert result.exit_code == code
    assert message in result.stderr
    if code == 1:
        assert len(result.stderr.strip().splitlines()) == 1


def test_cli_index_builds_the_by_latent_copy(store_copy):
    runner = CliRunner()
    before = runner.invoke(main, ["search", "my dog played with the ball", "--db", store_copy, "--top", "5",
                                  "--format", "csv", "-q"])
    built = runner.invoke(main, ["index", "--db", store_copy])
    assert built.exit_code == 0, built.stderr
    assert "indexed" in built.stderr and "by latent" in built.stderr
    with saedata.open(store_copy) as store:
        assert store.has_latent_index()
    after = runner.invoke(main, ["search", "my dog played with the ball", "--db", store_copy, "--top", "5",
                                 "--format", "csv", "-q"])
    assert after.exit_code == 0, after.stderr
    assert after.stdout == before.stdout


def test_a_store_without_the_search_macros_still_searches(store_copy):
    """saedata defines its macros on every connection: one dropped from the file is not missed."""
    import duckdb

    expected = saedata.search(store_copy, latents=[5], top=3).docs
    con = duckdb.connect(store_copy)
    con.execute("DROP MACRO TABLE score_docs")
    con.close()
    assert saedata.search(store_copy, latents=[5], top=3).docs.equals(expected)
