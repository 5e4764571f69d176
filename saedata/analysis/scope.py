"""What an analysis covers, read from the store only: one :class:`Scope` for all of them.

Every analysis starts here: which datasets and SAE it is about (:func:`resolve_scope`,
the one place where a missing, incomplete or mixed-SAE dataset becomes an error), the
document x latent matrix of pooled activations (scipy sparse), the documents with their
metadata as columns, and the latents' labels. Nothing here touches the reader or torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import polars as pl
from scipy import sparse

from saedata.analysis.presence import is_present, no_token_counts_warning
from saedata.analysis.words import weak_label
from saedata.errors import ConfigError, NotFoundError
from saedata.store import DatasetState, Store
from saedata.store import open as open_store

DATASET_FIELD = "dataset"
"""The field every document has: the name of its dataset (usable wherever a metadata field is)."""


@contextmanager
def opened(store_or_path: Store | str | os.PathLike) -> Iterator[Store]:
    """A Store as given, or one opened read-only from a path (a file or a shard folder) and closed after."""
    if isinstance(store_or_path, Store):
        yield store_or_path
        return
    with open_store(store_or_path, read_only=True) as store:
        yield store


class Models(Protocol):
    """What an analysis may ask of the models behind a store. Analyses never load a reader
    or an SAE themselves: the API passes :class:`saedata.embed.models.StoreModels`."""

    def query_codes(self, sae_id: int, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(latents (nnz,) int64, values (nnz,) float32, tokens (nnz,) int64, n_tokens):
        ``text``'s pooled codes, how many of its tokens each latent fired on, and its
        length in reader tokens, computed as SAE ``sae_id``'s documents were embedded."""
        ...

    def text_vectors(self, texts: list[str]) -> np.ndarray:
        """(n_texts, d) unit vectors of short texts (labels, an axis) from the default reader."""
        ...

    def text_pieces(self, text: str) -> list[str]:
        """The word pieces the reader of :meth:`text_vectors` splits ``text`` into."""
        ...

    def document_vectors(self, sae_id: int, texts: list[str]) -> np.ndarray:
        """(n_texts, d_model) dense embeddings: the mean reader activation at SAE ``sae_id``'s layer."""
        ...

    def sae(self, sae_id: int) -> Any:
        """SAE ``sae_id`` as a :class:`~saedata.sae.SparseAutoencoder` (eval mode)."""
        ...


@dataclass(frozen=True)
class Scope:
    """The datasets an analysis reads and the SAE they share."""

    names: tuple[str, ...]
    states: tuple[DatasetState, ...]
    sae_id: int
    warnings: tuple[str, ...] = ()
    """What the scope leaves out and why (an unfinished dataset of the SAE)."""

    @property
    def dataset_ids(self) -> list[int]:
        return [s.dataset_id for s in self.states]

    @property
    def n_docs(self) -> int:
        return sum(s.n_docs for s in self.states)

    def describe(self) -> str:
        return ", ".join(self.names)


def resolve_scope(store: Store, datasets: str | list[str] | tuple[str, ...] | None,
                  sae_id: int | None = None) -> Scope:
    """The named datasets, or by default every complete dataset of the SAE (``sae_id``, or
    the store's only one; an unfinished one is left out with a warning, never blocking the
    others). Named datasets must exist (NotFoundError naming those there are), be complete
    and non-empty (ConfigError) and share one SAE (ConfigError)."""
    warnings: list[str] = []
    if isinstance(datasets, str):
        names = [datasets]
    elif datasets:
        names = list(dict.fromkeys(datasets))
    else:
        sae = store.resolve_sae(sae_id)
        names = store.dataset_names(sae, complete=True)
        for unfinished in store.dataset_names(sae):
            if unfinished not in names:
                n = store.dataset_state(unfinished).n_docs
                warnings.append(f"dataset {unfinished!r} is unfinished ({n} documents stored) and left out; "
                                "rerun its `saedata embed` to finish it")
        if not names:
            raise NotFoundError(f"{store.path} has no complete dataset embedded with SAE {sae}; "
                                "run `saedata embed` first")
    states = [store.dataset_state(n) for n in names]
    for s in states:
        if not s.complete:
            raise ConfigError(
                f"dataset {s.name!r} is incomplete ({s.n_docs} documents stored); "
                "finish it by rerunning its `saedata embed` first"
            )
        if s.n_docs == 0:
            raise ConfigError(f"dataset {s.name!r} has no documents")
    ids = {s.sae_id for s in states} | ({sae_id} if sae_id is not None else set())
    if len(ids) != 1:
        described = ", ".join(f"{s.name} (SAE {s.sae_id})" for s in states)
        raise ConfigError(f"datasets were embedded with different SAEs: {described}; compare like with like")
    return Scope(tuple(names), tuple(states), store.resolve_sae(ids.pop()), tuple(warnings))


