"""Fast paths, each beside the plain reference it must agree with (values and gradients).

* ``sparse_decode`` reconstructs from TopK codes by gathering the ``k`` active decoder rows
  (``embedding_bag``, as EleutherAI/sparsify does without Triton) instead of scattering the
  codes into a dense ``(n, d_sae)`` matrix and multiplying by all of ``W_dec``.
* ``encoder_gather`` picks the selected pre-activations with a backward pass that touches
  only those latents (like sparsify's fused encoder), instead of autograd's dense
  ``(n, d_sae)`` gradient and two dense matmuls.

All run unchanged on CPU and CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sparse_decode(indices: Tensor, values: Tensor, W_dec: Tensor) -> Tensor:
    """Sum of the selected decoder rows weighted by their codes: ``sum_j values[:, j] W_dec[indices[:, j]]``.

    indices: (n, k) int64, values: (n, k), W_dec: (d_sae, d_in) -> (n, d_in).
    Gradients flow to ``values`` and ``W_dec`` (not to ``indices``). No ``b_dec`` is added.
    """
    return F.embedding_bag(
        indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum"
    )


def sparse_decode_reference(indices: Tensor, values: Tensor, W_dec: Tensor) -> Tensor:
    """Reference for :func:`sparse_decode`: scatter the codes into a dense ``(n, d_sae)``
    matrix (summing repeated indices) and multiply by ``W_dec``. Same shapes and result."""
    n = indices.shape[0]
    dense = torch.zeros(n, W_dec.shape[0], dtype=W_dec.dtype, device=W_dec.device)
    dense = dense.scatter_add(1, indices, values.to(W_dec.dtype))
    return dense @ W_dec


def dense_from_sparse(indices: Tensor, values: Tensor, d_sae: int) -> Tensor:
    """Dense ``(n, d_sae)`` codes from ``(n, k)`` indices and values (repeated indices summed)."""
    dense = torch.zeros(indices.shape[0], d_sae, dtype=values.dtype, device=values.device)
    return dense.scatter_add(1, indices, values)


class _EncoderGather(torch.autograd.Function):
    """Values ``pre[i, indices[i, j]]`` whose backward touches only the gathered latents."""

    @staticmethod
    def forward(ctx, pre: Tensor, x: Tensor, W_enc: Tensor, b_enc: Tensor, indices: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, W_enc, indices)
        return pre.gather(1, indices)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, W_enc, indices = ctx.saved_tensors
        n, m = indices.shape
        d_sae = W_enc.shape[1]
        g = grad.contiguous().to(W_enc.dtype)
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[1]:
            # dL/dx_i = sum_j g_ij W_enc[:, idx_ij]
            grad_x = F.embedding_bag(indices, W_enc.t().contiguous(), per_sample_weights=g, mode="sum")
        if ctx.needs_input_grad[2]:
            # dL/dW_enc[:, l] = sum_{(i, j): idx_ij = l} g_ij x_i, as a sparse (d_sae, n) @ (n, d_in)
            rows = indices.reshape(-1)
            cols = torch.arange(n, device=indices.device).repeat_interleave(m)
            G = torch.sparse_coo_tensor(
                torch.stack([rows, cols]), g.reshape(-1), (d_sae, n), check_invariants=False
            )
            grad_W = torch.sparse.mm(G, x.to(W_enc.dtype)).t()
        if ctx.needs_input_grad[3]:
            grad_b = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(
                0, indices.reshape(-1), g.reshape(-1)
            )
        return None, grad_x, grad_W, grad_b, None


def encoder_gather(pre: Tensor, x: Tensor, W_enc: Tensor, b_enc: Tensor, indices: Tensor) -> Tensor:
    """Selected pre-activations ``(x W_enc + b_enc)[i, indices[i, j]]`` (n, m), differentiable
    w.r.t. ``x`` (n, d_in), ``W_enc`` (d_in, d_sae) and ``b_enc`` (d_sae,).

    ``pre`` (n, d_sae) must already hold ``x W_enc + b_enc`` (computed without autograd);
    the forward only gathers from it and the backward costs O(n m d_in) (an embedding_bag
    and a sparse matmul) instead of the two dense (n, d_sae) matmuls of autograd.
    """
    return _EncoderGather.apply(pre.detach(), x, W_enc, b_enc, indices)  # type: ignore[no-any-return]


def encoder_gather_reference(pre: Tensor, x: Tensor, W_enc: Tensor, b_enc: Tensor, indices: Tensor) -> Tensor:
    """Reference for :func:`encoder_gather`: plain autograd through ``(x W_enc + b_enc).gather``
    (``pre`` is ignored)."""
    return torch.addmm(b_enc, x, W_enc).gather(1, indices)
