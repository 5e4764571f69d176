"""One Scope for every analysis: which datasets it covers, and the same error for the same mistake."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import saedata
from saedata.cli import main
from saedata.errors import ConfigError, NotFoundError
from saedata.store import Store
from tests.helpers import copy_demo_store


@pytest.fixture
def with_unfinished(demo_store, tmp_path):
    """The demo store (a, b complete) plus c, started and never finished."""
    db = copy_demo_store(demo_store, tmp_path)
    with Store(db, read_only=False) as store:
        store.create_dataset("c", "c.jsonl", 1, {})
    return db


def test_an_unfinished_dataset_never_blocks_the_others(with_unfinished):
    db = with_unfinished
    warned = "dataset 'c' is unfinished (0 documents stored) and left out"
    diff = saedata.diff(db, by="dataset")
    assert set(diff.n_docs) == {"a", "b"} and warned in diff.warnings[0]
    corr = saedata.correlate(db, min_support=20, top=3)
    assert corr.datasets == ("a", "b") and any(warned in w for w in corr.warnings)
    assoc = saedata.associate(db, None, "is_question", n_latents=3)
    assert assoc.n_docs == 320 and any(warned in w for w in assoc.warnings)
    result = CliRunner().invoke(main, ["correlate", "--db", str(db), "--top", "2", "--min-support", "20"])
    assert result.exit_code == 0 and f"warning: {warned}" in result.stderr


def test_the_same_mistake_is_the_same_error_in_every_analysis(with_unfinished):
    db = with_unfinished
    calls = [lambda d: saedata.diff(db, d, "a"), lambda d: saedata.correlate(db, d),
             lambda d: saedata.associate(db, d, "is_question"), lambda d: saedata.correlate_metadata(db, d, "topic")]
    for call in calls:
        with pytest.raises(NotFoundError, match=r"no dataset 'zzz'.*have: a, b, c"):
            call("zzz")
        with pytest.raises(ConfigError, match="dataset 'c' is incomplete"):
            call("c")
