"""Load what a run needs: the SAE (trained first when none is given) and its reader.

One copy of each step that the local engine, the Ray engine, ``saedata diff`` on files
and the analyses' model access share:

- :func:`sae_to_use`: the SAE directory given, else the one trained earlier in the
  default place, else one trained now on the corpora;
- :func:`load_models`: load the SAE, fill the reader's model and layer from the SAE's own
  metadata, open the reader, check the widths match, move the SAE to the reader's device;
- :class:`StoreModels`: the models behind a store, loaded on first use, for the analyses
  that need a reader (search queries, axis matching, probes), which never load one
  themselves.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from saedata.config import EmbedConfig, InputConfig, ReaderConfig, SAEConfig, TrainConfig
from saedata.console import Log, silent
from saedata.corpus import IMAGE_EXTENSIONS
from saedata.embed.encode import document_codes, mean_activations
from saedata.errors import ConfigError, SAEFormatError

if TYPE_CHECKING:
    from saedata.reader import ReadCache, Reader, VisionReader
    from saedata.sae import SparseAutoencoder
    from saedata.store import Store


class Loaded(NamedTuple):
    """A reader and the SAE that reads its activations, ready to embed."""

    reader: Reader | VisionReader
    sae: SparseAutoencoder
    """In eval mode, on the reader's device."""
    reader_cfg: ReaderConfig
    """The reader config as asked, with the model and layer the SAE records filled in."""


def reader_for_sae(reader_cfg: ReaderConfig, sae_cfg: SAEConfig) -> ReaderConfig:
    """Fill an unset reader model, layer, hook point and head from the SAE's own metadata;
    ConfigError when the hook point asked for is not the one the SAE reads."""
    changes: dict[str, Any] = {}
    if reader_cfg.model is None and sae_cfg.reader:
        changes["model"] = sae_cfg.reader
    if reader_cfg.layer is None and sae_cfg.layer is not None:
        changes["layer"] = sae_cfg.layer
    asked = (reader_cfg.hook or sae_cfg.hook, sae_cfg.head if reader_cfg.head is None else reader_cfg.head)
    if asked[1] is not None and asked[0] != "z":
        raise ConfigError(f"--head {asked[1]} picks an attention head of hook z, but the SAE reads {asked[0]}")
    if asked != (sae_cfg.hook, sae_cfg.head):
        def name(hook: str, head: int | None) -> str:
            return hook if head is None else f"{hook} head {head}"

        raise ConfigError(f"--hook {name(*asked)} is not what the SAE reads ({name(sae_cfg.hook, sae_cfg.head)}); "
                          "leave --hook/--head out to read the SAE's own hook point")
    changes.update(hook=sae_cfg.hook, head=sae_cfg.head)
    return reader_cfg.replace(**changes)


def load_models(sae_path: str | os.PathLike, reader_cfg: ReaderConfig, images: bool = False,
                sae_dtype: str | None = None) -> Loaded:
    """The SAE at ``sae_path`` (computing in ``sae_dtype``, by default its own) and the
    reader it reads (text, or a vision encoder for ``images``); DimensionMismatchError
    when the SAE's d_in is not the reader's width."""
    from saedata.reader import open_reader
    from saedata.sae import check_d_in, load_sae

    sae = load_sae(sae_path, device="cpu", dtype=sae_dtype)
    reader_cfg = reader_for_sae(reader_cfg, sae.cfg)
    reader = open_reader(reader_cfg, images=images)
    check_d_in(sae, reader.d_model, reader.describe())
    return Loaded(reader, sae.to(reader.device).eval(), reader_cfg)


def sae_to_use(sae: str | os.PathLike | None, trained_dir: str | os.PathLike, sources: list[str], *,
               input_cfg: InputConfig, reader_cfg: ReaderConfig, train_cfg: TrainConfig,
               progress: bool = False, log: Log = silent, read_docs: int | None = None,
               keep: ReadCache | None = None) -> tuple[Path, bool]:
    """(SAE directory, whether it was trained now): ``sae`` when given; else the SAE
    trained earlier in ``trained_dir``; else one trained now on ``sources`` (together) and
    saved there, reading them ``read_docs`` documents at a time and keeping what it read
    in ``keep`` (see :func:`saedata.embed.train.train`)."""
    if sae is not None:
        from saedata.sae.formats import resolve_sae

        return resolve_sae(sae), False
    out = Path(trained_dir)
    if (out / "cfg.json").exists():
        log(f"no --sae given: using the SAE trained earlier at {out}/")
        return out, False
    together = " together" if len(sources) > 1 else ""
    log(f"no --sae given: training an SAE on {' and '.join(sources)}{together} first (saved to {out}/)")
    from saedata.embed.train import train

    train(sources, out, input_cfg=input_cfg, reader_cfg=reader_cfg, train_cfg=train_cfg, progress=progress,
          log=log, read_docs=read_docs, keep=keep)
    return out, True


