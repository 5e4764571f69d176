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
from collections.abc import Iterable, Iterator
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
         "peak": pl.Int32, "at_word": pl.String, "snippet": pl.String, "text": pl.String,
         "spans": pl.List(pl.List(pl.Int32))}


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
    """(rank, doc_id, dataset, ext_id, value, peak, at_word, snippet, text, spans): the strongest
    documents; ``peak`` the character where it peaked, ``at_word`` the word there,
    ``snippet`` the text around it with that word (with ``--store-tokens``: every token
    where it fires) in [brackets] (:func:`peak_snippet`); ``spans`` the [start, end)
    character spans of the tokens where it fires (empty without ``--store-tokens``)."""
    samples: pl.DataFrame
    """(quantile, doc_id, dataset, ext_id, value, peak, at_word, snippet, text, spans): one document at each of
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
    with opened(store_or_path) as store:
        book = LatentBook(store, dataset, sae_id=sae_id, top=top, n_samples=n_samples, n_cooccur=n_cooccur,
                          min_support=min_support)
        return book.page(latent)


class LatentBook:
    """The pages of an SAE's latents over one scope. What every page reads (the documents,
    the document x latent matrix, presence, labels and scores) is read once, and the
    evidence of a batch of latents in one query, so a page costs milliseconds and every
    latent of an SAE one pass. The store must stay open while pages are made.

        book = LatentBook(store)
        book.overview()                      # one row per latent: label, freq, lift
        for page in book.pages([3, 17]): ...
    """

    def __init__(self, store: Store, dataset: str | list[str] | None = None, *, sae_id: int | None = None,
                 top: int = 10, n_samples: int = 8, n_cooccur: int = 10, min_support: int = 3):
        if top < 1 or n_samples < 0 or n_cooccur < 0:
            raise ConfigError("--top must be at least 1; samples and co-occurring latents at least 0")
        self.store = store
        self.scope = resolve_scope(store, dataset, sae_id)
        self.top, self.n_samples, self.n_cooccur, self.min_support = top, n_samples, n_cooccur, min_support
        self.labels = latent_labels(store, self.scope.sae_id)
        self.scores = store.latent_scores(self.scope.sae_id)
        self._label = {r[0]: r[1:] for r in self.labels.select("latent", "label", "label_source", "weak").iter_rows()}
        self._score = {r[0]: dict(zip(self.scores.columns[1:], r[1:])) for r in self.scores.iter_rows()}
        self.d_sae = int(store.saes().filter(pl.col("sae_id") == self.scope.sae_id)["d_sae"].item())
        self.docs = documents_frame(store, self.scope)
        self._texts = self.docs.select("doc_id", "dataset", "ext_id", "text")
        self._doc_ids = self.docs["doc_id"].to_numpy()
        lm = latent_matrix(store, self.scope, doc_ids=self._doc_ids)
        self._X = lm.X.tocsc()  # a latent's values: one column
        self._X.sort_indices()
        P = lm.present().astype(np.int64)
        P.data[:] = 1
        self._P = P.tocsr()  # a document's present latents: one row
        self._present = P.tocsc()
        self._present.sort_indices()
        self._n_present = np.asarray(P.sum(axis=0)).ravel()
        ds = self.docs["dataset"]
        self.datasets = tuple(ds.unique(maintain_order=True).to_list())
        """The scope's datasets in the order of their documents."""
        code = {name: i for i, name in enumerate(self.datasets)}
        self._ds = np.array([code[n] for n in ds.to_list()], dtype=np.int64)
        self._ds_docs = np.bincount(self._ds, minlength=len(self.datasets))

    @property
    def n_docs(self) -> int:
        return len(self._doc_ids)

    def overview(self) -> pl.DataFrame:
        """One row per latent of the SAE: (latent, label, label_source, weak, score, n_fires,
        freq, lift, more_in). ``n_fires``/``freq``: documents of the scope where it fires and
        their share; ``lift``: how many times as often it fires in the dataset ``more_in``
        (where that ratio is largest) as in the other datasets' documents, each share
        counted with one more firing and one more non-firing document than seen (so a
        latent seen in one dataset alone has a finite lift); both null with one dataset."""
        X = self._X.tocoo()
        fired = X.data != 0
        k = len(self.datasets)
        counts = np.bincount(self._ds[X.row[fired]] * self.d_sae + X.col[fired],
                             minlength=k * self.d_sae).reshape(k, self.d_sae)
        n_fires = counts.sum(axis=0)
        lift: list | np.ndarray = [None] * self.d_sae
        more_in: list = [None] * self.d_sae
        if k > 1:
            n_in = self._ds_docs[:, None]
            inside = (counts + 1) / (n_in + 2)
            outside = (n_fires[None, :] - counts + 1) / (self.n_docs - n_in + 2)
            ratio = inside / outside
            best = np.argmax(ratio, axis=0)
            lift = ratio[best, np.arange(self.d_sae)]
            more_in = [self.datasets[i] for i in best]
        frame = pl.DataFrame({"latent": np.arange(self.d_sae, dtype=np.int32), "n_fires": n_fires.astype(np.int64),
                              "freq": n_fires / max(self.n_docs, 1),
                              "lift": pl.Series(lift, dtype=pl.Float64), "more_in": pl.Series(more_in, dtype=pl.String)})
        scores = self.scores.select("latent", "score")
        return (frame.join(self.labels.select("latent", "label", "label_source", "weak"), on="latent", how="left")
                .join(scores, on="latent", how="left")
                .with_columns(pl.col("weak").fill_null(False))
                .select("latent", "label", "label_source", "weak", "score", "n_fires", "freq", "lift", "more_in"))

    def page(self, latent: int) -> LatentPage:
        """The page of one latent."""
        return next(self.pages([latent]))

    def pages(self, latents: Iterable[int], batch: int = 256) -> Iterator[LatentPage]:
        """The pages of ``latents``, in their order; their evidence read ``batch`` latents per query."""
        latents = [int(i) for i in latents]
        for i in latents:
            if not 0 <= i < self.d_sae:
                raise NotFoundError(f"SAE {self.scope.sae_id} has no latent {i} (it has 0..{self.d_sae - 1})")
        for start in range(0, len(latents), batch):
            picked = [(i, *self._picks(i)) for i in latents[start:start + batch]]
            lats = [i for i, top, samples in picked for _ in range(len(top) + len(samples))]
            wanted = [int(d) for _i, top, samples in picked for d in self._doc_ids[np.concatenate([top, samples])]]
            evidence = self.store.macro("latent_evidence", self.scope.sae_id, lats, wanted)
            spans = (self.store.macro("latent_spans", self.scope.sae_id, lats, wanted)
                     .group_by("latent", "doc_id", maintain_order=True)
                     .agg(spans=pl.concat_list("char_start", "char_end")))
            evidence = evidence.join(spans, on=["latent", "doc_id"], how="left", maintain_order="left")
            at = evidence["latent"].to_numpy()
            for i, top, samples in picked:
                lo, hi = np.searchsorted(at, i, side="left"), np.searchsorted(at, i, side="right")
                yield self._page(i, top, samples, evidence[int(lo):int(hi)])

    def _values(self, latent: int) -> np.ndarray:
        """(n_docs,) the latent's pooled value in each document (0 where it does not fire)."""
        lo, hi = self._X.indptr[latent], self._X.indptr[latent + 1]
        values = np.zeros(self.n_docs, dtype=self._X.dtype)
        values[self._X.indices[lo:hi]] = self._X.data[lo:hi]
        return values

    def _picks(self, latent: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows of the latent's strongest documents, rows of the documents sampled across
        its range of values, weakest first)."""
        values = self._values(latent)
        fired = np.flatnonzero(values)  # active at threshold 0, as LatentMatrix.active reads it
        order = fired[np.lexsort((self._doc_ids[fired], -np.abs(values[fired])))]
        top_rows = order[:self.top]
        picks = order[::-1]  # weakest first
        n = self.n_samples
        sample_rows = np.unique(picks[np.minimum(((np.arange(n) + 0.5) / max(n, 1) * picks.size).astype(int),
                                                 picks.size - 1)]) if picks.size and n else []
        sample_rows = sorted(sample_rows, key=lambda i: (abs(values[i]), self._doc_ids[int(i)]))
        return top_rows, np.asarray(sample_rows, dtype=np.int64)

    def _page(self, latent: int, top_rows: np.ndarray, sample_rows: np.ndarray, evidence: pl.DataFrame) -> LatentPage:
        """The page of ``latent`` from its picked documents and their evidence (doc_id, peak, at_word)."""
        values = self._values(latent)
        fired = np.flatnonzero(values)
        lo, hi = self._present.indptr[latent], self._present.indptr[latent + 1]
        here = self._present.indices[lo:hi]
        k = len(self.datasets)
        n_fires = np.bincount(self._ds[fired], minlength=k)
        n_present = np.bincount(self._ds[here], minlength=k)
        datasets = pl.DataFrame({"dataset": list(self.datasets), "n_docs": self._ds_docs, "n_fires": n_fires,
                                 "freq": n_fires / self._ds_docs, "n_present": n_present,
                                 "present_freq": n_present / self._ds_docs},
                                schema={"dataset": pl.String, "n_docs": pl.Int64, "n_fires": pl.Int64,
                                        "freq": pl.Float64, "n_present": pl.Int64, "present_freq": pl.Float64})
        quantiles = pl.DataFrame({"quantile": list(QUANTILES),
                                  "value": [float(np.quantile(values[fired], q)) if fired.size else None
                                            for q in QUANTILES]}, schema={"quantile": pl.Float64, "value": pl.Float64})
        top_df = _rows(self._texts, evidence, top_rows, values).with_row_index("rank", offset=1)
        samples_df = _rows(self._texts, evidence, sample_rows, values)
        if samples_df.height:
            rank = np.searchsorted(np.sort(np.abs(values[fired])), np.abs(samples_df["value"].to_numpy()), side="right")
            samples_df = samples_df.with_columns(quantile=pl.Series(rank / fired.size)).select("quantile", *_DOCS)
        else:
            samples_df = pl.DataFrame(schema={"quantile": pl.Float64, **_DOCS})
        cooccurs = self._cooccurs(latent, here)
        scored = self._score.get(latent, {})
        scores = {k: scored.get(k) for k in ("score", "detect_precision", "detect_recall", "llm_detection",
                                             "llm_fuzzing")}
        label, source, weak = self._label.get(latent, (None, None, False))
        return LatentPage(self.scope.sae_id, int(latent), label, source, bool(weak), scores, datasets, quantiles, top_df,
                          samples_df, cooccurs, self.n_docs, self.scope.names)

    def _cooccurs(self, latent: int, here: np.ndarray) -> pl.DataFrame:
        """The ``n_cooccur`` latents with the highest NPMI with ``latent`` (present in the
        documents at rows ``here``) over the presence matrix."""
        schema = {"latent": pl.Int32, "label": pl.String, "n_both": pl.Int64, "n_other": pl.Int64, "npmi": pl.Float64}
        n_i = len(here)
        if self.n_cooccur == 0 or n_i == 0:
            return pl.DataFrame(schema=schema)
        both = np.asarray(self._P[here].sum(axis=0)).ravel()
        n_j = self._n_present
        cand = np.flatnonzero(both >= self.min_support)
        cand = cand[cand != latent]
        npmi = npmi_from_counts(both[cand], np.full(cand.size, n_i), n_j[cand], self.n_docs)
        keep = np.lexsort((cand, -npmi))[:self.n_cooccur]
        shown = cand[keep]
        return pl.DataFrame({"latent": shown, "label": [self._label.get(int(j), (None,))[0] for j in shown],
                             "n_both": both[shown], "n_other": n_j[shown], "npmi": npmi[keep]},
                            schema=schema)  # type: ignore[arg-type]


def _rows(docs: pl.DataFrame, evidence: pl.DataFrame, rows: np.ndarray, values: np.ndarray) -> pl.DataFrame:
    """The documents at ``rows`` of ``docs`` (doc_id, dataset, ext_id, text) with the latent's
    value and evidence (doc_id, peak, at_word) there."""
    if len(rows) == 0:
        return pl.DataFrame(schema=_DOCS)
    picked = (docs[np.asarray(rows, dtype=np.int64)].select("doc_id", "dataset", "ext_id", "text")
              .with_columns(value=pl.Series(values[rows].astype(np.float64))))
    out = picked.join(evidence, on="doc_id", how="left", maintain_order="left").with_columns(
        pl.col("spans").fill_null([]).cast(_DOCS["spans"]))
    snippets = [peak_snippet(t, p, spans=s) for t, p, s in zip(out["text"].to_list(), out["peak"].to_list(),
                                                                out["spans"].to_list(), strict=True)]
    return out.with_columns(snippet=pl.Series(snippets, dtype=pl.String)).select(*_DOCS).cast(_DOCS)  # type: ignore[arg-type]
