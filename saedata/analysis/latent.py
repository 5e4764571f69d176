"""One latent, looked at closely: what ``saedata latent N`` prints and its report shows.

A user who meets latent 2848 in a diff wants to see it before trusting it: its label and
where the label came from, how often it fires in each dataset (and how often it is
*present*, beyond what the document's length explains; :mod:`saedata.analysis.presence`),
how strongly (quantiles of its pooled values), the documents where it fires most with the
word where it peaked marked, documents sampled across its whole range of values (the top
alone flatters a latent, as the auto-interpretability work stresses), and the latents it
is present together with most (NPMI, as ``saedata correlate`` scores pairs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import polars as pl

from saedata.analysis.scope import documents_frame, latent_labels, latent_matrix, opened, resolve_scope
from saedata.analysis.stats import npmi_from_counts
from saedata.errors import ConfigError, NotFoundError
from saedata.label import peak_snippet
from saedata.store import Store

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
"""Quantiles of the pooled values reported (1.0: the largest)."""

_DOCS = {"doc_id": pl.Int64, "dataset": pl.String, "ext_id": pl.String, "value": pl.Float64,
         "peak": pl.Int32, "at_word": pl.String, "snippet": pl.String, "text": pl.String}


@dataclass(frozen=True)
class LatentPage:
    """Everything known about one latent over the datasets of a scope."""

    sae_id: int
    latent: int
    label: str | None
    label_source: str | None
    weak: bool
    """The label says nothing about a topic (punctuation, function words; see saedata.label.weak_label)."""
    scores: dict
    """The label's scores (``saedata label [--llm] --score``): score, detect_precision, detect_recall,
    llm_detection, llm_fuzzing (None until scored)."""
    datasets: pl.DataFrame
    """(dataset, n_docs, n_fires, freq, n_present, present_freq): per dataset, documents where it
    fires at all and where it is present beyond chance for their length, and their shares."""
    quantiles: pl.DataFrame
    """(quantile, value) of its pooled values over the documents where it fires."""
    top: pl.DataFrame
    """(rank, doc_id, dataset, ext_id, value, peak, at_word, snippet, text): the strongest
    documents; ``peak`` the character where it peaked, ``at_word`` the word there,
    ``snippet`` the text around it with that word in [brackets] (:func:`peak_snippet`)."""
    samples: pl.DataFrame
    """(quantile, doc_id, dataset, ext_id, value, peak, at_word, snippet, text): one document at each of
    ``n_samples`` evenly spaced quantiles of its values, weakest first."""
    cooccurs: pl.DataFrame
    """(latent, label, n_both, n_other, npmi): the latents most often present in the same
    documents, by NPMI, among those sharing at least ``min_support`` documents."""
    n_docs: int
    names: tuple[str, ...]


def latent_page(store_or_path: Store | str | os.PathLike, latent: int, dataset: str | list[str] | None = None, *,
                sae_id: int | None = None, top: int = 10, n_samples: int = 8, n_cooccur: int = 10,
                min_support: int = 3) -> LatentPage:
    """The page of ``latent`` over ``dataset`` (every dataset of the SAE when None)."""
    if top < 1 or n_samples < 0 or n_cooccur < 0:
        raise ConfigError("--top must be at least 1; samples and co-occurring latents at least 0")
    with opened(store_or_path) as store:
        scope = resolve_scope(store, dataset, sae_id)
        labels = latent_labels(store, scope.sae_id)
        row = labels.filter(pl.col("latent") == latent)
        scored = store.latent_scores(scope.sae_id).filter(pl.col("latent") == latent)
        scores = {k: (scored[k][0] if scored.height else None)
                  for k in ("score", "detect_precision", "detect_recall", "llm_detection", "llm_fuzzing")}
        d_sae = int(store.saes().filter(pl.col("sae_id") == scope.sae_id)["d_sae"].item())
        if not 0 <= latent < d_sae:
            raise NotFoundError(f"SAE {scope.sae_id} has no latent {latent} (it has 0..{d_sae - 1})")
        docs = documents_frame(store, scope)
        lm = latent_matrix(store, scope, doc_ids=docs["doc_id"].to_numpy())
        values = np.asarray(lm.X[:, latent].todense()).ravel()
        present = lm.present()
        fires = values != 0  # active at threshold 0, as LatentMatrix.active reads it
        here = np.asarray(present[:, latent].todense()).ravel() != 0
        by_ds = docs.select("dataset").with_columns(fires=pl.Series(fires), present=pl.Series(here))
        datasets = (by_ds.group_by("dataset", maintain_order=True)
                    .agg(pl.len().alias("n_docs"), pl.col("fires").sum().alias("n_fires"),
                         pl.col("present").sum().alias("n_present"))
                    .with_columns(freq=pl.col("n_fires") / pl.col("n_docs"),
                                  present_freq=pl.col("n_present") / pl.col("n_docs"))
                    .select("dataset", "n_docs", "n_fires", "freq", "n_present", "present_freq"))
        fired = np.flatnonzero(fires)
        order = fired[np.lexsort((docs["doc_id"].to_numpy()[fired], -np.abs(values[fired])))]
        quantiles = pl.DataFrame({"quantile": list(QUANTILES),
                                  "value": [float(np.quantile(values[fired], q)) if fired.size else None
                                            for q in QUANTILES]}, schema={"quantile": pl.Float64, "value": pl.Float64})
        top_rows = order[:top]
        picks = order[::-1]  # weakest first
        sample_rows = np.unique(picks[np.minimum(((np.arange(n_samples) + 0.5) / max(n_samples, 1) * picks.size)
                                                 .astype(int), picks.size - 1)]) if picks.size and n_samples else []
        sample_rows = sorted(sample_rows, key=lambda i: (abs(values[i]), docs["doc_id"][int(i)]))
        wanted = docs["doc_id"].to_numpy()[np.concatenate([top_rows, np.asarray(sample_rows, dtype=np.int64)])]
        evidence = _evidence(store, scope.sae_id, latent, wanted)
        top_df = _rows(docs, evidence, top_rows, values).with_row_index("rank", offset=1)
        samples_df = _rows(docs, evidence, np.asarray(sample_rows, dtype=np.int64), values)
        if samples_df.height:
            rank = np.searchsorted(np.sort(np.abs(values[fired])), np.abs(samples_df["value"].to_numpy()), side="right")
            samples_df = samples_df.with_columns(quantile=pl.Series(rank / fired.size)).select("quantile", *_DOCS)
        else:
            samples_df = pl.DataFrame(schema={"quantile": pl.Float64, **_DOCS})
        cooccurs = _cooccurs(present, latent, labels, n_cooccur, min_support)
    label = row["label"][0] if row.height else None
    source = row["label_source"][0] if row.height else None
    weak = bool(row["weak"][0]) if row.height else False
    return LatentPage(scope.sae_id, int(latent), label, source, weak, scores, datasets, quantiles, top_df, samples_df,
                      cooccurs, len(docs), scope.names)


def _evidence(store: Store, sae_id: int, latent: int, doc_ids: np.ndarray) -> pl.DataFrame:
    """(doc_id, peak, at_word) of ``latent`` in documents ``doc_ids``."""
    return store.macro("latent_evidence", sae_id, latent, [int(d) for d in doc_ids])


def _rows(docs: pl.DataFrame, evidence: pl.DataFrame, rows: np.ndarray, values: np.ndarray) -> pl.DataFrame:
    """The documents at ``rows`` of ``docs`` with the latent's value and evidence there."""
    if len(rows) == 0:
        return pl.DataFrame(schema=_DOCS)
    picked = (docs[np.asarray(rows, dtype=np.int64)].select("doc_id", "dataset", "ext_id", "text")
              .with_columns(value=pl.Series(values[rows].astype(np.float64))))
    out = picked.join(evidence, on="doc_id", how="left", maintain_order="left")
    snippets = [peak_snippet(t, p) for t, p in zip(out["text"].to_list(), out["peak"].to_list())]
    return out.with_columns(snippet=pl.Series(snippets, dtype=pl.String)).select(*_DOCS).cast(_DOCS)  # type: ignore[arg-type]


