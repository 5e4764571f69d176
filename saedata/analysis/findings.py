"""Findings: the significant latents of a diff, grouped by the documents that explain them.

One strong difference makes many latents significant. When B holds documents in a
second language, hundreds of latents of that language are more common in B and the
English function words less common, and a ranked table of latents is thirty rows of that
one difference while a weaker one (B also has more on one theme) starts far below. A
*finding* is one difference:

- its **lead** is the most significant latent (in the diff's order) that no earlier
  finding explains; its **documents** are those of the sample where the lead is present;
- a later latent is **explained** by a finding when, comparing only documents alike with
  respect to it (in its documents, and outside them: a Mantel-Haenszel difference over
  those two strata), less than half of the latent's difference between the sides is
  left: ``1 - d_within / d >= EXPLAINED``. It is then a **member** of the finding that
  explains the most of it; a latent more common on the other side than the lead (English
  words missing from the second-language documents) joins as a member too, marked
  ``fewer`` (the finding's documents lack it).

A single latent marks its difference's documents imperfectly (a "German" latent also
fires on a few English documents), so after a pass over the latents each finding's
documents are **refined** from its members: those of its lead's documents where at least
c of them are present, c chosen where the two sides differ most significantly. The latents are then assigned once
more against the refined documents: the second-language documents are then exactly
those, and the polysemantic latents that fire there and elsewhere join the finding
instead of leading their own.

Removing a finding's documents is not the test: a broad lead ("the", present in most
English documents) would then "explain" every English theme. Stratifying by the lead
asks the right question, "among documents that do (or do not) have the lead, is the
latent still different?", the explain-away the analyst does by hand.

Findings keep the diff's order (their leads' ranks) and are described by their members'
labels: the first readable (not weak, :func:`saedata.analysis.words.weak_label`) label of
a member on the lead's side, then new words from the next members.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
from scipy import sparse

from saedata.analysis.stats import cmh_test
from saedata.analysis.words import label_words, weak_label

EXPLAINED = 0.5
"""A latent whose difference is at least this much explained by a finding's documents joins it."""
CANDIDATES = 200
"""Significant latents (per group and side, in rank order) that can lead or join a finding."""
EXTRA_WORDS = 4
"""Words from later members added to a finding's description."""


@dataclass(frozen=True)
class Sides:
    """Which sample groups (``grp`` of the diff's sample) are side a and side b of one
    comparison, and how many sample documents each side has."""

    a: frozenset
    b: frozenset
    n_a: int
    n_b: int