@dataclass(frozen=True)
class LatentMatrix:
    """Pooled activations of a set of documents as a sparse (n_docs, d_sae) matrix."""

    doc_ids: np.ndarray
    """(n_docs,) int64 store ids, row order of ``X``."""
    X: sparse.csr_matrix
    """(n_docs, d_sae) float32 pooled values (0 where a latent is inactive)."""
    sae_id: int
    d_sae: int
    tokens: sparse.csr_matrix | None = None
    """(n_docs, d_sae) float64, in X's sparsity pattern: how many of the document's tokens
    the latent fired on (None for a store from before token counts)."""
    n_tokens: np.ndarray | None = None
    """(n_docs,) int64 document lengths in reader tokens."""

    def active(self, threshold: float = 0.0) -> sparse.csr_matrix:
        """(n_docs, d_sae) bool: latent active in document (|value| > threshold)."""
        X = self.X.copy()
        X.data = np.abs(X.data) > threshold
        X.eliminate_zeros()
        return X.astype(bool)

    def present(self, threshold: float = 0.0) -> sparse.csr_matrix:
        """(n_docs, d_sae) bool: latent present in document beyond chance (it fires on more
        of the document's tokens than its rate over these documents predicts,
        :mod:`saedata.analysis.presence`) and |value| > threshold. Falls back to
        :meth:`active` without token counts (check :attr:`has_tokens`)."""
        if self.tokens is None or self.n_tokens is None:
            return self.active(threshold)
        rates = np.asarray(self.tokens.sum(0)).ravel() / max(float(self.n_tokens.sum()), 1.0)
        T = self.tokens.tocoo()
        keep = is_present(T.data, self.n_tokens[T.row], T.col, rates) & (np.abs(self.X.tocoo().data) > threshold)
        return sparse.csr_matrix((np.ones(int(keep.sum()), dtype=bool), (T.row[keep], T.col[keep])), shape=T.shape)

    @property
    def has_tokens(self) -> bool:
        return self.tokens is not None


def read_presence(lm: LatentMatrix, presence: str, threshold: float, what: str) -> tuple[sparse.csr_matrix, list[str]]:
    """(n_docs, d_sae) bool: where each latent counts in each document, read as
    ``presence`` says ("excess": :meth:`LatentMatrix.present`, "any":
    :meth:`LatentMatrix.active`), and the warning when ``what`` (the documents, in words)
    has no token counts, so "excess" falls back to "any"."""
    if presence != "excess":
        return lm.active(threshold), []
    return lm.present(threshold), [] if lm.has_tokens else [no_token_counts_warning(what)]


