"""saedata: interpretable embeddings -- text corpora as sparse SAE concept vectors in DuckDB.

    import saedata
    saedata.embed("corpus.jsonl", db="run.duckdb")      # trains an SAE first if none is given
    store = saedata.open("run.duckdb")
    store.latents().sort("freq", descending=True).head()
    store.sql("SELECT label, count(*) FROM concepts GROUP BY ALL ORDER BY 2 DESC LIMIT 5")
    result = saedata.diff("run.duckdb", "a", "b")      # or saedata.diff_files("a.jsonl", "b.jsonl")
    saedata.write_report(result, "diff.html")
    saedata.embed_ray(["a.jsonl", "b.jsonl"], "shards/", "sae/", num_workers=4)  # Ray Data -> Parquet shards
    saedata.diff("shards/", "a", "b")                    # analyses read shard folders in place

This module is the public API, and the only place where embedding and analysis meet:
the functions defined here orchestrate (embed corpora, then diff them; give an analysis
the models it may ask for), the rest are the library's own functions, loaded on first
use. Importing saedata is light: torch and transformers load only when a model runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from saedata.config import EmbedConfig, InputConfig, ReaderConfig, TrainConfig
from saedata.console import Log, silent
from saedata.errors import SaedataError

__version__ = "0.1.0"

__all__ = [
    "EmbedConfig",
    "InputConfig",
    "ReaderConfig",
    "SaedataError",
    "Store",
    "TrainConfig",
    "__version__",
    "are_corpus_files",
    "associate",
    "browse",
    "build_index",
    "cluster",
    "correlate",
    "correlate_metadata",
    "diff",
    "diff_files",
    "embed",
    "embed_ray",
    "eval_saes",
    "export_sae",
    "import_shards",
    "latent_page",
    "llm_label",
    "load_sae",
    "open",
    "open_corpus",
    "probe_dataset",
    "probe_ood",
    "read_documents",
    "relabel",
    "repool",
    "search",
    "train",
    "vae_fit",
    "vae_probe",
    "write_demo",
    "write_report",
]

_LAZY = {
    "open": ("saedata.store", "open"),
    "Store": ("saedata.store", "Store"),
    "embed": ("saedata.embed", None),
    "embed_ray": ("saedata.embed.ray", "embed_ray"),
    "import_shards": ("saedata.embed.finish", "import_shards"),
    "train": ("saedata.embed.train", "train"),
    "read_documents": ("saedata.corpus", "read_documents"),
    "open_corpus": ("saedata.corpus", "open_corpus"),
    "load_sae": ("saedata.sae.formats", "load_sae"),
    "export_sae": ("saedata.sae.formats", "export_sae"),
    "eval_saes": ("saedata.embed.evaluate", "eval_saes"),
    "diff": ("saedata.analysis.diff", "diff"),
    "associate": ("saedata.analysis.associate", "associate"),
    "correlate": ("saedata.analysis.correlate", "correlate"),
    "correlate_metadata": ("saedata.analysis.correlate", "correlate_metadata"),
    "latent_page": ("saedata.analysis.latent", "latent_page"),
    "write_report": ("saedata.reports", "write_report"),
    "vae_fit": ("saedata.vae.report", "fit_on_data"),
    "vae_probe": ("saedata.vae.report", "probe_on_data"),
}

if TYPE_CHECKING:
    from saedata.analysis.associate import associate
    from saedata.analysis.cluster import ClusterResult
    from saedata.analysis.correlate import correlate, correlate_metadata
    from saedata.analysis.diff import DiffResult, diff
    from saedata.analysis.latent import latent_page
    from saedata.analysis.probe import OODReport, ProbeReport
    from saedata.analysis.retrieve import SearchResult
    from saedata.corpus import open_corpus, read_documents
    from saedata.embed.evaluate import eval_saes
    from saedata.embed.finish import import_shards
    from saedata.embed.local import embed
    from saedata.embed.ray import embed_ray
    from saedata.embed.train import train
    from saedata.label.llm import LLMRun
    from saedata.reports import write_report
    from saedata.reports.site import Site
    from saedata.sae.formats import export_sae, load_sae
    from saedata.store import Store, open
    from saedata.vae.report import fit_on_data as vae_fit
    from saedata.vae.report import probe_on_data as vae_probe


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = importlib.import_module(module)
        if attr is not None:
            value = getattr(value, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'saedata' has no attribute {name!r}")


# -- analyses that need the models behind a store (they never load one themselves) ----------


def search(store_or_path: Any, query: str | None = None, *, reader_cfg: ReaderConfig | None = None,
           **kwargs: Any) -> SearchResult:
    """Documents that show the property described by ``query`` (see
    :func:`saedata.analysis.retrieve.search` for the options); the query is read by the
    SAE's own reader (``reader_cfg`` sets its device and dtype)."""
    from saedata.analysis.retrieve import search as run
    from saedata.analysis.scope import opened
    from saedata.embed.models import StoreModels

    with opened(store_or_path) as store:
        return run(store, query, models=StoreModels(store, reader_cfg), **kwargs)


