"""The embedding pipeline (saedata/pipeline.py) end to end: corpus -> reader -> SAE -> pooled codes -> store."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch

import saedata
from saedata.config import EmbedConfig, InputConfig, ReaderConfig, SAEConfig, TrainConfig
from saedata.demo import make_corpus, write_jsonl
from saedata.embed.encode import pool_codes
from saedata.embed.local import embed
from saedata.errors import ConfigError, DimensionMismatchError, InputError
from saedata.sae import SparseAutoencoder, save_sae
from tests.helpers import offline_hub_snapshot


def _random_sae(path, d_in=32, d_sae=96, activation="topk", k=8, seed=0):
    torch.manual_seed(seed)
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=d_sae, activation=activation, k=k))
    save_sae(sae, path)
    return str(path)


@pytest.fixture
def sae_dir(tmp_path):
    return _random_sae(tmp_path / "sae")


def _reader(model, **kw):
    return ReaderConfig(model=model, device="cpu", **kw)


def _interrupt_read(monkeypatch, on_call: int):
    """Make the reader raise KeyboardInterrupt (Ctrl-C) on its ``on_call``-th batch;
    returns the original ``Reader.read`` to put back."""
    from saedata import reader as reader_mod

    original = reader_mod.Reader.read
    calls = {"n": 0}

    def interrupted(self, texts):
        calls["n"] += 1
        if calls["n"] == on_call:
            raise KeyboardInterrupt
        return original(self, texts)

    monkeypatch.setattr(reader_mod.Reader, "read", interrupted)
    return original


# -- pooling ------------------------------------------------------------------------


def _dense_reference(rows, latents, values, doc_index, n_docs, d_sae, pooling, n_tokens):
    n_tok = int(doc_index.numel())
    codes = torch.zeros(n_tok, d_sae)
    codes[rows, latents] = values
    out = torch.zeros(n_docs, d_sae)
    for d in range(n_docs):
        c = codes[doc_index == d]
        if pooling == "max":
            pos, neg = c.max(0).values.clamp(min=0), c.min(0).values.clamp(max=0)
            out[d] = torch.where(pos >= -neg, pos, neg)
        elif pooling == "sum":
            out[d] = c.sum(0)
        else:
            out[d] = c.sum(0) / n_tokens[d]
    return out


@pytest.mark.parametrize("pooling", ["max", "mean", "sum"])
@pytest.mark.parametrize("signed", [False, True])
def test_pool_codes_matches_a_dense_reference(pooling, signed):
    g = torch.Generator().manual_seed(0)
    n_tok, d_sae, n_docs = 40, 12, 4
    doc_index = torch.sort(torch.randint(0, n_docs, (n_tok,), generator=g)).values
    doc_index[:n_docs] = torch.arange(n_docs)
    doc_index = torch.sort(doc_index).values
    n_tokens = torch.bincount(doc_index, minlength=n_docs)
    rows = torch.arange(n_tok).repeat_interleave(3)
    latents = torch.randint(0, d_sae, (n_tok * 3,), generator=g)
    # one entry per (row, latent)
    key = torch.unique(rows * d_sae + latents)
    rows, latents = key // d_sae, key % d_sae
    values = torch.rand(rows.numel(), generator=g) + 0.1
    if signed:
        values = values * torch.where(torch.rand(rows.numel(), generator=g) < 0.5, -1.0, 1.0)
    p = pool_codes(rows, latents, values, doc_index, n_tokens, d_sae, pooling)
    got = torch.zeros(n_docs, d_sae)
    got[p.doc, p.latent] = p.value
    ref = _dense_reference(rows, latents, values, doc_index, n_docs, d_sae, pooling, n_tokens)
    torch.testing.assert_close(got, ref)
    # the peak token belongs to the document and carries the largest |code|
    assert torch.all(doc_index[p.peak] == p.doc)


# -- end to end -----------------------------------------------------------------------


def test_embed_stores_documents_activations_and_labels(tmp_path, corpus, tiny_bert, sae_dir):
    db = tmp_path / "run.duckdb"
    result = embed(corpus, db, sae_dir, input_cfg=saedata.InputConfig(id_field="id"), reader_cfg=_reader(tiny_bert))
    assert result.n_docs == result.n_new == 120 and result.dataset == "corpus"
    with saedata.open(db) as s:
        ds = s.datasets().row(0, named=True)
        assert ds["name"] == "corpus" and ds["n_docs"] == 120 and ds["complete"]
        docs = s.documents()
        assert docs.height == 120 and docs["ext_id"][0] == "d00000"
        assert json.loads(docs["meta"][0])["topic"] in {"pets", "science", "sports", "cooking", "weather",
                                                        "finance", "travel", "music"}
        acts = s.activations()
        assert acts.height == result.n_activations > 0
        assert (acts["value"] > 0).all()              # TopK codes max-pooled: positive
        assert acts.select(pl.struct("doc_id", "latent").is_unique().all()).item()
        lat = s.latents()
        assert lat.height == 96
        fired = lat.filter(pl.col("freq") > 0)
        assert fired.height > 0 and fired["label"].null_count() < fired.height
        assert (lat["freq"] <= 1).all()
        # a document's max-pooled code equals the max over its tokens' codes
        saes = s.saes()
        assert saes["d_in"].item() == 32 and saes["reader"].item() == tiny_bert
        assert s.sql("SELECT count(*) AS n FROM concepts")["n"].item() == acts.height


def test_stored_values_equal_a_direct_computation(tmp_path, tiny_bert, sae_dir):
    from saedata.reader import Reader
    from saedata.sae import load_sae

    texts = ["The chef baked bread.", "Investors sold the shares?", "Rain flooded the valley."]
    path = tmp_path / "three.txt"
    path.write_text("\n".join(texts) + "\n")
    db = tmp_path / "run.duckdb"
    embed(str(path), db, sae_dir, reader_cfg=_reader(tiny_bert))
    reader = Reader(_reader(tiny_bert))
    sae = load_sae(sae_dir)
    with saedata.open(db) as s:
        for i, text in enumerate(texts):
            codes = sae.encode(reader.read([text]).acts)
            expected = codes.max(0).values
            row = s.activations().filter(pl.col("doc_id") == i)
            got = torch.zeros(sae.d_sae)
            got[torch.as_tensor(row["latent"].to_numpy().copy())] = torch.tensor(row["value"].to_numpy().copy())
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=5e-4)


def test_rerun_of_a_complete_dataset_is_a_no_op(tmp_path, corpus, tiny_bert, sae_dir):
    db = tmp_path / "run.duckdb"
    embed(corpus, db, sae_dir, reader_cfg=_reader(tiny_bert))
    again = embed(corpus, db, sae_dir, reader_cfg=_reader(tiny_bert))
    assert again.already_complete and again.n_new == 0
    with saedata.open(db) as s:
        assert s.documents().height == 120


def test_interrupted_run_resumes_without_duplicates(tmp_path, corpus, tiny_bert, sae_dir, monkeypatch):
    from saedata import reader as reader_mod

    full_db, db = tmp_path / "full.duckdb", tmp_path / "run.duckdb"
    cfg = EmbedConfig(commit_docs=25)
    embed(corpus, full_db, sae_dir, reader_cfg=_reader(tiny_bert), embed_cfg=cfg)

    original = _interrupt_read(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        embed(corpus, db, sae_dir, reader_cfg=_reader(tiny_bert), embed_cfg=cfg)
    with saedata.open(db) as s:
        state = s.datasets().row(0, named=True)
        assert not state["complete"] and s.documents().height == 50
    monkeypatch.setattr(reader_mod.Reader, "read", original)
    result = embed(corpus, db, sae_dir, reader_cfg=_reader(tiny_bert), embed_cfg=cfg)
    assert result.n_new == 70 and result.n_docs == 120
    with saedata.open(db) as a, saedata.open(full_db) as b:
        assert a.documents().select("doc_id", "ext_id", "text").equals(b.documents().select("doc_id", "ext_id", "text"))
        assert a.activations().equals(b.activations())
        assert a.latents().equals(b.latents())


def test_killed_process_resumes(tmp_path, corpus, tiny_bert, sae_dir):
    """A real SIGKILL mid-run: committed batches survive, the rerun completes the rest."""
    db = tmp_path / "run.duckdb"
    script = f"""
