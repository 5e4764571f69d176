"""Offline contrastive labels and their offline scores (the LLM labeller: test_label_llm.py)."""

from __future__ import annotations

import json
import re
import zlib

import numpy as np
import polars as pl
import pytest

from saedata.label import keyword_labels, label_latents, score_labels, weak_label, word_document_frequency, words
from saedata.store import Store


def test_word_document_frequency_counts_documents_not_occurrences():
    df = word_document_frequency(["A dog and a dog", "a cat."])
    counts = dict(zip(df["word"].to_list(), df["df"].to_list()))
    assert counts == {"a": 2, "dog": 1, "and": 1, "cat": 1, ".": 1}


@pytest.mark.parametrize(
    ("text", "pos", "word", "before"),
    [
        ("New York is big", 5, "york", "new"),
        ("New York is big", 4, "york", "new"),
        ("Café über alles.", 2, "café", None),
        ("end. Next", 3, ".", "end"),
        ("end. Next", 6, "next", "."),
        ("x  (y)", 4, "y", "("),
        ("short", 9, None, None),
    ],
)
def test_word_at_macros(tmp_path, text, pos, word, before):
    with Store(tmp_path / "s.duckdb", read_only=False) as store:
        assert store.one("SELECT word_at(?, ?), word_before(?, ?)", [text, pos, text, pos]) == (word, before)


def _store_with_peaks(path) -> Store:
    """100 documents; latent 0 peaks on science words, latent 1 on "york" after "new",
    latent 2 only on "the" (everywhere in the corpus), latent 3 never fires."""
    store = Store(path, read_only=False)
    sae_id = store.register_sae("toy", {"d_in": 2, "d_sae": 4, "activation": "topk"}, None, "fp")
    ds = store.create_dataset("d", "d.jsonl", sae_id, {})
    peaks = ["science", "science", "scientists", "scientists", "the", "science",
             "new york", "new york", "new york", "the", "the"]
    texts = [f"the {p}" for p in peaks] + ["the end"] * (100 - len(peaks))
    n = len(texts)
    docs = pl.DataFrame({"doc_id": list(range(n)), "dataset_id": [ds.dataset_id] * n,
                         "ext_id": [str(i) for i in range(n)], "text": texts, "meta": [None] * n,
                         "n_tokens": [1] * n}, schema_overrides={"meta": pl.String})
    rows = []
    for i, p in enumerate(peaks):
        latent = 0 if i < 6 else 1 if i < 9 else 2
        peak = len(texts[i]) - 1 if p != "the" else 0   # last character of the peak word
        rows.append((i, sae_id, latent, 10.0 - i, peak))
    acts = pl.DataFrame(rows, schema=["doc_id", "sae_id", "latent", "value", "peak"], orient="row")
    words = word_document_frequency(texts)
    store.append_batch(docs, acts, words.head(3), sae_id)    # counts may arrive in pieces
    store.append_batch(docs.clear(), acts.clear(), words.slice(3), sae_id)
    return store


def test_keyword_labels_prefer_over_represented_words(tmp_path):
    with _store_with_peaks(tmp_path / "s.duckdb") as store:
        labels = keyword_labels(store, 1, top_docs=64, n_words=3)
        by_latent = {r["latent"]: (r["label"], r["label_source"]) for r in labels.iter_rows(named=True)}
        assert by_latent[0] == ("science / scientists", "keywords")  # "the" is everywhere: not a keyword
        assert by_latent[1] == ("new york", "keywords")                # the phrase replaces the word
        assert by_latent[2] == ("the", "frequent-words")               # weak label, said so
        assert 3 not in by_latent                                      # never fired, no label
        assert label_latents(store, 1) == 3
        lat = store.latents(1)
        assert lat.filter(pl.col("latent") == 0)["label_source"].item() == "keywords"


def test_top_docs_bounds_the_evidence(tmp_path):
    with _store_with_peaks(tmp_path / "s.duckdb") as store:
        # only the two strongest documents of latent 0 ("science", "science") count
        labels = keyword_labels(store, 1, top_docs=2)
        assert labels.filter(pl.col("latent") == 0)["label"].item() == "science"


def test_filler_words_do_not_make_phrases(tmp_path):
    with _store_with_peaks(tmp_path / "s.duckdb") as store:
        labels = keyword_labels(store, 1)
        assert all(not t.startswith("the ") for t in labels["label"].to_list())
        store.fold_word_counts(1)
        assert store.one("SELECT count(*), count(DISTINCT word) FROM word_counts") == (6, 6)
        assert keyword_labels(store, 1).equals(labels)


