"""Hostile arguments: every option of every command, given values a careless or malicious
user might type, exits 0 (a value that happens to be valid), 1 or 2 with exactly one line
on stderr and no traceback, and never changes what the store holds."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from saedata.cli import main
from tests.cli.test_help_examples import COMMANDS
from tests.embed.test_faults import snapshot
from tests.helpers import copy_demo_store

NUMBERS = ["abc", "-5", "99999999999999999999999", "nan"]
TEXTS = ["(", "x'; DROP TABLE documents; --", "\x00"]
PATHS = ["/nonexistent/folder/file", "/etc"]
SKIP_OPTIONS = {"help", "version", "quiet", "db", "ray_address", "axis"}
"""Options not swept: --db has its own tests (missing, truncated, hostile stores); any text is
a valid --axis, which then embeds every label (slow, and tested in tests/analysis)."""


def _base_args(path: tuple[str, ...], root) -> list[str] | None:
    """Valid arguments for each command against the demo store (datasets a and b), or None
    to skip it. Messages are silenced (-q): what is checked is the error line. Commands that train or embed get a missing corpus, so a value that passes
    their checks stops at the corpus instead of running a model."""
    return {
        ("latents",): [], ("browse",): ["--out", str(root / "site"), "--latents", "2"], ("show",): ["3"], ("sql",): ["SELECT count(*) AS n FROM documents"], ("datasets",): [],
        ("export",): ["activations", str(root / "acts.parquet")], ("label",): [], ("index",): [],
        ("demo",): [str(root / "d.jsonl")], ("search",): ["dog"], ("correlate",): ["--min-support", "20"],
        ("cluster",): ["--k", "2"], ("diff",): ["a", "b"], ("associate",): ["--target", "is_question"],
        ("probe", "codes"): ["--dataset", "a", "--label-field", "topic", "--cv", "2"],
        ("probe", "ood"): ["--in", "a", "--out", "b"],
        ("train",): [str(root / "missing.jsonl"), "--out", str(root / "sae")],
        ("embed",): [str(root / "missing.jsonl")], ("import",): [str(root / "no-shards")],
        ("vae", "fit"): [str(root / "missing"), "--out", str(root / "v")],
        ("vae", "probe"): [str(root / "missing"), str(root / "missing")],
    }.get(path)


def _values(param: click.Parameter) -> list[str]:
    kind = param.type
    if isinstance(kind, (click.types.IntParamType, click.types.FloatParamType, click.IntRange)):
        return NUMBERS
    if isinstance(kind, click.Path):
        return PATHS
    if isinstance(kind, click.Tuple):
        return []
    return TEXTS


def _cases(root) -> list[tuple[str, list[str]]]:
    cases = []
    for path, command in COMMANDS.items():
        base = _base_args(path, root)
        if base is None or isinstance(command, click.Group):
            continue
        for param in command.params:
            if not isinstance(param, click.Option) or param.is_flag or param.name in SKIP_OPTIONS:
                continue
            for value in _values(param):
                args = [*path, *base, param.opts[-1], value, "-q"]
                cases.append((" ".join(path) + " " + param.opts[-1] + "=" + repr(value), args))
    return cases


def test_every_option_survives_hostile_values(demo_store, tmp_path, monkeypatch):
    root = tmp_path
    db = copy_demo_store(demo_store, root)
    monkeypatch.chdir(root)
    monkeypatch.setenv("SAEDATA_DB", str(db))
    before = snapshot(db)
    cases = _cases(root)
    assert len(cases) > 150
    failures = []
    runner = CliRunner()
    for name, args in cases:
        result = runner.invoke(main, args)
        lines = result.stderr.strip().splitlines()
        if result.exit_code not in (0, 1, 2) or result.exception and not isinstance(result.exception, SystemExit):
            failures.append(f"{name}: exit {result.exit_code}, {result.exception!r}")
        elif result.exit_code == 1 and (len(lines) != 1 or not lines[0].startswith("Error: ")):
            failures.append(f"{name}: {result.stderr[-300:]!r}")
        elif "Traceback" in result.stderr:
            failures.append(f"{name}: traceback")
    after = snapshot(db)
    # labelling and indexing may rewrite labels or add the index copy, but never documents or activations
    assert {k: v for k, v in after.items() if k != "latents"} == {k: v for k, v in before.items() if k != "latents"}
    assert failures == []


@pytest.mark.parametrize("args, message", [
    (["latents", "--label", "("], "not a valid regular expression"),
    (["latents", "--top", "-3"], "not in the range"),
    (["latents", "--top", "99999999999999999999"], "not in the range"),
    (["label", "--llm", "--latents", "abc"], "expected comma-separated integers"),
    (["export", "activations", "/nonexistent/folder/acts.parquet"], "folder /nonexistent/folder does not exist"),
])
def test_named_mistakes_are_one_line(demo_store, tmp_path, args, message):
    db = copy_demo_store(demo_store, tmp_path)
    result = CliRunner().invoke(main, [*args, "--db", str(db)])
    assert result.exit_code in (1, 2) and message in result.stderr, result.output
    assert "Traceback" not in result.stderr
