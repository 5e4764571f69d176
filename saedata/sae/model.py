"""The sparse autoencoder, written to read like the papers.

    x_s  = x * s                                  input scaled to E||x_s||^2 = d_in
    pre  = (x_s - b_dec) W_enc + b_enc            (n, d_sae)
    z    = act(pre)                               relu | jumprelu | topk | batchtopk | abstopk | topafa
    z    = MP(x_s - b_dec; W_dec, k)              mp: k greedy residual steps over the decoder
    z    = NN-IHT(pre; x_s - b_dec, W_dec, k)     snmf: non-negative k-sparse codes over a semi-NMF decoder
    x^_s = z W_dec + b_dec ;  x^ = x^_s / s       reconstruction in the caller's units

``s`` is the ``input_scale`` buffer set by the trainer (SAELens' "expected_average_only_in"
convention), so codes live in normalised units while inputs and reconstructions stay in
the reader's original units. The training objective (``forward``) is the squared error in
normalised units plus the activation's own term: an L1 penalty weighted by decoder norms
(relu), an L0 penalty (jumprelu), AuxK (topk, batchtopk, abstopk) or AuxK plus the AFA
norm-matching loss (topafa, as in the authors' ``TopAFASAE``, whose encoder has no ``b_enc``;
here ``b_enc`` exists for every activation and starts at zero). mp has no encoder of its
own (``W_enc`` and ``b_enc`` are kept, unused, so every SAE has one shape) and no auxiliary
term: the reconstruction through the unrolled pursuit trains the decoder. snmf SAEs are not
trained here but made from a semi-NMF factorisation (:mod:`saedata.sae.snmf`); their
forward has no auxiliary term either.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saedata.config import SAEConfig, TrainConfig
from saedata.sae import activations as A
from saedata.sae.activations import SparseCodes
from saedata.sae.kernels import dense_from_sparse, encoder_gather, sparse_decode

SPARSE_ACTIVATIONS = ("topk", "abstopk", "topafa", "mp", "snmf")
"""Activations whose codes come out as :class:`SparseCodes` (fixed or capped count per row)."""

_DEFAULT_TRAIN_CFG = TrainConfig()


class ForwardOutput(NamedTuple):
    """Everything one forward pass computes; losses are in normalised (scaled) units."""

    recon: Tensor
    """(n, d_in) reconstruction in the input's original units."""
    codes: SparseCodes | Tensor
    """Codes in normalised units: :class:`SparseCodes` for topk, abstopk and topafa;
    a dense (n, d_sae) tensor for relu, jumprelu and batchtopk."""
    loss: Tensor
    """Scalar training objective: mse + sparsity penalty + auxiliary loss."""
    mse: Tensor
    """Scalar mean over rows of ||x_s - x^_s||^2 (summed over d_in), normalised units."""
    fvu: Tensor
    """Scalar fraction of variance unexplained over the batch."""
    l0: Tensor
    """Scalar mean number of active latents per row."""
    aux_loss: Tensor
    """Scalar auxiliary term already weighted and included in ``loss``: AuxK (topk,
    batchtopk, abstopk, topafa) plus the AFA loss (topafa); L1 (relu) or L0 (jumprelu)
    penalty for the other activations."""


