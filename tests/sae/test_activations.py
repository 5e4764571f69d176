"""Each activation function against the property that defines it."""

from __future__ import annotations

import pytest
import torch

from saedata.config import ACTIVATIONS
from saedata.sae import activations as A
from saedata.sae.activations import SparseCodes
from saedata.sae.kernels import dense_from_sparse


@pytest.fixture
def pre() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(16, 64)


def test_registry_covers_every_configurable_activation():
    assert set(A.ACTIVATION_FNS) == set(ACTIVATIONS)


def test_relu_is_max_of_zero_and_pre(pre):
    assert torch.equal(A.relu(pre), torch.maximum(pre, torch.zeros_like(pre)))


def test_jumprelu_zero_at_or_below_threshold_identity_above(pre):
    theta = torch.full((64,), 0.5)
    z = A.jumprelu(pre, theta, 0.001)
    above = pre > theta
    assert torch.equal(z[above], pre[above])
    assert torch.all(z[~above] == 0)


def test_jumprelu_threshold_gets_straight_through_gradient():
    eps = 0.1
    theta = torch.tensor([1.0, 1.0, 1.0], requires_grad=True)
    # latent 0 sits inside the kernel window (|pre - theta| < eps/2), latent 1 outside,
    # latent 2 is far above the threshold
    pre = torch.tensor([[1.02, 0.5, 3.0]], requires_grad=True)
    z = A.jumprelu(pre, theta, eps)
    z.sum().backward()
    # d/dtheta [pre H(pre - theta)] ~= -(theta / eps) K((pre - theta) / eps)
    assert theta.grad is not None
    assert theta.grad[0].item() == pytest.approx(-1.0 / eps)
    assert theta.grad[1].item() == 0.0 and theta.grad[2].item() == 0.0
    # pre gets the ordinary gradient where active
    assert pre.grad.tolist() == [[1.0, 0.0, 1.0]]


def test_step_counts_active_latents_and_trains_threshold():
    eps = 0.2
    theta = torch.tensor([0.5, 0.5], requires_grad=True)
    pre = torch.tensor([[0.55, 0.1], [0.9, 0.45]])
    h = A.step(pre, theta, eps)
    assert h.tolist() == [[1.0, 0.0], [1.0, 0.0]]
    h.sum().backward()
    # -(1/eps) K((pre - theta)/eps): rows 0 (0.55) for latent 0 and row 1 (0.45) for latent 1
    assert theta.grad.tolist() == pytest.approx([-1 / eps, -1 / eps])


def test_topk_keeps_exactly_k_largest_then_relu(pre):
    k = 5
    shifted = pre + 10.0  # every pre-activation positive: k non-zeros per row
    codes = A.topk(shifted, k)
    assert isinstance(codes, SparseCodes)
    assert codes.values.shape == codes.indices.shape == (16, k)
    assert codes.indices.dtype == torch.int64
    dense = dense_from_sparse(codes.indices, codes.values, 64)
    assert torch.all((dense != 0).sum(-1) == k)
    kth = shifted.topk(k, dim=-1).values[:, -1:]
    assert torch.all(dense[dense != 0] >= kth.expand_as(dense)[dense != 0])
    assert torch.equal(codes.values, shifted.gather(1, codes.indices))
    # on raw data the kept negatives are zeroed by the ReLU
    raw = A.topk(-pre.abs() - 1.0, k)
    assert torch.all(raw.values == 0)


def test_batchtopk_keeps_k_times_n_largest_of_the_batch(pre):
    k = 4
    z = A.batchtopk(pre + 10.0, k)
    assert int((z != 0).sum()) == k * pre.shape[0]
    kept = (pre + 10.0)[z != 0]
    dropped = (pre + 10.0)[z == 0]
    assert kept.min() >= dropped.max()
    # rows may use different numbers of latents
    z2 = A.batchtopk(pre, k)
    assert int((z2 != 0).sum()) == k * pre.shape[0]
    assert torch.all(z2 >= 0)


def test_abstopk_keeps_largest_magnitudes_with_sign(pre):
    k = 6
    codes = A.abstopk(pre, k)
    assert codes.values.shape == (16, k)
    assert torch.equal(codes.values, pre.gather(1, codes.indices))  # sign preserved, no ReLU
    assert (codes.values < 0).any() and (codes.values > 0).any()
    kth = pre.abs().topk(k, dim=-1).values[:, -1:]
    assert torch.all(codes.values.abs() >= kth)


def _topafa_rule(acts_row: list[float], target: float, max_k: int) -> int:
    """Brute force of the paper's rule: k minimising |norm of the k largest - target|."""
    s = sorted(acts_row, reverse=True)
    best_k, best = 1, float("inf")
    for k in range(1, max_k + 1):
        gap = abs(sum(v * v for v in s[:k]) ** 0.5 - target)
        if gap < best:
            best_k, best = k, gap
    return best_k


