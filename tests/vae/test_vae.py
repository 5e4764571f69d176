"""VAE latent probes on the digits (8x8, shipped with scikit-learn): ARD vs standard prior,
the per-dimension report, save/load, foreign encoders, and `saedata vae` on image folders."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner

from saedata.cli import main
from saedata.config import VAEConfig
from saedata.errors import ConfigError, SAEFormatError
from saedata.vae import encode_array, fit_vae, load_encoder, load_vae, probe_encoder, save_vae
from saedata.vae.latents import decoder_sensitivity

EPOCHS = 60
"""Measured with seeds 0-3 at 60 epochs: standard prior 16-18 relevant dimensions, ARD 9-11;
held-out reconstruction MSE within 3% of each other (0.0126-0.0134)."""


@pytest.fixture(scope="module")
def fitted(digits):
    X, y = digits
    cfg = VAEConfig(d_in=64, d_latent=32, epochs=EPOCHS, device="cpu", image_shape=(8, 8, 1))
    return {prior: fit_vae(X, cfg.replace(prior=prior), y=y) for prior in ("standard", "ard")}


def test_ard_finds_fewer_relevant_dimensions_at_the_same_reconstruction(fitted):
    std, ard = fitted["standard"].summary, fitted["ard"].summary
    assert ard.n_dims == std.n_dims == 32
    assert ard.n_relevant < 32
    assert ard.n_relevant < std.n_relevant  # measured 9 vs 17 (seed 0)
    assert ard.n_relevant <= 14
    assert ard.recon_mse <= 1.25 * std.recon_mse  # measured 0.0129 vs 0.0126
    assert 0.85 <= ard.probe_accuracy <= 1.0  # relevant dimensions' means: measured 0.94
    assert 0.85 <= std.probe_accuracy <= 1.0


def test_report_has_one_typed_row_per_dimension(fitted):
    result = fitted["ard"]
    rep = result.report
    assert rep.columns == ["dim", "kl", "variance", "ard_variance", "sensitivity", "relevance", "active", "relevant"]
    assert rep.dtypes == [pl.Int64, pl.Float64, pl.Float64, pl.Float64, pl.Float64, pl.Float64, pl.Boolean,
                          pl.Boolean]
    assert rep["dim"].to_list() == list(range(32))
    assert rep["relevance"].sum() == pytest.approx(1.0, abs=1e-9)
    assert (rep["kl"] >= -1e-6).all() and (rep["ard_variance"] > 0).all()
    assert int(rep["relevant"].sum()) == result.summary.n_relevant
    assert int(rep["active"].sum()) == result.summary.n_active
    # the relevant dimensions are the top of the relevance ranking and hold >= 99% of it
    top = rep.sort("relevance", descending=True).head(result.summary.n_relevant)
    assert top["relevant"].all() and top["relevance"].sum() >= 0.99
    assert len(result.history) == EPOCHS and result.history[-1]["val_mse"] == pytest.approx(
        result.summary.recon_mse, rel=1e-5)
    assert result.summary.n_rows == len(result.train_rows) == 1797 - len(result.holdout_rows)


def test_ard_prior_variance_is_the_encoded_second_moment(fitted, digits):
    # s_l^2 = mean over training rows of mu_l^2 + sigma_l^2 (ARD-VAE's b_l / a_l with a0 = b0 = 0)
    result = fitted["ard"]
    X, _ = digits
    mu, logvar = encode_array(result.model, X[result.train_rows])
    expected = np.maximum((mu**2 + np.exp(logvar)).mean(0), 1e-6)
    np.testing.assert_allclose(result.model.prior_var.numpy(), expected, rtol=1e-4)
    np.testing.assert_allclose(result.report["ard_variance"].to_numpy(), expected, rtol=1e-4)
    assert torch.equal(fitted["standard"].model.prior_var, torch.ones(32))


def test_decoder_sensitivity_fast_paths_match_the_plain_jacobian(fitted, digits):
    X, _ = digits
    model = fitted["ard"].model
    mu = torch.from_numpy(encode_array(model, X[:10])[0])
    # reference: the full (10, 64, 32) Jacobian, one row at a time
    jac = torch.stack([torch.autograd.functional.jacobian(model.decode_normalised, m[None])[0, :, 0] for m in mu])
    expected = jac.pow(2).sum(1).mean(0)
    exact = decoder_sensitivity(model.decode_normalised, mu)
    torch.testing.assert_close(exact, expected, rtol=1e-4, atol=1e-7)
    estimate = decoder_sensitivity(model.decode_normalised, mu, probes=200, exact_max_dims=0)
    big = expected > 0.05 * expected.max()
    torch.testing.assert_close(estimate[big], expected[big], rtol=0.15, atol=0)


def test_fit_is_deterministic(digits):
    X, _ = digits
    cfg = VAEConfig(d_in=64, d_latent=4, hidden=(16,), epochs=2, device="cpu", seed=3)
    a, b = fit_vae(X[:300], cfg), fit_vae(X[:300], cfg)
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), name
    assert a.summary == b.summary


def test_save_load_round_trip_gives_identical_encodings(fitted, digits, tmp_path):
    X, y = digits
    model = fitted["ard"].model
    path = save_vae(model, tmp_path / "digits.vae")
    assert json.loads((path / "cfg.json").read_text())["format"] == "saedata-vae"
    loaded = load_encoder(path)
    assert loaded.cfg == model.cfg
    for a, b in zip(encode_array(model, X), encode_array(loaded, X)):
        assert np.array_equal(a, b)
    report, summary = probe_encoder(loaded, X, y)
    assert report.columns == fitted["ard"].report.columns
    assert summary.n_rows == 1797 and summary.probe_accuracy > 0.85 and summary.recon_mse < 0.02


def test_bad_configs_and_inputs_are_one_line_errors(digits, tmp_path):
    X, _ = digits
    with pytest.raises(ConfigError, match="prior"):
        VAEConfig(d_in=64, prior="gamma")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="image_shape"):
        VAEConfig(d_in=64, image_shape=(8, 8, 3))
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        fit_vae(X * 16, VAEConfig(d_in=64, likelihood="bernoulli", epochs=1, device="cpu"))
    with pytest.raises(SAEFormatError, match="no such directory"):
        load_encoder(tmp_path / "missing")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(SAEFormatError, match="BertModel is not a VAE encoder"):
        load_encoder(bert)
    (tmp_path / "x.vae").mkdir()
    (tmp_path / "x.vae" / "cfg.json").write_text(json.dumps({"format": "saedata-vae", "d_in": 64}))
    with pytest.raises(SAEFormatError, match="missing weights file"):
        load_vae(tmp_path / "x.vae")


def test_autoencoderkl_without_diffusers_says_how_to_install(tmp_path, monkeypatch):
    akl = tmp_path / "akl"
    akl.mkdir()
    (akl / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "latent_channels": 4}))
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    with pytest.raises(SAEFormatError, match=r"pip install 'saedata\[diffusers\]'"):
        load_encoder(akl)
    result = CliRunner().invoke(main, ["vae", "probe", str(akl), str(tmp_path)])
    assert result.exit_code == 1
    assert "saedata[diffusers]" in result.stderr and len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def digit_pngs(digits, tmp_path_factory):
    """600 digits as 8x8 grayscale PNGs (0-255) in one subfolder per class."""
    from PIL import Image

    X, y = digits
    root = tmp_path_factory.mktemp("digit-pngs") / "digits"
    for i in range(600):
        folder = root / str(y[i])
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.round(X[i].reshape(8, 8) * 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
    return root


def test_cli_fit_on_an_image_folder_writes_the_vae_report_and_pngs(digit_pngs, tmp_path):
    out, report = tmp_path / "digits.vae", tmp_path / "rep" / "vae.html"
    result = CliRunner().invoke(main, ["vae", "fit", str(digit_pngs), "--out", str(out), "--epochs", "20",
                                       "--latent-dim", "8", "--report", str(report)])
    assert result.exit_code == 0, result.stderr
    assert "relevant dims:" in result.stdout and "skipped files: 0" in result.stdout
    assert "read 600 images 8x8x1, 10 labels" in result.stderr
    assert load_vae(out).cfg.image_shape == (8, 8, 1)
    html = report.read_text()
    assert html.count("<img") == 3 and "Latent dimensions" in html
    for name in ("relevance", "map", "traversal"):
        assert (report.parent / f"vae_{name}.png").read_bytes()[:4] == b"\x89PNG"

    probe = CliRunner().invoke(main, ["vae", "probe", str(out), str(digit_pngs), "--sae", "--format", "csv"])
    assert probe.exit_code == 0, probe.stderr
    assert "latent,freq,max_act,top_rows,top_class,class_share" in probe.stdout
    assert "SAE latents on the relevant dimensions" in probe.stderr


def test_cli_skips_and_counts_bad_files(digit_pngs, tmp_path):
    import shutil

    data = tmp_path / "mixed"
    shutil.copytree(digit_pngs / "1", data / "1")
    shutil.copytree(digit_pngs / "7", data / "7")
    (data / "7" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (data / "notes.txt").write_text("not an image")
    result = CliRunner().invoke(main, ["vae", "fit", str(data), "--out", str(tmp_path / "m.vae"), "--epochs", "2",
                                       "--latent-dim", "4", "-v"])
    assert result.exit_code == 0, result.stderr
    assert "skipped files: 2" in result.stdout
    assert "broken.png: unreadable image" in result.stderr and "notes.txt: not an image file" in result.stderr
    assert (tmp_path / "m.vae" / "report.html").is_file()


def test_cli_empty_folder_is_a_one_line_error_and_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "never.vae"
    result = CliRunner().invoke(main, ["vae", "fit", str(tmp_path / "empty"), "--out", str(out)])
    assert result.exit_code == 1
    assert "no files" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_fit_on_an_embedding_table_with_labels(digits, tmp_path):
    X, y = digits
    table = pl.DataFrame({f"f{i}": X[:400, i] for i in range(64)}).with_columns(label=pl.Series(y[:400]))
    table.write_csv(tmp_path / "emb.csv")
    result = CliRunner().invoke(main, ["vae", "fit", str(tmp_path / "emb.csv"), "--label-field", "label",
                                       "--out", str(tmp_path / "t.vae"), "--epochs", "3", "--latent-dim", "4",
                                       "--format", "json"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows and {"dim", "kl", "ard_variance", "relevant"} <= set(rows[0])
    assert "linear probe:" in result.stderr and "read 400 rows x 64 features, 10 labels" in result.stderr
    missing = CliRunner().invoke(main, ["vae", "fit", str(tmp_path / "emb.csv"), "--label-field", "nope",
                                        "--out", str(tmp_path / "u.vae")])
    assert missing.exit_code == 1 and "no column 'nope'" in missing.stderr
    assert math.isfinite(float(rows[0]["kl"]))
