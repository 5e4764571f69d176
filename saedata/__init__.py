"""saedata: interpretable embeddings -- text corpora as sparse SAE concept vectors in DuckDB.

    import saedata
    saedata.embed("corpus.jsonl", db="run.duckdb")      # trains an SAE first if none is given
    store = saedata.open("run.duckdb")
    store.latents().sort("freq", descending=True).head()
    store.sql("SELECT label, count(*) FROM concepts GROUP BY ALL ORDER BY 2 DESC LIMIT 5")
    saedata.embed_ray(["a.jsonl", "b.jsonl"], "shards/", "sae/", num_workers=4)  # Ray Data -> Parquet shards
    saedata.diff("shards/", "a", "b")                    # analyses read shard folders in place

Importing saedata is light: torch and transformers load only when a model runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from saedata.config import EmbedConfig, InputConfig, ReaderConfig, SAEConfig, TrainConfig
from saedata.errors import SaedataError

__version__ = "0.1.0"

__all__ = [
    "EmbedConfig",
    "InputConfig",
    "ReaderConfig",
    "SAEConfig",
    "SaedataError",
    "Store",
    "TrainConfig",
    "__version__",
    "associate",
    "cluster",
    "correlate",
    "diff",
    "embed",
    "embed_ray",
    "import_shards",
    "load_sae",
    "open",
    "read_documents",
    "search",
    "train",
]

_LAZY = {
    "open": ("saedata.store", "open"),
    "Store": ("saedata.store", "Store"),
    "embed": ("saedata.pipeline", "embed"),
    "embed_ray": ("saedata.distributed", "embed_ray"),
    "import_shards": ("saedata.shards", "import_shards"),
    "train": ("saedata.fit", "train"),
    "read_documents": ("saedata.io", "read_documents"),
    "load_sae": ("saedata.sae.formats", "load_sae"),
    "diff": ("saedata.analysis.diff", "diff"),
    "associate": ("saedata.analysis.associate", "associate"),
    "correlate": ("saedata.analysis.correlate", "correlate"),
    "cluster": ("saedata.analysis.cluster", "cluster"),
    "search": ("saedata.analysis.retrieve", "search"),
}

if TYPE_CHECKING:
    from saedata.distributed import embed_ray
    from saedata.fit import train
    from saedata.pipeline import embed
    from saedata.shards import import_shards
    from saedata.io import read_documents
    from saedata.sae.formats import load_sae
    from saedata.store import Store, open


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'saedata' has no attribute {name!r}")