import os, signal
from saedata import reader as r
from saedata.embed.local import embed
from saedata.config import ReaderConfig, EmbedConfig
orig, n = r.Reader.read, [0]
def read(self, texts):
    n[0] += 1
    if n[0] == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return orig(self, texts)
r.Reader.read = read
embed({corpus!r}, {str(db)!r}, {sae_dir!r}, reader_cfg=ReaderConfig(model={tiny_bert!r}, device="cpu"),
      embed_cfg=EmbedConfig(commit_docs=20))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    with saedata.open(db) as s:
        assert s.documents().height == 60
    embed(corpus, db, sae_dir, reader_cfg=_reader(tiny_bert), embed_cfg=EmbedConfig(commit_docs=20))
    with saedata.open(db) as s:
        docs = s.documents()
        assert docs.height == 120 and docs["ext_id"].n_unique() == 120
        assert docs["doc_id"].to_list() == list(range(120))


def test_second_corpus_appends_a_dataset_and_reuses_the_sae(tmp_path, corpus, tiny_bert, sae_dir):
    db = tmp_path / "run.duckdb"
    other = write_jsonl(make_corpus(30, seed=5, id_prefix="o"), tmp_path / "other.jsonl")
    embed(corpus, db, sae_dir, reader_cfg=_reader(tiny_bert))
    second = embed(str(other), db, reader_cfg=_reader(tiny_bert))  # no --sae: reuse the store's
    assert second.sae_id == 1 and second.dataset == "other"
    with saedata.open(db) as s:
        assert s.datasets()["n_docs"].to_list() == [120, 30]
        assert s.saes().height == 1
        assert s.documents()["doc_id"].to_list() == list(range(150))
        assert s.latents()["freq"].max() <= 1


