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
            latent, value, tokens, n_tokens = models.query_codes(1, text)
            stored = store.sql("SELECT latent, value, tokens FROM activations WHERE doc_id = ? ORDER BY latent",
                               [doc_id])
            assert sorted(latent.tolist()) == stored["latent"].to_list()
            order = np.argsort(latent)
            np.testing.assert_allclose(value[order], stored["value"].to_numpy(), rtol=1e-3)
            assert tokens[order].tolist() == stored["tokens"].to_list()
            assert n_tokens == store.one("SELECT n_tokens FROM documents WHERE doc_id = ?", [doc_id])[0]


def _numpy_vectors(m, idf, W, b):
    """Documents' two unit vectors, computed here from the definitions in retrieve's docstring."""
    T = m.tokens.toarray()
    over = np.log1p(T) * idf
    over /= np.maximum(np.linalg.norm(over, axis=1, keepdims=True), 1e-12)
    means = m.X.toarray().astype(np.float64) * T / np.maximum(m.n_tokens, 1)[:, None]
    dec = means @ W + b
    return over, dec / np.linalg.norm(dec, axis=1, keepdims=True)


def _vector(frame: pl.DataFrame, n: int) -> np.ndarray:
    v = np.zeros(n)
    v[frame["latent"].to_numpy()] = frame["weight"].to_numpy()
    return v


def test_query_scores_equal_a_direct_numpy_computation(demo_store, monkeypatch):
    from saedata.analysis import retrieve
    from saedata.analysis.words import weak_label, words

    db = demo_store["db"]
    query = "It was terrible."
    once = saedata.search(db, query, top=30, feedback=0)
    assert once.feedback == 0 and once.feedback_note.startswith("no feedback (--feedback 0")
    # the demo's 320 documents are too few for feedback by default (1 per 100, at least 5)
    assert saedata.search(db, query, top=30).feedback_note.startswith("no feedback: 320 documents are too few")
    monkeypatch.setattr(retrieve, "FEEDBACK_SCOPE", 10)
    r = saedata.search(db, query, top=30, feedback=20)
    assert r.feedback == 20 and r.feedback_note.startswith("feedback from the best 20 documents")
    with saedata.open(db) as store:
        m = latent_matrix(store, resolve_scope(store, None))
        lat = store.latents()
        models = StoreModels(store)
        latent, value, tokens, n_tokens = models.query_codes(1, query)
        sae = models.sae(1)
        W, b = sae.W_dec.detach().double().numpy(), sae.b_dec.detach().double().numpy()
    freq = lat["freq"].to_numpy().astype(np.float64)
    idf = np.where(freq > 0, -np.log(np.where(freq > 0, freq, 1.0)), 0.0)
    over, dec = _numpy_vectors(m, idf, W, b)
    q_mean = np.zeros(len(idf))
    q_mean[latent] = value * tokens / n_tokens
    q_dec = q_mean @ W + b
    q_dec /= np.linalg.norm(q_dec)

    def z(x):
        return (x - x.mean()) / x.std()

    def ranked(scores):
        return np.lexsort((m.doc_ids, -scores))

    assert set(once.query_latents["source"].to_list()) <= {"query", "label", "query+label"}
    q_over = _vector(once.query_latents, len(idf))
    first = z(over @ q_over) + z(dec @ q_dec)
    order = ranked(first)[:30]
    assert once.docs["doc_id"].to_list() == m.doc_ids[order].tolist()
    np.testing.assert_allclose(once.docs["score"].to_numpy(), first[order], rtol=1e-4, atol=1e-4)

    # feedback: the 20 best documents' centroid over the latents at least half of them
    # have (weak labels the query does not say left out) is added to the query vector
    # over latents, their decoded centroid to the decoded one, and all are scored again
    best = ranked(first)[:20]
    centroid = over[best].mean(axis=0)
    said = set(words(query))
    weak = [weak_label(lab, src) and not (said & set(words(lab or "")))
            for lab, src in zip(lat["label"].to_list(), lat["label_source"].to_list())]
    centroid[np.flatnonzero(weak)] = 0.0
    centroid[(over[best] > 0).mean(axis=0) < 0.5] = 0.0
    q_over = q_over + centroid / np.linalg.norm(centroid)
    np.testing.assert_allclose(_vector(r.query_latents, len(idf)), q_over, rtol=1e-5, atol=1e-8)
    assert "feedback" in r.query_latents["source"].to_list()
    centroid = dec[best].mean(axis=0)
    q_dec = q_dec + centroid / np.linalg.norm(centroid)
    second = z(over @ q_over) + z(dec @ q_dec)
    order = ranked(second)[:30]
    assert r.docs["doc_id"].to_list() == m.doc_ids[order].tolist()
    np.testing.assert_allclose(r.docs["score"].to_numpy(), second[order], rtol=1e-4, atol=1e-4)
    # each result's evidence: the latents adding most to its score, largest first
    assert r.matches.group_by("doc_id").len()["len"].max() <= 5
    assert (r.matches["contribution"] > 0).all()
    first_doc = r.matches.filter(pl.col("doc_id") == r.docs["doc_id"][0])
    assert first_doc["contribution"].is_sorted(descending=True)
    assert first_doc["contribution"].sum() <= r.docs["score"][0] + 1e-6


