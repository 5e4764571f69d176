"""Loading and saving SAE directories: saedata, SAELens, sparsify; every error path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import saedata
from saedata.config import SAEConfig
from saedata.errors import DimensionMismatchError, SAEFormatError
from saedata.sae import SparseAutoencoder, load_sae, save_sae
from saedata.sae.formats import check_d_in, detect_format
from tests.helpers import HUB_COMMIT, offline_hub_snapshot

D_IN, D_SAE = 6, 20


def _x(n: int = 32, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) * 2.0 + 0.5


def _trained_like(activation: str) -> SparseAutoencoder:
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=D_IN, d_sae=D_SAE, activation=activation, k=4, reader="m", layer=2))
    with torch.no_grad():
        sae.b_enc.normal_(std=0.1)
        sae.b_dec.normal_(std=0.2)
        sae.input_scale.fill_(0.37)
        if activation == "jumprelu":
            sae.log_threshold.normal_(mean=-2.0, std=0.3)
        if activation == "batchtopk":
            sae.batch_threshold.fill_(0.05)
    return sae.eval()


def _write(dir_: Path, cfg: dict, tensors: dict, weights: str) -> Path:
    dir_.mkdir(parents=True, exist_ok=True)
    (dir_ / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dir_ / weights))
    return dir_


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------ native
@pytest.mark.parametrize("activation", ["relu", "jumprelu", "topk", "batchtopk", "abstopk", "topafa"])
def test_native_round_trip_is_exact(tmp_path, activation):
    sae = _trained_like(activation)
    out = save_sae(sae, tmp_path / "sae")
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg == {**sae.cfg.to_dict(), "format": "saedata", "format_version": 1}
    loaded = load_sae(out)
    assert loaded.cfg == sae.cfg and detect_format(out) == "saedata"
    assert loaded.source_path == str(out) and not loaded.training
    for (name, a), (_, b) in zip(sae.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    x = _x()
    assert torch.equal(loaded.encode(x), sae.encode(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # no temporary leftovers


def test_native_weights_hold_the_documented_tensors(tmp_path):
    from safetensors.torch import load_file

    save_sae(_trained_like("jumprelu"), tmp_path / "j")
    t = load_file(str(tmp_path / "j" / "sae.safetensors"))
    assert {"W_enc", "b_enc", "W_dec", "b_dec", "input_scale", "threshold"} <= set(t)
    assert t["W_enc"].shape == (D_IN, D_SAE) and t["W_dec"].shape == (D_SAE, D_IN)
    assert t["input_scale"].shape == () and t["threshold"].shape == (D_SAE,)


def test_save_into_existing_directory_replaces_files(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    (target / "metrics.json").write_text("{}")
    save_sae(_trained_like("topk"), target)
    sae2 = _trained_like("relu")
    save_sae(sae2, target)
    assert load_sae(target).cfg.activation == "relu"
    assert sorted(p.name for p in target.iterdir()) == ["cfg.json", "metrics.json", "sae.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# ------------------------------------------------------------------------ SAELens
def _saelens_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    return {
        "W_enc": _rand(D_IN, D_SAE, seed=seed),
        "W_dec": _rand(D_SAE, D_IN, seed=seed + 1) * 0.5,
        "b_enc": _rand(D_SAE, seed=seed + 2) * 0.1,
        "b_dec": _rand(D_IN, seed=seed + 3) * 0.3,
    }


def _saelens_ref(t, x, act, k=None, threshold=None, apply_b_dec=True, ft=None, rescale=False):
    """SAELens' own formula computed straight from the raw tensors."""
    hidden = (x - t["b_dec"] * apply_b_dec) @ t["W_enc"] + t["b_enc"]
    if rescale:
        hidden = hidden * t["W_dec"].norm(dim=-1)
    if act == "relu":
        z = torch.relu(hidden)
    elif act == "jumprelu":
        z = torch.relu(hidden) * (hidden > threshold)
    else:
        v, i = hidden.topk(k, dim=-1)
        z = torch.zeros_like(hidden).scatter(-1, i, torch.relu(v))
    zz = z * ft if ft is not None else z
    if rescale:
        zz = zz / t["W_dec"].norm(dim=-1)
    return z, zz @ t["W_dec"] + t["b_dec"]


