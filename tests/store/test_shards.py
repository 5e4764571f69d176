"""A shard folder may come from someone else: every manifest field is checked, and what
does not add up is one line, never a traceback, a file outside the folder or a huge store."""

from __future__ import annotations

import json

import polars as pl
import pytest
from click.testing import CliRunner

import saedata
from saedata.cli import main
from saedata.errors import StoreError
from saedata.store import shards


def _write_folder(folder, d_sae: int = 8):
    """A finished shard folder: dataset 'a' of 3 documents in one part, SAE of ``d_sae`` latents."""
    docs = pl.DataFrame({"doc_id": [0, 1, 2], "dataset_id": [1, 1, 1], "ext_id": ["x", "y", "z"],
                         "text": ["one dog", "two cats", "three birds"], "meta": [None, None, None],
                         "n_tokens": [2, 2, 2]})
    acts = pl.DataFrame({"doc_id": [0, 1, 2, 2], "sae_id": [1] * 4, "latent": [1, 3, 7, 1],
                         "value": [1.0, 2.0, 0.5, 1.5], "peak": [4, 4, 6, 0], "tokens": [1, 2, 1, 1]})
    frames = {"documents": docs, "activations": acts,
              "word_counts": pl.DataFrame({"word": ["dog", "cats"], "df": [1, 1]}),
              "label_candidates": acts, "latent_counts": shards.part_latent_counts(docs, acts)}
    shards.write_part(folder, "a", 0, frames)
    manifest = shards.Manifest(
        sae={"sae_id": 1, "name": "toy", "d_in": 4, "d_sae": d_sae, "activation": "topk", "fingerprint": "fp",
             "cfg": {}},
        reader={}, embed={"label_top_docs": 4, "label_words": 2},
        datasets=[{"dataset_id": 1, "name": "a", "source": "a.jsonl", "n_parts": 1, "n_docs": 3,
                   "first_doc_id": 0, "n_empty": 0, "planned": True, "complete": True}],
        parts={"a/00000": {"dataset": "a", "index": 0, "n_docs": 3, "n_activations": 4, "n_truncated": 0}},
        complete=True, labelled=False)
    shards.write_manifest(folder, manifest)
    return folder


def _edit(folder, change):
    path = folder / shards.MANIFEST
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_a_good_folder_reads_and_imports(tmp_path):
    folder = _write_folder(tmp_path / "shards")
    with saedata.open(folder) as store:
        assert store.sql("SELECT count(*) AS n FROM activations")["n"][0] == 4
    result = saedata.import_shards(folder, tmp_path / "run.duckdb")
    assert (result.n_docs, result.n_activations) == (3, 4)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["datasets"][0].update(name="x/../../outside"), "not a safe folder name"),
    (lambda d: d["sae"].update(d_sae=10**9), "sae.d_sae is 1000000000"),
    (lambda d: d["sae"].update(d_sae="8"), "sae.d_sae is '8'"),
    (lambda d: d["sae"].pop("fingerprint"), "missing 'fingerprint'"),
    (lambda d: d.update(parts=[1, 2]), "parts is not an object"),
    (lambda d: d["parts"]["a/00000"].update(index=5), "is not a part of a listed dataset"),
    (lambda d: d.update(version="1"), "version is '1', not a number"),
    (lambda d: d["datasets"].append(dict(d["datasets"][0])), "listed twice"),
])
def test_a_malformed_manifest_is_one_line(tmp_path, change, message):
    folder = _write_folder(tmp_path / "shards")
    _edit(folder, change)
    with pytest.raises(StoreError, match=message):
        saedata.open(folder)
    for args in (["datasets", "--shards", str(folder)], ["import", str(folder), "--db", str(tmp_path / "r.duckdb")]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.output
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "r.duckdb").exists() or saedata.open(tmp_path / "r.duckdb").datasets().height == 0


def test_latents_beyond_the_manifests_sae_are_refused(tmp_path):
    folder = _write_folder(tmp_path / "shards", d_sae=4)  # the data has latent 7
    with pytest.raises(StoreError, match="has latent 7, but its SAE has 4 latents"):
        saedata.import_shards(folder, tmp_path / "run.duckdb")
    with saedata.open(tmp_path / "run.duckdb") as store:
        assert store.datasets().height == 0 and store.saes().height == 0  # all or nothing


def test_a_corrupt_part_is_one_line_and_imports_nothing(tmp_path):
    folder = _write_folder(tmp_path / "shards")
    part = folder / "activations" / "dataset=a" / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[:40])
    result = CliRunner().invoke(main, ["import", str(folder), "--db", str(tmp_path / "run.duckdb")])
    assert result.exit_code == 1 and "cannot import" in result.stderr and "Traceback" not in result.stderr
    with saedata.open(tmp_path / "run.duckdb") as store:
        assert store.datasets().height == 0