def cluster(store_or_path: Any, dataset: str | list[str] | None = None, *, reader_cfg: ReaderConfig | None = None,
            **kwargs: Any) -> ClusterResult:
    """Cluster documents along an axis (see :func:`saedata.analysis.cluster.cluster`); an
    ``axis`` text and the labels are embedded with the default reader."""
    from saedata.analysis.cluster import cluster as run
    from saedata.analysis.scope import opened
    from saedata.embed.models import StoreModels

    with opened(store_or_path) as store:
        return run(store, dataset, models=StoreModels(store, reader_cfg), **kwargs)


def probe_dataset(store_or_path: Any, dataset: str, label_field: str, *, device: str = "cpu",
                  **kwargs: Any) -> ProbeReport:
    """Linear probe and concept purity of a dataset's SAE codes vs its dense embedding
    (:func:`saedata.analysis.probe.probe_dataset`); the SAE's reader runs on ``device``."""
    from saedata.analysis.probe import probe_dataset as run
    from saedata.analysis.scope import opened
    from saedata.embed.models import StoreModels

    with opened(store_or_path) as store:
        return run(store, dataset, label_field, models=StoreModels(store, ReaderConfig(device=device)),  # type: ignore[arg-type]
                   **kwargs)


def probe_ood(store_or_path: Any, in_dataset: str, out_dataset: str, *, device: str = "cpu",
              **kwargs: Any) -> OODReport:
    """Out-of-distribution AUROC of ``out_dataset`` against ``in_dataset``
    (:func:`saedata.analysis.probe.probe_ood`); the SAE's reader runs on ``device``."""
    from saedata.analysis.probe import probe_ood as run
    from saedata.analysis.scope import opened
    from saedata.embed.models import StoreModels

    with opened(store_or_path) as store:
        return run(store, in_dataset, out_dataset, models=StoreModels(store, ReaderConfig(device=device)),  # type: ignore[arg-type]
                   **kwargs)


# -- embed, then analyse ------------------------------------------------------------------


def are_corpus_files(a: str, b: str | None = None) -> bool:
    """Whether ``saedata diff A B`` names corpus files (True) or datasets of a store (False).

    InputError when one is a file and the other is not, or when an argument is named like
    a corpus file (a corpus extension, or a folder in it) but does not exist.
    """
    from pathlib import Path

    from saedata.corpus import looks_like_corpus
    from saedata.errors import InputError

    args = [a] + ([b] if b is not None else [])
    exists = [Path(x).is_file() for x in args]
    if all(exists):
        return True
    if any(exists):
        missing = next(x for x, e in zip(args, exists) if not e)
        raise InputError("no such file (give two corpus files, or two dataset names of the store)", path=missing)
    for x in args:
        if looks_like_corpus(x):
            raise InputError("no such file", path=x)
    return False