def _check(sae, x, z_ref, recon_ref):
    z = sae.encode(x)
    torch.testing.assert_close(z, z_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sae.decode(sae.encode(x)), recon_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sae.decode_sparse(sae.encode_sparse(x)), recon_ref, atol=1e-4, rtol=1e-4)


def test_saelens_standard_relu_new_style(tmp_path):
    t = _saelens_tensors()
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "apply_b_dec_to_input": True,
           "normalize_activations": "none", "dtype": "float32", "device": "cpu",
           "metadata": {"model_name": "gpt2", "hook_name": "blocks.5.hook_resid_post"}}
    path = _write(tmp_path / "sl", cfg, t, "sae_weights.safetensors")
    sae = load_sae(path)
    assert detect_format(path) == "saelens" and sae.cfg.activation == "relu"
    assert sae.cfg.reader == "gpt2" and sae.cfg.layer == 5 and sae.cfg.hook == "resid_post"
    x = _x()
    _check(sae, x, *_saelens_ref(t, x, "relu"))


def test_saelens_old_style_topk_with_kwargs_and_no_b_dec_on_input(tmp_path):
    t = _saelens_tensors(seed=10)
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "activation_fn_str": "topk",
           "activation_fn_kwargs": {"k": 5}, "apply_b_dec_to_input": False, "finetuning_scaling_factor": False,
           "normalize_activations": "expected_average_only_in", "hook_name": "blocks.3.hook_resid_pre",
           "hook_layer": 3, "model_name": "pythia-70m", "context_size": 128}
    path = _write(tmp_path / "old", cfg, t, "sae_weights.safetensors")
    sae = load_sae(path)
    assert sae.cfg.activation == "topk" and sae.cfg.k == 5 and (sae.cfg.layer, sae.cfg.hook) == (3, "resid_pre")
    x = _x()
    _check(sae, x, *_saelens_ref(t, x, "topk", k=5, apply_b_dec=False))


@pytest.mark.parametrize("key", ["threshold", "log_threshold"])
def test_saelens_jumprelu_threshold_or_log_threshold(tmp_path, key):
    t = _saelens_tensors(seed=20)
    theta = _rand(D_SAE, seed=99).abs() * 0.5 + 0.05
    t[key] = theta if key == "threshold" else theta.log()
    cfg = {"architecture": "jumprelu", "d_in": D_IN, "d_sae": D_SAE, "apply_b_dec_to_input": True}
    path = _write(tmp_path / key, cfg, t, "sae_weights.safetensors")
    sae = load_sae(path)
    assert sae.cfg.activation == "jumprelu"
    x = _x()
    _check(sae, x, *_saelens_ref(t, x, "jumprelu", threshold=theta))


def test_saelens_finetuning_scaling_factor_and_rescaled_topk(tmp_path):
    t = _saelens_tensors(seed=30)
    t["finetuning_scaling_factor"] = _rand(D_SAE, seed=7).abs() + 0.5
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "activation_fn_str": "relu",
           "finetuning_scaling_factor": True}
    sae = load_sae(_write(tmp_path / "ft", cfg, t, "sae_weights.safetensors"))
    x = _x()
    _check(sae, x, *_saelens_ref(t, x, "relu", ft=t["finetuning_scaling_factor"]))

    t2 = _saelens_tensors(seed=40)
    cfg2 = {"architecture": "topk", "k": 4, "d_in": D_IN, "d_sae": D_SAE, "rescale_acts_by_decoder_norm": True}
    sae2 = load_sae(_write(tmp_path / "rs", cfg2, t2, "sae_weights.safetensors"))
    z_ref, recon_ref = _saelens_ref(t2, x, "topk", k=4, rescale=True)
    torch.testing.assert_close(sae2.encode(x), z_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sae2.decode(sae2.encode(x)), recon_ref, atol=1e-4, rtol=1e-4)


def test_saelens_unsupported_variants_are_named(tmp_path):
    t = _saelens_tensors()
    cfg = {"architecture": "gated", "d_in": D_IN, "d_sae": D_SAE}
    with pytest.raises(SAEFormatError, match="gated"):
        load_sae(_write(tmp_path / "g", cfg, t, "sae_weights.safetensors"))
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "normalize_activations": "layer_norm"}
    with pytest.raises(SAEFormatError, match="layer_norm"):
        load_sae(_write(tmp_path / "ln", cfg, t, "sae_weights.safetensors"))
    cfg = {"architecture": "jumprelu", "d_in": D_IN, "d_sae": D_SAE}
    with pytest.raises(SAEFormatError, match="threshold"):
        load_sae(_write(tmp_path / "nothr", cfg, t, "sae_weights.safetensors"))


