"""Corpus -> store: everything that runs a reader and an SAE over documents.

    saedata.embed("corpus.jsonl", db="run.duckdb")      # this package is callable: embed.local.embed

Rooms, in the order data flows through them:

- :mod:`~saedata.embed.models`: load the SAE (training one when none is given) and its reader;
- :mod:`~saedata.embed.train`: train an SAE on corpora's activations;
- :mod:`~saedata.embed.encode`: encode -> pool -> threshold -> round (one copy for every path);
- :mod:`~saedata.embed.local`: ``embed()`` into a store file, in resumable transactions;
- :mod:`~saedata.embed.ray`: ``embed_ray()``, the same steps on a Ray Data actor pool -> shards;
- :mod:`~saedata.embed.finish`: complete datasets (counts, statistics, labels), import shards.

``saedata.embed`` is both this package and the public function that embeds a corpus
(a submodule import rebinds the package's name, so the package itself is made callable).
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from saedata.embed.local import embed

        return embed(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