def _cooccurs(present, latent: int, labels: pl.DataFrame, n: int, min_support: int) -> pl.DataFrame:
    """The ``n`` latents with the highest NPMI with ``latent`` over the presence matrix."""
    schema = {"latent": pl.Int32, "label": pl.String, "n_both": pl.Int64, "n_other": pl.Int64, "npmi": pl.Float64}
    P = present.tocsc().astype(np.int64)
    P.data[:] = 1
    col = P[:, latent]
    n_i = int(col.sum())
    if n == 0 or n_i == 0:
        return pl.DataFrame(schema=schema)
    both = np.asarray((P.T @ col).todense()).ravel()
    n_j = np.asarray(P.sum(axis=0)).ravel()
    cand = np.flatnonzero(both >= min_support)
    cand = cand[cand != latent]
    npmi = npmi_from_counts(both[cand], np.full(cand.size, n_i), n_j[cand], P.shape[0])
    keep = np.lexsort((cand, -npmi))[:n]
    return (pl.DataFrame({"latent": cand[keep].astype(np.int32), "n_both": both[cand[keep]].astype(np.int64),
                          "n_other": n_j[cand[keep]].astype(np.int64), "npmi": npmi[keep]})
            .join(labels.select("latent", "label"), on="latent", how="left", maintain_order="left")
            .select(*schema).cast(schema))  # type: ignore[arg-type]