# ----------------------------------------------------------------------- sparsify
def _sparsify_tensors(seed: int = 50) -> dict[str, torch.Tensor]:
    W_dec = _rand(D_SAE, D_IN, seed=seed + 1)
    return {
        "encoder.weight": _rand(D_SAE, D_IN, seed=seed),
        "encoder.bias": _rand(D_SAE, seed=seed + 2) * 0.1,
        "W_dec": W_dec / W_dec.norm(dim=1, keepdim=True),
        "b_dec": _rand(D_IN, seed=seed + 3) * 0.3,
    }


def _sparsify_ref(t, x, k):
    """sparsify's formula: relu(encoder(x - b_dec)) -> top-k -> sum of decoder rows + b_dec."""
    pre = torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    v, i = pre.topk(k, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, i, v)
    recon = torch.nn.functional.embedding_bag(i, t["W_dec"], per_sample_weights=v, mode="sum") + t["b_dec"]
    return z, recon


def test_sparsify_directory(tmp_path):
    t = _sparsify_tensors()
    cfg = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": D_SAE,
           "k": 4, "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": D_IN}
    path = _write(tmp_path / "layers.3", cfg, t, "sae.safetensors")
    sae = load_sae(path)
    assert detect_format(path) == "sparsify" and sae.cfg.activation == "topk" and sae.cfg.k == 4
    x = _x()
    _check(sae, x, *_sparsify_ref(t, x, 4))


def test_sparsify_expansion_factor_sets_width(tmp_path):
    t = _sparsify_tensors()
    cfg = {"expansion_factor": 4, "num_latents": 0, "k": 3, "d_in": 5}
    t = {"encoder.weight": _rand(20, 5, seed=1), "encoder.bias": torch.zeros(20),
         "W_dec": _rand(20, 5, seed=2), "b_dec": torch.zeros(5)}
    sae = load_sae(_write(tmp_path / "ef", cfg, t, "sae.safetensors"))
    assert (sae.d_in, sae.d_sae) == (5, 20)


def test_sparsify_run_directory_asks_to_pick_a_hookpoint(tmp_path):
    cfg = {"num_latents": D_SAE, "k": 4, "d_in": D_IN}
    for hook in ("layers.1", "layers.2"):
        _write(tmp_path / "run" / hook, cfg, _sparsify_tensors(), "sae.safetensors")
    (tmp_path / "run" / "config.json").write_text("{}")
    with pytest.raises(SAEFormatError) as e:
        load_sae(tmp_path / "run")
    msg = str(e.value)
    assert "layers.1" in msg and "layers.2" in msg and "pick one" in msg and "\n" not in msg


# ------------------------------------------------------------------------- errors
def _one_line_error(path, match: str) -> str:
    with pytest.raises(SAEFormatError) as e:
        load_sae(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and match in msg, msg
    return msg


def test_error_missing_directory_and_file_path(tmp_path):
    _one_line_error(tmp_path / "nope", "no such SAE directory")
    _one_line_error(tmp_path / "Llama-SAE-l19.pth", "no such SAE file")
    f = tmp_path / "file.txt"
    f.write_text("x")
    _one_line_error(f, "not a directory")


def test_error_missing_cfg_and_invalid_json(tmp_path):
    (tmp_path / "empty").mkdir()
    _one_line_error(tmp_path / "empty", "missing cfg.json")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cfg.json").write_text('{"d_in": 6,,}')
    _one_line_error(bad, "invalid JSON")


def test_error_unknown_format(tmp_path):
    d = tmp_path / "unknown"
    d.mkdir()
    (d / "cfg.json").write_text('{"hello": 1}')
    _one_line_error(d, "unknown SAE format")
    (d / "cfg.json").write_text('{"format": "other"}')
    _one_line_error(d, "unknown SAE format")


def test_error_missing_weights_and_missing_tensor_and_wrong_shape(tmp_path):
    sae = _trained_like("topk")
    path = save_sae(sae, tmp_path / "s")
    (path / "sae.safetensors").unlink()
    (path / "sae.pt").write_bytes(b"pickle would be here")  # never unpickled
    _one_line_error(path, "missing weights file sae.safetensors")

    t = _saelens_tensors()
    del t["b_enc"]
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE}
    _one_line_error(_write(tmp_path / "mt", cfg, t, "sae_weights.safetensors"), "missing tensor 'b_enc'")

    t = _saelens_tensors()
    t["W_enc"] = torch.zeros(D_IN, D_SAE + 1)
    msg = _one_line_error(_write(tmp_path / "ws", cfg, t, "sae_weights.safetensors"), "'W_enc' has shape")
    assert f"({D_IN}, {D_SAE})" in msg


