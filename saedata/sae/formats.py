"""Load and save SAEs: saedata's own directories, SAELens and EleutherAI sparsify.

Every format maps onto one :class:`SparseAutoencoder` whose encode/decode reproduce the
format's own formula (checked numerically in ``tests/test_sae_formats.py``):

* saedata: ``cfg.json`` = ``SAEConfig.to_dict()`` plus ``"format": "saedata"`` and
  ``"format_version": 1``; ``sae.safetensors`` with ``W_enc`` (d_in, d_sae), ``b_enc``,
  ``W_dec`` (d_sae, d_in), ``b_dec``, ``input_scale`` (scalar) and ``threshold``
  (jumprelu: (d_sae,), plus the exact ``log_threshold``; batchtopk: scalar).
* SAELens: ``cfg.json`` (``d_in``, ``d_sae``, ``architecture`` standard / jumprelu / topk,
  or the older ``activation_fn_str`` relu / topk with ``activation_fn_kwargs: {"k"}``;
  ``apply_b_dec_to_input``, ``normalize_activations``, ``finetuning_scaling_factor``,
  ``rescale_acts_by_decoder_norm``, ``hook_name``, ``model_name`` at the top level or in
  ``metadata``/``meta``) and ``sae_weights.safetensors`` (``W_enc``, ``W_dec``, ``b_enc``,
  ``b_dec``, ``threshold`` or ``log_threshold``). Formula: ``z = act((x - b_dec*apply)
  W_enc + b_enc)``, ``x^ = z W_dec + b_dec``.
* sparsify: ``cfg.json`` (``d_in``, ``num_latents`` or ``expansion_factor``, ``k``,
  ``activation`` topk) and ``sae.safetensors`` (``encoder.weight`` (h, d_in),
  ``encoder.bias``, ``W_dec`` (h, d_in), ``b_dec``). Formula: ``z = topk(relu(enc(x -
  b_dec)))``, ``x^ = z W_dec + b_dec``.

Weights are read with safetensors only: nothing is ever unpickled. Every problem raises
:class:`~saedata.errors.SAEFormatError` with one line naming the path.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from saedata.config import EXPORT_FORMATS, SAEConfig
from saedata.errors import ConfigError, DimensionMismatchError, SAEFormatError
from saedata.reader import TORCH_DTYPES
from saedata.sae.model import SparseAutoencoder

FORMAT_NAME = "saedata"
FORMAT_VERSION = 1
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
SAELENS_WEIGHTS_FILE = "sae_weights.safetensors"
SPARSIFY_WEIGHTS_FILE = "sae.safetensors"


def _saved_dtype(declared: Any, tensor: Tensor) -> str:
    """The dtype an SAE was saved in: its config's ``dtype`` ("bfloat16", "torch.bfloat16")
    when it names one saedata computes in, else its encoder's tensor dtype (float32 for
    any other)."""
    if isinstance(declared, str) and declared.removeprefix("torch.") in TORCH_DTYPES:
        return declared.removeprefix("torch.")
    return next((name for name, t in TORCH_DTYPES.items() if t == tensor.dtype), "float32")


# ---------------------------------------------------------------------- saving
def native_tensors(sae: SparseAutoencoder) -> dict[str, Tensor]:
    """The tensors saedata's format stores for ``sae``, contiguous, float32, on CPU."""
    tensors = {
        "W_enc": sae.W_enc,
        "b_enc": sae.b_enc,
        "W_dec": sae.W_dec,
        "b_dec": sae.b_dec,
        "input_scale": sae.input_scale,
    }
    if sae.cfg.activation == "jumprelu":
        tensors["threshold"] = sae.threshold
        tensors["log_threshold"] = sae.log_threshold
    elif sae.cfg.activation == "batchtopk":
        tensors["threshold"] = sae.threshold
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in tensors.items()}