def group_findings(rows: pl.DataFrame, sample: pl.DataFrame, sides: Sides, effect: str,
                   labels: dict[int, str | None], weak: frozenset[int],
                   low: frozenset[int] = frozenset()) -> tuple[pl.DataFrame, dict[int, np.ndarray]]:
    """The findings of one comparison.

    ``rows``: the comparison's significant latents in rank order (latent, ``effect`` > 0
    when more common in b, merged); ``sample``: (doc_id, grp, latent) where those latents
    are present in the sample; ``labels``: latent -> label; ``weak``: latents whose labels
    are weak.

    Returns the findings (finding, lead, side ("a"/"b"), share_a and share_b (fractions
    of each side's sample documents that are the finding's), latents, fewer,
    description, weak) and, per finding, its documents on its side (where its examples
    come from).
    """
    rows = rows.filter(pl.col("latent").is_in(sample["latent"].unique().implode()))
    empty = pl.DataFrame(schema={"finding": pl.Int32, "lead": pl.Int32, "side": pl.String, "share_a": pl.Float64,
                                 "share_b": pl.Float64, "latents": pl.List(pl.Int32), "fewer": pl.List(pl.Int32),
                                 "description": pl.String, "weak": pl.Boolean})
    if rows.height == 0:
        return empty, {}
    lat = np.sort(rows["latent"].to_numpy())
    sample = sample.filter(pl.col("grp").is_in(list(sides.a | sides.b)) & pl.col("latent").is_in(lat.tolist()))
    docs, d_idx = np.unique(sample["doc_id"].to_numpy(), return_inverse=True)
    # (latents, docs) presence; in_b: which of the documents are side b's
    P = sparse.csr_matrix((np.ones(sample.height), (np.searchsorted(lat, sample["latent"].to_numpy()), d_idx)),
                          shape=(len(lat), len(docs)))
    P.data[:] = 1.0  # a (doc, latent) listed twice counts once
    grp_of = dict(zip(sample["doc_id"].to_list(), sample["grp"].to_list()))
    in_b = np.fromiter((grp_of[d] in sides.b for d in docs.tolist()), dtype=bool, count=len(docs))
    x_b = np.asarray(P @ in_b.astype(float)).ravel()
    x_a = np.asarray(P.sum(1)).ravel() - x_b
    n_a, n_b = float(sides.n_a), float(sides.n_b)
    d_all = x_b / n_b - x_a / n_a  # b - a, on the sample

    # first pass: each finding's documents are its lead's; second: refined from the
    # first pass's members (refining again from the second pass's members, which include
    # latents that fire on its documents and elsewhere, would blur them)
    first = _assign(rows, effect, P, in_b, d_all, x_a, x_b, n_a, n_b, lat, {})
    found = _assign(rows, effect, P, in_b, d_all, x_a, x_b, n_a, n_b, lat,
                    {f.lead: _core(f, P, in_b, n_a, n_b, lat) for f in first})
    if not found:
        return empty, {}
    described = [_describe([m for m, fewer in f.members if not fewer], labels, weak, low) for f in found]
    findings = pl.DataFrame({
        "finding": list(range(1, len(found) + 1)),
        "lead": [f.lead for f in found],
        "side": ["b" if f.sign > 0 else "a" for f in found],
        "share_a": [float((f.mask & ~in_b).sum()) / n_a for f in found],
        "share_b": [float((f.mask & in_b).sum()) / n_b for f in found],
        "latents": [[m for m, fewer in f.members if not fewer] for f in found],
        "fewer": [[m for m, fewer in f.members if fewer] for f in found],
        "description": [text for text, _ in described],
        "weak": [w for _, w in described],
    }, schema=empty.schema)
    return findings, {k + 1: docs[f.mask & (in_b if f.sign > 0 else ~in_b)] for k, f in enumerate(found)}


@dataclass
class _Finding:
    lead: int
    sign: float
    """+1: more common in b; -1: in a."""
    mask: np.ndarray
    """bool per sample document: the finding's documents."""
    members: list[tuple[int, bool]] = field(default_factory=list)
    """(latent, fewer) in rank order, the lead first."""