def test_error_corrupt_safetensors(tmp_path):
    path = save_sae(_trained_like("topk"), tmp_path / "c")
    data = (path / "sae.safetensors").read_bytes()
    (path / "sae.safetensors").write_bytes(data[: len(data) // 2])
    _one_line_error(path, "corrupt safetensors")
    (path / "sae.safetensors").write_bytes(b"\x00\x01garbage")
    _one_line_error(path, "corrupt safetensors")


def test_error_invalid_config_and_newer_version(tmp_path):
    path = save_sae(_trained_like("topk"), tmp_path / "v")
    cfg = json.loads((path / "cfg.json").read_text())
    (path / "cfg.json").write_text(json.dumps({**cfg, "format_version": 99}))
    _one_line_error(path, "newer")
    (path / "cfg.json").write_text(json.dumps({**cfg, "k": 0}))
    _one_line_error(path, "invalid SAE config")
    (path / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 7}))
    _one_line_error(path, "has shape")


def test_error_non_finite_weights(tmp_path):
    sae = _trained_like("relu")
    with torch.no_grad():
        sae.W_dec[0, 0] = math.nan
    _one_line_error(save_sae(sae, tmp_path / "nan"), "NaN")


def test_check_d_in(tmp_path):
    sae = load_sae(save_sae(_trained_like("topk"), tmp_path / "d"))
    check_d_in(sae, D_IN, "m layer 2")
    with pytest.raises(DimensionMismatchError) as e:
        check_d_in(sae, 384, "sentence-transformers/all-MiniLM-L6-v2 layer 5")
    assert str(e.value) == (
        f"SAE at {tmp_path / 'd'} expects d_in={D_IN}, but reader "
        "sentence-transformers/all-MiniLM-L6-v2 layer 5 has width 384"
    )


def test_the_fingerprint_is_of_the_weights_and_config_only(tmp_path):
    """Training metrics (which hold the seconds a run took) do not change an SAE's identity,
    so the same weights register once; a store from saedata 0.1 is still recognised."""
    import saedata.sae.formats as formats
    from saedata.store import Store

    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, k=2))
    save_sae(sae, tmp_path / "one")
    save_sae(sae, tmp_path / "two")
    (tmp_path / "one" / "metrics.json").write_text('{"seconds": 1.5}')
    (tmp_path / "two" / "metrics.json").write_text('{"seconds": 2.5}')
    assert formats.sae_fingerprint(tmp_path / "one") == formats.sae_fingerprint(tmp_path / "two")
    assert formats.sae_fingerprint(tmp_path / "one", legacy=True) != formats.sae_fingerprint(tmp_path / "two",
                                                                                               legacy=True)
    cfg = {"d_in": 8, "d_sae": 16, "activation": "topk"}
    with Store(tmp_path / "s.duckdb", read_only=False) as store:
        old = store.register_sae("one", cfg, None, formats.sae_fingerprint(tmp_path / "one", legacy=True))
        again = store.register_sae("one", cfg, None, formats.sae_fingerprint(tmp_path / "one"),
                                   also_known_as=[formats.sae_fingerprint(tmp_path / "one", legacy=True)])
        other_copy = store.register_sae("two", cfg, None, formats.sae_fingerprint(tmp_path / "two"))
        assert old == again == other_copy == 1 and store.saes().height == 1


