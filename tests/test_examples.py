"""Every script in examples/ runs end to end (with --quick) and writes what it promises.

Each example runs in a subprocess, offline, with a 240 s limit (the scripts take well
under a minute each on CPU with --quick, so the whole file stays within a few minutes).
What an example promises: its module-level ``OUTPUTS`` tuple (paths inside ``--out``)
when it defines one, and every path it prints on a line of its own as ``wrote PATH``.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))


def promised_outputs(script: Path) -> list[str]:
    """The ``OUTPUTS`` tuple of a script, read without importing it ([] when it has none)."""
    for node in ast.parse(script.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "OUTPUTS" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return []


def test_examples_are_listed_in_their_readme():
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    assert SCRIPTS, "examples/ holds no scripts"
    for script in SCRIPTS:
        assert script.name in readme, f"examples/README.md does not list {script.name}"


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_example_runs_and_writes_its_outputs(script, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(script), "--quick", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stderr[-3000:]}"
    assert out.is_dir() and any(out.iterdir()), f"{script.name} wrote nothing into --out"
    promised = [out / p for p in promised_outputs(script)]
    promised += [Path(p) if Path(p).is_absolute() else tmp_path / p
                 for p in re.findall(r"^wrote (\S+)\s*$", proc.stdout, flags=re.M)]
    for path in promised:
        assert path.exists(), f"{script.name} promised {path} but did not write it"
        check_output(path)


def check_output(path: Path) -> None:
    """An output holds what its kind promises a user who opens it."""
    import json

    import polars as pl

    import saedata

    name = path.name
    if path.is_dir():
        assert any(path.iterdir()), f"{path} is an empty folder"
    elif name.endswith(".csv"):
        assert pl.read_csv(path).height > 0, f"{path} has a header and no rows"
    elif name.endswith(".jsonl"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert rows and all("text" in r for r in rows), f"{path} is not a corpus"
    elif name.endswith(".json"):
        assert json.loads(path.read_text(encoding="utf-8")), f"{path} is empty JSON"
    elif name.endswith(".html"):
        html = path.read_text(encoding="utf-8")
        assert html.startswith("<!DOCTYPE html>") and "<h1>" in html and "this file needs no network" in html
        assert "<table>" in html or "<img" in html, f"{path} shows no table or figure"
    elif name.endswith(".png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    elif name.endswith(".duckdb"):
        with saedata.open(path) as store:
            assert store.datasets()["complete"].all() and store.datasets().height > 0
    else:
        raise AssertionError(f"no check for the kind of {path}")
