"""saedata.eval_saes: the corpus read once (documents kept with their tokens), SAEs loaded
or in memory, the result object and its report (tiny random BERT reader)."""

from __future__ import annotations

import pytest
import torch

import saedata
from saedata.config import InputConfig, ReaderConfig, SAEConfig
from saedata.errors import DimensionMismatchError
from saedata.sae import SparseAutoencoder, save_sae


def test_read_activations_keeps_each_rows_document(corpus, tiny_bert):
    from saedata.embed.train import collect_activations, read_activations
    from saedata.reader import Reader

    reader = Reader(ReaderConfig(model=tiny_bert, device="cpu", batch_size=16))
    cfg = InputConfig(id_field="id", batch_size=50)
    read = read_activations(corpus, reader, cfg, max_tokens=10**6, keep_docs=True)
    assert [d.ext_id for d in read.docs] == [f"d{i:05d}" for i in range(120)]
    index = torch.cat(read.doc_index)
    assert index.shape[0] == sum(c.shape[0] for c in read.chunks)
    assert torch.equal(torch.bincount(index, minlength=120), torch.as_tensor(reader.read(
        [d.text for d in read.docs]).n_tokens))  # every token of every document, each to its own
    assert all(torch.equal(a, b) for a, b in zip(read.chunks, collect_activations(corpus, reader, cfg, 10**6)))
    sampled = read_activations(corpus, reader, cfg, max_tokens=700, keep_docs=True)  # a sample: every j-th document
    assert sum(c.shape[0] for c in sampled.chunks) == 700 and len(sampled.docs) < 120
    assert int(torch.cat(sampled.doc_index).max()) < len(sampled.docs)


def test_eval_saes_on_loaded_and_in_memory_saes(corpus, tiny_bert, tmp_path):
    torch.manual_seed(0)
    path = save_sae(SparseAutoencoder(SAEConfig(d_in=32, d_sae=64, k=4)), tmp_path / "a.sae")
    in_memory = SparseAutoencoder(SAEConfig(d_in=32, d_sae=48, activation="relu"))
    result = saedata.eval_saes([str(path), in_memory], corpus, concept="sentiment", tokens=1500,
                               input_cfg=InputConfig(id_field="id"), reader_cfg=ReaderConfig(model=tiny_bert,
                                                                                             device="cpu"))
    assert result.table["sae"].to_list() == [str(path), "sae2"]
    assert result.table["d_sae"].to_list() == [64, 48] and result.n_tokens == 1500
    assert result.reader.endswith("layer 1 (d_model=32)") and result.concept == "sentiment"
    assert set(result.concepts["concept"]) == {"positive", "negative", "neutral"}
    assert result.to_dict()["saes"][0]["l0"] == 4.0
    html = saedata.write_report(result, tmp_path / "r.html").read_text()
    assert html.count("data:image/png;base64,") == 1 and "Concepts: values of sentiment" in html
    with pytest.raises(DimensionMismatchError, match="expects d_in=16"):
        saedata.eval_saes([SparseAutoencoder(SAEConfig(d_in=16, d_sae=64, k=4))], corpus,
                          reader_cfg=ReaderConfig(model=tiny_bert, device="cpu"))


def test_a_concept_field_only_later_in_the_corpus_is_found(tmp_path, tiny_bert):
    from saedata.demo import make_corpus, write_jsonl

    docs = make_corpus(60, seed=2)
    for d in docs[:20]:
        del d["topic"]
    corpus = write_jsonl(docs, tmp_path / "late.jsonl")
    result = saedata.eval_saes([SparseAutoencoder(SAEConfig(d_in=32, d_sae=64, k=4))], corpus, concept="topic",
                               input_cfg=InputConfig(batch_size=10),
                               reader_cfg=ReaderConfig(model=tiny_bert, device="cpu"))
    # the 40 labelled documents: with or without each concept scored (rare topics are not scored,
    # but their documents count as without the others)
    assert result.concepts.height >= 1 and result.concepts["n_docs"].sum() < 40
    assert (result.concepts["n_docs"] + result.concepts["n_without"]).to_list() == [40] * result.concepts.height
