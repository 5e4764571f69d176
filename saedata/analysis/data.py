"""Shared inputs of the analyses, read from the store only.

Every analysis starts from one of these: which datasets and SAE it is about, the
document x latent matrix of pooled activations (scipy sparse), the documents' metadata
as a frame, and Benjamini-Hochberg q-values. Nothing here touches the reader or torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy import sparse

from saedata.errors import ConfigError, NotFoundError
from saedata.store import DatasetState, Store


@contextmanager
def opened(store_or_path: Store | str | os.PathLike) -> Iterator[Store]:
    """A Store as given, or one opened read-only from a path (and closed after)."""
    if isinstance(store_or_path, Store):
        yield store_or_path
        return
    with Store(store_or_path, read_only=True) as store:
        yield store


@dataclass(frozen=True)
class LatentMatrix:
    """Pooled activations of a set of documents as a sparse (n_docs, d_sae) matrix."""

    doc_ids: np.ndarray
    """(n_docs,) int64 store ids, row order of ``X``."""
    X: sparse.csr_matrix
    """(n_docs, d_sae) float32 pooled values (0 where a latent is inactive)."""
    sae_id: int
    d_sae: int

    def active(self, threshold: float = 0.0) -> sparse.csr_matrix:
        """(n_docs, d_sae) bool: latent active in document (|value| > threshold)."""
        X = self.X.copy()
        X.data = np.abs(X.data) > threshold
        X.eliminate_zeros()
        return X.astype(bool)


def dataset_states(store: Store, names: list[str]) -> list[DatasetState]:
    """The named datasets; NotFoundError names the ones that exist, ConfigError if incomplete."""
    states = [store.dataset_state(n) for n in names]
    for s in states:
        if not s.complete:
            raise ConfigError(
                f"dataset {s.name!r} is incomplete ({s.n_docs} documents stored); "
                "finish it by rerunning its `saedata embed` first"
            )
        if s.n_docs == 0:
            raise ConfigError(f"dataset {s.name!r} has no documents")
    return states


def common_sae(store: Store, states: list[DatasetState], sae_id: int | None = None) -> int:
    """The SAE all ``states`` were embedded with (they must share one)."""
    ids = {s.sae_id for s in states}
    if sae_id is not None:
        ids.add(sae_id)
    if len(ids) != 1:
        names = ", ".join(f"{s.name} (SAE {s.sae_id})" for s in states)
        raise ConfigError(f"datasets were embedded with different SAEs: {names}; compare like with like")
    (only,) = ids
    return store.resolve_sae(only)


def latent_matrix(
    store: Store,
    datasets: list[str] | None = None,
    sae_id: int | None = None,
    latents: list[int] | None = None,
    doc_ids: np.ndarray | None = None,
) -> LatentMatrix:
    """Sparse document x latent matrix for some datasets (default: all of the SAE's).

    Rows follow doc_id order (or ``doc_ids`` order when given); ``latents`` keeps only
    those columns (others are zero), the shape stays (n_docs, d_sae).
    """
    if datasets:
        states = dataset_states(store, datasets)
        sae_id = common_sae(store, states, sae_id)
        where = "d.dataset_id IN (SELECT unnest(?::INTEGER[]))"
        params: list = [[s.dataset_id for s in states]]
    else:
        sae_id = store.resolve_sae(sae_id)
        where = "d.dataset_id IN (SELECT dataset_id FROM datasets WHERE sae_id = ?)"
        params = [sae_id]
    d_sae = int(store.one("SELECT d_sae FROM saes WHERE sae_id = ?", [sae_id])[0])
    if doc_ids is None:
        doc_ids = store.sql(f"SELECT doc_id FROM documents AS d WHERE {where} ORDER BY doc_id", params)[
            "doc_id"
        ].to_numpy()
    acts = store.sql(
        "SELECT a.doc_id, a.latent, a.value FROM activations AS a JOIN documents AS d USING (doc_id) "
        f"WHERE a.sae_id = ? AND {where}",
        [sae_id, *params],
    )
    if latents is not None:
        acts = acts.filter(pl.col("latent").is_in(list(latents)))
    row_of = {int(d): i for i, d in enumerate(doc_ids)}
    rows = np.fromiter((row_of.get(int(d), -1) for d in acts["doc_id"].to_numpy()), dtype=np.int64,
                       count=acts.height)
    keep = rows >= 0
    X = sparse.csr_matrix(
        (acts["value"].to_numpy()[keep].astype(np.float32), (rows[keep], acts["latent"].to_numpy()[keep])),
        shape=(len(doc_ids), d_sae),
    )
    return LatentMatrix(np.asarray(doc_ids, dtype=np.int64), X, sae_id, d_sae)


def documents_frame(store: Store, datasets: list[str] | None = None, fields: list[str] | None = None) -> pl.DataFrame:
    """doc_id, dataset, ext_id, text, n_tokens, n_chars, plus metadata fields as columns.

    ``fields`` limits (and checks) the metadata fields unpacked; a missing field is a
    NotFoundError naming the fields there are.
    """
    if datasets:
        states = dataset_states(store, datasets)
        docs = store.sql(
            "SELECT d.doc_id, ds.name AS dataset, d.ext_id, d.text, d.n_tokens, length(d.text) AS n_chars, d.meta "
            "FROM documents AS d JOIN datasets AS ds USING (dataset_id) "
            "WHERE d.dataset_id IN (SELECT unnest(?::INTEGER[])) ORDER BY d.doc_id",
            [[s.dataset_id for s in states]],
        )
    else:
        docs = store.sql(
            "SELECT d.doc_id, ds.name AS dataset, d.ext_id, d.text, d.n_tokens, length(d.text) AS n_chars, d.meta "
            "FROM documents AS d JOIN datasets AS ds USING (dataset_id) ORDER BY d.doc_id"
        )
    metas = [json.loads(m) if m else {} for m in docs["meta"].to_list()]
    available = sorted({k for m in metas for k in m})
    wanted = available if fields is None else fields
    for f in wanted:
        if f not in available:
            where = ", ".join(datasets) if datasets else "the store"
            raise NotFoundError(
                f"no metadata field {f!r} in {where} (fields: {', '.join(available) or 'none'})"
            )
    cols = {f: [m.get(f) for m in metas] for f in wanted if f not in docs.columns}
    meta = pl.DataFrame(cols, strict=False) if cols else None
    docs = docs.drop("meta")
    return pl.concat([docs, meta], how="horizontal") if meta is not None else docs


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values for p-values ``p`` (NaN stays NaN)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    n = int(ok.sum())
    if n == 0:
        return q
    order = np.argsort(p[ok])
    ranked = p[ok][order] * n / np.arange(1, n + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.clip(ranked, 0, 1)
    q[ok] = out
    return q


def latent_labels(store: Store, sae_id: int) -> pl.DataFrame:
    """(latent, label, label_source, freq) of an SAE."""
    if store.one("SELECT count(*) FROM saes WHERE sae_id = ?", [sae_id])[0] == 0:
        raise NotFoundError(f"no SAE {sae_id} in {store.path}")
    return store.sql(
        "SELECT latent, label, label_source, freq FROM latents WHERE sae_id = ? ORDER BY latent", [sae_id]
    )