def diff_files(
    a_path: str | os.PathLike,
    b_path: str | os.PathLike | None = None,
    db: str | os.PathLike = "run.duckdb",
    sae: str | os.PathLike | None = None,
    *,
    input_cfg: InputConfig = InputConfig(),
    reader_cfg: ReaderConfig = ReaderConfig(),
    embed_cfg: EmbedConfig = EmbedConfig(),
    train_cfg: TrainConfig = TrainConfig(),
    progress: bool = False,
    log: Log = silent,
    replace: bool = False,
    **diff_kwargs: Any,
) -> DiffResult:
    """Embed one or two corpus files into the store at ``db`` and diff them.

    Datasets are named after the files (``a.jsonl`` -> ``a``). Without ``sae`` the
    store's SAE is reused, or one is trained on both corpora together (saved beside the
    store, ``run.sae/``). A file already embedded under its name is not embedded again,
    nor one whose bytes a complete dataset of another name holds (that dataset is used,
    unless ``sae`` names an SAE or ``replace``); one that changed since, or a name that holds another file's dataset, is an error unless
    ``replace`` (embed it again in place of the old rows). ``diff_kwargs`` go to
    :func:`saedata.analysis.diff.diff` (``by``, ``threshold``, ``paired_on``, ...).
    """
    from pathlib import Path

    from saedata.analysis.diff import diff as run_diff
    from saedata.corpus import dataset_name
    from saedata.embed.local import default_sae_dir, embed
    from saedata.embed.models import sae_to_use
    from saedata.errors import InputError
    from saedata.reader import ReadCache
    from saedata.store import Store

    paths = [str(a_path)] + ([str(b_path)] if b_path is not None else [])
    for p in paths:
        if not Path(p).is_file():
            raise InputError("no such file", path=p)
    names = [dataset_name(p) for p in paths]
    if len(names) == 2 and names[0] == names[1]:
        names[1] = f"{names[1]}-2"
        log(f"both files are named {names[0]!r}: the second is dataset {names[1]!r}")
    has_sae = False
    stored: list[str | None] = [None] * len(paths)
    if Path(db).exists():
        with Store(db, read_only=True) as store:
            has_sae = store.saes().height > 0
            if sae is None and not replace:
                stored = [_stored_copy(store, p, n, input_cfg.to_dict()) for p, n in zip(paths, names)]
    if len(set(filter(None, stored))) < len(list(filter(None, stored))):
        stored = [None] * len(paths)  # the same file twice: embed as named
    for i, (p, found) in enumerate(zip(paths, stored)):
        if found is not None:
            log(f"{p} is already in {db} as dataset {found!r} (same size and SHA-256): using it")
            names[i] = found
    reads = ReadCache()  # what training reads, embedding takes instead of reading again
    if sae is None and not has_sae:
        sae, _ = sae_to_use(None, default_sae_dir(db), paths, input_cfg=input_cfg, reader_cfg=reader_cfg,
                            train_cfg=train_cfg, progress=progress, log=log, read_docs=embed_cfg.commit_docs,
                            keep=reads)
    results = [embed(p, db, sae, name=n, input_cfg=input_cfg, reader_cfg=reader_cfg, embed_cfg=embed_cfg,
                     train_cfg=train_cfg, progress=progress, log=log, replace=replace, reads=reads)
               for p, n, found in zip(paths, names, stored) if found is None]
    reads.clear()
    if results:
        diff_kwargs.setdefault("sae_id", results[0].sae_id)
    return run_diff(db, names[0], names[1] if len(names) == 2 else None, **diff_kwargs)


def _stored_copy(store: Any, path: str, name: str, input_args: dict[str, Any]) -> str | None:
    """The name of a complete dataset of ``store`` embedded from a file with the same bytes
    as ``path`` (size and SHA-256) read with the same input settings, when no dataset is
    named ``name`` yet; else None."""
    from saedata.corpus import source_fingerprint

    datasets = store.datasets()
    if name in datasets["name"].to_list():
        return None
    fingerprint = source_fingerprint(path)
    if not fingerprint:
        return None
    for row in datasets.filter(datasets["complete"]).iter_rows(named=True):
        args = store.dataset_args(row["dataset_id"])
        seen = args.get("source") or {}
        same_bytes = (seen.get("size"), seen.get("sha256")) == (fingerprint["size"], fingerprint["sha256"])
        if seen.get("sha256") and same_bytes and args.get("input") == input_args:
            return str(row["name"])
    return None


# -- small jobs on a store ----------------------------------------------------------------


def relabel(db: str | os.PathLike = "run.duckdb", sae_id: int | None = None, *, llm: bool = False,
            latents: list[int] | None = None, score: bool = False, dataset: str | None = None,
            log: Log = silent) -> int:
    """Recompute latent labels in the store ``db``: offline contrastive keywords (against
    the background of ``dataset`` alone when given: its documents' evidence and word
    frequencies, label sources "keywords:NAME"), and with
    ``score`` then score every label offline (:func:`saedata.label.score_labels`, labels
    and documents embedded by the default reader); or with ``llm`` label ``latents``
    (default the 50 most frequent) with an LLM at the endpoint the environment names, and
    with ``score`` score them by the LLM (:func:`llm_label`). Returns how many latents got
    a label."""
    if llm:
        return llm_label(db, sae_id, latents=latents, score=score, log=log).labelled
    from saedata.label import relabel as run
    from saedata.store import Store

    with Store(db, read_only=False) as store:
        embed_texts = None
        if score:
            from saedata.embed.models import text_vectors

            embed_texts = text_vectors
        return run(store, sae_id, log=log, embed_texts=embed_texts, dataset=dataset)


