"""SparseAutoencoder maths, units and training helpers; metrics formulas."""

from __future__ import annotations

import math

import pytest
import torch

from saedata.config import SAEConfig, TrainConfig
from saedata.sae import ForwardOutput, SparseAutoencoder, SparseCodes, dead_fraction, fvu, mean_l0
from saedata.sae.metrics import afa_ratio, afa_score, decoder_coherence, epsilon_lbo, fire_counts

ALL = ["relu", "jumprelu", "topk", "batchtopk", "abstopk", "topafa", "mp"]


def make_sae(
    activation: str = "topk", d_in: int = 8, d_sae: int = 32, k: int = 3, scale: float = 2.0, **kw
) -> SparseAutoencoder:
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=d_sae, activation=activation, k=k, **kw))
    with torch.no_grad():
        sae.b_enc.normal_(std=0.1)
        sae.b_dec.normal_(std=0.3)
        sae.input_scale.fill_(scale)
        if activation == "jumprelu":
            sae.log_threshold.fill_(math.log(0.2))
    return sae


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(20, 8) * 0.7 + 0.2


def test_shapes_properties_and_tied_unit_init():
    sae = make_sae()
    assert sae.W_enc.shape == (8, 32) and sae.b_enc.shape == (32,)
    assert sae.W_dec.shape == (32, 8) and sae.b_dec.shape == (8,)
    assert sae.input_scale.shape == () and (sae.d_in, sae.d_sae) == (8, 32)
    assert sae.device == torch.device("cpu")
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32))
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    assert isinstance(sae.cfg, SAEConfig)
    with pytest.raises(AttributeError):
        sae.threshold  # noqa: B018  (topk has none)


def test_pre_acts_formula_and_units(x):
    sae = make_sae("relu")
    expected = (x * 2.0 - sae.b_dec) @ sae.W_enc + sae.b_enc
    torch.testing.assert_close(sae.pre_acts(x), expected)
    z = sae.encode(x)
    # decode returns original units: (z W_dec + b_dec) / s
    torch.testing.assert_close(sae.decode(z), (z @ sae.W_dec + sae.b_dec) / 2.0)


@pytest.mark.parametrize("activation", ALL)
def test_encode_sparse_and_decode_sparse_agree_with_dense(activation, x):
    sae = make_sae(activation).eval()
    if activation == "batchtopk":
        sae.train()
    dense = sae.encode(x)
    codes = sae.encode_sparse(x)
    assert isinstance(codes, SparseCodes) and codes.indices.dtype == torch.int64
    m = codes.values.shape[1]
    if activation in ("topk", "abstopk", "mp"):
        assert m == 3
    else:
        assert m == max(1, int((dense != 0).sum(-1).max()))
    rebuilt = torch.zeros_like(dense).scatter_add(1, codes.indices, codes.values)
    torch.testing.assert_close(rebuilt, dense)
    torch.testing.assert_close(sae.decode_sparse(codes), sae.decode(dense), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("activation", ALL)
def test_forward_outputs_and_loss_terms(activation, x):
    sae = make_sae(activation)
    tc = TrainConfig(l1_coeff=0.5, l0_coeff=0.01)
    out = sae(x, train_cfg=tc)
    assert isinstance(out, ForwardOutput)
    assert out.recon.shape == x.shape
    torch.testing.assert_close(out.fvu, fvu(x, out.recon), rtol=1e-5, atol=1e-6)
    assert float(out.l0) == pytest.approx(float(mean_l0(out.codes)))
    x_s = x * 2.0
    torch.testing.assert_close(out.mse, ((out.recon * 2.0 - x_s) ** 2).sum(-1).mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, out.mse + out.aux_loss)
    if activation == "relu":
        z = out.codes
        torch.testing.assert_close(out.aux_loss, 0.5 * (z.abs() * sae.W_dec.norm(dim=1)).sum(-1).mean())
    if activation == "jumprelu":
        torch.testing.assert_close(out.aux_loss, 0.01 * out.l0)
    if activation in ("topk", "abstopk"):
        assert float(out.aux_loss) == 0.0  # nothing dead
        assert isinstance(out.codes, SparseCodes)
    if activation == "topafa":
        assert float(out.aux_loss.detach()) > 0  # the AFA norm-matching term
    if activation == "mp":
        assert float(out.aux_loss) == 0.0 and isinstance(out.codes, SparseCodes)
    out.loss.backward()
    assert sae.W_dec.grad is not None and sae.b_dec.grad is not None
    assert (sae.W_enc.grad is None) == (activation == "mp")  # mp encodes with the decoder


def test_sparse_and_dense_decoder_give_same_forward(x):
    sae = make_sae("topk")
    a = sae(x, sparse_decoder=True)
    b = sae(x, sparse_decoder=False, sparse_encoder=False)
    torch.testing.assert_close(a.recon, b.recon, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-5, rtol=1e-5)


def test_auxk_uses_dead_latents_only(x):
    sae = make_sae("topk")
    dead = torch.zeros(32, dtype=torch.bool)
    assert float(sae(x, dead_mask=dead).aux_loss) == 0.0
    dead[:10] = True
    out = sae(x, dead_mask=dead, train_cfg=TrainConfig(auxk_alpha=1.0))
    assert float(out.aux_loss.detach()) > 0
    out.aux_loss.backward()
    # only dead latents' decoder rows receive AuxK gradient
    assert sae.W_dec.grad[10:].abs().sum() == 0
    assert sae.W_dec.grad[:10].abs().sum() > 0


def test_batchtopk_learns_threshold_in_train_and_uses_it_in_eval(x):
    sae = make_sae("batchtopk", k=4)
    assert float(sae.threshold) < 0  # not estimated yet
    out = sae.train()(x)
    kept = out.codes[out.codes > 0]
    assert int((out.codes != 0).sum()) == 4 * x.shape[0]
    assert float(sae.threshold) == pytest.approx(float(kept.min().detach()))
    sae.eval()
    pre = sae.pre_acts(x)
    expected = torch.relu(pre) * (pre > sae.threshold)
    torch.testing.assert_close(sae.encode(x), expected)
    # eval codes of a row do not depend on the rest of the batch
    torch.testing.assert_close(sae.encode(x[:1]), expected[:1])


def test_jumprelu_threshold_property_and_gradient(x):
    sae = make_sae("jumprelu", jumprelu_bandwidth=0.5)
    assert torch.allclose(sae.threshold, torch.full((32,), 0.2))
    out = sae(x, train_cfg=TrainConfig(l0_coeff=1.0))
    out.loss.backward()
    assert sae.log_threshold.grad is not None and sae.log_threshold.grad.abs().sum() > 0


def test_decoder_helpers():
    sae = make_sae()
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.set_decoder_norm_to_unit()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32), atol=1e-6)
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.remove_gradient_parallel_to_decoder()
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(32), atol=1e-6)


