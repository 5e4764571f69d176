"""Images as datasets: a folder of images -> vision encoder patches -> SAE -> the same store."""

from __future__ import annotations

import os
import threading

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner

import saedata
from saedata.cli import main
from saedata.config import InputConfig, ReaderConfig, SAEConfig, TrainConfig
from saedata.corpus import ImageCorpusReader
from saedata.embed.local import embed
from saedata.errors import InputError, ReaderError
from saedata.reader import VisionReader
from saedata.reports.html import doc_snippet
from saedata.sae import SparseAutoencoder, save_sae
from tests.helpers import write_digit_images


@pytest.fixture
def digits(tmp_path):
    root = write_digit_images(tmp_path / "digits")
    (root / "notes.txt").write_text("not an image")
    (root / "0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return root


@pytest.fixture
def vit_sae(tmp_path):
    torch.manual_seed(0)
    save_sae(SparseAutoencoder(SAEConfig(d_in=32, d_sae=64, k=4)), tmp_path / "vsae")
    return str(tmp_path / "vsae")


def test_image_folder_reader_skips_and_counts_bad_files(digits):
    reader = ImageCorpusReader(digits, InputConfig(batch_size=10))
    docs = [d for batch in reader for d in batch]
    assert len(docs) == 36 and reader.n_empty == 2
    reasons = dict(reader.skipped)
    assert any("notes.txt" in p for p in reasons) and any("broken.png" in p for p in reasons)
    assert docs[0].ext_id.startswith("0/") and docs[0].meta["width"] == 8 and docs[0].meta["folder"] == "0"


def read_unless_blocked(reader: ImageCorpusReader, fifo, seconds: float = 10.0) -> list:
    """All documents of ``reader``; fails, rather than hangs, when it blocks opening ``fifo``."""
    docs: list = []
    thread = threading.Thread(target=lambda: docs.extend(d for b in reader for d in b), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # lets the blocked open return
        thread.join()
        pytest.fail(f"reading blocked on the FIFO {fifo}")
    return docs


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_in_a_folder_or_list_are_skipped_not_read(tmp_path):
    root = write_digit_images(tmp_path / "digits", classes=(0,), per_class=3)
    fifo = root / "0" / "pipe.png"
    os.mkfifo(fifo)
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{p.relative_to(tmp_path)}\n" for p in sorted(root.rglob("*.png"))))
    for source, cfg in [(root, InputConfig()), (listing, InputConfig(format="images"))]:
        reader = ImageCorpusReader(source, cfg)
        docs = read_unless_blocked(reader, fifo)
        assert len(docs) == 3 and reader.n_read == 3
        assert reader.n_empty == 1 and reader.skipped == [(str(fifo), "not a regular file")]


def test_decompression_bombs_are_skipped_with_a_reason(tmp_path, monkeypatch):
    from PIL import Image

    root = write_digit_images(tmp_path / "digits", classes=(0,), per_class=3)  # 8 x 8 = 64 pixels
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(root / "0" / "warns.png")  # 144 > limit: a warning
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "0" / "bomb.png")  # 400 > 2 x limit: an error
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    reader = ImageCorpusReader(root, InputConfig())
    docs = [d for batch in reader for d in batch]
    assert len(docs) == 3 and all(d.meta["width"] == 8 for d in docs)
    reasons = {os.path.basename(p): r for p, r in reader.skipped}
    assert sorted(reasons) == ["bomb.png", "warns.png"] and reader.n_empty == 2
    assert all(r.startswith("decompression bomb (Image size (") for r in reasons.values()), reasons


def test_vision_reader_returns_one_activation_per_patch(digits, tiny_vit):
    reader = VisionReader(ReaderConfig(model=tiny_vit, device="cpu"))
    paths = sorted(str(p) for p in digits.rglob("digit*.png"))[:3]
    batch = reader.read(paths)
    assert reader.n_patches == 16 and batch.acts.shape == (48, 32)
    assert batch.n_tokens.tolist() == [16, 16, 16] and batch.doc_index.tolist()[:17] == [0] * 16 + [1]
    # equals the model's own hidden states without the class token
    inputs = reader.processor(images=reader.load_images(paths[:1]), return_tensors="pt")
    with torch.no_grad():
        hidden = reader.model(**inputs, output_hidden_states=True).hidden_states[-1][0, 1:]
    torch.testing.assert_close(batch.acts[:16], hidden, atol=1e-5, rtol=1e-4)


def test_embed_an_image_folder_into_the_store(tmp_path, digits, tiny_vit, vit_sae):
    db = tmp_path / "run.duckdb"
    messages = []
    result = embed(str(digits), db, vit_sae, reader_cfg=ReaderConfig(model=tiny_vit, device="cpu"),
                   log=messages.append, verbose=True)
    assert result.n_docs == 36 and result.n_empty == 2 and result.dataset == "digits"
    assert any("broken.png" in m for m in messages)
    with saedata.open(db) as s:
        docs = s.documents()
        assert docs.height == 36 and docs["text"][0].endswith(".png")
        acts = s.activations()
        assert acts.height > 0 and acts["peak"].null_count() == acts.height
        assert s.datasets()["n_empty"].item() == 2
        # image labels come from path words: some latent should be labelled by a class folder
        labels = s.latents().filter(pl.col("label").is_not_null())
        assert labels.height > 0


def test_image_sae_is_trained_on_patches_when_none_is_given(tmp_path, digits, tiny_vit):
    db = tmp_path / "run.duckdb"
    result = embed(str(digits), db, reader_cfg=ReaderConfig(model=tiny_vit, device="cpu"),
                   train_cfg=TrainConfig(max_tokens=4000, batch_size=256, expansion=2, k=4, device="cpu"))
    assert result.trained_sae and result.n_docs == 36
    with saedata.open(db) as s:
        assert s.saes()["d_in"].item() == 32 and s.saes()["reader"].item() == tiny_vit


def test_image_errors(tmp_path, digits, tiny_vit, tiny_bert, vit_sae):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no files"):
        embed(str(empty), tmp_path / "a.duckdb", vit_sae, reader_cfg=ReaderConfig(model=tiny_vit, device="cpu"))
    with pytest.raises(ReaderError, match="not a vision model"):
        embed(str(digits), tmp_path / "b.duckdb", vit_sae, reader_cfg=ReaderConfig(model=tiny_bert, device="cpu"))
    with pytest.raises(ReaderError, match="images need --model"):
        VisionReader(ReaderConfig())
    only_junk = tmp_path / "junk"
    only_junk.mkdir()
    (only_junk / "a.txt").write_text("x")
    with pytest.raises(InputError, match="no documents to embed"):
        embed(str(only_junk), tmp_path / "c.duckdb", vit_sae, reader_cfg=ReaderConfig(model=tiny_vit, device="cpu"))
    assert not (tmp_path / "c.duckdb").exists() or saedata.open(tmp_path / "c.duckdb").datasets().height == 0


def test_cli_embeds_images_and_reports_show_thumbnails(tmp_path, digits, tiny_vit, vit_sae):
    db = str(tmp_path / "run.duckdb")
    result = CliRunner().invoke(main, ["embed", str(digits), "--sae", vit_sae, "--model", tiny_vit,
                                       "--device", "cpu", "--db", db])
    assert result.exit_code == 0, result.stderr
    assert "digits: 36 documents" in result.stdout and "2 files were skipped" in result.stderr
    with saedata.open(db) as s:
        path = s.documents()["text"][0]
    html = doc_snippet(path)
    assert "data:image/png;base64," in html