@contextmanager
def atomic_directory(path: str | os.PathLike, names: tuple[str, ...], what: str = "an SAE") -> Iterator[Path]:
    """Write a model directory all at once: the block writes the files ``names`` into the
    temporary sibling this yields; then a new directory is renamed into place, and in an
    existing one (or one another process created meanwhile) each file is replaced
    atomically, so no file is ever half written. Every saved model (SAE, VAE) uses it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SAEFormatError(f"{path}: exists and is not a directory; cannot save {what} there")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as e:
        raise SAEFormatError(f"{path}: cannot save {what} there ({e.strerror or e})") from None
    try:
        try:
            yield tmp
        except OSError as e:  # a full disk, a read-only folder: nothing is left half written
            raise SAEFormatError(f"{path}: cannot save {what} ({e.strerror or e})") from None
        if not path.exists():
            try:
                os.replace(tmp, path)
                return
            except OSError:  # another process made the directory first: replace its files
                if not path.is_dir():
                    raise
        for name in names:
            os.replace(tmp / name, path / name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_sae(sae: SparseAutoencoder, path: str | Path) -> Path:
    """Write ``sae`` to the directory ``path`` (``cfg.json`` + ``sae.safetensors``) with
    :func:`atomic_directory`. Returns the directory."""
    from safetensors.torch import save_file

    cfg = {**sae.cfg.to_dict(), "format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    with atomic_directory(path, (WEIGHTS_FILE, CFG_FILE)) as tmp:
        (tmp / CFG_FILE).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        save_file(native_tensors(sae), str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
    return Path(path)


def sae_fingerprint(path: str | os.PathLike, legacy: bool = False) -> str:
    """SHA-256 over an SAE directory's ``cfg.json`` and weight files: the same weights and
    config give the same fingerprint wherever they lie (training metrics, which hold the
    seconds it took, are left out). ``legacy``: also over every other JSON file, as saedata
    0.1 computed it, to recognise SAEs registered then."""
    root = Path(path)
    h = hashlib.sha256()
    configs = sorted(root.glob("*.json")) if legacy else [root / CFG_FILE]
    files = [root] if root.is_file() else [c for c in configs if c.is_file()] + sorted(root.glob("*.safetensors"))
    for f in files:  # a Goodfire SAE is one file
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------- reading
def read_json(file: Path) -> dict[str, Any]:
    """A model directory's JSON config as a dict; SAEFormatError (one line) when it is not."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SAEFormatError(f"{file}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SAEFormatError(f"{file}: cannot read ({e})") from None
    except RecursionError:
        raise SAEFormatError(f"{file}: too deeply nested JSON") from None
    if not isinstance(data, dict):
        raise SAEFormatError(f"{file}: expected a JSON object, found {type(data).__name__}")
    return data