# ----------------------------------------------------------------------- metrics
def test_fvu_and_l0_and_dead_fraction():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    assert float(fvu(x, x)) == 0.0
    assert float(fvu(x, x.mean(0).expand_as(x))) == pytest.approx(1.0)
    # ||x - x^||^2 / ||x - mean||^2 = 2 / 4
    assert float(fvu(x, x + torch.tensor([[1.0, 0], [0, 1.0]]))) == pytest.approx(0.5)
    z = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 5.0]])
    assert float(mean_l0(z)) == 1.5
    codes = SparseCodes(torch.tensor([[1.0, 0.0], [2.0, 3.0]]), torch.tensor([[0, 0], [2, 1]]))
    assert float(mean_l0(codes)) == 1.5
    assert fire_counts(codes, 4).tolist() == [1, 1, 1, 0]
    assert fire_counts(z, 3).tolist() == [0, 1, 2]
    assert dead_fraction(torch.tensor([0, 3, 0, 1])) == 0.5
    assert dead_fraction(torch.tensor([10, 500, 200, 0]), dead_tokens=200) == 0.5


def test_epsilon_lbo_is_zero_for_orthonormal_exact_codes_and_matches_hand_value():
    W = torch.eye(4)
    codes = torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.0]])
    z = codes @ W
    assert torch.allclose(afa_ratio(codes, z, W), torch.ones(2))
    assert torch.allclose(epsilon_lbo(codes, z, W), torch.zeros(2))
    # two unit atoms at cosine c: ||z||^2 = 1 + 1 + 2c, ||f||_1^2 - ||f||_2^2 = 2  -> eps = c
    c = 0.3
    W2 = torch.tensor([[1.0, 0.0], [c, math.sqrt(1 - c * c)]])
    f = torch.tensor([[1.0, 1.0]])
    assert float(epsilon_lbo(f, f @ W2, W2)[0]) == pytest.approx(c)
    assert decoder_coherence(W2)[0] == pytest.approx(c)
    # a single atom gives no bound
    assert torch.isnan(epsilon_lbo(torch.tensor([[2.0, 0.0]]), torch.tensor([[2.0, 0.0]]), W2)).all()


def test_afa_score_on_a_model(x):
    sae = make_sae("topk").eval()
    score = afa_score(sae, x, batch_size=7)
    assert score.ratio.shape == (20,) and score.epsilon.shape == (20,)
    assert score.ratio_mean > 0
    assert score.epsilon_lbo >= score.epsilon_mean >= 0
