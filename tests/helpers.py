"""Helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path


def copy_demo_store(demo_store: dict, root: Path) -> Path:
    """A writable copy of the session's demo store (its file and write-ahead log) in ``root``."""
    for f in Path(demo_store["db"]).parent.glob("run.duckdb*"):
        shutil.copy(f, root / f.name)
    return root / "run.duckdb"


def write_digit_images(root, classes=(0, 1, 7), per_class: int = 12, seed: int = 0):
    """scikit-learn's 8x8 digits written as PNG files in one folder per class; returns the root."""
    from pathlib import Path

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    root = Path(root)
    for c in classes:
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        idx = rng.choice(np.flatnonzero(digits.target == c), per_class, replace=False)
        for i in idx:
            img = (digits.images[i] / 16.0 * 255).astype(np.uint8)
            Image.fromarray(img, mode="L").save(root / str(c) / f"digit{i:04d}.png")
    return root