def llm_label(db: str | os.PathLike = "run.duckdb", sae_id: int | None = None, *, latents: list[int] | None = None,
              score: bool = False, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
              seed: int = 0, workers: int = 4, timeout: float = 60.0, log: Log = silent,
              progress: bool = False) -> LLMRun:
    """Label ``latents`` of the store ``db`` (default the 50 most frequent) with an LLM
    behind an OpenAI-compatible endpoint, from contrastive evidence (their strongest
    documents, peak marked, beside near misses); with ``score``, then score each label by
    detection and fuzzing. The endpoint, model and key are the arguments or
    SAEDATA_LLM_BASE_URL, SAEDATA_LLM_MODEL and SAEDATA_LLM_API_KEY; ``seed`` draws the
    documents shown; ``workers`` requests run at once. Every request is kept in the
    table ``llm_calls``. Returns the run's counts and tokens (:class:`saedata.label.llm.LLMRun`)."""
    from pathlib import Path

    from saedata.config import LLMConfig
    from saedata.errors import NotFoundError
    from saedata.label.llm import llm_relabel
    from saedata.store import Store

    # checked before the store opens for writing: a missing endpoint leaves the file as it was
    cfg = LLMConfig.from_env(base_url, model, api_key, seed=seed, workers=workers, timeout=timeout)
    if not Path(db).is_file():
        raise NotFoundError(f"no store at {db}; create one with `saedata embed`")
    with Store(db, read_only=False) as store:
        return llm_relabel(store, sae_id, cfg, latents, score=score, log=log, progress=progress)


def repool(db: str | os.PathLike, dataset: str, pooling: str, *, log: Log = silent):
    """Pool the documents of ``dataset`` in the store ``db`` again with ``pooling`` (max,
    mean, sum, count) from the token codes kept by ``embed(..., store_tokens)``, without
    the reader or the corpus; the dataset's statistics and the labels follow, all in one
    transaction. Returns a :class:`~saedata.embed.repool.RepoolResult`."""
    from saedata.embed.repool import repool as run
    from saedata.store import Store

    with Store(db, read_only=False) as store:
        return run(store, dataset, pooling, log=log)


def browse(db: str | os.PathLike = "run.duckdb", out: str | os.PathLike = "site", dataset: str | list[str] | None = None,
           *, sae_id: int | None = None, latents: int | None = None, reports: list[str | os.PathLike] | tuple = (),
           progress: bool = False) -> Site:
    """Write a static, offline HTML site of the latents of the store ``db`` (over
    ``dataset``, by default every complete dataset of the SAE) to the folder ``out``:
    an index of every latent (label, frequency, label score, dataset lift; sortable, with
    a search box) and a page per latent as :func:`latent_page` and its report give it;
    ``reports`` (HTML files) are copied in and listed. Pages for every latent that fires,
    or with ``latents`` for that many, the most frequent first. ``out`` must be new, empty
    or a site written before (then it is replaced whole). See
    :mod:`saedata.reports.site`; returns its :class:`~saedata.reports.site.Site` (what the
    scope leaves out in its ``warnings``)."""
    import polars as pl

    from saedata.analysis.latent import LatentBook
    from saedata.analysis.scope import opened
    from saedata.console import progress_bar
    from saedata.errors import ConfigError
    from saedata.reports.site import check_site_folder, write_site

    if latents is not None and latents < 0:
        raise ConfigError(f"--latents must be at least 0, got {latents}")
    check_site_folder(out, reports)
    with opened(db) as store:
        book = LatentBook(store, dataset, sae_id=sae_id)
        overview = book.overview().sort(["n_fires", "latent"], descending=[True, False])
        paged = overview.filter(pl.col("n_fires") > 0)["latent"].to_list()[:latents or None]
        with progress_bar(len(paged), "latent pages", progress, unit="page") as bar:

            def pages() -> Iterator[Any]:
                for page in book.pages(paged):
                    yield page
                    bar.update()

            return write_site(out, overview, pages(), paged, sae_id=book.scope.sae_id, names=book.scope.names,
                              reports=list(reports), warnings=book.scope.warnings)


def build_index(db: str | os.PathLike = "run.duckdb") -> int:
    """Build (or rebuild) the by-latent copy of the activations that makes search fast on
    large stores; returns its row count."""
    from saedata.store import Store

    with Store(db, read_only=False) as store:
        return store.build_latent_index()


def write_demo(path: str | os.PathLike, second: str | os.PathLike | None = None, *, n_docs: int | None = None,
               seed: int | None = None) -> list[os.PathLike]:
    """Write a JSONL corpus with planted topics, sentiment and questions to ``path`` (600
    documents), or with ``second`` a pair of corpora with planted differences
    (:data:`saedata.demo.PAIR_DIFFERENCES`, 300 documents each) for ``saedata diff``.
    Returns the paths written."""
    from saedata.demo import make_corpus, make_pair, write_jsonl

    if second is None:
        return [write_jsonl(make_corpus(n_docs or 600, seed=seed or 0), path)]
    a, b = make_pair(n_docs or 300, seed=11 if seed is None else seed)
    return [write_jsonl(a, path), write_jsonl(b, second)]