class SparseAutoencoder(nn.Module):
    """A sparse autoencoder ``x -> z -> x^`` configured by :class:`~saedata.config.SAEConfig`.

    Parameters: ``W_enc`` (d_in, d_sae), ``b_enc`` (d_sae,), ``W_dec`` (d_sae, d_in) with
    unit-norm rows after training, ``b_dec`` (d_in,); jumprelu adds ``log_threshold``
    (d_sae,) exposed as ``threshold``. Buffers: ``input_scale`` (scalar) and, for
    batchtopk, the estimate of the smallest activation the batch top-k keeps (running while
    training; :meth:`calibrate_batch_threshold` sets it from the final weights), exposed as
    ``threshold`` and used like a JumpReLU threshold in eval mode.
    """

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        d_in, d_sae = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("input_scale", torch.tensor(1.0))
        if cfg.activation == "jumprelu":
            self.log_threshold = nn.Parameter(
                torch.full((d_sae,), math.log(cfg.jumprelu_threshold))
            )
        if cfg.activation == "batchtopk":
            # -1 = not estimated yet: eval() falls back to the batch top-k
            self.register_buffer("batch_threshold", torch.tensor(-1.0))
        self.reset_parameters(torch.Generator().manual_seed(0))

    # ------------------------------------------------------------------ setup
    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Tied initialisation: random unit-norm decoder rows, ``W_enc = W_dec^T``, zero biases."""
        W = torch.empty(self.d_sae, self.d_in)
        nn.init.kaiming_uniform_(W, a=math.sqrt(5), generator=generator)
        W /= W.norm(dim=1, keepdim=True).clamp_min(torch.finfo(W.dtype).tiny)
        self.W_dec.copy_(W)
        self.W_enc.copy_(W.T)
        self.b_enc.zero_()
        self.b_dec.zero_()

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def threshold(self) -> Tensor:
        """JumpReLU thresholds ``exp(log_threshold)`` (d_sae,), or batchtopk's scalar running
        threshold (negative until estimated). Raises AttributeError for other activations."""
        if self.cfg.activation == "jumprelu":
            return self.log_threshold.exp()
        if self.cfg.activation == "batchtopk":
            return self.batch_threshold
        raise AttributeError(f"{self.cfg.activation} SAEs have no threshold")

    @property
    def topafa_max_k(self) -> int:
        return self.cfg.topafa_max_k or min(self.d_in, self.d_sae)

    # ----------------------------------------------------------------- encode
    def pre_acts(self, x: Tensor) -> Tensor:
        """(n, d_in) original units -> (n, d_sae) pre-activations ``(x s - b_dec) W_enc + b_enc``."""
        centred = x.to(self.W_enc.dtype) * self.input_scale - self.b_dec  # an SAE saved in bf16 / fp16 computes in it
        if self.W_enc.dtype == torch.float32:
            return torch.addmm(self.b_enc, centred, self.W_enc)
        return centred @ self.W_enc + self.b_enc  # rounded in SAELens's order: its codes exactly

    def _afa_target(self, x: Tensor) -> Tensor:
        # ||z|| of the paper: the norm of the centred, scaled input x s - b_dec, (n,)
        return (x * self.input_scale - self.b_dec).norm(dim=-1)

    def _activate(self, pre: Tensor, x: Tensor) -> SparseCodes | Tensor:
        """Apply the configured activation (batchtopk follows train/eval mode)."""
        act = self.cfg.activation
        if act == "relu":
            return A.relu(pre)
        if act == "jumprelu":
            return A.jumprelu(pre, self.threshold, self.cfg.jumprelu_bandwidth)
        if act == "topk":
            return A.topk(pre, self.cfg.k)
        if act == "abstopk":
            return A.abstopk(pre, self.cfg.k)
        if act == "topafa":
            return A.topafa(pre, self._afa_target(x), self.topafa_max_k, self.W_dec.norm(dim=1))
        # batchtopk: batch top-k while training (or before a threshold exists), else JumpReLU
        if self.training or float(self.batch_threshold) < 0:
            return A.batchtopk(pre, self.cfg.k)
        return F.relu(pre) * (pre > self.batch_threshold).to(pre.dtype)

    def _pursue(self, x: Tensor) -> SparseCodes:
        """mp: codes of (n, d_in) original units by matching pursuit over the decoder."""
        residual = x.to(self.W_dec.dtype) * self.input_scale - self.b_dec
        return A.matching_pursuit(residual, self.W_dec, self.cfg.k, self.cfg.mp_stop)

    def _snmf_codes(self, x: Tensor) -> SparseCodes:
        """snmf: non-negative k-sparse codes of (n, d_in) original units over the decoder."""
        residual = x.to(self.W_dec.dtype) * self.input_scale - self.b_dec
        return A.snmf(self.pre_acts(x), residual, self.W_dec, self.cfg.k, self.cfg.snmf_steps, self.lipschitz())

    def lipschitz(self) -> float:
        """``||W_dec||_2^2``, the largest eigenvalue of ``W_dec W_dec^T`` (snmf's step is its
        inverse); computed once per version of the decoder."""
        key = (self.W_dec._version, self.W_dec.data_ptr())
        cached = getattr(self, "_lipschitz", None)
        if cached is None or cached[0] != key:
            value = float(torch.linalg.matrix_norm(self.W_dec.detach().float(), ord=2)) ** 2
            self._lipschitz = cached = (key, max(value, torch.finfo(torch.float32).tiny))
        return cached[1]

    def _codes(self, x: Tensor) -> SparseCodes | Tensor:
        if self.cfg.activation == "snmf":
            return self._snmf_codes(x)
        return self._pursue(x) if self.cfg.activation == "mp" else self._activate(self.pre_acts(x), x)

    def encode(self, x: Tensor) -> Tensor:
        """(n, d_in) -> dense codes (n, d_sae) in normalised units, zero where inactive."""
        codes = self._codes(x)
        if isinstance(codes, SparseCodes):
            return dense_from_sparse(codes.indices, codes.values, self.d_sae)
        return codes

    def encode_sparse(self, x: Tensor) -> SparseCodes:
        """(n, d_in) -> :class:`SparseCodes` ``(n, m)``.

        ``m == k`` for topk, abstopk and mp; otherwise ``m`` is the largest number of active
        latents of any row in the batch, shorter rows padded with value 0 (index valid).
        """
        codes = self._codes(x)
        if isinstance(codes, SparseCodes):
            return codes
        return sparse_from_dense(codes)

    # ----------------------------------------------------------------- decode
    def decode(self, z: Tensor) -> Tensor:
        """Dense codes (n, d_sae) -> reconstruction (n, d_in) in original units."""
        return (z @ self.W_dec + self.b_dec) / self.input_scale

    def decode_sparse(self, codes: SparseCodes) -> Tensor:
        """:class:`SparseCodes` -> reconstruction (n, d_in) in original units (via ``sparse_decode``)."""
        return (sparse_decode(codes.indices, codes.values, self.W_dec) + self.b_dec) / self.input_scale

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        x: Tensor,
        dead_mask: Tensor | None = None,
        train_cfg: TrainConfig | None = None,
        sparse_decoder: bool | None = None,
        sparse_encoder: bool | None = None,
    ) -> ForwardOutput:
        """Encode, decode and compute the training objective for a batch ``x`` (n, d_in).

        ``dead_mask`` (d_sae,) bool marks latents that count as dead for AuxK. Loss weights
        come from ``train_cfg`` (defaults when None). For topk, abstopk and topafa codes,
        ``sparse_decoder`` (default ``train_cfg.sparse_decoder``) decodes with
        :func:`~saedata.sae.kernels.sparse_decode` instead of a dense matmul, and
        ``sparse_encoder`` (default ``train_cfg.sparse_encoder``) backpropagates into the
        encoder with :func:`~saedata.sae.kernels.encoder_gather`; both give the same values
        and gradients as the dense reference, up to float rounding.
        """
        tc = train_cfg or _DEFAULT_TRAIN_CFG
        act = self.cfg.activation
        use_sparse = tc.sparse_decoder if sparse_decoder is None else sparse_decoder
        gather_enc = (tc.sparse_encoder if sparse_encoder is None else sparse_encoder) and act in SPARSE_ACTIVATIONS

        x_s = x * self.input_scale
        x_cent = x_s - self.b_dec
        if act == "mp":  # the decoder is the encoder: no pre-activations, no auxiliary loss
            codes = A.matching_pursuit(x_cent, self.W_dec, self.cfg.k, self.cfg.mp_stop)
        elif act == "snmf":  # codes fitted over the decoder: no auxiliary loss
            codes = self._snmf_codes(x)
        elif gather_enc:
            with torch.no_grad():  # the selection needs every pre-activation, the gradient only the kept ones
                pre = torch.addmm(self.b_enc, x_cent, self.W_enc)
            chosen = self._activate(pre, x)
            assert isinstance(chosen, SparseCodes)
            raw = encoder_gather(pre, x_cent, self.W_enc, self.b_enc, chosen.indices)
            # kept entries equal raw (relu'd ones are positive); dropped/zeroed ones get no gradient
            codes: SparseCodes | Tensor = SparseCodes(raw * (chosen.values != 0).to(raw.dtype), chosen.indices)

            def gather(indices: Tensor) -> Tensor:
                return encoder_gather(pre, x_cent, self.W_enc, self.b_enc, indices)
        else:
            pre = torch.addmm(self.b_enc, x_cent, self.W_enc)
            codes = self._activate(pre, x)

            def gather(indices: Tensor) -> Tensor:
                return pre.gather(1, indices)

        if isinstance(codes, SparseCodes):
            if use_sparse:
                recon_s = sparse_decode(codes.indices, codes.values, self.W_dec) + self.b_dec
            else:
                dense = dense_from_sparse(codes.indices, codes.values, self.d_sae)
                recon_s = dense @ self.W_dec + self.b_dec
            l0 = (codes.values != 0).sum(-1).float().mean()
        else:
            recon_s = codes @ self.W_dec + self.b_dec
            l0 = (codes != 0).sum(-1).float().mean()

        err = recon_s - x_s
        mse = err.pow(2).sum(-1).mean()
        # FVU = ||x - x^||^2 / ||x - mean(x)||^2 over the batch
        fvu = err.pow(2).sum() / (x_s - x_s.mean(0)).pow(2).sum().clamp_min(1e-12)

        if act == "relu":
            # L1 weighted by decoder norms: sum_j |z_j| ||d_j||
            aux = tc.l1_coeff * (codes.abs() * self.W_dec.norm(dim=1)).sum(-1).mean()  # type: ignore[union-attr]
        elif act == "jumprelu":
            l0_step = A.step(pre, self.threshold, self.cfg.jumprelu_bandwidth).sum(-1).mean()
            aux = tc.l0_coeff * l0_step
        elif act in ("mp", "snmf"):
            aux = mse.new_zeros(())
        else:
            aux = tc.auxk_alpha * self._auxk_loss(pre.detach(), gather, err, dead_mask, tc, use_sparse)
            if act == "topafa":
                aux = aux + tc.afa_coeff * afa_loss(codes, self._afa_target(x), self.W_dec)

        if act == "batchtopk" and self.training:
            self._update_batch_threshold(codes)  # type: ignore[arg-type]

        return ForwardOutput(
            recon=recon_s / self.input_scale,
            codes=codes,
            loss=mse + aux,
            mse=mse,
            fvu=fvu,
            l0=l0,
            aux_loss=aux,
        )

    def _auxk_loss(
        self,
        pre: Tensor,
        gather: Callable[[Tensor], Tensor],
        err: Tensor,
        dead_mask: Tensor | None,
        tc: TrainConfig,
        use_sparse: bool,
    ) -> Tensor:
        """AuxK (Gao et al. 2024): the top ``k_aux`` dead latents reconstruct the residual.

        ``||e - e^||^2`` with ``e = x_s - x^_s`` (detached) and ``e^`` decoded from the
        ``k_aux`` largest dead pre-activations (by |pre| for abstopk; ``pre`` detached,
        ``gather`` returns differentiable pre-activations at given indices), scaled by
        ``min(n_dead / k_aux, 1)``; zero when no latent is dead.
        """
        if dead_mask is None:
            return pre.new_zeros(())
        n_dead = int(dead_mask.sum())
        if n_dead == 0:
            return pre.new_zeros(())
        k_aux = tc.k_aux or max(1, self.d_in // 2)
        scale = min(n_dead / k_aux, 1.0)
        k_aux = min(k_aux, n_dead)
        if self.cfg.activation == "abstopk":
            score = torch.where(dead_mask, pre.abs(), torch.full_like(pre, -math.inf))
            indices = score.topk(k_aux, dim=-1, sorted=False).indices
            values = gather(indices)
        else:
            masked = torch.where(dead_mask, pre, torch.full_like(pre, -math.inf))
            indices = masked.topk(k_aux, dim=-1, sorted=False).indices
            values = F.relu(gather(indices))
        if use_sparse:
            e_hat = sparse_decode(indices, values, self.W_dec)
        else:
            e_hat = dense_from_sparse(indices, values, self.d_sae) @ self.W_dec
        # e^ should predict the error of the live latents: x_s - x^_s = -err
        return scale * (e_hat + err.detach()).pow(2).sum(-1).mean()

    @torch.no_grad()
    def _update_batch_threshold(self, z: Tensor, rate: float = 0.01) -> None:
        # theta <- (1 - rate) theta + rate * min{z > 0}  (first estimate taken as is)
        positive = z[z > 0]
        if positive.numel() == 0:
            return
        smallest = positive.min()
        if float(self.batch_threshold) < 0:
            self.batch_threshold.copy_(smallest)
        else:
            self.batch_threshold.mul_(1 - rate).add_(rate * smallest)

    @torch.no_grad()
    def calibrate_batch_threshold(self, x: Tensor, batch_size: int) -> None:
        """batchtopk: set the inference threshold to the mean, over batches of ``batch_size``
        rows of ``x`` (n, d_in), of the smallest value the batch top-k keeps (Bussmann et al.'s
        estimator, with the final weights). Training's running estimate weighs its early,
        untrained batches for hundreds of steps; this one makes eval's mean L0 about k."""
        smallest = []
        for start in range(0, x.shape[0], batch_size):
            z = A.batchtopk(self.pre_acts(x[start:start + batch_size]), self.cfg.k)
            positive = z[z > 0]
            if positive.numel():
                smallest.append(positive.min())
        if smallest:
            self.batch_threshold.copy_(torch.stack(smallest).mean())

    # ------------------------------------------------------ training helpers
    @torch.no_grad()
    def set_decoder_norm_to_unit(self) -> None:
        """Rescale every decoder row to unit L2 norm."""
        eps = torch.finfo(self.W_dec.dtype).eps
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True) + eps)

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder(self) -> None:
        """Project out of ``W_dec.grad`` the component parallel to each (unit) decoder row."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
        self.W_dec.grad.sub_(parallel * self.W_dec)


def sparse_objective(sae: SparseAutoencoder, x_s: Tensor, pre: Tensor, codes: SparseCodes, dead_mask: Tensor | None,
                     tc: TrainConfig, extra: Tensor | None = None) -> ForwardOutput:
    """The TopK objective for codes a training design chose by its own rule: the squared
    error of their sparse decode against ``x_s`` (the scaled input, (n, d_in)), plus AuxK on
    the pre-activations ``pre`` (n, d_sae), plus ``extra`` (a design's own term)."""
    recon_s = sparse_decode(codes.indices, codes.values, sae.W_dec) + sae.b_dec
    err = recon_s - x_s
    mse = err.pow(2).sum(-1).mean()
    fvu = err.pow(2).sum() / (x_s - x_s.mean(0)).pow(2).sum().clamp_min(1e-12)
    aux = tc.auxk_alpha * sae._auxk_loss(pre.detach(), lambda idx: pre.gather(1, idx), err, dead_mask, tc, True)
    if extra is not None:
        aux = extra + aux
    return ForwardOutput(recon=recon_s / sae.input_scale, codes=codes, loss=mse + aux, mse=mse, fvu=fvu,
                         l0=(codes.values != 0).sum(-1).float().mean(), aux_loss=aux)


def afa_loss(codes: SparseCodes | Tensor, target_norm: Tensor, W_dec: Tensor) -> Tensor:
    """AFA norm-matching loss of top-AFA (Lee et al. 2025): ``mean_n (||f~_n|| - ||z_n||)^2``.

    ``||f~_n||`` is the L2 norm of the codes weighted by decoder row norms
    (``sqrt(sum_j (f_j ||d_j||)^2)``), ``target_norm`` (n,) the AFA target ``||z_n||``.
    The model passes the same target as its top-AFA selection, ``||x s - b_dec||`` (the
    authors' reference code uses the norm of its per-token standardised input here; saedata
    does not standardise per token, and the mean direction is carried by ``b_dec``).
    """
    dec_norm = W_dec.norm(dim=1)
    if isinstance(codes, SparseCodes):
        weighted = codes.values * dec_norm[codes.indices]
    else:
        weighted = codes * dec_norm
    return (weighted.norm(dim=-1) - target_norm).pow(2).mean()


def sparse_from_dense(z: Tensor) -> SparseCodes:
    """Dense codes (n, d_sae) -> :class:`SparseCodes` with ``m`` = the largest row count."""
    m = int((z != 0).sum(-1).max()) if z.numel() else 0
    m = max(m, 1)
    indices = z.abs().topk(m, dim=-1, sorted=True).indices
    return SparseCodes(z.gather(-1, indices), indices)
