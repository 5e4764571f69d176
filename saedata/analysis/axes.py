"""Pick the latents that belong to an axis the user names ("sentiment", "pets", a regex ...).

Three ways to name latents, combined as a union (each row says why it was picked):

1. ``latents``: explicit latent ids, taken as given.
2. ``label_pattern``: a regular expression searched in each latent's label.
3. ``axis``: free text. A latent is picked when
   a. *lexically*: a word of its label equals a content word of the axis or that word's
      plural/singular form ("pets" -> pet, pets; "stories" -> story:
      :mod:`saedata.analysis.words`), or
   b. *semantically*: its label, embedded by ``embed_texts`` (the API passes the
      default reader, all-MiniLM-L6-v2, its last layer's token activations mean-pooled:
      :func:`saedata.embed.models.text_vectors`), has cosine similarity to the
      embedded axis text of at least ``min_score`` *and* at least ``min_z`` standard
      deviations above the mean similarity of all candidate labels (so an axis that is
      loosely similar to everything picks nothing), *and* what the latent fires on
      agrees: the text around its peak in its ``CONTEXT_DOCS`` strongest documents,
      embedded the same way, is more similar to the axis than text in general (the
      start of ``CONTEXT_DOCS x 8`` documents) by at least ``CONTEXT_MARGIN`` and by at
      least ``CONTEXT_SHARE`` of the margin of the candidate whose peaks are most like
      the axis. The string "sentiment" never occurs in a label like "hated / miserable
      / was terrible", but the embeddings place them close, which is what (b) is for;
      the activation evidence drops latents whose label happens to hold an axis-like
      word but which fire on something else (on Debian, "game / version / strategy"
      for "games": its peaks are 0.08 similar to "games", text in general 0.02, "game"
      itself 0.50; on the demo, "happy / photographed / miserable" for "sentiment":
      0.06, text in general 0.07).
      Semantic matching needs a word the reader knows: an axis whose every content
      word ``word_pieces`` splits into fragments (under ``MIN_PIECE_CHARS`` characters
      a piece, or a first piece of one letter: "xyzzyqq" is x, ##y, ##zzy, ##q, ##q)
      has no meaning to embed, only letters, and is matched lexically alone. Without
      ``embed_texts`` only (a) runs.
   Candidates for the axis are latents active in at least ``min_freq`` of the
   documents, with a label that is not weak (``frequent-words`` labels, punctuation
   and function words such as "." or "the" describe no content). Lexical matches come
   first, then the most similar labels; at most ``top`` latents in all. An axis given
   as example values, "love, politics, computers", is matched value by value (each
   gets its share of ``top``), so every value is represented. A weak match -- no
   label word in common and no label similar enough -- is an error that lists the
   nearest labels with their similarity, never a silent pick. Everything runs offline.

``select_latents`` returns a polars frame (latent, label, freq, score, why) and raises
:class:`~saedata.errors.NotFoundError` naming the axis or pattern when nothing matches.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

from saedata.analysis.scope import latent_labels
from saedata.analysis.words import content_words, matching_forms, words
from saedata.errors import ConfigError, NotFoundError
from saedata.store import Store, label_matches

SELECTED_SCHEMA = {"latent": pl.Int32, "label": pl.String, "freq": pl.Float64, "score": pl.Float64,
                   "why": pl.String}

LEXICAL_MATCH = "label word matches"
"""How ``why`` begins for a latent picked because a word of its label is a word of the axis."""

TextVectors = Callable[[list[str]], np.ndarray]
"""texts -> (n_texts, d) unit vectors: how axis texts and labels are embedded."""

WordPieces = Callable[[str], list[str]]
"""text -> the word pieces the reader of ``TextVectors`` splits it into."""

CONTEXT_DOCS = 8
"""Strongest documents of a latent whose text around its peak is compared with the axis."""

CONTEXT_WIDTH = 120
"""Characters around the peak read from each of them."""

CONTEXT_MARGIN = 0.05
"""How much more similar to the axis than text in general a latent's peaks must be, at least."""

CONTEXT_SHARE = 1 / 3
"""... and at least this share of the margin of the candidate whose peaks are most like the axis."""

MIN_PIECE_CHARS = 2.5
"""Characters per word piece below which the reader does not know a word (fragments)."""


