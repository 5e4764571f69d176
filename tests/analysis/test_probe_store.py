"""Probes of stored image datasets: SAE codes vs the dense embedding, and OOD detection."""

from __future__ import annotations

import pytest
import torch

import saedata
from saedata.config import ReaderConfig, TrainConfig
from saedata.embed.local import embed
from saedata.errors import ConfigError, NotFoundError
from tests.helpers import write_digit_images


@pytest.fixture(scope="module")
def digit_store(tmp_path_factory, tiny_vit):
    """Digits 0, 1, 7 (in-distribution) and 3, 8 (out), embedded with the tiny ViT and an SAE
    trained on the in-distribution patches."""
    root = tmp_path_factory.mktemp("digit-store")
    inside = write_digit_images(root / "inside", classes=(0, 1, 7), per_class=20, seed=1)
    outside = write_digit_images(root / "outside", classes=(3, 8), per_class=15, seed=2)
    db = root / "run.duckdb"
    torch.manual_seed(0)
    reader = ReaderConfig(model=tiny_vit, device="cpu")
    embed(str(inside), db, reader_cfg=reader,
          train_cfg=TrainConfig(max_tokens=20_000, batch_size=256, expansion=4, k=8, device="cpu"))
    embed(str(outside), db, reader_cfg=reader)
    return str(db)


def test_probe_compares_codes_with_the_dense_embedding(digit_store):
    report = saedata.probe_dataset(digit_store, "inside", "folder", cv=3)
    assert report.n_docs == 60 and report.n_classes == 3
    # even a random tiny ViT separates 0 / 1 / 7 well above chance (1/3)
    assert report.dense_accuracy > 0.6 and report.codes_accuracy > 0.6
    assert set(report.summary["features"].to_list()) == {"sae", "raw"}
    assert report.per_class.height == 3


def test_ood_auroc_is_above_chance(digit_store):
    report = saedata.probe_ood(digit_store, "inside", "outside")
    assert report.n_test_out == 30 and report.n_test_in == 18
    assert 0.0 <= report.auroc_codes_only <= 1.0 and 0.0 <= report.auroc_recon_only <= 1.0
    assert report.auroc > 0.55


def test_probe_errors(digit_store):
    with pytest.raises(NotFoundError, match="no metadata field 'species'"):
        saedata.probe_dataset(digit_store, "inside", "species")
    with pytest.raises(ConfigError, match="has 20 documents; 25-fold cross-validation needs at least 25"):
        saedata.probe_dataset(digit_store, "inside", "folder", cv=25)


def test_probe_cli(digit_store):
    import json

    from click.testing import CliRunner

    from saedata.cli import main

    r = CliRunner().invoke(main, ["probe", "codes", "--db", digit_store, "--dataset", "inside",
                                  "--label-field", "folder", "--cv", "3", "--format", "json"])
    assert r.exit_code == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [x["features"] for x in rows] == ["sae codes", "dense embedding"]
    r = CliRunner().invoke(main, ["probe", "ood", "--db", digit_store, "--in", "inside", "--out", "outside",
                                  "--format", "json"])
    assert r.exit_code == 0, r.stderr
    report = saedata.probe_ood(digit_store, "inside", "outside")  # seeded: the CLI's split is the same
    rows = {x["score"]: x for x in json.loads(r.stdout)}
    assert rows["codes + reconstruction"]["auroc"] == pytest.approx(report.auroc)
    assert rows["reconstruction error"]["auroc"] == pytest.approx(report.auroc_recon_only)
    assert rows["code distance"]["auroc"] == pytest.approx(report.auroc_codes_only)
    assert {x["n_test_in"] for x in rows.values()} == {18} and {x["n_test_out"] for x in rows.values()} == {30}
    r = CliRunner().invoke(main, ["probe", "ood", "--db", digit_store, "--in", "inside", "--out", "nope"])
    assert r.exit_code == 1 and "no dataset 'nope'" in r.stderr


def test_analyses_work_on_image_datasets_unchanged(digit_store, tmp_path):
    result = saedata.diff(digit_store, "inside", "outside")
    assert result.table.height > 0 and {"freq_a", "freq_b", "q"} <= set(result.table.columns)
    html = saedata.write_report(result, tmp_path / "diff.html").read_text()
    assert "data:image/png;base64," in html        # thumbnails where text would go
    clusters = saedata.cluster(digit_store, "inside", label_pattern=".", k=3, map=False)
    assert clusters.assignments.height == 60
