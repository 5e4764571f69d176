"""saedata train --method snmf | gsae | vsae | gba: trained on a corpus, saved, loaded and embedded with
through the normal path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import saedata
from saedata.cli import main
from saedata.config import InputConfig, ReaderConfig, TrainConfig
from saedata.errors import SAEFormatError
from saedata.sae import load_sae


def test_an_snmf_sae_saves_loads_and_embeds_through_the_normal_path(tmp_path, tiny_gpt2, corpus):
    out = tmp_path / "snmf.sae"
    reader = ReaderConfig(model=tiny_gpt2, layer=1, device="cpu")
    train = TrainConfig(method="snmf", expansion=1, k=6, snmf_iters=15, snmf_sparsity=0.25, device="cpu")
    result = saedata.train(corpus, out, input_cfg=InputConfig(id_field="id"), reader_cfg=reader, train_cfg=train)
    cfg = json.loads((out / "cfg.json").read_text())
    assert (cfg["activation"], cfg["hook"], cfg["d_in"], cfg["d_sae"], cfg["k"]) == ("snmf", "mlp_post", 128, 128, 6)
    assert {"factor_fvu", "fvu", "l0", "seconds"} <= set(json.loads((out / "metrics.json").read_text()))
    sae = load_sae(out, device="cpu")
    x = torch.randn(5, 128).abs()
    torch.testing.assert_close(sae.encode(x), result.sae.encode(x))
    assert ((sae.W_dec != 0).sum(1) <= 32).all()  # 25% of the 128 neurons per feature
    db = tmp_path / "run.duckdb"
    embedded = saedata.embed(corpus, db, out, input_cfg=InputConfig(id_field="id"),
                             reader_cfg=ReaderConfig(device="cpu"))
    assert embedded.n_docs == 120 and embedded.n_activations > 0
    with saedata.open(db) as s:
        values = s.sql("SELECT value FROM activations").rows()
        assert min(v for (v,) in values) > 0  # non-negative codes, max-pooled
        info = s.sql("SELECT activation, d_in FROM saes").rows()
    assert info == [("snmf", 128)]
    with pytest.raises(SAEFormatError, match="snmf"):
        saedata.export_sae(out, tmp_path / "lens", to="saelens")
    bad = CliRunner().invoke(main, ["train", corpus, "--out", str(tmp_path / "x"), "--activation", "snmf"])
    assert bad.exit_code == 1 and "--method snmf" in bad.stderr and "Traceback" not in bad.output
    assert np.isfinite(result.metrics["fvu"])


def test_a_gsae_trains_deterministically_and_saves_a_topk_sae(tiny_gpt2, corpus, tmp_path):
    reader = ReaderConfig(model=tiny_gpt2, layer=1, device="cpu")
    train = TrainConfig(method="gsae", k=4, expansion=2, max_tokens=12_000, batch_size=512, device="cpu", seed=3)
    a = saedata.train(corpus, tmp_path / "a", input_cfg=InputConfig(id_field="id"), reader_cfg=reader,
                      train_cfg=train)
    b = saedata.train(corpus, tmp_path / "b", input_cfg=InputConfig(id_field="id"), reader_cfg=reader,
                      train_cfg=train)
    for name, w in a.sae.state_dict().items():
        assert torch.equal(w, b.sae.state_dict()[name]), name
    cfg = json.loads((tmp_path / "a" / "cfg.json").read_text())
    assert (cfg["activation"], cfg["k"], cfg["d_sae"]) == ("topk", 4, 64)
    assert a.metrics["steps"] == 23 and a.metrics["l0"] == 4.0 and np.isfinite(a.metrics["fvu"])
    plain = saedata.train(corpus, tmp_path / "c", input_cfg=InputConfig(id_field="id"), reader_cfg=reader,
                          train_cfg=train.replace(method="sae"))
    assert not torch.equal(plain.sae.W_dec, a.sae.W_dec)  # the gradient changed what was learned
    loaded = load_sae(tmp_path / "a", device="cpu")
    x = torch.randn(3, 32)
    torch.testing.assert_close(loaded.encode(x), a.sae.encode(x))
    saedata.export_sae(tmp_path / "a", tmp_path / "for-sparsify", to="sparsify")  # a TopK SAE like any


def test_gsae_on_an_encoder_is_one_line(tiny_bert, corpus, tmp_path):
    result = CliRunner().invoke(main, ["train", corpus, "--out", str(tmp_path / "g"), "--method", "gsae",
                                       "--model", tiny_bert, "--device", "cpu"])
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0 and "causal language model" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("method", "activation"), [("vsae", "topk"), ("gba", "relu")])
def test_vsae_and_gba_train_from_the_cli_into_ordinary_saes_that_embed(method, activation, tiny_bert, corpus,
                                                                         tmp_path):
    out, db = tmp_path / f"{method}.sae", tmp_path / "run.duckdb"
    result = CliRunner().invoke(main, ["train", corpus, "--out", str(out), "--method", method, "--k", "4",
                                       "--expansion", "2", "--train-tokens", "6000", "--model", tiny_bert,
                                       "--id-field", "id", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    said = {"vsae": "training a variational TopK SAE", "gba": "training a relu SAE by group bias adaptation"}
    assert said[method] in result.stderr
    cfg = json.loads((out / "cfg.json").read_text())
    assert (cfg["activation"], cfg["k"]) == (activation, 4)
    assert not (out / "checkpoint").exists() and np.isfinite(json.loads((out / "metrics.json").read_text())["fvu"])
    embedded = saedata.embed(corpus, db, out, input_cfg=InputConfig(id_field="id"), reader_cfg=ReaderConfig(device="cpu"))
    assert embedded.n_docs == 120 and embedded.n_activations > 0
    bad = CliRunner().invoke(main, ["train", corpus, "--out", str(tmp_path / "x"), "--method", method,
                                    "--activation", "jumprelu", "--model", tiny_bert])
    assert bad.exit_code == 1 and "Traceback" not in bad.output and bad.stderr.strip().count("\n") == 0
