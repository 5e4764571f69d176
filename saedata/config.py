"""Frozen dataclass configs for every stage, one docstring per field.

Nothing here imports torch: configs are built by the CLI before any heavy import and
serialise to JSON (``to_dict`` / ``from_dict``). An SAE's config is saved as
``cfg.json`` beside its weights exactly as the user asked; what training learns (the
input normalisation, thresholds) lives in the weights file.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from saedata.errors import ConfigError

Activation = Literal["relu", "jumprelu", "topk", "batchtopk", "abstopk", "topafa", "mp", "snmf"]
ACTIVATIONS: tuple[str, ...] = ("relu", "jumprelu", "topk", "batchtopk", "abstopk", "topafa", "mp", "snmf")
Method = Literal["sae", "snmf", "gsae", "vsae", "gba"]
METHODS: tuple[str, ...] = ("sae", "snmf", "gsae", "vsae", "gba")
"""How ``saedata train`` learns the dictionary: an SAE by gradient descent, a semi-NMF
factorisation (:mod:`saedata.sae.snmf`), a gradient SAE (:mod:`saedata.sae.gsae`), a
variational TopK SAE (:mod:`saedata.sae.vsae`) or a ReLU SAE whose sparsity comes from
group bias adaptation (:mod:`saedata.sae.gba`)."""
Pooling = Literal["max", "mean", "sum", "count"]
POOLINGS: tuple[str, ...] = ("max", "mean", "sum", "count")
ChatTokens = Literal["assistant", "all"]
CHAT_TOKENS: tuple[str, ...] = ("assistant", "all")
Device = Literal["cpu", "cuda", "auto"]
DType = Literal["float32", "float16", "bfloat16"]
DTYPES = ("float32", "float16", "bfloat16")

HOOKS = ("resid_post", "resid_pre", "attn_out", "mlp_out", "z", "mlp_post")
"""Hook points a reader reads in a block, named as TransformerLens names them (see
:mod:`saedata.reader`)."""
LEGACY_HOOKS = {"residual": "resid_post"}
"""Hook names older saedata versions wrote, and what they were."""
EXPORT_FORMATS = ("saelens", "sparsify")
"""Libraries ``saedata sae export`` writes SAEs for."""
DEFAULT_READER = "sentence-transformers/all-MiniLM-L6-v2"


class _Serialisable:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Build from a dict, ignoring keys this version does not know."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class SAEConfig(_Serialisable):
    """Architecture of a sparse autoencoder: z = act(W_enc^T (x - b_dec) + b_enc), x^ = W_dec^T z + b_dec."""

    d_in: int
    """Width of the input activations (the reader layer's hidden size)."""
    d_sae: int
    """Number of latents (dictionary size); typically 8-32 x d_in."""
    activation: Activation = "topk"
    """Sparsifying activation: relu (L1-trained), jumprelu, topk, batchtopk, abstopk, topafa,
    mp (matching pursuit: the decoder unrolled as k greedy residual steps), or snmf (the
    non-negative, k-sparse codes of a semi-NMF dictionary: see ``snmf_steps``)."""
    k: int = 32
    """Active latents per token for topk/abstopk (at most, for snmf), mean per token for
    batchtopk, greedy steps for mp; unused otherwise."""
    mp_stop: float = 0.0
    """mp only: a token stops once its residual holds less than this share of its squared
    norm (adaptive sparsity; 0 always takes k steps). Like k, it may change after training."""
    jumprelu_threshold: float = 0.001
    """Initial threshold of every JumpReLU latent (in normalised input units)."""
    jumprelu_bandwidth: float = 0.001
    """Width of the rectangle kernel of JumpReLU's straight-through threshold gradient."""
    topafa_max_k: int | None = None
    """Upper bound on active latents per token for topafa (default: d_in)."""
    snmf_steps: int = 5
    """snmf only: projected-gradient steps from the projection codes towards the best
    non-negative, k-sparse codes over the decoder (0: the projections, best scaled). Like k, it
    may change after training."""
    reader: str | None = None
    """Reader model id or path whose activations the SAE was trained on (metadata)."""
    layer: int | None = None
    """Reader layer the SAE reads (metadata; -1 = last)."""
    hook: str = "resid_post"
    """Which activations of that layer (one of HOOKS): the block's output by default."""
    head: int | None = None
    """For hook z: the one attention head read (None: every head, concatenated)."""
    dtype: DType = "float32"
    """The dtype the SAE computes in: the one its weights were saved in (SAELens's ``dtype``)."""

    def __post_init__(self) -> None:
        if self.d_in <= 0 or self.d_sae <= 0:
            raise ConfigError(f"d_in and d_sae must be positive, got {self.d_in} and {self.d_sae}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}"
            )
        if self.activation in ("topk", "batchtopk", "abstopk", "mp", "snmf") and not 0 < self.k <= self.d_sae:
            raise ConfigError(f"k must be in 1..d_sae={self.d_sae}, got {self.k}")
        if not 0 <= self.mp_stop < 1:
            raise ConfigError(f"mp_stop must be in [0, 1), got {self.mp_stop}")
        if self.snmf_steps < 0:
            raise ConfigError(f"snmf_steps must be at least 0, got {self.snmf_steps}")
        if self.topafa_max_k is not None and not 0 < self.topafa_max_k <= self.d_sae:
            raise ConfigError(f"topafa_max_k must be in 1..d_sae={self.d_sae}")
        object.__setattr__(self, "hook", LEGACY_HOOKS.get(self.hook, self.hook))
        _check_hook(self.hook, self.head, "the SAE's hook")
        if self.dtype not in DTYPES:
            raise ConfigError(f"SAE dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")


def _check_hook(hook: str | None, head: int | None, what: str) -> None:
    if hook is not None and hook not in HOOKS:
        raise ConfigError(f"{what} {hook!r} is not a hook point saedata reads; choose one of {', '.join(HOOKS)}")
    if head is not None and (head < 0 or hook not in (None, "z")):
        raise ConfigError(f"--head picks one attention head of --hook z (a number from 0), got --head {head}"
                          + ("" if hook == "z" else f" with --hook {hook or 'resid_post'}"))


@dataclass(frozen=True)
class TrainConfig(_Serialisable):
    """How an SAE is trained on a stream of activations."""

    expansion: int = 8
    """d_sae = expansion x d_in when the SAE config is built from the reader width."""
    activation: Activation = "topk"
    """Activation of an SAE built from the reader width (``saedata train`` / ``embed``)."""
    k: int = 32
    """k of an SAE built from the reader width (TopK family)."""
    lr: float | None = None
    """Adam learning rate; None scales 2e-4 / sqrt(d_sae / 16384) as in Gao et al. (2024),
    times ``CORPUS_LR_SCALE`` when training on a corpus (:mod:`saedata.embed.train`)."""
    batch_size: int = 4096
    """Tokens per optimisation step."""
    max_tokens: int = 2_000_000
    """Training tokens in total (the activation stream is cycled when shorter); when
    training on a corpus, the most tokens (see ``passes``)."""
    passes: float = 1.5
    """When training on a corpus: passes over its tokens, at least ``MIN_CORPUS_TOKENS``
    (small corpora are cycled more, up to ``max_epochs``), at most ``max_tokens``."""
    max_epochs: int = 25
    """When training on a corpus, stop after this many passes over its tokens if sooner."""
    buffer_tokens: int = 262_144
    """Size of the shuffle buffer the activation stream is drawn through."""
    l1_coeff: float = 5.0
    """L1 penalty weight for relu SAEs (on |z| x ||W_dec row||)."""
    l0_coeff: float = 1e-3
    """L0 penalty weight for jumprelu SAEs."""
    afa_coeff: float = 1.0 / 32
    """Weight of the AFA norm-matching loss for topafa SAEs."""
    auxk_alpha: float = 1.0 / 32
    """Weight of the AuxK loss that revives dead latents (topk family)."""
    k_aux: int | None = None
    """Latents used by AuxK; None = d_in // 2."""
    dead_tokens: int = 200_000
    """A latent that has not fired for this many tokens counts as dead."""
    sparse_decoder: bool = True
    """Decode TopK codes by gathering the k active decoder rows instead of a dense matmul."""
    sparse_encoder: bool = True
    """Backpropagate TopK-family codes into the encoder through only the selected latents
    (a gather with a sparse backward) instead of a dense (n, d_sae) gradient."""
    stop_tolerance: float = 0.01
    """With held-out activations (as when training on a corpus), their FVU is measured
    every 10% of the budget and training stops once it improved by less than this
    fraction since the measurement before (0: never stop early)."""
    checkpoint_every: int = 100
    """Save a resumable checkpoint every N steps when training into a directory (0: never);
    rerunning an interrupted training with the same configs resumes from it."""
    seed: int = 0
    """Seed for initialisation and shuffling; same data + seed -> same SAE."""
    device: Device = "auto"
    """cpu, cuda, or auto (cuda when available)."""
    method: Method = "sae"
    """sae: gradient descent on the SAE objective; snmf: semi-NMF of the activations
    (Shafran et al. 2025; MLP hook points; makes an snmf SAE whatever ``activation``); gsae: a TopK SAE whose training
    selection weighs in the next-token loss's gradient (Olmo et al. 2025; causal readers)."""
    snmf_sparsity: float = 0.1
    """snmf: share of the input's units (MLP neurons) each feature may combine, the rest
    set to zero (the paper's winner-take-all); 1 leaves features dense (Ding et al.'s semi-NMF)."""
    snmf_iters: int = 200
    """snmf: alternating updates of the factorisation."""
    gsae_beta: float = 1.0
    """gsae: weight of the gradient term in the training selection
    ``topk(pre + beta * pre * |W_dec grad|)``; 0 is plain TopK."""
    vsae_kl: float = 0.5
    """vsae: weight of the KL term ``KL(N(mu, sigma^2) || N(0, 1))`` beside the squared
    error (0.5 makes the objective the negative ELBO of a unit-variance Gaussian likelihood)."""
    gba_groups: int = 10
    """gba: groups of latents, each with its own target firing frequency."""
    gba_spread: float = 100.0
    """gba: ratio of the most to the least frequent group's target; targets are spaced
    geometrically in between and scaled so that they add up to ``k`` latents per token."""
    gba_rate: float = 0.05
    """gba: bias step per update, as a share of the latent's largest pre-activation in the batch."""
    chat_sequential: bool = False
    """Train on whole chat transcripts in corpus order (FAST, Li et al. 2025): every token
    of each transcript as its chat template renders it, the special tokens the tokenizer
    adds (BOS) included, fed to the trainer in order instead of shuffled."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown training method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not 0 < self.snmf_sparsity <= 1:
            raise ConfigError(f"snmf_sparsity must be in (0, 1], got {self.snmf_sparsity}")
        if self.snmf_iters <= 0:
            raise ConfigError(f"snmf_iters must be positive, got {self.snmf_iters}")
        if not self.gsae_beta >= 0:
            raise ConfigError(f"gsae_beta must be at least 0, got {self.gsae_beta}")
        if self.method == "snmf":  # the factorisation makes snmf codes (topk: the option's default)
            if self.activation not in ("snmf", "topk"):
                raise ConfigError(f"--method snmf makes snmf codes, not --activation {self.activation}")
            object.__setattr__(self, "activation", "snmf")
        elif self.activation == "snmf":
            raise ConfigError("--activation snmf codes come from a semi-NMF factorisation: use --method snmf")
        if self.method in ("gsae", "vsae") and self.activation != "topk":
            raise ConfigError(f"--method {self.method} trains a TopK SAE, not --activation {self.activation}")
        if self.method == "gba":  # a ReLU SAE whose biases set its sparsity (topk: the option's default)
            if self.activation not in ("relu", "topk"):
                raise ConfigError(f"--method gba trains a ReLU SAE, not --activation {self.activation}")
            object.__setattr__(self, "activation", "relu")
        if not self.vsae_kl >= 0:
            raise ConfigError(f"vsae_kl must be at least 0, got {self.vsae_kl}")
        if self.gba_groups <= 0 or not self.gba_spread >= 1 or not 0 < self.gba_rate < 1:
            raise ConfigError("gba needs groups >= 1, spread >= 1 and a rate in (0, 1), got "
                              f"{self.gba_groups}, {self.gba_spread} and {self.gba_rate}")
        if self.batch_size <= 0 or self.max_tokens <= 0:
            raise ConfigError("batch_size and max_tokens must be positive")
        if not self.passes > 0:
            raise ConfigError(f"passes must be positive, got {self.passes}")
        if not 0 <= self.stop_tolerance < 1:
            raise ConfigError(f"stop_tolerance must be in [0, 1), got {self.stop_tolerance}")
        if self.expansion <= 0:
            raise ConfigError(f"expansion must be positive, got {self.expansion}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if self.k <= 0:
            raise ConfigError(f"k must be positive, got {self.k}")


@dataclass(frozen=True)
class ReaderConfig(_Serialisable):
    """Which model reads the documents, and where its activations are taken."""

    model: str | None = None
    """Hugging Face model id or local directory, encoder or causal LM; None: the SAE's reader, else all-MiniLM-L6-v2."""
    layer: int | None = None
    """Block read (0-based; negative counts from the end); None: the SAE's layer, else the last."""
    hook: str | None = None
    """Hook point read in that block (one of HOOKS); None: the SAE's, else resid_post (the block's output)."""
    head: int | None = None
    """With hook z: the one attention head read (None: the SAE's, else every head)."""
    max_tokens: int = 256
    """Documents longer than this (in tokens, special tokens included) are truncated and counted."""
    batch_size: int = 32
    """Documents per forward pass."""
    device: Device = "auto"
    """cpu, cuda, or auto (cuda when available)."""
    dtype: DType = "float32"
    """Reader weights' dtype; SAE codes are always computed in float32."""

    def __post_init__(self) -> None:
        if self.max_tokens < 2:
            raise ConfigError(f"--max-tokens must be at least 2, got {self.max_tokens}")
        if self.batch_size <= 0:
            raise ConfigError(f"--batch-size must be positive, got {self.batch_size}")
        _check_hook(self.hook, self.head, "--hook")


@dataclass(frozen=True)
class EmbedConfig(_Serialisable):
    """How token codes become document vectors in the store."""

    pooling: Pooling = "max"
    """Token-to-document pooling: max (as in the paper; signed max for abstopk), mean, sum,
    or count (the number of the document's tokens the latent fired on)."""
    min_value: float = 0.0
    """Pooled values with |value| <= min_value are dropped (0 keeps every non-zero)."""
    value_digits: int | None = 4
    """Significant digits kept of each stored value (relative error <= 5e-4), which lets
    DuckDB compress the activations table ~1.3x; None stores full float32."""
    label_top_docs: int = 64
    """Top-activating documents per latent whose peak words make its offline label."""
    label_words: int = 3
    """Keywords per offline label."""
    commit_docs: int = 256
    """Documents per transaction: an interrupted run loses at most this much work."""
    encode_tokens: int = 8192
    """Tokens per SAE encode call (bounds the (tokens, d_sae) pre-activation buffer)."""
    sae_dtype: DType | None = None
    """The dtype the SAE computes in; None: the one it was saved in. Codes are stored as float32."""
    store_tokens: bool = False
    """Also keep every token's non-zero codes (token index, character span, latent, value)
    in ``token_activations``: firing spans to highlight and datasets to re-pool
    (``saedata pool``) without reading the corpus again. Opt-in: it multiplies the store's
    size (benchmarks/bench_embed.py measures the bytes per token)."""
    chat_tokens: ChatTokens = "assistant"
    """Which tokens of a chat transcript are pooled: the assistant messages' contents
    (the model's answers, as in the paper's diffs of model responses) or all of it
    (template markup, special tokens and prompts too)."""

    def __post_init__(self) -> None:
        if self.chat_tokens not in CHAT_TOKENS:
            raise ConfigError(f"unknown chat_tokens {self.chat_tokens!r}; choose one of {', '.join(CHAT_TOKENS)}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {self.pooling!r}; choose one of {', '.join(POOLINGS)}")
        if self.min_value < 0:
            raise ConfigError("min_value must be >= 0")
        if self.value_digits is not None and not 1 <= self.value_digits <= 8:
            raise ConfigError(f"value_digits must be in 1..8 or None, got {self.value_digits}")
        if self.commit_docs <= 0 or self.encode_tokens <= 0 or self.label_top_docs <= 0:
            raise ConfigError("commit_docs, encode_tokens and label_top_docs must be positive")


@dataclass(frozen=True)
class InputConfig(_Serialisable):
    """How a corpus file is read."""

    text_field: str = "text"
    """Field (JSONL/Parquet) or column (CSV) holding the document text."""
    id_field: str | None = None
    """Field holding a unique document id; None numbers documents by line/row (1-based)."""
    format: Literal["jsonl", "csv", "parquet", "txt", "images"] | None = None
    """File format; None infers it from the extension (stdin defaults to jsonl; a folder is
    read as images); "images" reads a folder or a list file of image paths."""
    batch_size: int = 1024
    """Documents per batch yielded by the reader (memory stays flat in corpus size)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Reserved for format-specific options."""


@dataclass(frozen=True)
class VAEConfig(_Serialisable):
    """A variational autoencoder on flat vectors (images flattened to H*W*C) and how it is fitted:
    encoder x -> (mu, logvar) (n, d_latent), decoder z -> x^ (n, d_in), MLPs with ReLU."""

    d_in: int
    """Width of the input vectors (pixels H*W*C of an image, or embedding features)."""
    d_latent: int = 32
    """Latent dimensions L; ARD finds how many of them are relevant."""
    hidden: tuple[int, ...] = (256, 128)
    """Hidden layer widths of the encoder (the decoder mirrors them)."""
    prior: Literal["standard", "ard"] = "ard"
    """standard: p(z) = N(0, I); ard: the hierarchical ARD prior of ARD-VAE (Saha et al., 2025),
    N(0, diag(s^2)) with per-dimension variances s^2 re-estimated from the encoded data each epoch."""
    likelihood: Literal["gaussian", "bernoulli"] = "gaussian"
    """gaussian: squared error on inputs centred and scaled to unit mean variance; bernoulli:
    cross-entropy on inputs in [0, 1] (pixels), no rescaling."""
    beta: float = 1.0
    """Weight of the KL term: loss = reconstruction + beta x KL (the paper's single trade-off weight)."""
    epochs: int = 100
    """Passes over the training rows."""
    batch_size: int = 128
    """Rows per optimisation step."""
    lr: float = 1e-3
    """Adam learning rate."""
    holdout: float = 0.1
    """Fraction of rows held out (seeded) for the reported reconstruction error and probes; 0 keeps none."""
    ard_samples: int = 10_000
    """Training rows (drawn afresh each epoch) whose encodings estimate the ARD variances."""
    relevance_mass: float = 0.99
    """Relevant dimensions: the fewest, by decreasing relevance score, holding this share of the total."""
    active_threshold: float = 0.01
    """Active units (Burda et al., 2016): Var_x(E[z_j | x]) / prior variance_j above this."""
    image_shape: tuple[int, int, int] | None = None
    """(height, width, channels) when the inputs are flattened images (for traversal grids)."""
    seed: int = 0
    """Seed for initialisation, the hold-out split, shuffling and sampling; same data + seed -> same VAE."""
    device: Device = "auto"
    """cpu, cuda, or auto (cuda when available)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.image_shape is not None:
            object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))
        if self.d_in <= 0 or self.d_latent <= 0:
            raise ConfigError(f"d_in and d_latent must be positive, got {self.d_in} and {self.d_latent}")
        if any(h <= 0 for h in self.hidden):
            raise ConfigError(f"hidden widths must be positive, got {list(self.hidden)}")
        if self.prior not in ("standard", "ard"):
            raise ConfigError(f"unknown prior {self.prior!r}; choose standard or ard")
        if self.likelihood not in ("gaussian", "bernoulli"):
            raise ConfigError(f"unknown likelihood {self.likelihood!r}; choose gaussian or bernoulli")
        if self.beta <= 0 or self.lr <= 0:
            raise ConfigError(f"beta and lr must be positive, got {self.beta} and {self.lr}")
        if self.epochs <= 0 or self.batch_size <= 0 or self.ard_samples <= 0:
            raise ConfigError("epochs, batch_size and ard_samples must be positive")
        if not 0 <= self.holdout < 1:
            raise ConfigError(f"holdout must be in [0, 1), got {self.holdout}")
        if not 0 < self.relevance_mass <= 1:
            raise ConfigError(f"relevance_mass must be in (0, 1], got {self.relevance_mass}")
        if self.image_shape is not None and (
            len(self.image_shape) != 3 or self.image_shape[0] * self.image_shape[1] * self.image_shape[2] != self.d_in
        ):
            raise ConfigError(f"image_shape {self.image_shape} does not match d_in={self.d_in}")


LLM_ENV = ("SAEDATA_LLM_BASE_URL", "SAEDATA_LLM_MODEL", "SAEDATA_LLM_API_KEY")
"""Environment variables naming the LLM endpoint, its model and its key (``saedata label --llm``)."""


@dataclass(frozen=True)
class LLMConfig:
    """An OpenAI-compatible chat endpoint, and how an LLM labelling run uses it: which
    documents its prompts show (sampled with ``seed``) and how many requests are in flight."""

    base_url: str
    """The API root, e.g. http://localhost:8000/v1 (``/chat/completions`` is appended)."""
    model: str
    """The model name sent with every request; labels record it as ``llm:<model>``."""
    api_key: str = field(default="", repr=False)
    """Sent as ``Authorization: Bearer <key>``; empty for local servers that need none."""
    timeout: float = 60.0
    """Seconds one request may take before it counts as failed (not retried)."""
    retries: int = 3
    """Further attempts after an HTTP 429 or 5xx reply, waiting ``backoff`` seconds, then twice that, ..."""
    backoff: float = 1.0
    """Seconds before the first retry (a server's Retry-After, up to 60 s, takes precedence)."""
    workers: int = 4
    """Requests in flight at once (LLM calls wait on the network, not the CPU)."""
    seed: int = 0
    """Seed of every sample of documents a prompt shows: same store + seed -> the same prompts."""
    n_top: int = 8
    """The latent's strongest documents shown, its peak marked, when asking for a label."""
    n_near: int = 6
    """Near misses shown beside them: documents sharing the latent's peak words, or the latents
    firing with it, where it is silent."""
    n_score: int = 10
    """Activating documents (not among those shown for the label) each scorer shows; detection
    shows as many where the latent is silent."""
    width: int = 240
    """Characters of text shown around the place each excerpt centres on."""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")) or not self.base_url.isprintable() \
                or " " in self.base_url:
            raise ConfigError(f"the LLM endpoint must be an http(s) URL, not {self.base_url!r}")
        if not self.model.strip() or not self.model.isprintable():
            raise ConfigError(f"the LLM model name must be printable text, not {self.model!r}")
        if self.timeout <= 0 or self.retries < 0 or self.backoff < 0:
            raise ConfigError("the LLM timeout must be positive, retries and backoff at least 0")
        if not 1 <= self.workers <= 64:
            raise ConfigError(f"LLM workers must be in 1..64, got {self.workers}")
        if self.n_top < 1 or self.n_near < 0 or self.n_score < 0 or self.width < 20:
            raise ConfigError("n_top must be at least 1, n_near and n_score at least 0, width at least 20")

    @classmethod
    def from_env(cls, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 **settings: Any) -> LLMConfig:
        """The endpoint from the arguments, else from SAEDATA_LLM_BASE_URL, SAEDATA_LLM_MODEL and
        SAEDATA_LLM_API_KEY; ConfigError (one line) when the URL or the model is given by neither."""
        base_url = base_url or os.environ.get(LLM_ENV[0], "")
        model = model or os.environ.get(LLM_ENV[1], "")
        missing = [name for name, value in ((f"{LLM_ENV[0]} (or --llm-url)", base_url),
                                            (f"{LLM_ENV[1]} (or --llm-model)", model)) if not value]
        if missing:
            raise ConfigError(f"the LLM labeller needs an OpenAI-compatible endpoint: set {' and '.join(missing)}")
        return cls(base_url=base_url, model=model, api_key=api_key or os.environ.get(LLM_ENV[2], ""), **settings)