def test_a_full_disk_while_saving_leaves_the_old_sae_whole(tmp_path, monkeypatch):
    import errno

    import safetensors.torch

    from saedata.errors import SAEFormatError

    torch.manual_seed(0)
    save_sae(SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, k=2)), tmp_path / "sae")
    before = {f.name: f.read_bytes() for f in (tmp_path / "sae").iterdir()}

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(SAEFormatError, match="cannot save an SAE .*No space left on device"):
        save_sae(SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, k=2)), tmp_path / "sae")
    assert {f.name: f.read_bytes() for f in (tmp_path / "sae").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["sae"]  # no temporary folder left behind


# ------------------------------------------------------------- hook points, newer SAELens
@pytest.mark.parametrize(("hook_name", "layer", "hook"), [
    ("blocks.3.hook_resid_pre", 3, "resid_pre"),  # the input of block 3: hidden_states[3], not [4]
    ("blocks.3.hook_resid_post", 3, "resid_post"),
    ("blocks.7.hook_mlp_out", 7, "mlp_out"),
    ("blocks.7.hook_attn_out", 7, "attn_out"),
    ("blocks.2.mlp.hook_post", 2, "mlp_post"),
    ("model.layers.12", 12, "resid_post"),
    ("layers.4.mlp", 4, "mlp_out"),
])
def test_saelens_hook_names_map_to_the_hook_and_layer_they_name(tmp_path, hook_name, layer, hook):
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "metadata": {"hook_name": hook_name}}
    sae = load_sae(_write(tmp_path / "sl", cfg, _saelens_tensors(), "sae_weights.safetensors"))
    assert (sae.cfg.layer, sae.cfg.hook, sae.cfg.head) == (layer, hook, None)


def test_saelens_attention_z_sae_keeps_its_head(tmp_path):
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "hook_name": "blocks.5.attn.hook_z",
           "hook_head_index": 2}
    sae = load_sae(_write(tmp_path / "z", cfg, _saelens_tensors(), "sae_weights.safetensors"))
    assert (sae.cfg.layer, sae.cfg.hook, sae.cfg.head) == (5, "z", 2)


@pytest.mark.parametrize("hook_name", ["blocks.3.hook_resid_mid", "blocks.0.attn.hook_q", "hook_embed"])
def test_a_hook_point_saedata_cannot_read_is_refused_by_name(tmp_path, hook_name):
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "hook_name": hook_name}
    msg = _one_line_error(_write(tmp_path / "h", cfg, _saelens_tensors(), "sae_weights.safetensors"), hook_name)
    assert "cannot read" in msg


def test_sparsify_hookpoint_folder_names_give_layer_and_hook(tmp_path):
    cfg = {"num_latents": D_SAE, "k": 4, "d_in": D_IN}
    sae = load_sae(_write(tmp_path / "run" / "layers.6.mlp", cfg, _sparsify_tensors(), "sae.safetensors"))
    assert (sae.cfg.layer, sae.cfg.hook) == (6, "mlp_out")
    sae = load_sae(_write(tmp_path / "run" / "layers.2", cfg, _sparsify_tensors(), "sae.safetensors"))
    assert (sae.cfg.layer, sae.cfg.hook) == (2, "resid_post")


def test_saelens_abstopk_matches_its_formula(tmp_path):
    t = _saelens_tensors(seed=30)
    cfg = {"architecture": "abstopk", "d_in": D_IN, "d_sae": D_SAE, "k": 4, "apply_b_dec_to_input": True}
    sae = load_sae(_write(tmp_path / "abs", cfg, t, "sae_weights.safetensors"))
    assert sae.cfg.activation == "abstopk" and sae.cfg.k == 4
    x = _x()
    hidden = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]  # AbsTopK: top k by |pre|, signs kept
    idx = hidden.abs().topk(4, dim=-1).indices
    z = torch.zeros_like(hidden).scatter(-1, idx, hidden.gather(-1, idx))
    assert bool((z < 0).any())
    _check(sae, x, z, z @ t["W_dec"] + t["b_dec"])


def test_saelens_legacy_scaling_factor_is_loaded_as_saelens_loads_it(tmp_path):
    t = dict(_saelens_tensors(seed=40), scaling_factor=torch.ones(D_SAE))
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "finetuning_scaling_factor": True}
    sae = load_sae(_write(tmp_path / "ones", cfg, t, "sae_weights.safetensors"))  # all ones: no scaling
    x = _x()
    _check(sae, x, *_saelens_ref(t, x, "relu"))
    t["scaling_factor"] = _rand(D_SAE, seed=41).abs() + 0.5  # finetuned: the legacy name of the factor
    sae = load_sae(_write(tmp_path / "ft", cfg, t, "sae_weights.safetensors"))
    _check(sae, x, *_saelens_ref(t, x, "relu", ft=t["scaling_factor"]))
    cfg["finetuning_scaling_factor"] = False
    _one_line_error(_write(tmp_path / "bad", cfg, t, "sae_weights.safetensors"), "scaling_factor")


