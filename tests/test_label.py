"""Offline contrastive labels and the optional LLM labeller."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import polars as pl
import pytest

from saedata.errors import ConfigError
from saedata.label import (
    DocWords,
    EvidenceCollector,
    keyword_labels,
    label_latents,
    llm_labels,
    prune_evidence,
    word_document_frequency,
)
from saedata.store import Store


def test_doc_words_maps_characters_to_words():
    w = DocWords("New York's scientists, scientifically!")
    assert w.words == ["new", "york's", "scientists", ",", "scientifically", "!"]
    assert w.words[w.word_at(0)] == "new"
    assert w.words[w.word_at(6)] == "york's"          # inside a word
    assert w.words[w.word_at(30)] == "scientifically"  # a sub-word token's last char
    assert DocWords("").word_at(0) == -1


def test_word_document_frequency_counts_documents_not_occurrences():
    df = word_document_frequency([DocWords("a dog and a dog"), DocWords("a cat")])
    counts = dict(zip(df["word"].to_list(), df["df"].to_list()))
    assert counts == {"a": 2, "dog": 1, "and": 1, "cat": 1}


def test_evidence_collector_keeps_only_running_top_documents():
    c = EvidenceCollector(d_sae=3, top_docs=2)
    texts = ["alpha beta", "gamma delta", "alpha gamma"]
    words = [DocWords(t) for t in texts]
    offsets = np.array([[0, 5], [6, 10], [0, 5], [6, 11], [0, 5], [6, 11]])
    # (doc, latent, value, peak token row)
    doc = np.array([0, 1, 2, 0, 1])
    lat = np.array([0, 0, 0, 1, 1])
    val = np.array([1.0, 3.0, 2.0, 0.5, 0.7], dtype=np.float32)
    peak = np.array([0, 3, 4, 1, 2])
    ev = c.collect(doc, lat, val, peak, np.array([10, 11, 12]), words, offsets, sae_id=1)
    ids = np.array([10, 11, 12])
    got = sorted(
        (r["latent"], r["doc_id"], texts[int(np.flatnonzero(ids == r["doc_id"])[0])][r["word_start"]:r["word_end"]])
        for r in ev.iter_rows(named=True)
    )
    # latent 0 keeps its top 2 (docs 11 and 12), latent 1 both of its documents
    assert got == [(0, 11, "delta"), (0, 12, "alpha"), (1, 10, "beta"), (1, 11, "gamma")]
    assert ev.filter((pl.col("doc_id") == 11) & (pl.col("latent") == 0))["prev_start"].to_list() == [0]
    assert ev.filter(pl.col("doc_id") == 12)["prev_start"].to_list() == [None]
    assert c.threshold.tolist() == [2.0, 0.5, -np.inf]
    # A weaker document does not enter; a stronger one does.
    ev2 = c.collect(np.array([0, 1]), np.array([0, 0]), np.array([1.5, 9.0], dtype=np.float32),
                    np.array([0, 2]), np.array([20, 21]), words[:2], offsets, sae_id=1)
    assert ev2["doc_id"].to_list() == [21]
    assert c.threshold[0] == 3.0


def _store_with_evidence(path) -> Store:
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
    acts = pl.DataFrame({"doc_id": [0], "sae_id": [sae_id], "latent": [0], "value": [1.0]})
    words = pl.DataFrame({"word": ["the", "science", "scientists", "york", "new", "end"],
                          "df": [100, 5, 4, 3, 6, 89]})
    rows = []
    for i, p in enumerate(peaks):
        latent = 0 if i < 6 else 1 if i < 9 else 2
        text = texts[i]
        start = text.rfind(" ") + 1 if p != "the" else 0
        prev = text.rfind(" ", 0, start - 1) + 1 if start > 0 else None
        rows.append((sae_id, latent, i, 10.0 - i, start, len(text) if p != "the" else 3, prev))
    ev = pl.DataFrame(rows, schema=["sae_id", "latent", "doc_id", "value", "word_start", "word_end", "prev_start"],
                      orient="row")
    ev = ev.cast({"sae_id": pl.Int32, "latent": pl.Int32, "value": pl.Float32, "word_start": pl.Int32,
                  "word_end": pl.Int32, "prev_start": pl.Int32})
    store.append_batch(docs, acts, ev, words, sae_id)
    return store


def test_keyword_labels_prefer_over_represented_words(tmp_path):
    with _store_with_evidence(tmp_path / "s.duckdb") as store:
        labels = keyword_labels(store, 1, top_docs=64, n_words=3)
        by_latent = {r["latent"]: (r["label"], r["label_source"]) for r in labels.iter_rows(named=True)}
        assert by_latent[0] == ("science / scientists", "keywords")  # "the" is everywhere: not a keyword
        assert by_latent[1] == ("new york", "keywords")                # the phrase replaces the word
        assert by_latent[2] == ("the", "frequent-words")               # weak label, said so
        assert 3 not in by_latent                                      # no evidence, no label
        assert label_latents(store, 1) == 3
        lat = store.latents(1)
        assert lat.filter(pl.col("latent") == 0)["label_source"].item() == "keywords"


def test_filler_words_do_not_make_phrases(tmp_path):
    with _store_with_evidence(tmp_path / "s.duckdb") as store:
        labels = keyword_labels(store, 1)
        assert all(not t.startswith("the ") for t in labels["label"].to_list())


def test_prune_evidence_keeps_top_documents(tmp_path):
    with _store_with_evidence(tmp_path / "s.duckdb") as store:
        prune_evidence(store, 1, top_docs=2)
        rows = store.sql("SELECT latent, doc_id FROM label_evidence ORDER BY latent, doc_id").rows()
        assert rows == [(0, 0), (0, 1), (1, 6), (1, 7), (2, 9), (2, 10)]


class _FakeLLM(BaseHTTPRequestHandler):
    prompts: list[str] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeLLM.prompts.append(body["messages"][0]["content"])
        reply = {"choices": [{"message": {"content": " Science and research. "}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_llm_labeller_uses_an_openai_compatible_endpoint(tmp_path, monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _FakeLLM)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with _store_with_evidence(tmp_path / "s.duckdb") as store:
            labels = llm_labels(store, 1, [0], base_url=f"http://127.0.0.1:{server.server_port}/v1",
                                model="tiny", timeout=10)
        assert labels.rows() == [(0, "Science and research", "llm:tiny")]
        assert "Name the concept" in _FakeLLM.prompts[-1]
    finally:
        server.shutdown()
    monkeypatch.delenv("SAEDATA_LLM_BASE_URL", raising=False)
    with _store_with_evidence(tmp_path / "t.duckdb") as store, pytest.raises(ConfigError, match="SAEDATA_LLM_BASE_URL"):
        llm_labels(store, 1, [0])