def test_changed_corpus_is_not_resumed_silently(tmp_path, corpus, tiny_bert, sae_dir, monkeypatch):
    from saedata import reader as reader_mod

    db = tmp_path / "run.duckdb"
    original = _interrupt_read(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        embed(corpus, db, sae_dir, reader_cfg=_reader(tiny_bert), embed_cfg=EmbedConfig(commit_docs=30))
    monkeypatch.setattr(reader_mod.Reader, "read", original)
    shuffled = write_jsonl(make_corpus(120, seed=99), tmp_path / "corpus.jsonl")  # same name, new content
    with pytest.raises(InputError, match="the file changed since dataset 'corpus' was embedded.*--replace"):
        embed(str(shuffled), db, sae_dir, reader_cfg=_reader(tiny_bert), input_cfg=saedata.InputConfig(id_field="id"))


def test_sae_reader_mismatch_is_a_clear_error_and_store_is_untouched(tmp_path, corpus, tiny_bert, sae_dir):
    db = tmp_path / "run.duckdb"
    embed(corpus, db, sae_dir, reader_cfg=_reader(tiny_bert))
    wide = _random_sae(tmp_path / "wide", d_in=48)
    other = write_jsonl(make_corpus(10, seed=3), tmp_path / "b.jsonl")
    with pytest.raises(DimensionMismatchError, match="d_in=48"):
        embed(str(other), db, wide, reader_cfg=_reader(tiny_bert))
    with saedata.open(db) as s:
        assert s.datasets()["name"].to_list() == ["corpus"] and s.documents().height == 120


def test_empty_documents_are_skipped_and_counted(tmp_path, tiny_bert, sae_dir):
    path = tmp_path / "gaps.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ["a dog", "   ", "", "a cat"]) + "\n")
    result = embed(str(path), tmp_path / "run.duckdb", sae_dir, reader_cfg=_reader(tiny_bert))
    assert result.n_docs == 2 and result.n_empty == 2
    with saedata.open(tmp_path / "run.duckdb") as s:
        assert s.datasets()["n_empty"].item() == 2


def test_only_blank_documents_is_an_error(tmp_path, tiny_bert, sae_dir):
    path = tmp_path / "blank.txt"
    path.write_text("\n  \n\n")
    with pytest.raises(InputError, match="no documents to embed"):
        embed(str(path), tmp_path / "run.duckdb", sae_dir, reader_cfg=_reader(tiny_bert))


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "batchtopk", "abstopk", "topafa"])
def test_every_activation_embeds(tmp_path, tiny_bert, activation):
    sae = _random_sae(tmp_path / "sae", activation=activation)
    path = write_jsonl(make_corpus(12, seed=2), tmp_path / "c.jsonl")
    result = embed(str(path), tmp_path / "run.duckdb", sae, reader_cfg=_reader(tiny_bert))
    assert result.n_docs == 12 and result.n_activations > 0
    if activation == "abstopk":
        with saedata.open(tmp_path / "run.duckdb") as s:
            assert (s.activations()["value"] < 0).any()  # signed codes keep their sign