@pytest.mark.parametrize(("norm", "reason"), [("constant_norm_rescale", "each token separately"),
                                              ("covariance_whitening", "transforms the input")])
def test_unsupported_input_normalisations_say_what_they_do(tmp_path, norm, reason):
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "normalize_activations": norm}
    _one_line_error(_write(tmp_path / "n", cfg, _saelens_tensors(), "sae_weights.safetensors"), reason)


# ------------------------------------------------------------------------ dtype
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_an_sae_saved_in_half_precision_computes_in_it(tmp_path, dtype):
    half = getattr(torch, dtype)
    t = {k: v.to(half) for k, v in _saelens_tensors(seed=60).items()}
    cfg = {"architecture": "topk", "d_in": D_IN, "d_sae": D_SAE, "k": 4, "dtype": dtype}
    path = _write(tmp_path / "half", cfg, t, "sae_weights.safetensors")
    sae = load_sae(path)
    assert sae.cfg.dtype == dtype and sae.W_enc.dtype == half
    x = _x(512)
    hidden = (x.to(half) - t["b_dec"]) @ t["W_enc"] + t["b_enc"]  # SAELens's formula, in the saved dtype
    v, i = hidden.topk(4, dim=-1)
    z_ref = torch.zeros_like(hidden).scatter(-1, i, torch.relu(v))
    z = sae.encode(x)
    assert z.dtype == half
    same = ((z != 0) == (z_ref != 0)).all(dim=-1)
    assert float(same.float().mean()) > 0.97  # rounding may reorder near-ties
    torch.testing.assert_close(z[same], z_ref[same])
    as_float = load_sae(path, dtype="float32")
    assert as_float.cfg.dtype == "float32" and as_float.W_enc.dtype == torch.float32
    assert as_float.encode(x).dtype == torch.float32


def test_a_native_sae_records_and_keeps_its_dtype(tmp_path):
    sae = _trained_like("topk")
    out = save_sae(sae, tmp_path / "sae")
    assert load_sae(out).cfg.dtype == "float32"
    half = load_sae(out, dtype="bfloat16")
    assert half.W_dec.dtype == torch.bfloat16 and half.encode(_x()).dtype == torch.bfloat16


# ------------------------------------------------------------------------ export
def _raw(path: Path, weights: str) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    return json.loads((path / "cfg.json").read_text()), load_file(str(path / weights))


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "topk", "batchtopk", "abstopk"])
def test_export_to_saelens_computes_the_same_codes_by_saelens_formula(tmp_path, activation):
    sae = _trained_like(activation)  # input_scale 0.37, non-zero biases: the fold is exercised
    out = saedata.export_sae(sae, tmp_path / "sl", to="saelens").path
    cfg, t = _raw(out, "sae_weights.safetensors")
    arch = {"relu": "standard", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}.get(activation, activation)
    assert cfg["architecture"] == arch and (cfg["d_in"], cfg["d_sae"]) == (D_IN, D_SAE)
    assert cfg["dtype"] == "float32" and cfg["apply_b_dec_to_input"] is True
    assert cfg["normalize_activations"] == "none" and cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post"
    x = _x()
    hidden = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]  # SAELens's encode, from the files alone
    if activation == "relu":
        z_ref = torch.relu(hidden)
    elif activation in ("jumprelu", "batchtopk"):
        z_ref = torch.relu(hidden) * (hidden > t["threshold"])
    elif activation == "topk":
        v, i = hidden.topk(4, dim=-1)
        z_ref = torch.zeros_like(hidden).scatter(-1, i, torch.relu(v))
    else:
        i = hidden.abs().topk(4, dim=-1).indices
        z_ref = torch.zeros_like(hidden).scatter(-1, i, hidden.gather(-1, i))
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), z_ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(sae.decode(sae.encode(x)), z_ref @ t["W_dec"] + t["b_dec"], atol=1e-4, rtol=1e-4)
        back = load_sae(out)  # and saedata reads it back to the same codes
        torch.testing.assert_close(back.encode(x), sae.encode(x), atol=1e-4, rtol=1e-4)