def _store_with(path, texts: list[str], fires: list[tuple[int, int, str]]) -> Store:
    """A store of ``texts`` where latent L peaks on word W of document D for each (D, L, W)."""
    store = Store(path, read_only=False)
    sae_id = store.register_sae("toy", {"d_in": 2, "d_sae": 8, "activation": "topk"}, None, "fp")
    ds = store.create_dataset("d", "d.jsonl", sae_id, {})
    n = len(texts)
    docs = pl.DataFrame({"doc_id": list(range(n)), "dataset_id": [ds.dataset_id] * n,
                         "ext_id": [str(i) for i in range(n)], "text": texts, "meta": [None] * n,
                         "n_tokens": [1] * n}, schema_overrides={"meta": pl.String})
    rows = [(d, sae_id, lat, 10.0, texts[d].index(w) + len(w) - 1) for d, lat, w in fires]
    acts = pl.DataFrame(rows, schema=["doc_id", "sae_id", "latent", "value", "peak"], orient="row")
    store.append_batch(docs, acts, word_document_frequency(texts), sae_id)
    return store


def test_stopwords_punctuation_and_numbers_never_make_a_keyword_label(tmp_path):
    texts = ([f"{i} of wood , planks x" for i in range(6)] + [f"cheap oak table {i} ; x" for i in range(6)]
             + ["plain text here"] * 88)
    fires = ([(d, 0, "of") for d in range(6)] + [(d, 0, "wood") for d in range(2)]       # "of" beats "wood"
             + [(d, 1, ",") for d in range(6)] + [(d, 2, ";") for d in range(6, 12)]    # punctuation only
             + [(d, 3, "x") for d in range(6)] + [(d, 3, str(d)) for d in range(6)])    # a letter, numbers
    with _store_with(tmp_path / "s.duckdb", texts, fires) as store:
        old = store.macro("keyword_terms", 1)
        assert "of" in old.filter(pl.col("latent") == 0)["term"].to_list()  # the macro scores it as a keyword
        labels = {r["latent"]: (r["label"], r["label_source"]) for r in keyword_labels(store, 1).iter_rows(named=True)}
    assert labels[0][1] == "keywords" and "wood" in labels[0][0] and "of" not in labels[0][0].split(" / ")
    assert labels[1][1] == labels[2][1] == labels[3][1] == "frequent-words"  # weak, and said so
    assert labels[1][0].endswith(",")  # what it fires on, as a weak label
    for label, source in labels.values():
        assert source != "keywords" or not weak_label(label)


def test_no_two_latents_share_a_label(tmp_path):
    texts = ([f"font bitmap terminals {i}" for i in range(5)] + [f"font cjk glyphs {i}" for i in range(5)]
             + [f"font {i}" for i in range(2)] + ["unrelated words"] * 88)
    fires = ([(d, 0, "font") for d in range(5)] + [(d, 1, "font") for d in range(5, 10)]
             + [(d, 2, "font") for d in range(10, 12)] + [(d, 3, "font") for d in range(10, 12)])
    with _store_with(tmp_path / "s.duckdb", texts, fires) as store:
        labels = dict(keyword_labels(store, 1).select("latent", "label").iter_rows())
    assert len(set(labels.values())) == 4
    assert labels[0] in ("font / bitmap", "font / terminals")   # the documents' own words tell them apart
    assert labels[1] in ("font / cjk", "font / glyphs")
    assert {labels[2], labels[3]} == {"font / #2", "font / #3"}  # the same evidence: told apart by number


@pytest.mark.parametrize("label, weak", [
    ("x11 / xorg", False), ("qt", False), ("cd / dvd", False), ("science", False),
    (". / my / our", True), ("? / !", True), ("of", True), ("4 / 64", True), ("x / ,", True), ("", False),
])
def test_weak_label(label, weak):
    assert weak_label(label) is weak