def read_safetensors(file: Path) -> dict[str, Tensor]:
    """Every tensor of a safetensors file, on CPU (nothing is unpickled); SAEFormatError when corrupt."""
    from safetensors.torch import load_file

    if not file.is_file():
        raise SAEFormatError(f"{file.parent}: missing weights file {file.name}")
    try:
        tensors = load_file(str(file), device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt files
        msg = " ".join(str(e).split()) or type(e).__name__
        raise SAEFormatError(f"{file}: corrupt safetensors file ({msg})") from None
    return tensors


def _take(tensors: dict[str, Tensor], name: str, shape: tuple[int, ...], file: Path) -> Tensor:
    """The float32 tensor ``name`` checked against ``shape`` (from the config)."""
    if name not in tensors:
        raise SAEFormatError(f"{file}: missing tensor {name!r}")
    t = tensors[name]
    if tuple(t.shape) != shape:
        raise SAEFormatError(
            f"{file}: tensor {name!r} has shape {tuple(t.shape)}, expected {shape} from {CFG_FILE}"
        )
    if not t.is_floating_point():
        raise SAEFormatError(f"{file}: tensor {name!r} has dtype {t.dtype}, expected a float type")
    return t.to(torch.float32)


def _int_field(cfg: dict[str, Any], key: str, file: Path) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SAEFormatError(f"{file}: {key!r} must be a positive integer, got {value!r}")
    return value


def _make_config(file: Path, **fields: Any) -> SAEConfig:
    try:
        return SAEConfig(**fields)
    except (ConfigError, TypeError) as e:
        raise SAEFormatError(f"{file}: invalid SAE config ({e})") from None


@torch.no_grad()
def _build(
    cfg: SAEConfig,
    W_enc: Tensor,
    b_enc: Tensor,
    W_dec: Tensor,
    b_dec: Tensor,
    input_scale: Tensor | float = 1.0,
    threshold: Tensor | None = None,
    log_threshold: Tensor | None = None,
) -> SparseAutoencoder:
    sae = SparseAutoencoder(cfg)
    sae.W_enc.copy_(W_enc)
    sae.b_enc.copy_(b_enc)
    sae.W_dec.copy_(W_dec)
    sae.b_dec.copy_(b_dec)
    sae.input_scale.fill_(float(input_scale))
    if cfg.activation == "jumprelu":
        if log_threshold is None:
            assert threshold is not None
            # thresholds <= 0 act like SAELens' relu(pre) * 1{pre > theta} up to values <= tiny
            log_threshold = threshold.clamp_min(torch.finfo(torch.float32).tiny).log()
        sae.log_threshold.copy_(log_threshold)
    elif cfg.activation == "batchtopk" and threshold is not None:
        sae.batch_threshold.fill_(float(threshold.reshape(-1)[0]) if threshold.numel() else -1.0)
    return sae


def _load_native(path: Path, cfg_dict: dict[str, Any]) -> SparseAutoencoder:
    cfg_file = path / CFG_FILE
    version = cfg_dict.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise SAEFormatError(
            f"{cfg_file}: format_version {version!r} is newer than this saedata reads "
            f"({FORMAT_VERSION}); upgrade saedata"
        )
    fields = {k: v for k, v in cfg_dict.items() if k not in ("format", "format_version")}
    try:
        cfg = SAEConfig.from_dict(fields)
    except (ConfigError, TypeError) as e:
        raise SAEFormatError(f"{cfg_file}: invalid SAE config ({e})") from None
    file = path / WEIGHTS_FILE
    t = read_safetensors(file)
    d, h = cfg.d_in, cfg.d_sae
    threshold = log_threshold = None
    if cfg.activation == "jumprelu":
        if "log_threshold" in t:
            log_threshold = _take(t, "log_threshold", (h,), file)
        else:
            threshold = _take(t, "threshold", (h,), file)
    elif cfg.activation == "batchtopk":
        threshold = _take(t, "threshold", (), file)
    return _build(
        cfg,
        _take(t, "W_enc", (d, h), file),
        _take(t, "b_enc", (h,), file),
        _take(t, "W_dec", (h, d), file),
        _take(t, "b_dec", (d,), file),
        _take(t, "input_scale", (), file),
        threshold,
        log_threshold,
    )


_TL_HOOKS = {"hook_resid_pre": "resid_pre", "hook_resid_post": "resid_post", "hook_attn_out": "attn_out",
             "hook_mlp_out": "mlp_out", "attn.hook_z": "z", "mlp.hook_post": "mlp_post"}
"""TransformerLens hook names in block N (``blocks.N.<name>``) and saedata's hook points."""
_MODULE_HOOKS = {None: "resid_post", "mlp": "mlp_out", "self_attn": "attn_out", "attn": "attn_out"}
"""What a module path's output is (``layers.N``, ``layers.N.mlp``: sparsify's hookpoints;
in Gemma the MLP module's output comes before the post-norm that ``mlp_out`` includes)."""
_MODULE_PATH = re.compile(r"(?:[\w.]*\.)?(?:layers|layer|h|blocks)\.(\d+)(?:\.(\w+))?")


def hook_point(name: str) -> tuple[int, str] | None:
    """(layer, hook) that a hook name refers to: TransformerLens's ``blocks.N.hook_resid_pre``
    and kin, or a module path (``model.layers.N``, ``layers.N.mlp``); None when it is neither."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if m and m.group(2) in _TL_HOOKS:
        return int(m.group(1)), _TL_HOOKS[m.group(2)]
    m = _MODULE_PATH.fullmatch(name)
    if m and m.group(2) in _MODULE_HOOKS:
        return int(m.group(1)), _MODULE_HOOKS[m.group(2)]
    return None


def _saelens_hook(name: Any, layer: Any, file: Path) -> tuple[int | None, str]:
    """(layer, hook) of an SAELens config's ``hook_name`` (and legacy ``hook_layer``)."""
    if not isinstance(name, str):
        return (layer if isinstance(layer, int) and not isinstance(layer, bool) else None), "resid_post"
    point = hook_point(name)
    if point is None:
        raise SAEFormatError(
            f"{file}: hook_name {name!r} is a hook point saedata cannot read (it reads blocks.N.hook_resid_pre, "
            "hook_resid_post, hook_attn_out, hook_mlp_out, attn.hook_z and mlp.hook_post, or a module's output)")
    return point


def _load_saelens(path: Path, cfg: dict[str, Any]) -> SparseAutoencoder:
    cfg_file = path / CFG_FILE
    d = _int_field(cfg, "d_in", cfg_file)
    h = _int_field(cfg, "d_sae", cfg_file)
    meta = cfg.get("metadata") or cfg.get("meta") or {}
    if not isinstance(meta, dict):
        meta = {}

    def meta_get(key: str) -> Any:
        return cfg.get(key, meta.get(key))

    arch = cfg.get("architecture") or "standard"
    act_str = cfg.get("activation_fn_str") or cfg.get("activation_fn") or ("topk" if arch == "topk" else "relu")
    kwargs = cfg.get("activation_fn_kwargs") or {}
    k = cfg.get("k", kwargs.get("k") if isinstance(kwargs, dict) else None)
    if arch in ("topk", "abstopk") or (arch == "standard" and act_str == "topk"):
        activation = "abstopk" if arch == "abstopk" else "topk"
        if isinstance(k, bool) or not isinstance(k, int):
            raise SAEFormatError(f"{cfg_file}: {activation} SAE without an integer 'k' (or activation_fn_kwargs.k)")
    elif arch == "jumprelu":
        activation = "jumprelu"
    elif arch == "standard" and act_str == "relu":
        activation = "relu"
    else:
        raise SAEFormatError(
            f"{cfg_file}: unsupported SAELens architecture {arch!r} with activation {act_str!r} "
            "(supported: standard/relu, standard/topk, topk, abstopk, jumprelu)"
        )
    norm = cfg.get("normalize_activations") or "none"
    if norm not in ("none", "expected_average_only_in"):
        what = ("normalises each token separately" if norm in ("constant_norm_rescale", "layer_norm")
                else "transforms the input in a way")
        raise SAEFormatError(f"{cfg_file}: normalize_activations={norm!r} {what} that saedata does not implement "
                             "(it reads SAEs with none or expected_average_only_in)")

    file = path / SAELENS_WEIGHTS_FILE
    t = read_safetensors(file)
    dtype = _saved_dtype(cfg.get("dtype"), t.get("W_enc", torch.zeros(0)))
    W_enc = _take(t, "W_enc", (d, h), file)
    W_dec = _take(t, "W_dec", (h, d), file)
    b_enc = _take(t, "b_enc", (h,), file)
    b_dec = _take(t, "b_dec", (d,), file)
    threshold = None
    if activation == "jumprelu":
        if "threshold" in t:
            threshold = _take(t, "threshold", (h,), file)
        elif "log_threshold" in t:
            threshold = _take(t, "log_threshold", (h,), file).exp()
        else:
            raise SAEFormatError(f"{file}: missing tensor 'threshold' (or 'log_threshold') of a jumprelu SAE")
    finetuning = bool(cfg.get("finetuning_scaling_factor"))
    if "scaling_factor" in t:  # older SAELens files: all ones unless finetuned, as SAELens loads them
        legacy = _take(t, "scaling_factor", (h,), file)
        if bool(torch.all(legacy == 1)):
            finetuning = False
        elif finetuning:
            t["finetuning_scaling_factor"] = legacy
        else:
            raise SAEFormatError(f"{file}: tensor 'scaling_factor' is not all ones, but {CFG_FILE} says "
                                 "finetuning_scaling_factor is false")
    if finetuning:
        # x^ = (z * s_ft) W_dec + b_dec  ==  z (s_ft[:, None] W_dec) + b_dec
        W_dec = W_dec * _take(t, "finetuning_scaling_factor", (h,), file)[:, None]
    if cfg.get("apply_b_dec_to_input", True) is False:
        # x W_enc + b_enc == (x - b_dec) W_enc + (b_enc + b_dec W_enc)
        b_enc = b_enc + b_dec @ W_enc
    if activation in ("topk", "abstopk") and cfg.get("rescale_acts_by_decoder_norm"):
        # topk on pre * ||d_j||, decode with d_j / ||d_j||: fold the norms into the encoder
        norms = W_dec.norm(dim=1)
        W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
    layer, hook = _saelens_hook(meta_get("hook_name"), meta_get("hook_layer"), cfg_file)
    head = meta_get("hook_head_index")
    sae_cfg = _make_config(
        cfg_file,
        d_in=d,
        d_sae=h,
        activation=activation,
        k=k if activation in ("topk", "abstopk") else SAEConfig.k,
        reader=meta_get("model_name"),
        layer=layer,
        hook=hook,
        head=head if hook == "z" and isinstance(head, int) and not isinstance(head, bool) else None,
        dtype=dtype,
    )
    return _build(sae_cfg, W_enc, b_enc, W_dec, b_dec, 1.0, threshold)


def _load_sparsify(path: Path, cfg: dict[str, Any]) -> SparseAutoencoder:
    cfg_file = path / CFG_FILE
    d = _int_field(cfg, "d_in", cfg_file)
    h = cfg.get("num_latents") or 0
    if not h:
        h = d * _int_field(cfg, "expansion_factor", cfg_file)
    if isinstance(h, bool) or not isinstance(h, int) or h <= 0:
        raise SAEFormatError(f"{cfg_file}: 'num_latents' must be a positive integer, got {h!r}")
    k = _int_field(cfg, "k", cfg_file)
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise SAEFormatError(f"{cfg_file}: unsupported sparsify activation {activation!r} (supported: topk)")
    for flag in ("transcode", "skip_connection", "signed", "embed_skip", "gram_lookup"):
        if cfg.get(flag):
            raise SAEFormatError(f"{cfg_file}: sparsify option {flag}=true is not supported")
    file = path / SPARSIFY_WEIGHTS_FILE
    t = read_safetensors(file)
    if "W_skip" in t:
        raise SAEFormatError(f"{file}: sparsify skip connections (W_skip) are not supported")
    enc_w = _take(t, "encoder.weight", (h, d), file)
    # sparsify saves one folder per hookpoint, named after the module read (``layers.6``)
    layer, hook = hook_point(path.resolve().name) or (None, "resid_post")
    sae_cfg = _make_config(cfg_file, d_in=d, d_sae=h, activation="topk", k=k, layer=layer, hook=hook,
                           dtype=_saved_dtype(None, t["encoder.weight"]))
    return _build(
        sae_cfg,
        enc_w.T.contiguous(),
        _take(t, "encoder.bias", (h,), file),
        _take(t, "W_dec", (h, d), file),
        _take(t, "b_dec", (d,), file),
    )


GOODFIRE_SUFFIXES = (".pth", ".pt")


def _load_goodfire(path: Path) -> SparseAutoencoder:
    """A Goodfire SAE: one torch file of ``encoder_linear`` / ``decoder_linear`` weights and
    biases, ``z = relu(x W_e^T + b_e)``, ``x^ = z W_d^T + b_d``, read with
    ``torch.load(weights_only=True)`` (plain tensors only: nothing else is unpickled); the
    layer comes from the file name (``...-SAE-l19.pth``), the hook is the block's output."""
    try:
        t = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
        lines = str(e).strip().splitlines()
        raise SAEFormatError(f"{path}: not a weights-only torch file of SAE tensors "
                             f"({lines[0][:160] if lines else type(e).__name__})") from None
    names = ("encoder_linear.weight", "encoder_linear.bias", "decoder_linear.weight", "decoder_linear.bias")
    if not isinstance(t, dict) or not all(isinstance(t.get(n), Tensor) for n in names):
        raise SAEFormatError(f"{path}: not a Goodfire SAE (it needs tensors {', '.join(names)})")
    if t["encoder_linear.weight"].ndim != 2:
        raise SAEFormatError(f"{path}: tensor 'encoder_linear.weight' must be 2-D (d_sae, d_in)")
    h, d = t["encoder_linear.weight"].shape
    W_enc = _take(t, "encoder_linear.weight", (h, d), path).T.contiguous()
    b_dec = _take(t, "decoder_linear.bias", (d,), path)
    # no decoder bias on the input: (x - b_dec) W_enc + (b_enc + b_dec W_enc) == x W_enc + b_enc
    b_enc = _take(t, "encoder_linear.bias", (h,), path) + b_dec @ W_enc
    W_dec = _take(t, "decoder_linear.weight", (d, h), path).T.contiguous()
    m = re.search(r"-l(\d+)$", path.stem)
    cfg = _make_config(path, d_in=d, d_sae=h, activation="relu", layer=int(m.group(1)) if m else None,
                       hook="resid_post", dtype=_saved_dtype(None, t["encoder_linear.weight"]))
    return _build(cfg, W_enc, b_enc, W_dec, b_dec)


HF_PREFIX = "hf://"


RELEASE_ID = re.compile(r"([^/\\:\s]{2,}):(\S+)")
"""``RELEASE:SAE_ID`` as SAELens names a published SAE (``gpt2-small-res-jb:blocks.8.hook_resid_pre``,
``gemma-scope-2b-pt-res-canonical:layer_12/width_16k/canonical``); the release has no slash."""


def cache_dir() -> Path:
    """Where saedata keeps what it converts for reuse: ``$SAEDATA_CACHE``, else
    ``$XDG_CACHE_HOME/saedata``, else ``~/.cache/saedata``."""
    if os.environ.get("SAEDATA_CACHE"):
        return Path(os.environ["SAEDATA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "saedata"


def resolve_sae(source: str | os.PathLike) -> Path:
    """The local SAE directory (or Goodfire file) ``source`` names: a path as given,
    ``hf://OWNER/REPO[/PATH][@REVISION]`` fetched through ``huggingface_hub`` (only PATH's
    files; its cache, token and ``HF_HUB_OFFLINE`` are honoured), or a SAELens release id
    ``RELEASE:SAE_ID`` (:func:`saelens_release`) when no such path exists."""
    text = os.fspath(source)
    if not text.startswith(HF_PREFIX):
        release = RELEASE_ID.fullmatch(text)
        if release and not os.path.exists(text):
            return saelens_release(release.group(1), release.group(2))
        return Path(text)
    spec, _, revision = text[len(HF_PREFIX):].partition("@")
    parts = spec.strip("/").split("/")
    if len(parts) < 2 or not all(parts) or "@" in revision:
        raise SAEFormatError(f"{text}: expected hf://OWNER/REPO[/PATH][@REVISION]")
    repo_id, sub = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import snapshot_download

    try:
        root = Path(snapshot_download(repo_id, revision=revision or None,
                                      allow_patterns=[sub, f"{sub}/*"] if sub else None))
    except Exception as e:  # noqa: BLE001 - the hub raises many kinds (offline, not found, auth, HTTP)
        lines = str(e).strip().splitlines()
        raise SAEFormatError(f"{text}: cannot get it from the Hugging Face Hub "
                             f"({type(e).__name__}: {lines[0][:200] if lines else ''})") from None
    path = root / sub
    if not path.exists():
        raise SAEFormatError(f"{text}: {repo_id} has no {sub!r} at that revision")
    return path


def saelens_release(release: str, sae_id: str) -> Path:
    """A SAELens-format directory of the published SAE ``RELEASE:SAE_ID``, made once by the
    optional ``sae-lens`` package and kept under :func:`cache_dir`.

    SAELens resolves the release (its directory of published SAEs), downloads it through
    the Hugging Face Hub, converts any release layout (Gemma Scope's ``params.npz``,
    Llama Scope, ...) and folds the release's ``norm_scaling_factor`` into the weights, as
    its ``SAE.from_pretrained`` does for its own users; the result is saved with
    ``save_model`` (float32) and read like any SAELens directory."""
    text = f"{release}:{sae_id}"
    try:
        from sae_lens import SAE
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    except ImportError:
        raise SAEFormatError(f"{text}: no such SAE directory, and reading it as a SAELens release id needs the "
                             "sae-lens package (pip install sae-lens)") from None
    lookup = get_pretrained_saes_directory().get(release)
    if lookup is None:
        raise SAEFormatError(f"{text}: no such SAE directory, nor a SAELens release {release!r} (see "
                             "sae_lens.loading.pretrained_saes_directory.get_pretrained_saes_directory())")
    if sae_id not in lookup.saes_map:
        ids = sorted(lookup.saes_map)
        raise SAEFormatError(f"{text}: release {release!r} has no SAE {sae_id!r} (it has {len(ids)}: "
                             f"{', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''})")
    out = cache_dir() / "saelens" / release / re.sub(r"[^\w.\-]+", "__", sae_id)
    if (out / CFG_FILE).is_file() and (out / SAELENS_WEIGHTS_FILE).is_file():
        return out
    try:
        sae = SAE.from_pretrained(release, sae_id, device="cpu")
    except Exception as e:  # noqa: BLE001 - the hub and the converters raise many kinds
        lines = str(e).strip().splitlines()
        raise SAEFormatError(f"{text}: SAELens cannot load it ({type(e).__name__}: "
                             f"{lines[0][:200] if lines else ''})") from None
    with atomic_directory(out, (SAELENS_WEIGHTS_FILE, CFG_FILE), what="a SAELens release") as tmp:
        sae.save_model(tmp)
    return out


def detect_format(path: str | Path) -> str:
    """``"saedata"``, ``"saelens"`` or ``"sparsify"`` for the SAE directory ``path``."""
    path = Path(path)
    _check_dir(path)
    return _detect(path, read_json(path / CFG_FILE))


def _check_dir(path: Path) -> None:
    if not path.exists():
        if path.suffix in GOODFIRE_SUFFIXES:
            raise SAEFormatError(f"{path}: no such SAE file")
        raise SAEFormatError(f"{path}: no such SAE directory")
    if not path.is_dir():
        raise SAEFormatError(f"{path}: not a directory (an SAE is a directory with {CFG_FILE} and weights)")
    if (path / CFG_FILE).is_file():
        return
    subdirs = sorted(p.name for p in path.iterdir() if p.is_dir() and (p / CFG_FILE).is_file())
    if subdirs:
        raise SAEFormatError(
            f"{path}: holds {len(subdirs)} SAEs (one per hookpoint: {', '.join(subdirs)}); "
            f"pick one, e.g. {path / subdirs[0]}"
        )
    raise SAEFormatError(f"{path}: missing {CFG_FILE}")


def _detect(path: Path, cfg: dict[str, Any]) -> str:
    fmt = cfg.get("format")
    if fmt == FORMAT_NAME:
        return "saedata"
    if fmt is not None:
        raise SAEFormatError(f"{path / CFG_FILE}: unknown SAE format {fmt!r}")
    if (path / SAELENS_WEIGHTS_FILE).exists() or (
        "d_sae" in cfg and ("architecture" in cfg or "activation_fn_str" in cfg)
    ):
        return "saelens"
    if (path / SPARSIFY_WEIGHTS_FILE).exists() and (
        "num_latents" in cfg or "expansion_factor" in cfg or "k" in cfg
    ):
        return "sparsify"
    if "num_latents" in cfg or "expansion_factor" in cfg:
        return "sparsify"
    raise SAEFormatError(
        f"{path}: unknown SAE format ({CFG_FILE} is not saedata's, SAELens' or sparsify's)"
    )


def load_sae(path: str | Path, device: str | torch.device = "cpu", dtype: str | None = None) -> SparseAutoencoder:
    """Load an SAE directory of any supported format (auto-detected) onto ``device``.

    ``device`` may be ``"auto"`` (cuda when available). The SAE computes in ``dtype``
    (float32, float16, bfloat16), by default the one it was saved in (``cfg.dtype``). The
    returned SAE is in eval mode and remembers where it came from (``source_path``,
    ``source_format``).
    """
    path = Path(path)
    if path.suffix in GOODFIRE_SUFFIXES and path.is_file():
        sae, fmt = _load_goodfire(path), "goodfire"
    else:
        _check_dir(path)
        cfg = read_json(path / CFG_FILE)
        fmt = _detect(path, cfg)
        loader = {"saedata": _load_native, "saelens": _load_saelens, "sparsify": _load_sparsify}[fmt]
        sae = loader(path, cfg)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is not None:
        sae.cfg = sae.cfg.replace(dtype=dtype)
    sae = sae.to(device=device, dtype=TORCH_DTYPES[sae.cfg.dtype]).eval()
    sae.source_path = str(path)
    sae.source_format = fmt
    for name, p in sae.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise SAEFormatError(f"{path}: tensor {name!r} contains NaN or infinite values")
    if not math.isfinite(float(sae.input_scale)) or float(sae.input_scale) <= 0:
        raise SAEFormatError(f"{path}: input_scale must be a positive finite number")
    return sae


def check_d_in(sae: SparseAutoencoder, d_model: int, reader_desc: str) -> None:
    """Raise :class:`DimensionMismatchError` unless the reader width ``d_model`` equals ``sae.d_in``.

    ``reader_desc`` names the reader and layer, e.g. ``"sentence-transformers/all-MiniLM-L6-v2 layer 6"``.
    """
    if int(d_model) != sae.d_in:
        where = getattr(sae, "source_path", None) or "<in memory>"
        raise DimensionMismatchError(
            f"SAE at {where} expects d_in={sae.d_in}, but reader {reader_desc} has width {d_model}"
        )


# ---------------------------------------------------------------------- export
_SAELENS_ARCH = {"relu": "standard", "jumprelu": "jumprelu", "batchtopk": "jumprelu", "topk": "topk",
                 "abstopk": "abstopk"}
"""SAELens architecture computing each activation at inference (a BatchTopK SAE runs as
JumpReLU with its learned threshold, as SAELens saves its own)."""
_SPARSIFY_HOOKPOINT = {"resid_post": "layers.{layer}", "mlp_out": "layers.{layer}.mlp"}


def folded_tensors(sae: SparseAutoencoder) -> dict[str, Tensor]:
    """W_enc, b_enc, W_dec, b_dec (and the threshold) with saedata's input scale ``s``
    folded in, float32 on CPU: ``(x - b_dec/s)(s W_enc) + b_enc`` is the pre-activation
    ``(x s - b_dec) W_enc + b_enc`` and ``z (W_dec/s) + b_dec/s`` the reconstruction, in
    the reader's units, so a library with no input scale computes the same codes."""
    s = sae.input_scale.detach().float().cpu()
    t = native_tensors(sae)
    out = {"W_enc": t["W_enc"] * s, "b_enc": t["b_enc"], "W_dec": t["W_dec"] / s, "b_dec": t["b_dec"] / s}
    if sae.cfg.activation in ("jumprelu", "batchtopk"):
        out["threshold"] = t["threshold"].expand(sae.d_sae).clone()
    return {k: v.contiguous() for k, v in out.items()}


class Exported(NamedTuple):
    """Where ``export_sae`` wrote an SAE, and what the library calls its hook point."""

    path: Path
    hook_name: str | None
    """SAELens's ``blocks.5.hook_resid_post``, sparsify's hookpoint folder name ``layers.5``
    (None where sparsify has no name for the hook)."""


def export_sae(sae: SparseAutoencoder | str | os.PathLike, path: str | os.PathLike, to: str) -> Exported:
    """Write ``sae`` (an SAE, or a directory to load one from) to the directory ``path``
    in SAELens's (``to="saelens"``) or sparsify's (``"sparsify"``) own layout, input scale
    folded into the weights, float32, with its reader, layer and hook point as that
    library names them. SAEFormatError when
    the format cannot express the SAE (sparsify: TopK only; neither computes TopAFA)."""
    from safetensors.torch import save_file

    if to not in EXPORT_FORMATS:
        raise ConfigError(f"cannot export to {to!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if not isinstance(sae, SparseAutoencoder):
        sae = load_sae(sae)
    cfg = sae.cfg
    if cfg.layer is None:
        raise SAEFormatError(f"{path}: the SAE records no reader layer, which {to} needs; "
                             "load it with --layer and save it again")
    t = folded_tensors(sae)
    if to == "saelens":
        if cfg.activation not in _SAELENS_ARCH:
            raise SAEFormatError(f"{path}: SAELens has no architecture that computes {cfg.activation}")
        meta = {"model_name": cfg.reader, "hook_name": exported_hook_name(cfg, to), "hook_head_index": cfg.head,
                "model_class_name": "HookedTransformer", "prepend_bos": True, "sae_lens_training_version": None}
        out: dict[str, Any] = {
            "architecture": _SAELENS_ARCH[cfg.activation], "d_in": cfg.d_in, "d_sae": cfg.d_sae,
            "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
            "reshape_activations": "hook_z" if cfg.hook == "z" and cfg.head is None else "none", "metadata": meta,
        }
        if cfg.activation in ("topk", "abstopk"):
            out.update(k=cfg.k, rescale_acts_by_decoder_norm=False)
        weights, tensors = SAELENS_WEIGHTS_FILE, t
    else:
        if cfg.activation != "topk":
            raise SAEFormatError(f"{path}: sparsify computes TopK SAEs only, not {cfg.activation}")
        out = {"activation": "topk", "expansion_factor": max(1, cfg.d_sae // cfg.d_in), "normalize_decoder": False,
               "num_latents": cfg.d_sae, "k": cfg.k, "multi_topk": False, "skip_connection": False,
               "transcode": False, "d_in": cfg.d_in}
        weights = SPARSIFY_WEIGHTS_FILE
        tensors = {"encoder.weight": t["W_enc"].T.contiguous(), "encoder.bias": t["b_enc"], "W_dec": t["W_dec"],
                   "b_dec": t["b_dec"]}
    with atomic_directory(path, (weights, CFG_FILE), what=f"a {to} SAE") as tmp:
        (tmp / CFG_FILE).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / weights))
    return Exported(Path(path), exported_hook_name(cfg, to))


def exported_hook_name(cfg: SAEConfig, to: str) -> str | None:
    """What ``to`` calls the hook point an SAE reads: SAELens's ``blocks.6.hook_mlp_out``,
    sparsify's hookpoint folder name ``layers.6.mlp`` (None where it has none)."""
    if cfg.layer is None:
        return None
    if to == "saelens":
        return f"blocks.{cfg.layer}." + next(name for name, kind in _TL_HOOKS.items() if kind == cfg.hook)
    pattern = _SPARSIFY_HOOKPOINT.get(cfg.hook)
    return None if pattern is None else pattern.format(layer=cfg.layer)
