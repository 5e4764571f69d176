"""Save and load VAEs, and read foreign encoders (a diffusers ``AutoencoderKL``).

A saedata VAE is a directory: ``cfg.json`` (the :class:`~saedata.config.VAEConfig` plus
``"format": "saedata-vae"``) and ``vae.safetensors``; it is written with the same atomic
directory save as an SAE and read with safetensors only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from saedata.config import VAEConfig
from saedata.errors import ConfigError, SAEFormatError
from saedata.reader import resolve_device
from saedata.sae.formats import atomic_directory, read_json, read_safetensors
from saedata.vae.model import VAE

FORMAT_NAME = "saedata-vae"
FORMAT_VERSION = 1
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "vae.safetensors"


def save_vae(model: VAE, path: str | os.PathLike) -> Path:
    """Write ``model`` to the directory ``path``: ``cfg.json`` (the config plus ``"format":
    "saedata-vae"``) and ``vae.safetensors`` (weights and buffers). A new directory appears
    all at once (:func:`~saedata.sae.formats.atomic_directory`)."""
    from safetensors.torch import save_file

    cfg = {**model.cfg.to_dict(), "format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_directory(path, (WEIGHTS_FILE, CFG_FILE), what="a VAE") as tmp:
        (tmp / CFG_FILE).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
    return Path(path)


def load_vae(path: str | os.PathLike, device: str = "cpu") -> VAE:
    """Read a VAE written by :func:`save_vae`; SAEFormatError names what is wrong."""
    path = Path(path)
    cfg_dict = read_json(path / CFG_FILE)
    if cfg_dict.get("format") != FORMAT_NAME:
        raise SAEFormatError(f"{path / CFG_FILE}: not a saedata VAE (format {cfg_dict.get('format')!r})")
    version = cfg_dict.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise SAEFormatError(f"{path / CFG_FILE}: format_version {version!r} is newer than this saedata reads")
    try:
        cfg = VAEConfig.from_dict({k: v for k, v in cfg_dict.items() if k not in ("format", "format_version")})
    except (ConfigError, TypeError) as e:
        raise SAEFormatError(f"{path / CFG_FILE}: invalid VAE config ({e})") from None
    tensors = read_safetensors(path / WEIGHTS_FILE)
    model = VAE(cfg)
    expected = model.state_dict()
    for name, t in expected.items():
        if name not in tensors:
            raise SAEFormatError(f"{path / WEIGHTS_FILE}: missing tensor {name!r}")
        if tuple(tensors[name].shape) != tuple(t.shape):
            raise SAEFormatError(f"{path / WEIGHTS_FILE}: tensor {name!r} has shape {tuple(tensors[name].shape)}, "
                                 f"expected {tuple(t.shape)} from {CFG_FILE}")
    model.load_state_dict({k: tensors[k].float() for k in expected})
    return model.to(resolve_device(device)).eval()


# ---------------------------------------------------------- foreign encoders


class DiffusersEncoder:
    """A diffusers ``AutoencoderKL`` as a latent encoder for flattened images.

    Input rows are images flattened as (H, W, C) with values in [0, 1] (``image_shape``
    says which); each is converted to 3 channels, resized (bilinear) to the model's
    ``sample_size`` and scaled to [-1, 1]. Latents are the *mean* of the latent
    distribution, ``latent_dist.mean`` (n, c, h, w) with c = ``latent_channels`` and
    h = w = sample_size / 2^(number of down blocks - 1), flattened per image in (c, h, w)
    order: d_latent = c*h*w. The prior is the standard normal the model was trained with.
    """

    has_decoder = True
    batch_size = 8
    """Images per encoder forward pass."""
    sensitivity_rows = 16
    """Rows whose decoder Jacobian (Hutchinson estimate) gives the relevance weights."""

    def __init__(self, model: Any, path: str, image_shape: tuple[int, int, int] | None = None):
        self.model = model.eval()
        self.path = path
        self.image_shape = image_shape
        cfg = model.config
        self.sample_size = int(cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0])
        factor = 2 ** (len(cfg.down_block_types) - 1)
        side = self.sample_size // factor
        self.latent_shape = (int(cfg.latent_channels), side, side)
        self.d_latent = int(np.prod(self.latent_shape))
        self.prior_variance = torch.ones(self.d_latent)

    @property
    def d_in(self) -> int | None:
        return None if self.image_shape is None else int(np.prod(self.image_shape))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _images(self, x: Tensor) -> Tensor:
        if self.image_shape is None:
            raise ConfigError(f"{self.path}: an AutoencoderKL encodes images; give image data (a folder of images)")
        H, W, C = self.image_shape
        img = x.reshape(-1, H, W, C).permute(0, 3, 1, 2).float()
        if C == 1:
            img = img.expand(-1, 3, -1, -1)
        elif C == 4:
            img = img[:, :3]
        img = nn.functional.interpolate(img, size=(self.sample_size, self.sample_size), mode="bilinear",
                                        align_corners=False)
        return img * 2.0 - 1.0

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        dist = self.model.encode(self._images(x)).latent_dist
        return dist.mean.flatten(1), dist.logvar.flatten(1)

    def decode(self, z: Tensor) -> Tensor:
        """(n, d_latent) -> (n, 3 * sample_size^2) decoded images in [-1, 1] units."""
        return self.model.decode(z.reshape(-1, *self.latent_shape)).sample.flatten(1)


def load_encoder(path: str | os.PathLike, device: str = "cpu",
                 image_shape: tuple[int, int, int] | None = None) -> VAE | DiffusersEncoder:
    """A latent encoder from a saedata VAE directory, or a diffusers ``AutoencoderKL``
    directory (``config.json`` with ``_class_name: AutoencoderKL``; needs ``pip install
    'saedata[diffusers]'``). Anything else raises SAEFormatError naming what was found."""
    p = Path(path)
    if not p.exists():
        raise SAEFormatError(f"{p}: no such directory")
    if not p.is_dir():
        raise SAEFormatError(f"{p}: not a directory; give a saedata VAE or a diffusers AutoencoderKL directory")
    if (p / CFG_FILE).is_file():
        if read_json(p / CFG_FILE).get("format") == FORMAT_NAME:
            return load_vae(p, device=device)
    hf_cfg = p / "config.json"
    if (p / "vae" / "config.json").is_file() and not hf_cfg.is_file():  # a whole pipeline: use its VAE
        p, hf_cfg = p / "vae", p / "vae" / "config.json"
    if not hf_cfg.is_file():
        raise SAEFormatError(f"{p}: not a VAE encoder (no saedata {CFG_FILE} and no diffusers config.json)")
    meta = read_json(hf_cfg)
    kind = meta.get("_class_name") or (meta.get("architectures") or [None])[0] or meta.get("model_type") or "unknown"
    if kind != "AutoencoderKL":
        raise SAEFormatError(f"{p}: {kind} is not a VAE encoder; expected a saedata VAE or a diffusers AutoencoderKL")
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise SAEFormatError(
            f"{p}: reading a diffusers AutoencoderKL needs the diffusers package; "
            "pip install 'saedata[diffusers]'") from None
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    try:
        model = AutoencoderKL.from_pretrained(str(p))
    except Exception as e:  # diffusers raises many types for broken directories
        raise SAEFormatError(f"{p}: cannot load the AutoencoderKL ({' '.join(str(e).split())[:200]})") from None
    return DiffusersEncoder(model.to(resolve_device(device)), str(p), image_shape)
