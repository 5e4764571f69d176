"""Kill at every step: an embed (and a shard import) stopped by SIGKILL at each named
write step, then rerun, leaves the store an uninterrupted run leaves, table by table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import saedata
from saedata.config import SAEConfig
from saedata.demo import make_corpus, write_jsonl
from saedata.sae import SparseAutoencoder, save_sae
from saedata.store.store import FAULT_ENV

EMBED = """
import sys
from saedata.config import EmbedConfig, InputConfig, ReaderConfig
from saedata.embed.local import embed
corpus, sae, model, *dbs = sys.argv[1:]
for db in dbs:
    embed(corpus, db, sae, input_cfg=InputConfig(id_field="id"), reader_cfg=ReaderConfig(model=model, device="cpu"),
          embed_cfg=EmbedConfig(commit_docs=32, label_top_docs=16))
"""
"""Embed the corpus into each store named (one process: a rerun after a kill is the same command)."""

STEPS = ["batch:begin", "batch:written@2", "batch:committed", "batch:committed@3", "finish:complete",
         "finish:stats", "finish:words", "finish:labels", "finish:committed", "checkpoint"]
"""Where a run is stopped: 80 documents in batches of 32, 32 and 16, then finishing."""


def snapshot(db: Path) -> dict:
    """Every table, in a fixed order, without the columns that depend on when or where it ran."""
    with saedata.open(db) as store:
        return {
            "datasets": store.sql("SELECT dataset_id, name, n_docs, complete, sae_id, n_empty, n_truncated "
                                  "FROM datasets ORDER BY ALL").rows(),
            "documents": store.sql("SELECT doc_id, dataset_id, ext_id, text, meta::VARCHAR, n_tokens "
                                   "FROM documents ORDER BY ALL").rows(),
            "activations": store.sql("SELECT * FROM activations ORDER BY ALL").rows(),
            "latents": store.sql("SELECT * FROM latents ORDER BY ALL").rows(),
            "word_counts": store.sql("SELECT sae_id, word, sum(df) FROM word_counts GROUP BY ALL ORDER BY ALL").rows(),
            "word_rows": store.sql("SELECT count(*) FROM word_counts").rows(),
            "latent_counts": store.sql("SELECT * FROM latent_counts ORDER BY ALL").rows(),
            "saes": store.sql("SELECT sae_id, name, d_in, d_sae, fingerprint FROM saes ORDER BY ALL").rows(),
        }


def start(args: list[str], fault: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.Popen([sys.executable, "-c", EMBED, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run(args: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    proc = start(args, fault)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("faults")
    corpus = write_jsonl(make_corpus(80, seed=5), root / "corpus.jsonl")
    torch.manual_seed(0)
    save_sae(SparseAutoencoder(SAEConfig(d_in=32, d_sae=96, k=8, reader=tiny_bert)), root / "sae")
    ref = root / "ref.duckdb"
    done = run([str(corpus), str(root / "sae"), tiny_bert, str(ref)])
    assert done.returncode == 0, done.stderr
    return {"root": root, "corpus": str(corpus), "sae": str(root / "sae"), "model": tiny_bert,
            "expected": snapshot(ref)}


@pytest.fixture(scope="module")
def killed_and_rerun(setup):
    """For each step: the run killed there (two at a time), what it left, then one process
    rerunning every store, and what that left."""
    base = [setup["corpus"], setup["sae"], setup["model"]]
    dbs = {step: setup["root"] / f"{step.replace(':', '_').replace('@', '_')}.duckdb" for step in STEPS}
    results = {}
    pending = list(STEPS)
    while pending:
        batch, pending = pending[:2], pending[2:]
        procs = {step: start(base + [str(dbs[step])], fault=step) for step in batch}
        for step, proc in procs.items():
            _, err = proc.communicate(timeout=300)
            with saedata.open(dbs[step]) as store:  # what was committed stays readable
                states = store.datasets()
            results[step] = {"returncode": proc.returncode, "stderr": err, "states": states}
    rerun = run(base + [str(dbs[step]) for step in STEPS])
    assert rerun.returncode == 0, rerun.stderr
    for step in STEPS:
        results[step]["after"] = snapshot(dbs[step])
    return results


@pytest.mark.parametrize("step", STEPS)
def test_a_run_killed_at_any_step_reruns_to_the_uninterrupted_store(setup, killed_and_rerun, step):
    result = killed_and_rerun[step]
    assert result["returncode"] == -signal.SIGKILL, (step, result["returncode"], result["stderr"][-2000:])
    states = result["states"]
    finished = step in ("finish:committed", "checkpoint")
    assert states.height == 1 and bool(states["complete"][0]) == finished, states
    assert result["after"] == setup["expected"], step


def test_labels_are_never_cleared_before_their_replacements_are_written(setup, tmp_path):
    """A second dataset's finishing, stopped while relabelling, leaves the first one's labels."""
    db = tmp_path / "run.duckdb"
    import shutil

    shutil.copy(setup["root"] / "ref.duckdb", db)
    labels = snapshot(db)["latents"]
    other = write_jsonl(make_corpus(40, seed=6, id_prefix="o"), tmp_path / "other.jsonl")
    killed = run([str(other), setup["sae"], setup["model"], str(db)], fault="finish:labels")
    assert killed.returncode == -signal.SIGKILL
    after = snapshot(db)
    assert after["latents"] == labels and sum(1 for row in labels if row[2] is not None) > 10
    assert [row[3] for row in after["datasets"]] == [True, False]  # the new one is not finished