def test_export_to_sparsify_computes_the_same_codes_by_sparsify_formula(tmp_path):
    sae = _trained_like("topk")
    out = saedata.export_sae(sae, tmp_path / "layers.2", to="sparsify").path
    cfg, t = _raw(out, "sae.safetensors")
    assert (cfg["d_in"], cfg["num_latents"], cfg["k"], cfg["activation"]) == (D_IN, D_SAE, 4, "topk")
    x = _x()
    z_ref, recon_ref = _sparsify_ref(t, x, 4)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), z_ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(sae.decode(sae.encode(x)), recon_ref, atol=1e-4, rtol=1e-4)
    assert (load_sae(out).cfg.layer, load_sae(out).cfg.hook) == (2, "resid_post")


def test_export_refuses_what_a_format_cannot_express(tmp_path):
    with pytest.raises(SAEFormatError, match="sparsify computes TopK SAEs only"):
        saedata.export_sae(_trained_like("jumprelu"), tmp_path / "s", to="sparsify")
    with pytest.raises(SAEFormatError, match="SAELens has no architecture that computes topafa"):
        saedata.export_sae(_trained_like("topafa"), tmp_path / "t", to="saelens")
    assert not (tmp_path / "s").exists() and not (tmp_path / "t").exists()


# ------------------------------------------------------------ SAE sources: hub, Goodfire
@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache holding repo acme/saes with an SAE in layer_3/; the hub is offline."""
    return save_sae(_trained_like("topk"), offline_hub_snapshot(monkeypatch, tmp_path, "acme/saes") / "layer_3")


def test_an_sae_from_the_hub_cache(hub_cache):
    from saedata.sae.formats import resolve_sae

    for source in ("hf://acme/saes/layer_3", f"hf://acme/saes/layer_3@{HUB_COMMIT}"):
        path = resolve_sae(source)
        assert path == hub_cache and load_sae(path).cfg == _trained_like("topk").cfg
    assert resolve_sae("plain/dir") == Path("plain/dir")
    for source, match in [("hf://acme/saes/layer_9", "has no 'layer_9'"), ("hf://acme/other/x", "cannot get it"),
                          ("hf://acme", "expected hf://OWNER/REPO"), ("hf://acme/saes/layer_3@v2", "cannot get it")]:
        with pytest.raises(SAEFormatError) as e:
            resolve_sae(source)
        assert source in str(e.value) and match in str(e.value) and "\n" not in str(e.value)


def _goodfire_tensors(d: int = D_IN, h: int = D_SAE) -> dict[str, torch.Tensor]:
    return {"encoder_linear.weight": _rand(h, d, seed=70), "encoder_linear.bias": _rand(h, seed=71) * 0.1,
            "decoder_linear.weight": _rand(d, h, seed=72), "decoder_linear.bias": _rand(d, seed=73) * 0.3}


def test_goodfire_pth_matches_its_formula(tmp_path):
    t = _goodfire_tensors()
    path = tmp_path / "Llama-3.1-8B-Instruct-SAE-l19.pth"
    torch.save(t, path)
    sae = load_sae(path)
    assert (sae.cfg.activation, sae.cfg.layer, sae.cfg.hook, sae.d_sae) == ("relu", 19, "resid_post", D_SAE)
    x = _x()
    z = torch.relu(x @ t["encoder_linear.weight"].T + t["encoder_linear.bias"])  # Goodfire's encode
    _check(sae, x, z, z @ t["decoder_linear.weight"].T + t["decoder_linear.bias"])
    other = tmp_path / "other-l19.pth"
    torch.save({k: v * 2 for k, v in t.items()}, other)
    from saedata.sae.formats import sae_fingerprint

    assert sae_fingerprint(path) != sae_fingerprint(other)


class _NotATensor:
    pass


def test_a_torch_file_with_code_in_it_is_refused_unloaded(tmp_path):
    path = tmp_path / "evil-l1.pth"
    torch.save({**_goodfire_tensors(), "extra": _NotATensor()}, path)
    _one_line_error(path, "not a weights-only torch file")
    torch.save({"encoder_linear.weight": torch.zeros(3, 2)}, path)
    _one_line_error(path, "not a Goodfire SAE")
