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


HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def offline_hub_snapshot(monkeypatch, root: Path, repo_id: str) -> Path:
    """The snapshot folder (at commit HUB_COMMIT, the repo's main) of ``repo_id`` in a
    Hugging Face cache under ``root``, laid out as huggingface_hub lays it out; the
    caller writes files into it. The hub is switched offline for the test."""
    from huggingface_hub import constants

    repo = Path(root) / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    (repo / "snapshots" / HUB_COMMIT).mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(Path(root) / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return repo / "snapshots" / HUB_COMMIT
