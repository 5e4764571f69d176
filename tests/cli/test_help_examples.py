"""Every command's --help ends with an Example, and every example runs.

The examples run in one folder, in the order a user would (the headline diff first,
which builds run.duckdb from a.jsonl and b.jsonl; the Ray embed before the import of
its shards; `vae fit` before `vae probe`), each exiting 0 with output to read.
"""

from __future__ import annotations

import shlex

import click
import pytest
from click.testing import CliRunner

from saedata.cli import main
from saedata.demo import make_pair, write_jsonl
from tests.helpers import write_digit_images


def _commands(group: click.Group = main, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], click.Command]:
    out: dict[tuple[str, ...], click.Command] = {path: group}
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out.update(_commands(cmd, path + (name,)))
        else:
            out[path + (name,)] = cmd
    return out


COMMANDS = _commands()
FIRST = [(), ("demo",), ("datasets",)]
"""Run first: the headline diff builds the store the other examples read."""
LAST = [("train",), ("embed",), ("pool",), ("import",), ("vae",), ("vae", "fit"), ("vae", "probe"), ("probe",),
        ("probe", "codes"), ("probe", "ood")]
"""Run last, in this order: they write (an SAE, shards, a VAE) what the next one reads."""


def _help(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(main, [*path, "--help"], terminal_width=100)
    assert result.exit_code == 0, (path, result.output)
    return result.stdout


def examples(path: tuple[str, ...]) -> list[str]:
    """The command lines under the last ``Example:`` heading of a command's help."""
    text = _help(path)
    assert "Example:" in text, f"`saedata {' '.join(path)} --help` has no Example"
    block = text.rsplit("Example:", 1)[1]
    lines = [ln.strip() for ln in block.splitlines() if ln.strip()]
    return [ln for ln in lines if ln.startswith("saedata ")]


@pytest.mark.parametrize("path", list(COMMANDS), ids=[" ".join(p) or "saedata" for p in COMMANDS])
def test_help_ends_with_an_example(path):
    lines = examples(path)
    assert lines, f"`saedata {' '.join(path)} --help`: no `saedata ...` line under Example:"
    # the example is the help's last section: nothing but command lines after the heading
    block = _help(path).rsplit("Example:", 1)[1]
    assert all(ln.strip().startswith("saedata ") for ln in block.splitlines() if ln.strip())
    if path:
        assert all(ln.split()[1:1 + len(path)] == list(path) for ln in lines), lines


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    docs_a, docs_b = make_pair(160)
    write_jsonl(docs_a, root / "a.jsonl")
    write_jsonl(docs_b, root / "b.jsonl")
    write_digit_images(root / "digits")
    return root


def _ordered() -> list[tuple[str, ...]]:
    middle = [p for p in COMMANDS if p not in FIRST and p not in LAST]
    return FIRST + sorted(middle) + LAST


def test_every_example_runs(sandbox, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.chdir(sandbox)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    ran = []
    try:
        for path in _ordered():
            for line in examples(path):
                args = shlex.split(line)[1:]
                result = CliRunner().invoke(main, args)
                assert result.exit_code == 0, f"{line}\n{result.stderr}{result.exception!r}"
                assert (result.stdout + result.stderr).strip(), f"{line}: printed nothing"
                ran.append(line)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert (sandbox / "diff.html").stat().st_size > 10_000 and (sandbox / "merged.duckdb").exists()
    assert len(ran) >= len(COMMANDS)
