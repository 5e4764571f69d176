"""Evaluate SAEs on a corpus: its token activations read once with the SAEs' reader, then
every SAE's metrics (:mod:`saedata.sae.eval`) on those same activations.

    result = saedata.eval_saes(["run.sae", "other.sae"], "heldout.jsonl", concept="topic")
    result.table          # one row per SAE: fvu, l0 (std, p10, p90), dead, dense, afa_ratio, ...

The corpus is read as training reads one (:func:`~saedata.embed.train.read_activations`,
an even sample of documents up to ``tokens`` tokens); give one the SAEs were not trained
on. Documents are max-pooled for concept separability to the values embedding stores
(:func:`~saedata.sae.eval.max_pool`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import polars as pl

from saedata.config import InputConfig, ReaderConfig
from saedata.console import Log, progress_bar, silent
from saedata.errors import ConfigError, DimensionMismatchError, InputError

if TYPE_CHECKING:
    import torch

    from saedata.corpus import Document
    from saedata.sae import SparseAutoencoder

EVAL_TOKENS = 200_000
"""Token activations read from the corpus by default."""
BATCH_TOKENS = 4096
"""Tokens encoded at a time (whole documents: a batch ends at a document boundary)."""
MAX_CONCEPT_VALUES = 50
"""Most distinct values a ``concept`` field may have (it must be categorical)."""
MIN_CONCEPT_DOCS = 5
"""A value of the concept field is scored when at least this many documents read hold it
(and this many do not)."""

@dataclass
class EvalResult:
    """SAEs evaluated on the same token activations."""

    table: pl.DataFrame
    """One row per SAE, in the order given: sae, activation, d_sae, fvu, l0, l0_std, l0_p10,
    l0_p90, dead, dense, afa_ratio, eps_lbo, coh_max, coh_mean (decoder coherence); js_sep
    (the mean over concepts of the best latent's JS distance) with concepts; label_score
    (median label score in the store) when an SAE is registered in the store given."""
    concepts: pl.DataFrame
    """One row per SAE and concept: sae, concept, n_docs, n_without, best_latent, js (its
    JS distance), and label (the best latent's, when the SAE is in the store); empty
    without concepts."""
    n_tokens: int
    n_docs: int
    """Documents the tokens came from (0 when not known)."""
    corpus: str | None = None
    reader: str | None = None
    """The reader and layer that read the corpus."""
    concept: str | None = None
    """The field whose values are the concepts."""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready Python objects (NaN becomes None)."""
        return _json_ready({
            "corpus": self.corpus, "reader": self.reader, "n_tokens": self.n_tokens, "n_docs": self.n_docs,
            "concept": self.concept, "saes": self.table.to_dicts(), "concepts": self.concepts.to_dicts(),
            "warnings": self.warnings,
        })

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)


class ConceptLabels(NamedTuple):
    """Documents labelled with the values of one categorical field."""

    field: str
    values: list[str]
    """The field's values as text, in order of first appearance."""
    doc_concept: torch.Tensor
    """(n_docs,) int64: each document's index into ``values``; -1 where unlabelled."""
    skipped: list[str]
    """Values held by fewer than ``min_docs`` documents (or all but fewer): not scored as
    concepts (their documents still count as documents without the others)."""


def concept_labels(docs: Sequence[Document], field_name: str, min_docs: int = MIN_CONCEPT_DOCS,
                   source: str | None = None) -> ConceptLabels:
    """The documents' values of the metadata field ``field_name`` as concepts.

    A document without the field (or with null) is unlabelled. InputError when no document
    has the field, or one holds a list or object there; ConfigError when the field has
    more than MAX_CONCEPT_VALUES values. Values held by fewer than ``min_docs`` documents,
    or by all but fewer, are listed in ``skipped``."""
    import torch

    raw = [d.meta.get(field_name) for d in docs]
    present = [v for v in raw if v is not None]
    if not present:
        fields = sorted({k for d in docs[:1000] for k in d.meta})
        have = f" (fields: {', '.join(fields)})" if fields else " (its documents have no fields besides the text)"
        raise InputError(f"--concept {field_name}: no document has this field{have}", path=source)
    for d, v in zip(docs, raw):
        if isinstance(v, list | dict):
            raise InputError(f"--concept {field_name} must be categorical, found a {type(v).__name__}",
                             path=source, line=d.line)
    names = [v if isinstance(v, str) else json.dumps(v) for v in raw]
    counts: dict[str, int] = {}
    for name, v in zip(names, raw):
        if v is not None:
            counts[name] = counts.get(name, 0) + 1
    if len(counts) > MAX_CONCEPT_VALUES:
        raise ConfigError(f"--concept {field_name} has {len(counts)} distinct values; give a categorical field "
                          f"(at most {MAX_CONCEPT_VALUES} values)")
    n = len(present)
    index = {c: i for i, c in enumerate(counts)}
    doc_concept = torch.tensor([index[name] if v is not None else -1 for name, v in zip(names, raw)],
                               dtype=torch.int64)
    skipped = [c for c, k in counts.items() if k < min_docs or n - k < min_docs]
    return ConceptLabels(field_name, list(counts), doc_concept, skipped)


def evaluate_activations(
    saes: Sequence[SparseAutoencoder],
    acts: torch.Tensor,
    *,
    names: Sequence[str] | None = None,
    doc_index: torch.Tensor | None = None,
    concepts: ConceptLabels | None = None,
    batch_tokens: int = BATCH_TOKENS,
    progress: bool = False,
) -> EvalResult:
    """Evaluate each SAE on the token activations ``acts`` (n_tokens, d_in).

    ``doc_index`` (n_tokens,) int64: each token's document (position in
    ``concepts.doc_concept``); with ``concepts``, every latent's JS separability of the
    concepts on max-pooled document codes. ``names`` label the SAEs in the tables
    (default: where each was loaded from)."""
    import torch

    from saedata.sae.eval import SAEEvaluator, js_separability, max_pool

    check_saes(saes, names)
    names = list(names) if names is not None else [_sae_name(s, i) for i, s in enumerate(saes)]
    if concepts is not None and doc_index is None:
        raise ConfigError("concept separability needs each token's document (doc_index)")
    if doc_index is not None and doc_index.shape[0] != acts.shape[0]:
        raise ConfigError(f"doc_index has {doc_index.shape[0]} rows for {acts.shape[0]} token activations")
    if doc_index is not None:
        doc_index = doc_index.cpu().long()
        if not _contiguous(doc_index):  # pooling needs each document's tokens in one batch
            order = torch.argsort(doc_index, stable=True)
            acts, doc_index = acts[order], doc_index[order]
    bounds = _batches(acts.shape[0], doc_index, batch_tokens)
    rows, concept_rows = [], []
    bar = progress_bar(len(saes) * len(bounds), "evaluate SAEs", progress, unit="batch")
    for sae, name in zip(saes, names):
        ev = SAEEvaluator(sae)
        pooled: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for start, end in bounds:
            codes = ev.update(acts[start:end])
            if concepts is not None:
                p = max_pool(codes, doc_index[start:end].to(codes.values.device), sae.d_sae)  # type: ignore[index]
                pooled.append((p.doc.cpu(), p.latent.cpu(), p.value.cpu()))
            bar.update(1)
        m = ev.result()
        row: dict[str, Any] = {"sae": name, "activation": sae.cfg.activation, "d_sae": sae.d_sae, "fvu": m.fvu,
                               "l0": m.l0, "l0_std": m.l0_std, "l0_p10": m.l0_p10, "l0_p90": m.l0_p90,
                               "dead": m.dead, "dense": m.dense, "afa_ratio": m.afa_ratio, "eps_lbo": m.epsilon_lbo,
                               "coh_max": m.coherence_max, "coh_mean": m.coherence_mean}
        if concepts is not None:
            doc, lat, val = (torch.cat(parts) for parts in zip(*pooled)) if pooled else \
                (torch.zeros(0, dtype=torch.int64),) * 3
            sep = js_separability(doc.long(), lat.long(), val, concepts.doc_concept, len(concepts.values), sae.d_sae)
            scored = [i for i, c in enumerate(concepts.values) if c not in concepts.skipped]
            best = sep.best_js[scored]
            best = best[~torch.isnan(best)]
            row["js_sep"] = float(best.mean()) if best.numel() else float("nan")
            concept_rows += [{"sae": name, "concept": concepts.values[i], "n_docs": int(sep.n_with[i]),
                              "n_without": int(sep.n_without[i]), "best_latent": int(sep.best_latent[i]),
                              "js": float(sep.best_js[i])} for i in scored]
        rows.append(row)
    bar.close()
    n_docs = int(doc_index.max()) + 1 if doc_index is not None and doc_index.numel() else 0
    concept_frame = pl.DataFrame(concept_rows, schema={"sae": pl.String, "concept": pl.String, "n_docs": pl.Int64,
                                                       "n_without": pl.Int64, "best_latent": pl.Int64,
                                                       "js": pl.Float64})
    warnings = []
    if concepts is not None and concepts.skipped:
        warnings.append(f"--concept {concepts.field}: not scored, held by fewer than {MIN_CONCEPT_DOCS} documents "
                        f"(or all but fewer): {', '.join(concepts.skipped[:10])}"
                        + (f" and {len(concepts.skipped) - 10} more" if len(concepts.skipped) > 10 else ""))
    return EvalResult(pl.DataFrame(rows), concept_frame, int(acts.shape[0]), n_docs,
                      concept=concepts.field if concepts is not None else None, warnings=warnings)


def check_saes(saes: Sequence[SparseAutoencoder], names: Sequence[str] | None = None) -> None:
    """DimensionMismatchError when the SAEs' d_in differ, ConfigError when they record
    different readers, layers or hook points (an SAE that records none goes with any)."""
    if not saes:
        raise ConfigError("no SAE to evaluate")
    names = list(names) if names is not None else [_sae_name(s, i) for i, s in enumerate(saes)]
    first = saes[0]
    for sae, name in zip(saes[1:], names[1:]):
        if sae.d_in != first.d_in:
            raise DimensionMismatchError(f"the SAEs read different widths: {names[0]} has d_in={first.d_in}, "
                                         f"{name} has d_in={sae.d_in}")
    for what, get in (("reader", lambda c: c.reader), ("layer", lambda c: c.layer),
                      ("hook point", lambda c: (c.hook, c.head))):
        seen = [(name, get(s.cfg)) for s, name in zip(saes, names) if get(s.cfg) is not None]
        if len({v for _, v in seen}) > 1:
            (a, va), (b, vb) = seen[0], next(x for x in seen if x[1] != seen[0][1])
            raise ConfigError(f"the SAEs read different {what}s: {a} reads {_show(va)}, {b} reads {_show(vb)}")


def eval_saes(
    saes: Sequence[str | os.PathLike | SparseAutoencoder],
    corpus: str | os.PathLike,
    *,
    tokens: int = EVAL_TOKENS,
    concept: str | None = None,
    db: str | os.PathLike | None = None,
    input_cfg: InputConfig = InputConfig(),
    reader_cfg: ReaderConfig = ReaderConfig(),
    batch_tokens: int = BATCH_TOKENS,
    progress: bool = False,
    log: Log = silent,
) -> EvalResult:
    """Evaluate SAEs on the same token activations of ``corpus``, read once.

    ``saes``: paths :func:`~saedata.sae.load_sae` reads (directories of any format, Goodfire
    files, ``hf://``), or loaded :class:`~saedata.sae.SparseAutoencoder` objects. The reader is the one the SAEs record (``reader_cfg`` fills what they do not: model,
    layer, device, ...); SAEs of different widths, readers, layers or hook points are an
    error, as is an SAE whose d_in is not the reader's width. At most ``tokens`` tokens
    are read, from documents sampled evenly over the corpus. ``concept``: a categorical
    metadata field; each of its values is a concept scored by JS separability. ``db``: a
    store in which SAEs may be registered: their median label score (and the labels of
    the best latents) come from it.
    """
    import torch

    from saedata.corpus import is_image_source, open_corpus
    from saedata.embed.models import reader_for_sae
    from saedata.embed.train import read_activations
    from saedata.reader import open_reader
    from saedata.sae import check_d_in, load_sae

    if tokens <= 0:
        raise ConfigError(f"--tokens must be positive, got {tokens}")
    source = os.fspath(corpus)
    if source != "-":  # a missing file, a bad first line or an unknown field fails before any model loads
        batches = iter(open_corpus(source, input_cfg))
        first = next(batches, [])
        if concept is not None and (any(concept in d.meta for d in first)
                                    or not any(concept in d.meta for batch in batches for d in batch)):
            concept_labels(first, concept, min_docs=0, source=source)  # InputError when nowhere
    loaded = [s if isinstance(s, torch.nn.Module) else load_sae(_resolve(s)) for s in saes]
    names = [os.fspath(s) if not isinstance(s, torch.nn.Module) else _sae_name(s, i) for i, s in enumerate(saes)]
    check_saes(loaded, names)  # type: ignore[arg-type]
    recorded = next((s for s in loaded if s.cfg.reader), loaded[0])
    reader = open_reader(reader_for_sae(reader_cfg, recorded.cfg), images=is_image_source(source, input_cfg))
    for sae in loaded:
        check_d_in(sae, reader.d_model, reader.describe())  # type: ignore[arg-type]
    log(f"reading up to {tokens:,} token activations of {source} with {reader.describe()}")
    read = read_activations(source, reader, input_cfg, max_tokens=tokens, progress=progress,  # type: ignore[arg-type]
                            keep_docs=True, purpose="to evaluate the SAEs on")
    acts = torch.cat(read.chunks)
    doc_index = torch.cat(read.doc_index)
    del read.chunks[:]
    labels = concept_labels(read.docs, concept, source=source) if concept is not None else None
    saes_here = [s.to(reader.device).eval() for s in loaded]
    log(f"evaluating {len(saes_here)} SAE{'s' * (len(saes_here) != 1)} on {acts.shape[0]:,} tokens of "
        f"{len(read.docs):,} documents")
    result = evaluate_activations(saes_here, acts, names=names, doc_index=doc_index, concepts=labels,  # type: ignore[arg-type]
                                  batch_tokens=batch_tokens, progress=progress)
    result.corpus, result.reader, result.n_docs = source, reader.describe(), len(read.docs)
    if db is not None:
        _add_label_scores(result, saes, db)
    for w in result.warnings:
        log(w)
    return result


# -- helpers -------------------------------------------------------------------------------


def _batches(n: int, doc_index: torch.Tensor | None, size: int) -> list[tuple[int, int]]:
    """(start, end) rows of batches of about ``size`` tokens; with ``doc_index`` (each
    document's tokens contiguous), each batch ends where a document does."""
    import torch

    if doc_index is None:
        return [(s, min(s + size, n)) for s in range(0, n, size)]
    ends = torch.cat([(doc_index[1:] != doc_index[:-1]).nonzero()[:, 0] + 1, torch.tensor([n])])
    out, start = [], 0
    while start < n:
        end = int(ends[torch.searchsorted(ends, start + size)]) if start + size < n else n
        out.append((start, end))
        start = end
    return out


def _contiguous(doc_index: torch.Tensor) -> bool:
    """Whether each document's tokens are one run of rows."""
    if doc_index.numel() < 2:
        return True
    runs = int((doc_index[1:] != doc_index[:-1]).sum()) + 1
    return runs == doc_index.unique().numel()


def _resolve(spec: str | os.PathLike) -> Path:
    from saedata.sae.formats import resolve_sae

    return resolve_sae(spec)


def _sae_name(sae: Any, i: int) -> str:
    return str(getattr(sae, "source_path", None) or f"sae{i + 1}")


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        hook, head = value
        return hook if head is None else f"{hook} head {head}"
    return str(value)


def _add_label_scores(result: EvalResult, saes: Sequence[Any], db: str | os.PathLike) -> None:
    """Add label_score (median of the store's label scores) to the table, and the best
    latents' labels to the concept table, for the SAEs registered in the store ``db``."""
    from saedata.sae.formats import sae_fingerprint
    from saedata.store import open as open_store

    if not Path(db).exists():
        raise InputError("no store at this path (--db names a store the SAEs are registered in)", path=os.fspath(db))
    scores: list[float | None] = []
    labels: dict[tuple[str, int], str | None] = {}
    with open_store(db) as store:
        registered = store.saes()
        for spec, name in zip(saes, result.table["sae"].to_list()):
            sae_id = None
            if isinstance(spec, str | os.PathLike):
                path = _resolve(spec)
                prints = {sae_fingerprint(path), sae_fingerprint(path, legacy=True)}
                hits = registered.filter(pl.col("fingerprint").is_in(list(prints)))
                sae_id = int(hits["sae_id"][0]) if hits.height else None
            if sae_id is None:
                scores.append(None)
                continue
            scored = store.latent_scores(sae_id)["score"].drop_nulls()
            scores.append(float(scored.median()) if scored.len() else None)  # type: ignore[arg-type]
            latents = store.latents(sae_id).select("latent", "label")
            for lat, lab in latents.iter_rows():
                labels[(name, int(lat))] = lab
    if any(s is not None for s in scores):
        result.table = result.table.with_columns(pl.Series("label_score", scores, dtype=pl.Float64))
    if labels and result.concepts.height:
        result.concepts = result.concepts.with_columns(pl.Series(
            "label", [labels.get((s, lat)) for s, lat in result.concepts.select("sae", "best_latent").iter_rows()],
            dtype=pl.String))


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if obj != obj or obj in (float("inf"), float("-inf")) else obj
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_ready(v) for v in obj]
    return obj