def test_causal_reader_embeds(tmp_path, tiny_gpt2, sae_dir):
    path = write_jsonl(make_corpus(10, seed=4), tmp_path / "c.jsonl")
    result = embed(str(path), tmp_path / "run.duckdb", sae_dir, reader_cfg=_reader(tiny_gpt2))
    assert result.n_docs == 10 and result.n_activations > 0


def test_embed_without_sae_trains_one_first(tmp_path, corpus, tiny_bert):
    db = tmp_path / "run.duckdb"
    messages = []
    result = embed(corpus, db, reader_cfg=_reader(tiny_bert),
                   train_cfg=TrainConfig(max_tokens=20_000, batch_size=512, device="cpu"), log=messages.append)
    assert result.trained_sae
    assert any("training an SAE" in m for m in messages)
    assert (tmp_path / "run.sae" / "cfg.json").exists()
    with saedata.open(db) as s:
        assert s.saes()["d_sae"].item() == 8 * 32
        assert s.latents().filter(pl.col("label").is_not_null()).height > 0


def _count_reads(monkeypatch) -> list[int]:
    """Patch Reader.read to record how many texts each call reads."""
    from saedata.reader import Reader

    calls: list[int] = []
    real = Reader.read

    def counted(self, texts):
        calls.append(len(texts))
        return real(self, texts)

    monkeypatch.setattr(Reader, "read", counted)
    return calls


def test_training_an_sae_first_reads_the_corpus_once(tmp_path, corpus, tiny_bert, monkeypatch):
    calls = _count_reads(monkeypatch)
    db = tmp_path / "run.duckdb"
    messages: list[str] = []
    embed(corpus, db, reader_cfg=_reader(tiny_bert), embed_cfg=EmbedConfig(commit_docs=50),
          train_cfg=TrainConfig(max_tokens=20_000, batch_size=512, device="cpu"), log=messages.append)
    # 120 documents, read in the chunks embedding commits (50, 50, 20), once
    assert calls == [50, 50, 20]
    assert any("embedded 3 of its chunks from the activations read to train the SAE" in m for m in messages)
    # the same SAE on the same corpus, read afresh: byte-identical rows
    calls.clear()
    again = tmp_path / "again.duckdb"
    embed(corpus, again, tmp_path / "run.sae", reader_cfg=_reader(tiny_bert), embed_cfg=EmbedConfig(commit_docs=50))
    assert calls == [50, 50, 20]
    query = "SELECT doc_id, latent, value, peak, tokens FROM activations ORDER BY doc_id, latent"
    with saedata.open(db) as s1, saedata.open(again) as s2:
        assert s1.sql(query).equals(s2.sql(query))
        assert s1.sql("SELECT doc_id, n_tokens FROM documents ORDER BY 1").equals(
            s2.sql("SELECT doc_id, n_tokens FROM documents ORDER BY 1"))


def test_a_corpus_larger_than_the_training_sample_is_not_kept(corpus, tiny_bert):
    from saedata.config import InputConfig
    from saedata.embed.train import collect_activations
    from saedata.reader import ReadCache, open_reader

    reader = open_reader(_reader(tiny_bert))
    keep = ReadCache()
    chunks = collect_activations([corpus], reader, InputConfig(id_field="id"), max_tokens=10**6, read_docs=50,
                                 keep=keep)
    assert len(keep) == 3 and sum(c.shape[0] for c in chunks) > 500
    sampled = ReadCache()
    collect_activations([corpus], reader, InputConfig(id_field="id"), max_tokens=500, read_docs=50, keep=sampled)
    assert len(sampled) == 0  # sampled, not read whole: embedding must read it again


