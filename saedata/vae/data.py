"""Inputs of the VAE probes as one float matrix: a folder of images, or an embedding table.

    data = load_vae_data("digits/")            # PNG/JPEG/... files, optionally in class subfolders
    data = load_vae_data("emb.parquet", label_field="label")   # .parquet / .csv / .npy
    data.X (n, d) float32, data.labels (n,) or None, data.ids, data.image_shape, data.skipped

Images are listed by :class:`saedata.corpus.ImageCorpusReader` (recursive, sorted by path;
files that are not images or cannot be decoded are skipped and listed in ``skipped``),
then converted to one mode for all (grayscale when every image is grayscale, else RGB),
resized (bilinear) to ``size`` or to the first image's size, scaled to [0, 1] and
flattened in (height, width, channels) order. When every image lies in a subfolder of
the root, the subfolder's name is its label (the usual class-per-folder layout).

Tables: every numeric column is a feature except the label column; a ``.npy`` file holds
one 2-D array. Everything wrong raises InputError with one line naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from saedata.errors import InputError, UnsupportedFormatError

TABLE_EXTENSIONS = (".parquet", ".pq", ".csv", ".tsv", ".npy")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


@dataclass(frozen=True)
class VAEData:
    """A dataset as a float matrix, with what is known about its rows."""

    X: np.ndarray
    """(n, d) float32 features; images flattened (H, W, C) with values in [0, 1]."""
    labels: np.ndarray | None
    """(n,) labels (strings or numbers), or None."""
    ids: list[str]
    """(n,) row ids: image paths relative to the folder, or row numbers of a table (0-based)."""
    image_shape: tuple[int, int, int] | None = None
    """(height, width, channels) of the images, None for tables."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) of every file skipped (not an image, unreadable)."""
    source: str = ""
    """The file or folder read."""


def load_vae_data(path: str | os.PathLike, label_field: str | None = None,
                  size: tuple[int, int] | None = None, channels: int | None = None) -> VAEData:
    """Read a folder of images or an embedding table (see the module docstring).

    ``size`` (width, height) resizes images; default: the first image's size. ``channels``
    (1 or 3) forces grayscale or RGB; default: grayscale when every image is. ``label_field``
    names a table's label column (images take their labels from subfolders).
    """
    p = Path(path)
    if not p.exists():
        raise InputError("no such file or folder", path=str(p))
    if p.is_dir():
        if label_field is not None:
            raise InputError("--label-field applies to tables; images take labels from their subfolders",
                             path=str(p))
        return _load_images(p, size, channels)
    ext = p.suffix.lower()
    if ext not in TABLE_EXTENSIONS:
        raise UnsupportedFormatError(
            f"cannot tell the data type from the extension {ext or '(none)'}; give a folder of images "
            f"or a {', '.join(TABLE_EXTENSIONS)} file", path=str(p))
    if ext == ".npy":
        return _load_npy(p, label_field)
    return _load_table(p, label_field)


# --------------------------------------------------------------------- images


def _load_images(root: Path, size: tuple[int, int] | None, channels: int | None) -> VAEData:
    from PIL import Image

    from saedata.corpus import ImageCorpusReader

    if not any(f.is_file() and not f.name.startswith(".") for f in root.rglob("*")):
        raise InputError("the folder has no files; nothing to read", path=str(root))
    reader = ImageCorpusReader(root)
    docs = [d for batch in reader for d in batch]
    skipped = list(reader.skipped)
    if not docs:
        raise InputError(f"no readable images among {len(skipped)} files (e.g. {Path(skipped[0][0]).name}: "
                         f"{skipped[0][1]})", path=str(root))
    images, kept = [], []
    for d in docs:
        try:
            with Image.open(d.text) as im:
                im.load()
                images.append(im.copy())
                kept.append(d)
        except (OSError, ValueError) as e:  # changed or vanished since it was listed
            skipped.append((d.text, f"unreadable image ({str(e).splitlines()[0][:80]})"))
    if not images:
        raise InputError("no readable images", path=str(root))
    if channels is None:
        channels = 1 if all(im.mode in _GRAY_MODES for im in images) else 3
    if channels not in (1, 3):
        raise InputError(f"images are read with 1 or 3 channels, not {channels}", path=str(root))
    mode = "L" if channels == 1 else "RGB"
    w, h = size if size is not None else images[0].size
    if w <= 0 or h <= 0:
        raise InputError(f"image size must be positive, got {w}x{h}", path=str(root))
    rows = np.empty((len(images), h * w * channels), dtype=np.float32)
    for i, im in enumerate(images):
        im = im.convert(mode)
        if im.size != (w, h):
            im = im.resize((w, h), Image.BILINEAR)
        rows[i] = np.asarray(im, dtype=np.float32).reshape(-1) / 255.0
    ids = [d.ext_id for d in kept]
    in_subfolders = all(len(Path(i).parts) > 1 for i in ids)
    labels = np.array([Path(i).parts[0] for i in ids]) if in_subfolders else None
    return VAEData(X=rows, labels=labels, ids=ids, image_shape=(h, w, channels), skipped=skipped,
                   source=str(root))


# --------------------------------------------------------------------- tables


def _load_npy(path: Path, label_field: str | None) -> VAEData:
    if label_field is not None:
        raise InputError("a .npy file has no named columns; use --label-field with .parquet or .csv",
                         path=str(path))
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read the array ({' '.join(str(e).split())[:120]})", path=str(path)) from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"expected a 2-D numeric array (rows, features), got {arr.dtype} {arr.shape}",
                         path=str(path))
    return _checked(arr.astype(np.float32), None, path)


def _load_table(path: Path, label_field: str | None) -> VAEData:
    import polars as pl

    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            df = pl.read_parquet(path)
        else:
            df = pl.read_csv(path, separator="\t" if path.suffix.lower() == ".tsv" else ",",
                             infer_schema_length=10_000)
    except Exception as e:  # polars raises many error types for malformed files
        raise InputError(f"cannot read the table ({' '.join(str(e).split())[:160]})", path=str(path)) from None
    labels = None
    if label_field is not None:
        if label_field not in df.columns:
            raise InputError(f"no column {label_field!r}; columns: {', '.join(df.columns[:20])}", path=str(path))
        if df[label_field].null_count():
            raise InputError(f"column {label_field!r} has {df[label_field].null_count()} empty labels",
                             path=str(path))
        labels = df[label_field].to_numpy()
        df = df.drop(label_field)
    numeric = [c for c, t in zip(df.columns, df.dtypes) if t.is_numeric()]
    if not numeric:
        raise InputError("the table has no numeric feature columns", path=str(path))
    X = df.select(numeric).to_numpy().astype(np.float32)
    return _checked(X, labels, path)


def _checked(X: np.ndarray, labels: np.ndarray | None, path: Path) -> VAEData:
    if X.shape[0] == 0:
        raise InputError("the table has no rows", path=str(path))
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise InputError(f"row {int(np.flatnonzero(bad)[0])} (0-based) has a missing, NaN or infinite value",
                         path=str(path))
    return VAEData(X=np.ascontiguousarray(X), labels=labels, ids=[str(i) for i in range(X.shape[0])],
                   source=str(path))
