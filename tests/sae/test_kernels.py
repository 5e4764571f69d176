"""Fast kernels agree with their plain references in values and gradients."""

from __future__ import annotations

import pytest
import torch

from saedata.config import SAEConfig, TrainConfig
from saedata.sae.kernels import encoder_gather, encoder_gather_reference, sparse_decode, sparse_decode_reference
from saedata.sae.model import SparseAutoencoder

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _decode_inputs(device: str, dtype: torch.dtype, n=64, k=8, d_sae=96, d_in=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    indices = torch.randint(0, d_sae, (n, k), generator=g)
    indices[:, -1] = indices[:, 0]  # repeated index in a row (like zero padding) must sum
    values = torch.randn(n, k, generator=g, dtype=dtype)
    W_dec = torch.randn(d_sae, d_in, generator=g, dtype=dtype)
    return (indices.to(device), values.to(device).requires_grad_(), W_dec.to(device).requires_grad_())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_sparse_decode_matches_reference_values_and_gradients(device, dtype, tol):
    idx, v, W = _decode_inputs(device, dtype)
    idx2, v2, W2 = idx.clone(), v.detach().clone().requires_grad_(), W.detach().clone().requires_grad_()
    out = sparse_decode(idx, v, W)
    ref = sparse_decode_reference(idx2, v2, W2)
    assert out.shape == (64, 24)
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    ref.backward(grad_out)
    torch.testing.assert_close(v.grad, v2.grad, atol=tol, rtol=tol)
    torch.testing.assert_close(W.grad, W2.grad, atol=tol, rtol=tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_encoder_gather_matches_reference_values_and_gradients(device, dtype, tol):
    g = torch.Generator().manual_seed(1)
    n, d_in, d_sae, k = 48, 16, 80, 6
    x = torch.randn(n, d_in, generator=g, dtype=dtype).to(device)
    W = torch.randn(d_in, d_sae, generator=g, dtype=dtype).to(device)
    b = torch.randn(d_sae, generator=g, dtype=dtype).to(device)
    pre = torch.addmm(b, x, W)
    idx = pre.topk(k, dim=-1).indices
    leaves = [t.clone().requires_grad_() for t in (x, W, b)]
    leaves_ref = [t.clone().requires_grad_() for t in (x, W, b)]
    out = encoder_gather(pre, *leaves, idx)
    ref = encoder_gather_reference(pre, *leaves_ref, idx)
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    ref.backward(grad_out)
    for a, r in zip(leaves, leaves_ref):
        torch.testing.assert_close(a.grad, r.grad, atol=tol, rtol=tol)


@pytest.mark.parametrize("activation", ["topk", "abstopk", "topafa"])
def test_model_sparse_and_dense_paths_agree_including_auxk(activation):
    """The whole training objective: same loss and parameter gradients both ways."""
    torch.manual_seed(0)
    cfg = SAEConfig(d_in=12, d_sae=40, activation=activation, k=4, topafa_max_k=8)
    sae = SparseAutoencoder(cfg).double()
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.b_enc.normal_(std=0.1)
        sae.b_dec.normal_(std=0.1)
        sae.input_scale.fill_(0.7)
    x = torch.randn(32, 12, dtype=torch.float64)
    dead = torch.zeros(40, dtype=torch.bool)
    dead[::3] = True
    tc = TrainConfig(k_aux=5, auxk_alpha=0.5)
    grads = {}
    for name, flags in {"sparse": (True, True), "dense": (False, False)}.items():
        sae.zero_grad(set_to_none=True)
        out = sae(x, dead_mask=dead, train_cfg=tc, sparse_decoder=flags[0], sparse_encoder=flags[1])
        assert float(out.aux_loss.detach()) > 0
        out.loss.backward()
        grads[name] = (float(out.loss.detach()), {k: p.grad.clone() for k, p in sae.named_parameters()})
    assert grads["sparse"][0] == pytest.approx(grads["dense"][0], rel=1e-10)
    for key, g in grads["sparse"][1].items():
        torch.testing.assert_close(g, grads["dense"][1][key], atol=1e-9, rtol=1e-9)