def test_feedback_needs_a_large_enough_scope(demo_store, monkeypatch):
    from saedata.analysis import retrieve

    db = demo_store["db"]
    once = saedata.search(db, "the chef cooked dinner", top=20, feedback=0)
    default = saedata.search(db, "the chef cooked dinner", top=20)
    assert default.feedback == 0 and default.docs.equals(once.docs)
    few = saedata.search(db, "the chef cooked dinner", top=20, feedback=4)
    assert few.feedback_note == "no feedback (--feedback 4; it takes at least 5 documents)"
    monkeypatch.setattr(retrieve, "FEEDBACK_SCOPE", 10)  # 320 documents now allow 32
    expanded = saedata.search(db, "the chef cooked dinner", top=20, feedback=50)
    assert expanded.feedback == 32
    assert expanded.feedback_note == "feedback from the best 32 documents"
    added = expanded.query_latents.filter(pl.col("source") == "feedback")
    assert added.height > 0 and added["label"].str.contains("(?i)chef|kitchen|bak|cook|recipe|soup").any()


def test_explicit_latent_scores_equal_a_direct_numpy_computation(demo_store):
    db = demo_store["db"]
    with saedata.open(db) as store:
        lat = store.sql("SELECT latent FROM latents WHERE freq > 0.05 ORDER BY freq LIMIT 4")["latent"].to_numpy()
    r = saedata.search(db, latents=lat.tolist(), top=30)
    with saedata.open(db) as store:
        m = latent_matrix(store, resolve_scope(store, None))
        max_act = store.latents()["max_act"].to_numpy().astype(np.float64)
        n_tokens = store.sql("SELECT n_tokens FROM documents ORDER BY doc_id")["n_tokens"].to_numpy()
    # sum of value / max_act over the document's latents, over ln(1 + n_tokens)
    scores = (m.X[:, lat].toarray().astype(np.float64) @ (1 / max_act[lat])) / np.log1p(np.maximum(n_tokens, 1))
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
    # 0.40 measured vs 0.21: in "a" the query's topic (dogs) competes with its form (a
    # question); scored by the query's latents alone, as before, it was 0.80. It was 0.47
    # while six latents shared the label "why" (each matched the query's word whole); told
    # apart ("why / storm", "why / rescue cat") they match it less (on the Debian search
    # benchmark the distinct labels changed mean AP by +0.000 topic, +0.003 example)
    assert r.precision >= 1.75 * r.base_rate


def test_latent_index_gives_identical_results_and_is_dropped_when_stale(demo_store, store_copy):
    with saedata.open(store_copy) as store:
        asked = store.sql("SELECT latent FROM latents WHERE freq > 0.05 ORDER BY freq, latent LIMIT 6")["latent"]
    asked = asked.to_list()
    plain = saedata.search(store_copy, latents=asked, top=25)
    assert not plain.used_index
    with Store(store_copy, read_only=False) as store:
        assert store.build_latent_index() == store.one("SELECT count(*) FROM activations")[0]
        assert store.has_latent_index()
    indexed = saedata.search(store_copy, latents=asked, top=25, use_index=True)
    assert indexed.used_index
    assert indexed.docs.equals(plain.docs)
    assert indexed.matches.equals(plain.matches)
    # a query text is scored from every document's codes: the index does not serve it
    with pytest.raises(ConfigError, match="serves searches by --latents"):
        saedata.search(store_copy, "dog", use_index=True)
    assert not saedata.search(store_copy, "dog", top=5).used_index
    # one more activation (as after embedding more documents) makes the index stale
    with Store(store_copy, read_only=False) as store:
        store.con.execute("INSERT INTO activations VALUES (0, 1, 0, 0.5, 0, 1)")
        assert not store.has_latent_index()
    assert not saedata.search(store_copy, latents=asked, top=25).used_index
    with pytest.raises(NotFoundError, match="saedata index"):
        saedata.search(store_copy, latents=asked, use_index=True)


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
    assert "latents (query vector), heaviest first:" in result.stderr
    assert "no feedback: 320 documents are too few" in result.stderr
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
    before = runner.invoke(main, ["search", "--latents", "5,6,7", "--db", store_copy, "--top", "5",
                                  "--format", "csv", "-q"])
    built = runner.invoke(main, ["index", "--db", store_copy])
    assert built.exit_code == 0, built.stderr
    assert "indexed" in built.stderr and "by latent" in built.stderr
    with saedata.open(store_copy) as store:
        assert store.has_latent_index()
    after = runner.invoke(main, ["search", "--latents", "5,6,7", "--db", store_copy, "--top", "5",
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