def _bag_of_words(texts: list[str]) -> np.ndarray:
    """A stand-in embedding: unit vectors of hashed word counts (a label is near a text holding its words)."""
    out = np.zeros((len(texts), 256))
    for i, t in enumerate(texts):
        for w in words(t):
            out[i, zlib.crc32(w.encode()) % 256] += 1
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def test_label_scores_tell_a_precise_label_from_noise(tmp_path):
    rng = np.random.default_rng(0)
    texts = [f"science lab result {i}" for i in range(30)] + [f"a walk in town {i}" for i in range(70)]
    noise_docs = rng.choice(100, size=30, replace=False)
    fires = [(d, 0, "science") for d in range(30)] + [(int(d), 1, texts[int(d)].split()[1]) for d in noise_docs]
    with _store_with(tmp_path / "s.duckdb", texts, fires) as store:
        store.set_labels(1, pl.DataFrame({"latent": [0, 1], "label": ["science / lab", "view / fit / id"],
                                          "label_source": ["keywords", "keywords"]}))
        scores = {r["latent"]: r for r in score_labels(store, 1, _bag_of_words).iter_rows(named=True)}
        assert scores[0]["score"] == pytest.approx(1.0)
        assert scores[0]["detect_precision"] == pytest.approx(1.0) and scores[0]["detect_recall"] == pytest.approx(1.0)
        assert 0.3 < scores[1]["score"] < 0.7            # chance: the label says nothing
        assert scores[1]["detect_precision"] is None     # none of its words occurs: nothing detected
        store.set_label_scores(1, score_labels(store, 1, _bag_of_words))
        assert store.latent_scores(1)["latent"].to_list() == [0, 1]
        # a score belongs to its label: relabelling clears it, an unchanged label keeps it
        store.set_labels(1, pl.DataFrame({"latent": [0, 1], "label": ["science / lab", "walk"],
                                          "label_source": ["keywords", "keywords"]}))
        assert store.latent_scores(1)["latent"].to_list() == [0]


def test_label_score_cli(demo_store, tmp_path):
    from click.testing import CliRunner

    from saedata.cli import main
    from tests.helpers import copy_demo_store

    db = str(copy_demo_store(demo_store, tmp_path))
    result = CliRunner().invoke(main, ["label", "--db", db, "--score"])
    assert result.exit_code == 0, result.output
    assert re.search(r"scored \d+ labels: median 0\.\d\d", result.output)
    result = CliRunner().invoke(main, ["latents", "--db", db, "--sort", "score", "--min-score", "0.8",
                                       "--format", "json", "--top", "0"])
    rows = json.loads(result.output)
    assert rows and all(r["score"] >= 0.8 for r in rows)
    with Store(db) as store:
        scored = store.latents(1).drop_nulls("score")
    # measured on the planted demo: keyword labels of topic words score far above chance
    assert scored["score"].median() > 0.6


def test_a_phrase_never_starts_with_punctuation(tmp_path):
    """'" nf2' (the word before the peak is a quote mark) is the term nf2."""
    texts = [f'use "nf2 tables {i}' for i in range(6)] + ["plain text here"] * 94
    with _store_with(tmp_path / "s.duckdb", texts, [(d, 0, "nf2") for d in range(6)]) as store:
        assert '" nf2' in store.macro("keyword_terms", 1)["term"].to_list()  # what the macro proposes
        (label,) = keyword_labels(store, 1)["label"].to_list()
    assert label.split(" / ")[0] == "nf2" and '"' not in label


def test_labels_against_one_dataset(demo_store, tmp_path):
    """saedata label --dataset b: evidence and background from b alone, said in label_source;
    a plain relabel puts the store-wide labels back."""
    from click.testing import CliRunner

    from saedata.cli import main
    from tests.helpers import copy_demo_store

    db = copy_demo_store(demo_store, tmp_path)
    with Store(db, read_only=True) as store:
        before = store.latents(1).select("latent", "label", "label_source")
    runner = CliRunner()
    out = runner.invoke(main, ["label", "--db", str(db), "--dataset", "b"])
    assert out.exit_code == 0, out.output
    assert "against dataset 'b'" in out.stderr
    with Store(db, read_only=True) as store:
        after = store.latents(1).select("latent", "label", "label_source")
        # evidence from b alone: a latent that never fires in b gets no label from it
        fires_in_b = set(store.sql("SELECT DISTINCT latent FROM activations JOIN documents USING (doc_id) "
                                   "WHERE dataset_id = 2")["latent"].to_list())
    sources = set(after["label_source"].drop_nulls().to_list())
    assert sources <= {"keywords:b", "frequent-words:b"} and "keywords:b" in sources
    labelled = set(after.filter(pl.col("label").is_not_null())["latent"].to_list())
    assert labelled <= fires_in_b
    changed = before.join(after, on="latent").filter(pl.col("label") != pl.col("label_right"))
    assert changed.height > 50  # another background, other words stand out
    assert weak_label("did / played", "frequent-words:b") and not weak_label("fantastic", "keywords:b")
    assert runner.invoke(main, ["label", "--db", str(db)]).exit_code == 0
    with Store(db, read_only=True) as store:
        assert store.latents(1).select("latent", "label", "label_source").equals(before)
    bad = runner.invoke(main, ["label", "--db", str(db), "--dataset", "nope"])
    assert bad.exit_code == 1 and bad.stderr.count("\n") == 1 and "no dataset 'nope'" in bad.stderr
    both = runner.invoke(main, ["label", "--db", str(db), "--dataset", "b", "--llm"])
    assert both.exit_code == 2 and "--dataset makes keyword labels" in both.stderr