def test_topafa_matches_the_authors_worked_example():
    # etc/afa_step_by_step.ipynb of SewoongLee/top-afa-sae
    acts = torch.tensor([[5.0, 4, 3], [1, 1, 1], [1, 10, 2]])
    W_dec = torch.tensor([[1.0, 2], [3, 4], [5, 6]])
    x_norm = (acts @ W_dec).norm(dim=1)
    codes = A.topafa(acts, x_norm, max_k=2, dec_norm=W_dec.norm(dim=1))
    dense = dense_from_sparse(codes.indices, codes.values, 3)
    assert dense.tolist() == [[0.0, 4, 3], [0, 1, 1], [0, 10, 2]]


def test_topafa_active_count_follows_the_input_norm():
    torch.manual_seed(1)
    pre = torch.rand(32, 50) * 2.0
    x_norm = torch.linspace(0.5, 8.0, 32)
    codes = A.topafa(pre, x_norm, max_k=40)
    counts = (codes.values != 0).sum(-1)
    for i in range(32):
        assert int(counts[i]) == _topafa_rule(pre[i].tolist(), float(x_norm[i]), 40)
    # more norm to match -> more latents (same pre-activations, growing targets)
    same = pre[:1].expand(6, -1)
    grow = A.topafa(same, torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0, 5.0]), max_k=50)
    n_active = (grow.values != 0).sum(-1).tolist()
    assert n_active == sorted(n_active) and n_active[0] < n_active[-1]
    # the kept values are the largest ReLU pre-activations
    kept = dense_from_sparse(codes.indices, codes.values, 50)
    for i in range(32):
        c = int(counts[i])
        kept_sorted = kept[i][kept[i] != 0].sort(descending=True).values
        assert torch.allclose(kept_sorted, pre[i].sort(descending=True).values[:c])


def test_topafa_respects_max_k_and_gives_gradients():
    pre = torch.full((2, 10), 1.0, requires_grad=True)
    codes = A.topafa(pre, torch.tensor([100.0, 1.0]), max_k=3)
    assert (codes.values != 0).sum(-1).tolist() == [3, 1]
    codes.values.sum().backward()
    assert pre.grad is not None and float(pre.grad.sum()) == 4.0


def _orthonormal(d_sae: int, d_in: int) -> torch.Tensor:
    torch.manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(d_in, d_in))
    return torch.cat([q.T, torch.nn.functional.normalize(torch.randn(d_sae - d_in, d_in), dim=1)])


def test_matching_pursuit_recovers_a_sparse_sum_of_orthogonal_atoms():
    W = _orthonormal(48, 16)  # the first 16 atoms orthonormal
    coef = torch.tensor([[3.0, 2.0, 1.0], [0.5, 4.0, 2.5]])
    atoms = torch.tensor([[0, 5, 9], [2, 3, 15]])
    x = (coef[..., None] * W[atoms]).sum(1)
    codes = A.matching_pursuit(x, W, steps=3)
    got = dense_from_sparse(codes.indices, codes.values, 48)
    want = dense_from_sparse(atoms, coef, 48)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_matching_pursuit_residual_never_grows_and_more_steps_explain_more():
    torch.manual_seed(0)
    W = torch.nn.functional.normalize(torch.randn(64, 16), dim=1)
    x = torch.randn(32, 16)
    errs = []
    for steps in range(1, 9):
        c = A.matching_pursuit(x, W, steps)
        errs.append(float((x - dense_from_sparse(c.indices, c.values, 64) @ W).pow(2).sum()))
        assert (c.values >= 0).all() and c.values.shape == (32, steps)
    assert all(b <= a + 1e-5 for a, b in zip(errs, errs[1:])) and errs[-1] < 0.5 * errs[0]


def test_matching_pursuit_stops_each_row_when_its_residual_is_small():
    W = _orthonormal(48, 16)
    easy = 2.0 * W[4]                                   # one atom explains it
    hard = W[:8].sum(0)                                 # eight atoms needed
    codes = A.matching_pursuit(torch.stack([easy, hard]), W, steps=8, stop=0.01)
    active = (codes.values > 1e-6).sum(-1).tolist()
    assert active == [1, 8]


def test_matching_pursuit_gives_gradients_to_the_decoder_and_the_input():
    torch.manual_seed(0)
    W = torch.nn.functional.normalize(torch.randn(32, 8), dim=1).requires_grad_()
    x = torch.randn(4, 8, requires_grad=True)
    c = A.matching_pursuit(x, W, 3)
    (x - dense_from_sparse(c.indices, c.values, 32) @ W).pow(2).sum().backward()
    assert W.grad is not None and W.grad.abs().sum() > 0 and x.grad is not None