def _assign(rows: pl.DataFrame, effect: str, P: sparse.csr_matrix, in_b: np.ndarray, d_all: np.ndarray,
            x_a: np.ndarray, x_b: np.ndarray, n_a: float, n_b: float, lat: np.ndarray,
            masks: dict[int, np.ndarray]) -> list[_Finding]:
    """One pass over the latents in rank order: each joins the finding that explains most
    of its difference (at least EXPLAINED), or leads a new one, whose documents are
    ``masks[lead]`` when given, else those where the lead is present."""
    found: list[_Finding] = []
    # per finding: each latent's documents among the finding's documents of a and of b,
    # and how many documents of a and of b are the finding's
    xa_in = np.zeros((rows.height, len(lat)))
    xb_in = np.zeros((rows.height, len(lat)))
    na_in = np.zeros(rows.height)
    nb_in = np.zeros(rows.height)
    for latent, eff, merged in zip(rows["latent"].to_list(), rows[effect].fill_nan(0.0).to_list(),
                                   rows["merged"].to_list()):
        i = int(np.searchsorted(lat, latent))
        d = d_all[i]
        if d == 0 or np.sign(d) != np.sign(eff):
            continue  # the sample does not show the difference: nothing to explain with
        f = len(found)
        if f:
            # two strata per finding: inside its documents and outside
            within = cmh_test(np.column_stack([xa_in[:f, i], x_a[i] - xa_in[:f, i]]),
                              np.column_stack([na_in[:f], n_a - na_in[:f]]),
                              np.column_stack([xb_in[:f, i], x_b[i] - xb_in[:f, i]]),
                              np.column_stack([nb_in[:f], n_b - nb_in[:f]])).diff
            explained = 1.0 - np.nan_to_num(within, nan=0.0) / d
            best = int(np.argmax(explained))
            if explained[best] >= EXPLAINED:
                fewer = bool(np.sign(d) != found[best].sign)
                found[best].members += [(latent, fewer)] + [(m, fewer) for m in merged]
                continue
        mask = masks.get(latent)
        if mask is None:
            mask = P[i].toarray().ravel() > 0
        xb_in[f] = np.asarray(P @ (mask & in_b).astype(float)).ravel()
        xa_in[f] = np.asarray(P @ (mask & ~in_b).astype(float)).ravel()
        na_in[f], nb_in[f] = float((mask & ~in_b).sum()), float((mask & in_b).sum())
        found.append(_Finding(latent, float(np.sign(d)), mask, [(latent, False)] + [(m, False) for m in merged]))
    return found


def _core(f: _Finding, P: sparse.csr_matrix, in_b: np.ndarray, n_a: float, n_b: float,
          lat: np.ndarray) -> np.ndarray:
    """A finding's documents refined from its members: those of its lead's documents where
    at least c of the latents more common with it are present, c chosen where the
    two-proportion z of "is one of them" between the sides is largest (in the finding's
    direction): purer than the lead's documents, never wider. A finding of one latent
    keeps its lead's documents."""
    # members that are columns of P (merged near-duplicates are not: they are in no row)
    wanted = [m for m, fewer in f.members if not fewer]
    pos = [i for m, i in zip(wanted, np.searchsorted(lat, wanted).tolist()) if i < len(lat) and lat[i] == m]
    if len(pos) < 2:
        return f.mask
    score = np.where(f.mask, np.asarray(P[pos].sum(0)).ravel(), 0).astype(np.int64)
    top = int(score.max())
    # documents of b and of a with at least c of the members, c = 0..top
    at_least_b = np.cumsum(np.bincount(score[in_b], minlength=top + 1)[::-1])[::-1][1:]
    at_least_a = np.cumsum(np.bincount(score[~in_b], minlength=top + 1)[::-1])[::-1][1:]
    share = (at_least_a + at_least_b) / (n_a + n_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = f.sign * (at_least_b / n_b - at_least_a / n_a) / np.sqrt(share * (1 - share) * (1 / n_a + 1 / n_b))
    c = 1 + int(np.argmax(np.nan_to_num(z, nan=-np.inf)))
    return score >= c


def _describe(latents: list[int], labels: dict[int, str | None], weak: frozenset[int],
              low: frozenset[int] = frozenset()) -> tuple[str, bool]:
    """A finding's description from its members' labels (in rank order, those scored
    below ``LOW_SCORE`` -- ``low`` -- after the rest): the first readable label, then up
    to EXTRA_WORDS new terms of the next readable labels; and whether every label was weak."""
    ordered = [x for x in latents if x not in low] + [x for x in latents if x in low]
    readable = [labels[x] for x in ordered if labels.get(x) and x not in weak]
    if not readable:
        first = next((labels[x] for x in latents if labels.get(x)), None)
        return (first or f"latent {latents[0]}"), True
    head = readable[0]
    seen = label_words(head)
    extra: list[str] = []
    for label in readable[1:]:
        for term in (t.strip() for t in label.split("/")):
            words = label_words(term)
            if words and not words <= seen and not weak_label(term) and len(extra) < EXTRA_WORDS:
                extra.append(term)
                seen |= words
    return head + (f" (also: {', '.join(extra)})" if extra else ""), False