def select_latents(
    store: Store,
    sae_id: int,
    axis: str | None = None,
    latents: list[int] | None = None,
    label_pattern: str | None = None,
    top: int = 20,
    min_freq: float = 0.01,
    min_score: float = 0.3,
    min_z: float = 3.0,
    embed_texts: TextVectors | None = None,
    word_pieces: WordPieces | None = None,
) -> pl.DataFrame:
    """The latents named by ``latents``, ``label_pattern`` and/or ``axis`` (see the module doc).

    Returns (latent, label, freq, score, why), one row per latent: ``score`` is the
    cosine similarity of the label to the axis (null for explicit and pattern picks),
    ``why`` the reason it was picked. ``top`` caps the axis picks; ``min_freq`` applies
    to pattern and axis picks.
    """
    if axis is None and latents is None and label_pattern is None:
        raise ConfigError("name the latents to use: an axis, a label pattern or a list of latents")
    if top < 1:
        raise ConfigError(f"top must be at least 1, got {top}")
    table = latent_labels(store, sae_id).with_columns(pl.col("freq").fill_null(0.0))
    parts: list[pl.DataFrame] = []
    if latents is not None:
        parts.append(_explicit(table, sae_id, latents))
    if label_pattern is not None:
        parts.append(_by_pattern(table, label_pattern, min_freq))
    if axis is not None:
        values = [v.strip() for v in axis.split(",") if v.strip()] if "," in axis else [axis]
        share = max(1, top // max(len(values), 1))
        for value in values:
            parts.append(_by_axis(store, sae_id, table, value, share if len(values) > 1 else top, min_freq,
                                  min_score, min_z, embed_texts, word_pieces))
    picked = pl.concat(parts, how="vertical_relaxed")
    return (
        picked.group_by("latent", maintain_order=True)
        .agg(pl.col("label").first(), pl.col("freq").first(), pl.col("score").max(),
             pl.col("why").str.join("; "))
        .cast(SELECTED_SCHEMA)  # type: ignore[arg-type]
    )


def _explicit(table: pl.DataFrame, sae_id: int, latents: list[int]) -> pl.DataFrame:
    known = set(table["latent"].to_list())
    missing = [i for i in latents if i not in known]
    if missing:
        raise NotFoundError(
            f"SAE {sae_id} has no latent {', '.join(map(str, missing[:5]))} (latents are 0..{len(known) - 1})"
        )
    if not latents:
        raise ConfigError("the list of latents is empty")
    wanted = pl.DataFrame({"latent": list(dict.fromkeys(latents))}, schema={"latent": pl.Int32})
    return wanted.join(table, on="latent", how="left").select(
        "latent", "label", "freq", pl.lit(None, pl.Float64).alias("score"), pl.lit("listed").alias("why")
    )


def _by_pattern(table: pl.DataFrame, pattern: str, min_freq: float) -> pl.DataFrame:
    hit = label_matches(table, pattern)
    out = table.filter(hit & (pl.col("freq") >= min_freq))
    if out.height == 0:
        n_any = int(hit.sum())
        extra = f" ({n_any} match but fire in under {min_freq:.0%} of documents)" if n_any else ""
        raise NotFoundError(f"no latent label matches --label {pattern!r}{extra}")
    return out.select("latent", "label", "freq", pl.lit(None, pl.Float64).alias("score"),
                      pl.lit(f"label matches {pattern!r}").alias("why"))


def _by_axis(store: Store, sae_id: int, table: pl.DataFrame, axis: str, top: int, min_freq: float,
             min_score: float, min_z: float, embed_texts: TextVectors | None,
             word_pieces: WordPieces | None) -> pl.DataFrame:
    if not axis.strip():
        raise ConfigError("--axis is empty; describe the axis in a few words, e.g. --axis sentiment")
    cands = table.filter((pl.col("freq") >= min_freq) & pl.col("label").is_not_null() & ~pl.col("weak"))
    if cands.height == 0:
        raise NotFoundError(
            f"no latent matches --axis {axis!r}: no latent has a keyword label and fires in {min_freq:.0%} of "
            "documents; run `saedata label` first"
        )
    labels = cands["label"].to_list()
    forms = matching_forms(axis)
    lexical = np.array([bool(forms & set(words(lab))) for lab in labels])
    fragments = _fragments(axis, word_pieces)
    sims, context = np.zeros(len(labels)), np.full(len(labels), np.nan)
    if embed_texts is not None and not fragments:
        vecs = embed_texts([axis, *labels])
        sims = vecs[1:] @ vecs[0]
    z = (sims - sims.mean()) / (sims.std() + 1e-12)
    semantic = (sims >= min_score) & (z >= min_z) & ~lexical
    if semantic.any():
        assert embed_texts is not None
        ids = cands["latent"].to_numpy()
        tried = np.flatnonzero(semantic)[np.argsort(-sims[semantic])][: 3 * top]  # the most similar labels
        context[tried], general = _context_similarity(store, sae_id, ids[tried], axis, embed_texts)
        gain = context - general
        semantic &= gain >= max(CONTEXT_MARGIN, CONTEXT_SHARE * float(np.nanmax(gain)))  # nan (not tried): False
    order = np.lexsort((-sims, ~lexical))  # lexical matches first, then by similarity
    keep = [i for i in order if lexical[i] or semantic[i]][:top]
    if not keep:
        if fragments:
            nearest = (f"none: the reader knows no word of it (it reads {', '.join(fragments)}), "
                       "so only a label holding its very word could match")
        elif embed_texts is None:
            nearest = "none (no label embedding)"
        else:
            nearest = "; ".join(
                f"{cands['latent'][int(i)]} {labels[int(i)]!r} (cos {sims[int(i)]:.2f}"
                + (f", its peaks {context[int(i)]:.2f}" if np.isfinite(context[int(i)]) else "") + ")"
                for i in np.argsort(-sims)[:5])
        raise NotFoundError(
            f"no latent matches --axis {axis!r}: no label shares a word with it, and none is similar enough "
            f"(cos >= {min_score} and {min_z:g} standard deviations above the average label, with peaks on text "
            f"like it); nearest: {nearest}; "
            "try other words, example values (\"love, politics, computers\"), --label REGEX or --latents"
        )
    why = [
        f"{LEXICAL_MATCH} {axis!r}" if lexical[i]
        else f"label similar to {axis!r} (cos {sims[i]:.2f}; its peaks {context[i]:.2f})"
        for i in keep
    ]
    return cands[keep].select("latent", "label", "freq").with_columns(
        pl.Series("score", sims[keep].astype(np.float64)), pl.Series("why", why)
    )


def _fragments(axis: str, word_pieces: WordPieces | None) -> list[str]:
    """The reader's pieces of ``axis`` when it knows none of its content words (each
    splits into fragments), else []."""
    if word_pieces is None:
        return []
    pieces_of = {w: word_pieces(w) for w in content_words(axis) or words(axis)}
    if not pieces_of:
        return []
    known = [w for w, p in pieces_of.items()
             if len(p) == 1 or (len(w) / max(len(p), 1) >= MIN_PIECE_CHARS and len(p[0].lstrip("#")) > 1)]
    return [] if known else [p for ps in pieces_of.values() for p in ps]


def _context_similarity(store: Store, sae_id: int, latents: np.ndarray, axis: str,
                        embed_texts: TextVectors) -> tuple[np.ndarray, float]:
    """(len(latents),) cosine similarity of the axis to the mean embedding of each latent's
    peak windows (nan for a latent without any), and the axis's mean similarity to text
    in general."""
    peaks = store.macro("peak_windows", int(sae_id), [int(x) for x in latents], n=CONTEXT_DOCS,
                        width=CONTEXT_WIDTH)
    general = store.macro("text_windows", n=CONTEXT_DOCS * 8, width=CONTEXT_WIDTH)["snippet"].to_list()
    texts = peaks["snippet"].to_list()
    vecs = embed_texts([axis, *texts, *general])
    axis_vec, peak_vecs, general_vecs = vecs[0], vecs[1 : 1 + len(texts)], vecs[1 + len(texts):]
    out = np.full(len(latents), np.nan)
    owner = peaks["latent"].to_numpy()
    for k, lat in enumerate(latents):
        mine = peak_vecs[owner == lat]
        if len(mine):
            centre = mine.mean(axis=0)
            out[k] = float(centre @ axis_vec / (np.linalg.norm(centre) + 1e-12))
    return out, float((general_vecs @ axis_vec).mean()) if len(general) else 0.0
