"""Length-robust concept presence and weights: the reading of document codes every analysis shares.

A latent max-pooled over tokens *fires* in a document when it fires on any one of its
tokens, so the longer the document, the more latents fire: on real text the count of
firing latents tracks length, and an analysis that reads firing as "the document is
about this" partly measures length. Each stored activation also counts the tokens the
latent fired on (``tokens``); the two readings here are made from it:

- **presence** (``"excess"``, the default everywhere): a concept is present in a
  document when it fires on more of the document's tokens than its average rate
  predicts for a document of that length: ``tokens > n * rate``, where ``rate`` is the
  fraction of all the analysed documents' tokens it fires on and n the document's
  length class (``length_floor``: exact below 32 tokens, rounded down by less than 1/16
  above). A rare latent (n * rate < 1) is present wherever it fires; a common one only
  where it fires more than its share, so a latent that fires once somewhere in a long
  document no longer counts. ``"any"`` is the plain reading: |pooled value| > threshold.
- **weights** for clustering (:func:`tfidf`): ``log(1 + tokens) * idf`` (idf over the
  documents analysed), each document's vector scaled to unit length: tf-idf with
  concepts as terms.

Measured (benchmarks/bench_real.py), 4,607 Debian package descriptions in 25 sections,
MiniLM and an SAE of 3,072 latents trained on them: presence cut the median latents per
document from 791 to 663 (shortest quarter 539 -> 502, longest 1,257 -> 753; Spearman
with length 0.97 -> 0.84) and lifted the best single latent's AUROC for a section from
0.806 to 0.851 (mean of 25). On the planted demo corpora: 0.885 -> 0.907 (questions,
pets, science). A stricter binomial test (p <= 0.01) kept only 139 latents per document
but lost concepts that mark a document with one token (a question mark: AUROC 0.80 ->
0.58), so it is not the rule.

The same rule in SQL: ``latent_rates`` and ``present_in`` (queries/latents.sql).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl
from scipy import sparse

from saedata.errors import ConfigError
from saedata.store import Store, length_floor

Presence = Literal["excess", "any"]
PRESENCE: tuple[str, ...] = ("excess", "any")


def check_presence(presence: str) -> None:
    if presence not in PRESENCE:
        raise ConfigError(f"presence must be one of {', '.join(PRESENCE)}, got {presence!r}")


def no_token_counts_warning(what: str) -> str:
    return (f"{what} was embedded before saedata counted the tokens each concept fires on, so presence "
            "falls back to 'fires anywhere' (it grows with document length); re-embed it with "
            "`saedata embed --replace` for length-robust presence")


def token_rates(counts: pl.DataFrame, total_tokens: int, d_sae: int) -> np.ndarray:
    """(d_sae,) float64: the fraction of ``total_tokens`` each latent fires on, from rows
    (latent, tokens, n_active): n_active documents where it fired on ``tokens`` tokens."""
    fired = np.zeros(d_sae, dtype=np.float64)
    np.add.at(fired, counts["latent"].to_numpy(),
              counts["tokens"].to_numpy().astype(np.float64) * counts["n_active"].to_numpy())
    return fired / max(int(total_tokens), 1)


def scope_rates(store: Store, sae_id: int, dataset_ids: list[int], d_sae: int) -> np.ndarray:
    """The token rates of SAE ``sae_id``'s latents over the documents of ``dataset_ids``."""
    counts = store.macro("token_counts", sae_id, dataset_ids)
    return token_rates(counts, store.total_tokens(dataset_ids), d_sae)


def is_present(tokens: np.ndarray, n_tokens: np.ndarray, latents: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """bool per row: did latent ``latents`` fire on more of its document's tokens
    (``tokens`` of ``n_tokens``) than ``rates`` predicts, ``tokens > length_floor(n) *
    rate``? Rows with NULL tokens (-1) count as present (a store from before token
    counts: the caller warns)."""
    tokens = np.asarray(tokens)
    expected = length_floor(np.asarray(n_tokens)) * np.asarray(rates)[np.asarray(latents, dtype=np.int64)]
    return (tokens < 0) | (tokens > expected)


def tfidf(tokens: sparse.csr_matrix) -> sparse.csr_matrix:
    """(n_docs, d_sae) float64 concept weights: log(1 + tokens) x idf, rows at unit length.

    ``tokens``: how many of each document's tokens each latent fired on. idf =
    log((n_docs + 1) / (docs where it fires + 1)), over these documents."""
    from sklearn.preprocessing import normalize

    T = tokens.astype(np.float64).tocsr(copy=True)
    T.data = np.log1p(np.maximum(T.data, 0))
    df = np.bincount(T.indices, minlength=T.shape[1])
    idf = np.log((T.shape[0] + 1) / (df + 1.0))
    T = T.multiply(idf[None, :]).tocsr()
    T.eliminate_zeros()
    return normalize(T)


LENGTH_WARNING = 0.3
"""Share of the variance of log length a grouping explains, or |Spearman| of a numeric
target with length, above which a result is said to track length."""
LENGTH_AUC = 0.8
"""AUROC of length alone for a binary target above which the target is said to track length
(0.8: conventionally good discrimination; on the demo corpora is_question measures 0.83,
topic=pets 0.75)."""


def length_explained(groups: np.ndarray, n_tokens: np.ndarray) -> float:
    """Share of the variance of log(1 + n_tokens) explained by ``groups`` (eta squared,
    noise label -1 left out): 0 when every group has the same lengths, 1 when the
    groups are length classes."""
    keep = np.asarray(groups) != -1
    g, x = np.asarray(groups)[keep], np.log1p(np.asarray(n_tokens, dtype=np.float64)[keep])
    total = float(((x - x.mean()) ** 2).sum()) if len(x) else 0.0
    if total == 0:
        return 0.0
    between = sum(float((g == c).sum()) * (float(x[g == c].mean()) - float(x.mean())) ** 2 for c in np.unique(g))
    return between / total


def length_tracking_warning(what: str, y: np.ndarray, n_tokens: np.ndarray, binary: bool) -> str | None:
    """A warning when target ``y`` tracks document length: length alone predicts a binary
    target with AUROC > ``LENGTH_AUC``, or a numeric one has |Spearman| > ``LENGTH_WARNING``."""
    from scipy import stats
    from sklearn.metrics import roc_auc_score

    n_tokens = np.asarray(n_tokens, dtype=np.float64)
    if np.ptp(n_tokens) == 0 or np.ptp(y) == 0:
        return None
    if binary:
        auc = float(roc_auc_score(y, n_tokens))
        auc = max(auc, 1 - auc)
        if auc > LENGTH_AUC:
            return (f"{what} tracks document length: length alone predicts it with AUROC {auc:.2f}; latents that "
                    "grow with length will look predictive")
        return None
    rho = float(stats.spearmanr(y, n_tokens)[0])
    if abs(rho) > LENGTH_WARNING:
        return (f"{what} tracks document length (Spearman {rho:.2f} with the token count); latents that grow "
                "with length will look related")
    return None

