"""Gradient SAEs (Olmo et al. 2025): the selection rule on a tiny causal GPT-2's activations
and gradients, and the trainer (tests/embed/test_methods.py trains one on a corpus)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saedata.config import ReaderConfig, SAEConfig, TrainConfig
from saedata.errors import ConfigError, DimensionMismatchError
from saedata.reader import Reader
from saedata.sae import activations as A
from saedata.sae.gsae import GSAETrainer, gradient_topk, gsae_forward, loss_effect
from saedata.sae.train import initialize_sae

TEXTS = ["The dog chased the ball across the park.", "Our lab measured the data carefully, twice?", "Hi there"]


@pytest.fixture(scope="module")
def reader(tiny_gpt2) -> Reader:
    return Reader(ReaderConfig(model=tiny_gpt2, layer=0, hook="resid_post", device="cpu"), grads=True)


def _ranked_sets(score: np.ndarray, k: int) -> list[frozenset]:
    return [frozenset(np.argsort(-row, kind="stable")[:k].tolist()) for row in score]


def test_the_selection_differs_from_topk_exactly_where_the_gradient_changes_the_ranking(reader):
    batch = reader.read(TEXTS * 4, grads=True)
    k, beta = 4, 2.0
    sae = initialize_sae(SAEConfig(d_in=32, d_sae=64, k=k), batch.acts, seed=1)
    with torch.no_grad():
        pre = sae.pre_acts(batch.acts)
        effect = loss_effect(sae, batch.grads)
        chosen = gradient_topk(pre, effect, k, beta)
        plain = A.topk(pre, k)
    got = [frozenset(r) for r in chosen.indices.tolist()]
    topk = [frozenset(r) for r in plain.indices.tolist()]
    # independently: the k best of pre * (1 + beta |W_dec g / s|), and of pre alone
    p, e = pre.double().numpy(), (batch.grads.double() / float(sae.input_scale) @ sae.W_dec.detach().double().T).abs()
    by_score, by_pre = _ranked_sets(p + beta * p * e.numpy(), k), _ranked_sets(p, k)
    assert got == by_score and topk == by_pre
    differs = [a != b for a, b in zip(got, topk)]
    assert differs == [a != b for a, b in zip(by_score, by_pre)]
    assert 0 < sum(differs) < len(differs)  # the gradient reorders some tokens' latents, not all
    torch.testing.assert_close(chosen.values, torch.relu(pre.gather(1, chosen.indices)))  # values stay TopK's
    # beta = 0 is TopK, and the training forward selects what gradient_topk selects
    assert [frozenset(r) for r in gradient_topk(pre, effect, k, 0.0).indices.tolist()] == topk
    out = gsae_forward(sae, batch.acts, batch.grads, beta)
    assert [frozenset(r) for r in out.codes.indices.tolist()] == got
    # inference is plain TopK
    assert [frozenset(r) for r in sae.encode_sparse(batch.acts).indices.tolist()] == topk



def test_the_gsae_trainer_takes_activations_with_gradients_side_by_side():
    torch.manual_seed(0)
    x = torch.randn(600, 8)
    sc = SAEConfig(d_in=8, d_sae=16, k=2)
    tc = TrainConfig(method="gsae", batch_size=100, max_tokens=1200, stop_tolerance=0, device="cpu")
    result = GSAETrainer(sc, tc, progress=False).fit(torch.cat([x, torch.randn(600, 8)], 1), x[:100])
    assert result.metrics["steps"] == 12 and "heldout_fvu" in result.metrics
    with pytest.raises(DimensionMismatchError, match="width 8"):
        GSAETrainer(sc, tc, progress=False).fit(x)


def test_a_gsae_is_a_topk_sae():
    with pytest.raises(ConfigError, match="TopK"):
        TrainConfig(method="gsae", activation="relu")
    with pytest.raises(ConfigError, match="TopK"):
        GSAETrainer(SAEConfig(d_in=4, d_sae=8, activation="relu"), TrainConfig(device="cpu"))