def latent_matrix(store: Store, scope: Scope, doc_ids: np.ndarray | None = None) -> LatentMatrix:
    """The sparse document x latent matrix of the scope's documents, rows in doc_id order
    (or in ``doc_ids`` order when given, which may name a subset)."""
    d_sae = store.sae_info(scope.sae_id)["d_sae"]
    lengths = store.doc_lengths(scope.dataset_ids)
    subset = doc_ids
    if doc_ids is None:
        doc_ids = lengths["doc_id"].to_numpy()
    doc_ids = np.asarray(doc_ids, dtype=np.int64)
    at = _positions_in(lengths["doc_id"].to_numpy(), doc_ids)  # each document's row in lengths, -1 when absent
    n_tokens = np.where(at >= 0, lengths["n_tokens"].to_numpy()[np.maximum(at, 0)], 0).astype(np.int64)
    acts = store.activations_of(scope.sae_id, scope.dataset_ids, None if subset is None else doc_ids)
    rows = _positions_in(doc_ids, acts["doc_id"].to_numpy())  # each activation's row, -1 when not asked for
    keep = rows >= 0
    where = (rows[keep], acts["latent"].to_numpy()[keep])
    X = sparse.csr_matrix((acts["value"].to_numpy()[keep].astype(np.float32), where), shape=(len(doc_ids), d_sae))
    tokens = None
    if acts["tokens"].null_count() == 0:
        # the same (row, latent) cells as X: csr_matrix sorts both the same way
        tokens = sparse.csr_matrix((acts["tokens"].to_numpy()[keep].astype(np.float64), where),
                                   shape=(len(doc_ids), d_sae))
    return LatentMatrix(doc_ids, X, scope.sae_id, d_sae, tokens, n_tokens)


def _positions_in(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each of ``values``, its index in ``ids`` (distinct), or -1 when absent: a
    sorted search, not a Python lookup per value (a store holds millions of activations)."""
    if len(ids) == 0:
        return np.full(len(values), -1, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    ordered = ids[order]
    pos = np.minimum(np.searchsorted(ordered, values), len(ids) - 1)
    return np.where(ordered[pos] == values, order[pos], -1).astype(np.int64)


def documents_frame(store: Store, scope: Scope, fields: list[str] | None = None) -> pl.DataFrame:
    """doc_id, dataset, ext_id, text, n_tokens, n_chars, plus metadata fields as columns.

    ``fields`` limits (and checks) the metadata fields unpacked; a missing field is a
    NotFoundError naming the fields there are. ``dataset`` (the dataset's name) is a
    field of every document, in front of any metadata key of that name.
    """
    docs = store.documents_of(scope.dataset_ids)
    metas = [json.loads(m) if m else {} for m in docs["meta"].to_list()]
    available = sorted({k for m in metas for k in m})
    wanted = available if fields is None else fields
    for f in wanted:
        if f not in available and f != DATASET_FIELD:
            raise NotFoundError(
                f"no metadata field {f!r} in {scope.describe()} (fields: {', '.join(available) or 'none'})"
            )
    cols = {f: [m.get(f) for m in metas] for f in wanted if f not in docs.columns}
    meta = pl.DataFrame(cols, strict=False) if cols else None
    docs = docs.drop("meta")
    return pl.concat([docs, meta], how="horizontal") if meta is not None else docs


LOW_SCORE = 0.55
"""A label whose offline score (``saedata label --score``: the AUROC of label-document
similarity) is below this predicts where its latent fires barely better than chance
(0.5): findings describe themselves by better-scored labels first."""


def latent_labels(store: Store, sae_id: int) -> pl.DataFrame:
    """(latent, label, label_source, freq, score, weak, low_score) of every latent of an
    SAE; ``weak``: the label says nothing about a topic
    (:func:`saedata.analysis.words.weak_label`); ``low_score``: it was scored below
    ``LOW_SCORE`` (false while unscored)."""
    latents = store.latents(sae_id).select("latent", "label", "label_source", "freq", "score")
    weak = [weak_label(lab, src) for lab, src in zip(latents["label"].to_list(), latents["label_source"].to_list())]
    return latents.with_columns(weak=pl.Series(weak, dtype=pl.Boolean),
                                low_score=pl.col("score").fill_null(1.0) < LOW_SCORE)
