"""Probes of stored datasets: SAE codes from the store vs the reader's dense embedding.

The pure probe functions of :mod:`saedata.analysis.probe` take arrays; this module
feeds them from a store. SAE codes are the stored pooled activations. The dense
embedding of a document (text or image) is the mean of its reader activations at the
SAE's layer -- the vector the SAE's codes decompose -- computed by running the SAE's
reader over the stored documents (texts, or image paths) once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import polars as pl

from saedata.analysis.data import (
    common_sae,
    dataset_states,
    documents_frame,
    latent_matrix,
    opened,
)
from saedata.analysis.probe import compare_purity, linear_probe, ood_auroc, ood_scores
from saedata.config import ReaderConfig
from saedata.errors import ConfigError, SAEFormatError
from saedata.store import Store


def _sae_reader_cfg(store: Store, sae_id: int, device: str) -> tuple[ReaderConfig, str]:
    reader, layer, path = store.one("SELECT reader, layer, path FROM saes WHERE sae_id = ?", [sae_id])
    if not path or not os.path.isdir(path):
        raise SAEFormatError(f"SAE {sae_id} was loaded from {path}, which no longer exists")
    return ReaderConfig(model=reader, layer=layer, device=device), path  # type: ignore[arg-type]


def dense_embeddings(store: Store, docs: pl.DataFrame, sae_id: int, device: str = "cpu",
                     batch_docs: int = 256) -> np.ndarray:
    """(n_docs, d_model) mean reader activation per document (rows of ``docs``: text, dataset)."""
    import torch

    from saedata.images import IMAGE_EXTENSIONS
    from saedata.reader import open_reader

    cfg, _ = _sae_reader_cfg(store, sae_id, device)
    texts = docs["text"].to_list()
    images = bool(texts) and all(t.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(t) for t in texts[:20])
    reader = open_reader(cfg, images=images)
    out = np.zeros((len(texts), reader.d_model), dtype=np.float32)
    for start in range(0, len(texts), batch_docs):
        batch = reader.read(texts[start : start + batch_docs])
        sums = torch.zeros(len(batch.n_tokens), reader.d_model, device=batch.acts.device)
        sums.index_add_(0, batch.doc_index, batch.acts)
        n = torch.as_tensor(batch.n_tokens, device=sums.device).clamp(min=1).unsqueeze(1)
        out[start : start + len(batch.n_tokens)] = (sums / n).cpu().numpy()
    return out


@dataclass(frozen=True)
class ProbeReport:
    """SAE codes vs dense embedding on one labelled dataset."""

    dataset: str
    label_field: str
    n_docs: int
    n_classes: int
    codes_accuracy: float
    codes_accuracy_std: float
    dense_accuracy: float
    dense_accuracy_std: float
    purity: pl.DataFrame
    """Per SAE latent: n_active, entropy, best_class, best_auroc (from compare_purity)."""
    per_class: pl.DataFrame
    """Per class: the best single SAE latent and the best single raw dimension, with AUROCs."""
    summary: pl.DataFrame
    """Median label entropy and best single-feature AUROC: SAE latents vs raw dimensions."""


def probe_dataset(store_or_path: Store | str | os.PathLike, dataset: str, label_field: str, *,
                  cv: int = 5, seed: int = 0, device: str = "cpu") -> ProbeReport:
    """Linear-probe accuracy and concept purity of SAE codes vs the dense embedding."""
    with opened(store_or_path) as store:
        states = dataset_states(store, [dataset])
        sae_id = common_sae(store, states)
        docs = documents_frame(store, [dataset], fields=[label_field])
        labels = docs[label_field].cast(pl.String).to_numpy()
        n_classes = len(set(labels.tolist()))
        if n_classes < 2:
            raise ConfigError(f"column {label_field!r} of {dataset!r} has {n_classes} class; a probe needs two")
        counts = np.unique(labels, return_counts=True)[1]
        if counts.min() < cv:
            raise ConfigError(f"the smallest class of {label_field!r} has {counts.min()} documents; "
                              f"{cv}-fold cross-validation needs at least {cv}")
        codes = latent_matrix(store, [dataset], sae_id, doc_ids=docs["doc_id"].to_numpy()).X
        dense = dense_embeddings(store, docs, sae_id, device=device)
    a_codes = linear_probe(codes, labels, cv=cv, seed=seed)
    a_dense = linear_probe(dense, labels, cv=cv, seed=seed)
    purity = compare_purity(codes, dense, labels)
    return ProbeReport(dataset, label_field, docs.height, n_classes, a_codes.mean, a_codes.std,
                       a_dense.mean, a_dense.std, purity.latents, purity.per_class, purity.summary)


@dataclass(frozen=True)
class OODReport:
    in_dataset: str
    out_dataset: str
    auroc: float
    """AUROC of the OOD score telling out-dataset documents from held-out in-dataset ones."""
    auroc_recon_only: float
    auroc_codes_only: float
    n_train: int
    n_test_in: int
    n_test_out: int


def probe_ood(store_or_path: Store | str | os.PathLike, in_dataset: str, out_dataset: str, *,
              holdout: float = 0.3, seed: int = 0, device: str = "cpu") -> OODReport:
    """How well the SAE tells ``out_dataset`` documents from unseen ``in_dataset`` ones.

    The in-dataset is split (seeded) into reference rows and held-out rows; each
    held-out and out-of-distribution document gets the score of
    :func:`~saedata.analysis.probe.ood_scores` (SAE reconstruction error of its dense
    embedding + k-NN cosine distance of its code), and the AUROC is reported for the
    score and for each of its two terms alone.
    """
    from saedata.sae import load_sae

    with opened(store_or_path) as store:
        states = dataset_states(store, [in_dataset, out_dataset])
        sae_id = common_sae(store, states)
        docs_in = documents_frame(store, [in_dataset], fields=[])
        docs_out = documents_frame(store, [out_dataset], fields=[])
        if docs_in.height < 10:
            raise ConfigError(f"dataset {in_dataset!r} has {docs_in.height} documents; OOD needs at least 10")
        E_in = dense_embeddings(store, docs_in, sae_id, device=device)
        E_out = dense_embeddings(store, docs_out, sae_id, device=device)
        _, path = _sae_reader_cfg(store, sae_id, device)
    sae = load_sae(path, device=device).eval()
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(E_in))
    n_test = max(1, int(round(holdout * len(E_in))))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    X_test = np.concatenate([E_in[test_idx], E_out])
    is_out = np.r_[np.zeros(len(test_idx), bool), np.ones(len(E_out), bool)]
    scores = ood_scores(sae, E_in[train_idx], X_test)
    return OODReport(in_dataset, out_dataset, ood_auroc(scores.score, is_out),
                     ood_auroc(scores.recon_error, is_out), ood_auroc(scores.code_distance, is_out),
                     len(train_idx), len(test_idx), len(E_out))