def test_pooling_option_changes_values(tmp_path, tiny_bert, sae_dir):
    path = write_jsonl(make_corpus(8, seed=6), tmp_path / "c.jsonl")
    embed(str(path), tmp_path / "max.duckdb", sae_dir, reader_cfg=_reader(tiny_bert))
    embed(str(path), tmp_path / "sum.duckdb", sae_dir, reader_cfg=_reader(tiny_bert),
          embed_cfg=EmbedConfig(pooling="sum"))
    with saedata.open(tmp_path / "max.duckdb") as a, saedata.open(tmp_path / "sum.duckdb") as b:
        ma, sb = a.activations(), b.activations()
        assert ma.select("doc_id", "latent").equals(sb.select("doc_id", "latent"))
        assert (sb["value"] >= ma["value"] - 1e-6).all() and (sb["value"] > ma["value"] + 1e-6).any()


def test_bad_config_values_are_rejected():
    with pytest.raises(ConfigError):
        EmbedConfig(pooling="median")
    with pytest.raises(ConfigError):
        ReaderConfig(max_tokens=1)
    assert np.isfinite(EmbedConfig().label_top_docs)


def test_round_significant_keeps_relative_error_small():
    from saedata.embed.encode import round_significant

    v = np.array([0.0, 1.23456789, -0.000123456, 98765.4321, 3.0], dtype=np.float32)
    r = round_significant(v, 4)
    assert r.tolist() == pytest.approx([0.0, 1.235, -0.0001235, 98770.0, 3.0], rel=1e-6)
    nz = v != 0
    assert np.all(np.abs(r[nz] - v[nz]) <= 5e-4 * np.abs(v[nz]))
    assert np.array_equal(round_significant(v, None), v)


def test_an_sae_is_read_at_the_hook_point_it_records(tmp_path, tiny_gpt2):
    """An SAE of blocks.1.hook_resid_pre reads the input of block 1 (hidden_states[1]),
    which the store records; its query codes come from the same tensor."""
    from saedata.embed.models import StoreModels
    from saedata.reader import Reader

    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=32, d_sae=96, k=8, reader=tiny_gpt2, layer=1, hook="resid_pre"))
    sae_path = save_sae(sae, tmp_path / "sae")
    texts = ["The dog chased the ball.", "Our lab measured the data carefully?"]
    path = write_jsonl([{"id": f"d{i}", "text": t} for i, t in enumerate(texts)], tmp_path / "c.jsonl")
    db = tmp_path / "run.duckdb"
    embed(str(path), db, str(sae_path), input_cfg=InputConfig(id_field="id"), reader_cfg=ReaderConfig(device="cpu"))
    reader = Reader(ReaderConfig(model=tiny_gpt2, layer=-1, device="cpu"))
    enc = reader.tokenizer(texts[0], return_tensors="pt")
    with torch.no_grad():
        block_input = reader.model(**enc, output_hidden_states=True).hidden_states[1][0]
    expected = sae.encode(block_input).amax(0).detach()  # max pooling over the document's tokens
    with saedata.open(db) as s:
        info = s.sae_info(1)
        assert (info["layer"], info["cfg"]["hook"], info["cfg"]["head"]) == (1, "resid_pre", None)
        stored = s.sql("SELECT latent, value FROM activations JOIN documents USING (doc_id) "
                       "WHERE ext_id = 'd0' ORDER BY latent")
        latents, values, _, _ = StoreModels(s, ReaderConfig(device="cpu")).query_codes(1, texts[0])
    assert stored["latent"].to_list() == torch.nonzero(expected).flatten().tolist() == sorted(latents.tolist())
    np.testing.assert_allclose(stored["value"].to_numpy(), expected[expected != 0].numpy(), rtol=1e-3)
    with pytest.raises(ConfigError, match="--hook mlp_out is not what the SAE reads \\(resid_pre\\)"):
        embed(str(path), tmp_path / "other.duckdb", str(sae_path), reader_cfg=ReaderConfig(hook="mlp_out", device="cpu"))


def test_embed_with_an_sae_from_the_hub(tmp_path, monkeypatch, tiny_bert):
    snapshot = offline_hub_snapshot(monkeypatch, tmp_path, "acme/saes")
    _random_sae(snapshot / "tiny-bert")
    path = write_jsonl(make_corpus(10, seed=4), tmp_path / "c.jsonl")
    result = embed(str(path), tmp_path / "run.duckdb", "hf://acme/saes/tiny-bert", reader_cfg=_reader(tiny_bert))
    assert result.n_docs == 10 and result.n_activations > 0 and result.sae_path == str(snapshot / "tiny-bert")
