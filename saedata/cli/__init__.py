"""The ``saedata`` command: a thin Click layer over the public API (:mod:`saedata`).

Each command parses its options, makes one library call and prints the result: data to
stdout (``--format table|json|csv``), messages and progress to stderr. A user mistake
prints one line on stderr and exits 1; bad usage exits 2. Modules: :mod:`.app` (the group
and error mapping), :mod:`.options` (options shared by several commands, output), and one
module per command family.
"""

from saedata.cli import analyses, embed, probe, store, vae  # noqa: F401  (register the commands)
from saedata.cli.app import main

__all__ = ["main"]
