"""Semi-NMF (Shafran et al. 2025): the factorisation recovers planted parts, its error never
rises, and the snmf SAE's codes are non-negative, k-sparse least-squares fits
(tests/embed/test_methods.py trains one on a corpus and embeds with it)."""

from __future__ import annotations

import pytest
import torch

from saedata.config import SAEConfig, TrainConfig
from saedata.errors import ConfigError
from saedata.sae.activations import keep_top_positive
from saedata.sae.snmf import semi_nmf, train_snmf, winner_take_all

PARTS, D_IN, NEURONS = 16, 64, 8


def planted(n: int = 1000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows are non-negative combinations of 1 or 2 of 16 unit parts, each part a signed
    combination of 8 of the 64 neurons (as semi-NMF assumes of MLP activations)."""
    g = torch.Generator().manual_seed(seed)
    D = torch.zeros(PARTS, D_IN)
    for i in range(PARTS):
        D[i, torch.randperm(D_IN, generator=g)[:NEURONS]] = torch.randn(NEURONS, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    Z = torch.zeros(n, PARTS)
    for r in range(n):
        active = torch.randperm(PARTS, generator=g)[: int(torch.randint(1, 3, (1,), generator=g))]
        Z[r, active] = 0.5 + torch.rand(len(active), generator=g)
    return Z @ D, D


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return planted()


@pytest.fixture(scope="module")
def fitted(data):
    X, _ = data
    return semi_nmf(X, 24, sparsity=NEURONS / D_IN, iters=150, seed=0)


def test_the_factorisation_recovers_the_planted_parts(data, fitted):
    X, D = data
    assert fitted.Z.min() >= 0  # codes are non-negative
    assert ((fitted.D != 0).sum(1) <= NEURONS).all()  # each feature combines at most 8 neurons
    torch.testing.assert_close(fitted.D.norm(dim=1), torch.ones(24))
    best = (D @ fitted.D.T).max(dim=1).values
    # observed: 16 of 16 parts found with cosine > 0.9, FVU 0.0007
    assert (best > 0.9).float().mean() >= 0.9
    fvu = fitted.errors[-1] / float((X - X.mean(0)).pow(2).sum())
    assert fvu < 0.02


def test_the_reconstruction_error_falls_monotonically(fitted):
    errors = torch.tensor(fitted.errors, dtype=torch.float64)
    assert len(errors) == 151
    rises = (errors[1:] - errors[:-1]) / errors[:-1]
    assert rises.max() <= 1e-6  # never rises (up to float rounding)
    assert errors[-1] < 0.05 * errors[0]


def test_the_safeguard_is_needed(fitted):
    """The paper's truncated least squares alone would have raised the error at some
    iterations on these data: semi_nmf took the projected-gradient step there instead."""
    assert 0 < fitted.fallbacks < 150


def test_winner_take_all_keeps_the_largest_weights_of_each_feature():
    D = torch.tensor([[0.1, -3.0, 2.0, 0.5], [1.0, 0.0, -0.2, 4.0]])
    assert winner_take_all(D, 2).tolist() == [[0.0, -3.0, 2.0, 0.0], [1.0, 0.0, 0.0, 4.0]]
    assert torch.equal(winner_take_all(D, 4), D)


def test_the_snmf_sae_codes_are_non_negative_k_sparse_and_improve_on_projections(data):
    X, D = data
    sc = SAEConfig(d_in=D_IN, d_sae=24, activation="snmf", k=3)
    tc = TrainConfig(method="snmf", snmf_sparsity=NEURONS / D_IN, snmf_iters=150, device="cpu")
    result = train_snmf(sc, tc, X)
    sae = result.sae
    codes = sae.encode_sparse(X)
    assert codes.values.shape == (X.shape[0], 3) and codes.values.min() >= 0
    # the projections alone (0 steps) reconstruct worse than the refined codes
    projections = load_sae_copy(sae, snmf_steps=0)
    err = (sae.decode_sparse(codes) - X).pow(2).sum()
    err0 = (projections.decode_sparse(projections.encode_sparse(X)) - X).pow(2).sum()
    assert err < err0
    m = result.metrics
    # observed: factor_fvu 0.0007; the 3-sparse codes: fvu 0.018 (0.116 from the scaled projections alone)
    assert m["factor_fvu"] < 0.01 and m["fvu"] < 0.05 and m["l0"] <= 3.0
    assert [h["step"] for h in result.history][:2] == [0.0, 1.0]


def load_sae_copy(sae, **changes):
    from saedata.sae import SparseAutoencoder

    other = SparseAutoencoder(sae.cfg.replace(**changes))
    other.load_state_dict(sae.state_dict())
    return other.eval()


def test_each_encode_step_cannot_raise_a_rows_error(data):
    X, _ = data
    sc = SAEConfig(d_in=D_IN, d_sae=24, activation="snmf", k=3)
    sae = train_snmf(sc, TrainConfig(method="snmf", snmf_iters=20, device="cpu"), X).sae
    errs = []
    for steps in range(6):
        s = load_sae_copy(sae, snmf_steps=steps)
        errs.append((s.decode_sparse(s.encode_sparse(X)) - X).pow(2).sum(1))
    for before, after in zip(errs, errs[1:]):
        assert (after <= before * (1 + 1e-5) + 1e-6).all()


def test_projected_nonnegative_topk_is_the_projection():
    z = torch.tensor([[0.25, -1.0, 2.0, 0.125], [-0.5, -0.25, -0.125, -3.0]])
    assert keep_top_positive(z, 2).tolist() == [[0.25, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]]


def test_the_factorisation_is_deterministic_on_cpu(data):
    X, _ = data
    a = semi_nmf(X[:300], 12, sparsity=0.25, iters=10, seed=3)
    b = semi_nmf(X[:300], 12, sparsity=0.25, iters=10, seed=3)
    assert torch.equal(a.D, b.D) and torch.equal(a.Z, b.Z)


def test_method_and_activation_must_agree():
    assert TrainConfig(method="snmf").activation == "snmf"
    with pytest.raises(ConfigError, match="--method snmf"):
        TrainConfig(activation="snmf")
    with pytest.raises(ConfigError, match="not --activation relu"):
        TrainConfig(method="snmf", activation="relu")
    with pytest.raises(ConfigError, match="snmf_sparsity"):
        TrainConfig(method="snmf", snmf_sparsity=0)