@functools.lru_cache(maxsize=2)
def _cached(sae_path: str, reader_cfg: ReaderConfig, images: bool, sae_dtype: str | None) -> Loaded:
    return load_models(sae_path, reader_cfg, images=images, sae_dtype=sae_dtype)


class StoreModels:
    """The models behind a store, for the analyses that need a reader (they take one of
    these as ``models``): each SAE's reader and weights, loaded on first use (and kept
    for the process, so repeated searches load them once).

    ``reader_cfg`` overrides how texts are read (device, dtype); the model and layer are
    always the SAE's own.
    """

    def __init__(self, store: Store, reader_cfg: ReaderConfig | None = None):
        self.store = store
        self.reader_cfg = reader_cfg or ReaderConfig()

    def _path(self, sae_id: int) -> str:
        path = self.store.sae_info(sae_id)["path"]
        if not path or not os.path.exists(path):
            raise SAEFormatError(
                f"SAE {sae_id} of {self.store.path} was loaded from {path}, which no longer exists"
            )
        return str(path)

    def _sae_dtype(self, sae_id: int) -> str | None:
        """The dtype SAE ``sae_id``'s documents were encoded in (None: its own)."""
        return EmbedConfig.from_dict(self.store.embed_settings(sae_id)).sae_dtype

    def _loaded(self, sae_id: int, images: bool = False) -> Loaded:
        info = self.store.sae_info(sae_id)
        cfg = self.reader_cfg.replace(model=info["reader"], layer=info["layer"],
                                      hook=info["cfg"].get("hook"), head=info["cfg"].get("head"))
        return _cached(self._path(sae_id), cfg, images, self._sae_dtype(sae_id))

    def query_codes(self, sae_id: int, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(latents, values, tokens, n_tokens) of ``text`` pooled as SAE ``sae_id``'s
        documents were embedded: a document's stored row, and its length in reader tokens."""
        loaded = self._loaded(sae_id)
        embed_cfg = EmbedConfig.from_dict(self.store.embed_settings(sae_id))
        batch = loaded.reader.read([text])
        codes = document_codes(loaded.sae, batch, embed_cfg)
        return codes.latent.astype(np.int64), codes.value, codes.tokens.astype(np.int64), int(batch.n_tokens[0])

    def document_vectors(self, sae_id: int, texts: list[str]) -> np.ndarray:
        """(n_texts, d_model) mean reader activation at the SAE's layer (images when the
        texts are image paths): the dense vector the SAE's codes decompose."""
        images = bool(texts) and all(t.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(t) for t in texts[:20])
        return mean_activations(self._loaded(sae_id, images).reader, texts, batch_docs=256)

    def text_vectors(self, texts: list[str]) -> np.ndarray:
        """(n_texts, d_model) unit vectors of short texts from the default reader's last layer."""
        return text_vectors(texts, self.reader_cfg.device)

    def text_pieces(self, text: str) -> list[str]:
        """The word pieces the default reader splits ``text`` into."""
        return text_pieces(text, self.reader_cfg.device)

    def sae(self, sae_id: int) -> SparseAutoencoder:
        """SAE ``sae_id`` on the configured device, in eval mode."""
        from saedata.reader import resolve_device
        from saedata.sae import load_sae

        return load_sae(self._path(sae_id), device=resolve_device(self.reader_cfg.device),
                        dtype=self._sae_dtype(sae_id)).eval()


_TEXT_READERS: dict[str, Any] = {}
_TEXT_VECTORS: dict[tuple[str, str], np.ndarray] = {}


def text_pieces(text: str, device: str = "auto") -> list[str]:
    """The word pieces the default reader (the one :func:`text_vectors` embeds with)
    splits ``text`` into: what it knows of a word ("sentiment" is one piece, "xyzzyqq"
    five fragments)."""
    return list(_text_reader(device).tokenizer.tokenize(text))


def _text_reader(device: str) -> Any:
    if device not in _TEXT_READERS:
        from saedata.reader import Reader

        # labels are a few words: big batches of short inputs
        _TEXT_READERS[device] = Reader(ReaderConfig(layer=-1, batch_size=128, max_tokens=32, device=device))
    return _TEXT_READERS[device]


def text_vectors(texts: list[str], device: str = "auto") -> np.ndarray:
    """(n_texts, d_model) unit vectors of short texts (labels, an axis): the default
    reader's last-layer activations, mean-pooled. The reader and every text's vector are
    cached for the process, so many axes over one SAE's labels embed each label once."""
    todo = list(dict.fromkeys(t for t in texts if (device, t) not in _TEXT_VECTORS))
    if todo:
        means = mean_activations(_text_reader(device), todo).astype(np.float64)
        means /= np.linalg.norm(means, axis=1, keepdims=True) + 1e-12
        for text, v in zip(todo, means, strict=True):
            _TEXT_VECTORS[(device, text)] = v
    return np.stack([_TEXT_VECTORS[(device, t)] for t in texts])
