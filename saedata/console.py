"""Messages and progress bars on stderr, so stdout carries only data.

Progress bars show when stderr is a terminal and the caller did not ask for quiet;
messages show unless quiet. Library functions take ``progress: bool`` and a ``log``
callable so that the API is silent by default and the CLI decides.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

Log = Callable[[str], None]


def stderr_log(message: str) -> None:
    """Print one message line to stderr."""
    print(message, file=sys.stderr, flush=True)


def silent(_message: str) -> None:
    """A ``log`` that says nothing."""


def progress_bar(total: int | None, desc: str, enabled: bool, unit: str = "doc", **kwargs: Any):
    """A tqdm bar on stderr, disabled when not ``enabled`` or stderr is not a terminal."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not enabled or not sys.stderr.isatty(),
        dynamic_ncols=True,
        leave=False,
        **kwargs,
    )
