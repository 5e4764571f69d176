"""Training designs beside the activations: the variational TopK SAE (Baker and Li 2025) and
group bias adaptation (Chen et al. 2025), each by its defining property, and both trainers'
checkpoints (a killed run resumes to the same weights)."""

from __future__ import annotations

import pytest
import torch

from saedata.config import SAEConfig, TrainConfig
from saedata.errors import ConfigError
from saedata.sae import load_sae
from saedata.sae.gba import GBATrainer, adapt_biases, group_targets, window_steps
from saedata.sae.train import initialize_sae
from saedata.sae.vsae import VarianceHead, VSAETrainer, gaussian_kl, vsae_forward
from tests.sae.test_train import _Crash, assert_same_weights, planted, weights


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return planted(n=8192, active=3, seed=0)[0]


def _cfgs(method: str, steps: int, activation: str = "topk", **train) -> tuple[SAEConfig, TrainConfig]:
    sc = SAEConfig(d_in=32, d_sae=64, activation=activation, k=4)
    tc = TrainConfig(method=method, batch_size=128, max_tokens=128 * steps, buffer_tokens=1024,
                     dead_tokens=128 * 10, lr=3e-3, device="cpu", stop_tolerance=0, **train)
    return sc, tc


def _crashing(trainer: type, at_step: int) -> type:
    """``trainer`` killed right after step ``at_step`` (as a power cut would)."""

    class Crashing(trainer):  # type: ignore[misc, valid-type]
        def _after_step(self, step: int) -> None:
            if step == at_step:
                raise _Crash

    return Crashing


# ------------------------------------------------------------------------------ vSAE
def test_the_vsae_objective_is_topk_of_a_posterior_sample_plus_the_gaussian_kl(data):
    x = data[:256]
    sae = initialize_sae(SAEConfig(d_in=32, d_sae=64, k=4), x, seed=1)
    head = VarianceHead(32, 64)
    with torch.no_grad():
        head.W_var.normal_(0, 0.05, generator=torch.Generator().manual_seed(2))
        head.b_var.fill_(-1.0)
    out = vsae_forward(sae, head, x, kl_coeff=0.3, generator=torch.Generator().manual_seed(5))
    # independently: mu, log s^2, the same noise, the k largest of the sample, relu'd
    with torch.no_grad():
        centred = x * sae.input_scale - sae.b_dec
        mu = centred @ sae.W_enc + sae.b_enc
        log_var = centred @ head.W_var + head.b_var
        eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(5))
        u = mu + (0.5 * log_var).exp() * eps
        top = u.topk(4, dim=-1)
        kl = 0.5 * (mu**2 + log_var.exp() - 1 - log_var).sum(-1).mean()
    assert [set(r) for r in out.codes.indices.tolist()] == [set(r) for r in top.indices.tolist()]
    torch.testing.assert_close(out.codes.values.sort(-1).values, torch.relu(top.values).sort(-1).values)
    torch.testing.assert_close(out.aux_loss.detach(), 0.3 * kl)  # no dead latents: the KL alone
    torch.testing.assert_close(out.loss.detach(), out.mse.detach() + 0.3 * kl)
    assert float(gaussian_kl(torch.zeros(3, 5), torch.zeros(3, 5))) == 0.0  # the prior itself
    # the sample differs between calls (the selection is stochastic while training)...
    other = vsae_forward(sae, head, x, kl_coeff=0.3, generator=torch.Generator().manual_seed(6))
    assert [set(r) for r in other.codes.indices.tolist()] != [set(r) for r in out.codes.indices.tolist()]
    # ...and inference is TopK of the posterior means
    assert [set(r) for r in sae.encode_sparse(x).indices.tolist()] == [set(r) for r in mu.topk(4).indices.tolist()]


def test_the_kl_term_pulls_the_posterior_means_to_the_prior_at_a_cost_in_reconstruction(data):
    mean_abs, fvu = {}, {}
    for kl in (0.0, 0.5):
        sc, tc = _cfgs("vsae", 150, vsae_kl=kl)
        result = VSAETrainer(sc, tc, progress=False).fit(data)
        with torch.no_grad():
            mean_abs[kl] = float(result.sae.pre_acts(data).abs().mean())
        fvu[kl] = result.metrics["fvu"]
    # observed: mean |mu| 0.77 -> 0.25, FVU 0.61 -> 0.90 (whether latents die is the benchmark's question)
    assert mean_abs[0.5] < 0.5 * mean_abs[0.0]
    assert fvu[0.5] > fvu[0.0] + 0.1


