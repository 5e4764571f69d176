"""Probes of representations on the digits: OOD detection from SAE codes, concept purity of
SAE latents vs raw dimensions, linear probes of SAE codes vs the dense embedding."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch
from scipy import sparse

from saedata.analysis.probe import (
    compare_purity,
    concept_purity,
    linear_probe,
    ood_auroc,
    ood_score_parts,
    ood_scores,
    sae_concepts,
)
from saedata.config import VAEConfig
from saedata.errors import ConfigError
from saedata.vae import encode_array, fit_vae, latent_sae


@pytest.fixture(scope="module")
def embedding(digits):
    """A small trained encoder's dense embedding of the digits (standard VAE means, 32-d) and
    the codes of a TopK SAE (128 latents, k=8) trained on it."""
    X, _ = digits
    vae = fit_vae(X, VAEConfig(d_in=64, d_latent=32, prior="standard", epochs=40, holdout=0.0, device="cpu"))
    mu, _ = encode_array(vae.model, X)
    sae = latent_sae(mu, expansion=4, k=8, epochs=100).sae
    with torch.no_grad():
        codes = sae.encode(torch.from_numpy(mu)).numpy()
    return mu, codes


def test_sae_codes_probe_within_margin_of_the_dense_embedding(embedding, digits):
    mu, codes = embedding
    _, y = digits
    assert (np.count_nonzero(codes, axis=1) <= 8).all()
    dense, sae = linear_probe(mu, y), linear_probe(codes, y)
    assert dense.mean > 0.9  # measured 0.963
    assert abs(sae.mean - dense.mean) <= 0.03  # measured 0.950 (SAE codes) vs 0.963 (dense)
    assert 0 <= sae.std < 0.05
    # sparse input is scaled without centring (it stays sparse) and gives a close answer
    sub = linear_probe(codes[:600], y[:600])
    assert abs(linear_probe(sparse.csr_matrix(codes[:600]), y[:600]).mean - sub.mean) <= 0.03


def test_ood_auroc_above_chance_on_a_digit_class_split(digits):
    X, y = digits
    rng = np.random.default_rng(0)
    inside = rng.permutation(np.flatnonzero(y < 5))
    train, test_in = inside[: len(inside) // 2], inside[len(inside) // 2 :]
    test_out = np.flatnonzero(y >= 5)
    sae = latent_sae(X[train], expansion=4, k=8, epochs=100).sae  # a TopK SAE, 64 -> 256, k=8
    test = np.concatenate([test_in, test_out])
    is_out = np.r_[np.zeros(len(test_in), bool), np.ones(len(test_out), bool)]
    scores = ood_scores(sae, X[train], X[test])
    assert scores.score.shape == (len(test),)
    auroc = ood_auroc(scores, is_out)
    assert auroc > 0.9  # measured 0.987 (digits 0-4 in, 5-9 out); chance is 0.5
    assert ood_auroc(scores.recon_error, is_out) > 0.6 and ood_auroc(scores.code_distance, is_out) > 0.6


def test_ood_auroc_and_score_parts_by_hand():
    assert ood_auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert ood_auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert ood_auroc([0.5, 0.5, 0.5, 0.5], [False, True, False, True]) == 0.5
    with pytest.raises(ConfigError, match="at least one"):
        ood_auroc([0.1, 0.2], [True, True])
    train = np.eye(4)[[0, 0, 1, 1, 2, 2]]  # codes on three directions
    parts = ood_score_parts(train, np.eye(4)[[0, 3]], k=1)
    # a seen direction is at distance 0, an unseen one at 1 - cos = 1
    np.testing.assert_allclose(parts.code_distance, [0.0, 1.0], atol=1e-12)


def test_concept_purity_of_sae_latents_vs_raw_dimensions(embedding, digits):
    mu, codes = embedding
    _, y = digits
    cmp = compare_purity(codes, mu, y)
    assert cmp.latents.columns == ["latent", "n_active", "entropy", "best_class", "best_auroc"]
    assert cmp.latents.height == 128 and cmp.raw.height == 32 and "sign" in cmp.raw.columns
    used = cmp.latents.filter(pl.col("n_active") > 0)
    assert used["entropy"].min() >= 0 and used["entropy"].max() <= math.log(10) + 1e-9
    assert used["best_auroc"].min() >= 0.5 and used["best_auroc"].max() <= 1.0
    s = {r["features"]: r for r in cmp.summary.iter_rows(named=True)}
    assert set(s) == {"sae", "raw"} and s["sae"]["max_entropy"] == pytest.approx(math.log(10))
    # measured: median entropy 1.28 (sae) vs 1.50 (raw); mean best-per-class AUROC 0.84 vs 0.90
    assert s["sae"]["median_entropy"] < s["raw"]["median_entropy"]
    assert s["sae"]["mean_class_auroc"] > 0.75 and s["raw"]["mean_class_auroc"] > 0.75
    assert cmp.per_class.height == 10 and (cmp.per_class["sae_auroc"] > 0.6).all()  # lowest measured 0.71


def test_concept_purity_by_hand_dense_and_sparse_agree():
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    codes = np.zeros((8, 3))
    codes[y == 1, 0] = [2.0, 1.0]  # latent 0 fires only on class 1: pure
    codes[:, 1] = 1.0  # latent 1 fires everywhere: mixed
    df = concept_purity(codes, y)
    row0, row1, row2 = df.iter_rows(named=True)
    assert row0["entropy"] == 0.0 and row0["best_class"] == "1" and row0["best_auroc"] == 1.0
    assert row1["n_active"] == 8 and row1["best_auroc"] == 0.5
    assert row2["n_active"] == 0 and row2["entropy"] is None and row2["best_auroc"] == 0.5
    assert df.equals(concept_purity(sparse.csr_matrix(codes), y))


def test_linear_probe_is_deterministic_and_checks_labels(digits):
    X, y = digits
    a, b = linear_probe(X[:400], y[:400], seed=1), linear_probe(X[:400], y[:400], seed=1)
    assert a == b and 0.85 < a.mean <= 1.0
    with pytest.raises(ConfigError, match="two distinct labels"):
        linear_probe(X[:10], np.zeros(10))
    with pytest.raises(ConfigError, match="one entry per row"):
        linear_probe(X[:10], y[:9])


def test_sae_concepts_lists_latents_with_their_classes(embedding, digits):
    _, codes = embedding
    _, y = digits
    df = sae_concepts(codes, y, ids=[f"img{i}" for i in range(len(y))], top=3)
    assert df.columns == ["latent", "freq", "max_act", "top_rows", "top_class", "class_share"]
    assert df["freq"].is_sorted(descending=True)
    assert all(len(r) <= 3 and r[0].startswith("img") for r in df["top_rows"].to_list())
    assert df["class_share"].min() >= 0.1 and df["class_share"].max() <= 1.0