def test_a_killed_vsae_run_resumes_to_the_same_weights_variance_head_included(data, tmp_path):
    sc, tc = _cfgs("vsae", 30, checkpoint_every=10)
    full = VSAETrainer(sc, tc, out_dir=tmp_path / "full", progress=False).fit(data)

    with pytest.raises(_Crash):
        _crashing(VSAETrainer, at_step=17)(sc, tc, out_dir=tmp_path / "resumed", progress=False).fit(data)
    state = torch.load(tmp_path / "resumed" / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert set(state["extra"]["variance_head"]) == {"W_var", "b_var"}
    resumed = VSAETrainer(sc, tc, out_dir=tmp_path / "resumed", progress=False).fit(data)
    assert_same_weights(weights(full), weights(resumed))
    saved = load_sae(tmp_path / "resumed")
    assert saved.cfg.activation == "topk"  # a vSAE saves as the TopK SAE of its posterior means


def test_a_vsae_is_a_topk_sae():
    with pytest.raises(ConfigError, match="TopK"):
        TrainConfig(method="vsae", activation="relu")
    with pytest.raises(ConfigError, match="at least 0"):
        TrainConfig(method="vsae", vsae_kl=-1)


# ------------------------------------------------------------------------------- GBA
def test_group_targets_are_geometric_and_add_up_to_k():
    t = group_targets(d_sae=100, k=5, groups=4, spread=27.0)
    assert abs(float(t.sum()) - 5.0) < 1e-4
    firsts = [float(t[i]) for i in (0, 25, 50, 75)]  # four groups of 25
    assert [round(a / b, 4) for a, b in zip(firsts, firsts[1:])] == [3.0, 3.0, 3.0]
    assert len(set(t[:25].tolist())) == 1
    # a window holds enough batches for the rarest target to fire about ten times
    assert window_steps(t, batch_size=100) == int(-(-10 // (float(t.min()) * 100)))


def test_biases_fall_where_a_latent_fires_too_often_and_rise_to_zero_where_it_is_silent():
    b = torch.tensor([-1.0, -1.0, -1.0, -0.01, 0.0])
    fires = torch.tensor([50, 5, 0, 0, 20])  # of 100 tokens
    peaks = torch.tensor([2.0, 4.0, 0.0, 0.0, 3.0])
    targets = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.1])
    adapt_biases(b, fires, peaks, 100, targets, rate=0.1)
    # 0.5 > 0.1: down by 0.1 * 2; 0.05 <= 0.1: kept; silent: up by 0.1 * median(2, 4, 3) = 0.3,
    # never above 0; 0.2 > 0.1: down by 0.3
    torch.testing.assert_close(b, torch.tensor([-1.2, -1.0, -0.7, 0.0, -0.3]))


def test_gba_trains_on_the_error_alone_and_its_biases_hold_each_group_near_its_target(data):
    sc, tc = _cfgs("gba", 400, activation="relu", gba_groups=4, gba_spread=8.0)
    trainer = GBATrainer(sc, tc, progress=False)
    result = trainer.fit(data)
    assert all(h["aux_loss"] == 0.0 and h["loss"] == h["mse"] for h in result.history)  # no L1, no L0 term
    sae = result.sae
    assert sae.cfg.activation == "relu" and bool((sae.b_enc <= 0).all())
    with torch.no_grad():
        freq = (sae.encode(data) > 0).float().mean(0)
    targets = group_targets(64, 4, 4, 8.0)
    # observed: group frequencies 0.130/0.062/0.033/0.017 against targets 0.133/0.067/0.033/0.017, L0 3.86
    for g in range(4):
        got, want = float(freq[g * 16:(g + 1) * 16].mean()), float(targets[g * 16])
        assert want / 1.5 < got < want * 1.3, (g, got, want)
    assert 3.0 < float((sae.encode(data) > 0).sum(-1).float().mean()) < 4.5  # mean L0 near k
    # the biases move only by adaptation: within the first window no step changes them
    first = GBATrainer(*_cfgs("gba", trainer.window - 1, activation="relu", gba_groups=4, gba_spread=8.0),
                       progress=False).fit(data).sae
    assert trainer.window > 1 and bool((first.b_enc == 0).all()) and not torch.equal(first.W_enc, sae.W_enc)


def test_a_killed_gba_run_resumes_to_the_same_weights_and_window(data, tmp_path):
    sc, tc = _cfgs("gba", 40, activation="relu", gba_groups=2, gba_spread=2.0, checkpoint_every=10)
    full = GBATrainer(sc, tc, out_dir=tmp_path / "full", progress=False).fit(data)

    with pytest.raises(_Crash):
        _crashing(GBATrainer, at_step=23)(sc, tc, out_dir=tmp_path / "resumed", progress=False).fit(data)
    resumed = GBATrainer(sc, tc, out_dir=tmp_path / "resumed", progress=False).fit(data)
    assert_same_weights(weights(full), weights(resumed))
    assert load_sae(tmp_path / "resumed").cfg.activation == "relu"


def test_gba_makes_a_relu_sae():
    assert TrainConfig(method="gba").activation == "relu"  # topk, the option's default, becomes relu
    with pytest.raises(ConfigError, match="ReLU"):
        TrainConfig(method="gba", activation="jumprelu")
    with pytest.raises(ConfigError, match="gba needs"):
        TrainConfig(method="gba", gba_spread=0.5)
