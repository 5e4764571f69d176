"""Latent labels.

Offline contrastive keywords (the ``keyword_terms`` macro of ``queries/labels.sql``):
while documents are embedded, each stored activation
records where in the text the latent peaked (``activations.peak``, taken from the
per-token codes), and word document frequencies are counted. A latent's *evidence* is
the word at the peak in each of its strongest documents (and the word before it); its
label is the few words most over-represented in that evidence relative to their
document frequency in the whole corpus (e.g. "science / scientists / scientific").
Labels are recomputed from the store alone -- the reader never runs again -- so they
stay exact across resumed runs and appended datasets. Image documents have no text
position; their evidence is the words of their path (class folders such as ``cats/``).

An LLM labeller (any OpenAI-compatible chat endpoint) can replace the keywords where one
is configured: see :func:`llm_labels`.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections import Counter
from typing import TYPE_CHECKING

import polars as pl

from saedata.console import Log, silent
from saedata.errors import ConfigError, SaedataError

if TYPE_CHECKING:
    from saedata.store import Store

WORD_RE = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
"""A word: letters/digits (with inner apostrophes), or one punctuation character (the
words ``word_at`` finds in SQL, whose document frequencies labels contrast with)."""

KEYWORD_SOURCES = ("keywords", "frequent-words")
"""label_source of offline keyword labels (strong, and weak); relabelling replaces these only."""


def word_document_frequency(texts: list[str]) -> pl.DataFrame:
    """(word, df): in how many of ``texts`` each lower-cased word occurs."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update({m.group(0).lower() for m in WORD_RE.finditer(text)})
    return pl.DataFrame(
        {"word": list(counts.keys()), "df": list(counts.values())},
        schema={"word": pl.String, "df": pl.Int64},
    )


def keyword_labels(store: Store, sae_id: int, top_docs: int = 64, n_words: int = 3,
                   candidates: str = "activations") -> pl.DataFrame:
    """Contrastive keyword labels for every latent with evidence: (latent, label, label_source).

    A word's score is its share of the latent's evidence times the log ratio of that
    share to the word's document frequency in the corpus; the ``n_words`` best words
    make the label, each replaced by its most common two-word phrase when that phrase
    accounts for at least half of the word's occurrences and its first word is not a
    filler found in a tenth of the corpus (e.g. "york" -> "new york", never "the york").
    A latent whose evidence has no over-represented word (it fires on "the" or "." all
    over the corpus) gets its commonest evidence words, with label_source
    ``frequent-words`` to say the label is weak. ``candidates`` is the relation the
    strongest rows per latent are picked from: ``activations``, or in a shard folder
    ``label_candidates`` (every part's strongest rows, which hold the overall ones).
    """
    if candidates not in ("activations", "label_candidates"):
        raise ValueError(f"candidates must be activations or label_candidates, not {candidates!r}")
    rows = store.macro("keyword_terms", sae_id, top_docs=top_docs, n_words=n_words, src=candidates)
    if rows.height == 0:
        return pl.DataFrame(schema={"latent": pl.Int32, "label": pl.String, "label_source": pl.String})
    return (
        rows.group_by("latent", maintain_order=True)
        .agg(
            pl.col("term").unique(maintain_order=True).str.join(" / ").alias("label"),
            pl.col("contrastive").any().alias("contrastive"),
        )
        .with_columns(
            pl.when(pl.col("contrastive")).then(pl.lit("keywords")).otherwise(pl.lit("frequent-words"))
            .alias("label_source"),
            pl.col("latent").cast(pl.Int32),
        )
        .select("latent", "label", "label_source")
        .sort("latent")
    )


def label_latents(store: Store, sae_id: int, top_docs: int = 64, n_words: int = 3) -> int:
    """Compute keyword labels for an SAE and write them; returns how many latents got one."""
    labels = keyword_labels(store, sae_id, top_docs=top_docs, n_words=n_words)
    store.set_labels(sae_id, labels, replace=KEYWORD_SOURCES)
    return labels.height


def relabel(store: Store, sae_id: int | None = None, *, llm: bool = False, latents: list[int] | None = None,
            log: Log = silent) -> int:
    """Recompute the labels of SAE ``sae_id`` (the store's only one when None): keyword
    labels, or with ``llm`` LLM labels of ``latents`` (default: the 50 most frequent).
    Returns how many latents got a label."""
    sae_id = store.resolve_sae(sae_id)
    if not llm:
        n = label_latents(store, sae_id)
        log(f"labelled {n} latents with keywords")
        return n
    if latents is None:
        latents = (store.latents(sae_id).filter(pl.col("freq") > 0).sort("freq", descending=True, maintain_order=True)
                   .head(50)["latent"].to_list())
    labels = llm_labels(store, sae_id, latents)
    store.set_labels(sae_id, labels)
    log(f"labelled {labels.height} latents with {labels['label_source'][0] if labels.height else 'the LLM'}")
    return labels.height


# -- optional LLM labeller ------------------------------------------------------------

LLM_ENV = ("SAEDATA_LLM_BASE_URL", "SAEDATA_LLM_MODEL", "SAEDATA_LLM_API_KEY")


def llm_labels(
    store: Store,
    sae_id: int,
    latents: list[int],
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    n_examples: int = 8,
    timeout: float = 60.0,
) -> pl.DataFrame:
    """Label latents with an LLM through an OpenAI-compatible ``/chat/completions`` endpoint.

    The endpoint, model and key come from the arguments or from the environment
    variables SAEDATA_LLM_BASE_URL, SAEDATA_LLM_MODEL and SAEDATA_LLM_API_KEY. Each
    latent's prompt holds its top documents (trimmed) and its keyword label.
    Returns (latent, label, label_source='llm:<model>').
    """
    base_url = base_url or os.environ.get("SAEDATA_LLM_BASE_URL")
    model = model or os.environ.get("SAEDATA_LLM_MODEL")
    api_key = api_key or os.environ.get("SAEDATA_LLM_API_KEY", "")
    if not base_url or not model:
        raise ConfigError(
            "the LLM labeller needs an endpoint and a model: set SAEDATA_LLM_BASE_URL and "
            "SAEDATA_LLM_MODEL (any OpenAI-compatible server)"
        )
    out_latents, out_labels = [], []
    keywords = dict(store.latents(sae_id).select("latent", "label").iter_rows())
    for latent in latents:
        docs = store.macro("top_docs", sae_id, int(latent), n=n_examples)
        if docs.height == 0:
            continue
        kw = keywords.get(int(latent))
        examples = "\n".join(f"- {t[:300]!r}" for t in docs["text"].to_list())
        prompt = (
            "These documents most strongly activate one feature of a sparse autoencoder"
            + (f" (keywords: {kw})" if kw else "")
            + ":\n"
            + examples
            + "\nName the concept the feature detects in at most six words. Answer with the name only."
        )
        out_latents.append(int(latent))
        out_labels.append(_chat(base_url, model, api_key, prompt, timeout))
    return pl.DataFrame(
        {
            "latent": pl.Series(out_latents, dtype=pl.Int32),
            "label": pl.Series(out_labels, dtype=pl.String),
            "label_source": pl.Series([f"llm:{model}"] * len(out_latents), dtype=pl.String),
        }
    )


def _chat(base_url: str, model: str, api_key: str, prompt: str, timeout: float) -> str:
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0}
    ).encode()
    req = urllib.request.Request(
        base_url.rstrip("/") + "/chat/completions",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload = json.loads(resp.read())
        text = payload["choices"][0]["message"]["content"]
    except (urllib.error.URLError, OSError, KeyError, IndexError, json.JSONDecodeError) as e:
        raise SaedataError(f"LLM labeller at {base_url} failed: {e}") from e
    return " ".join(str(text).split()).strip(" .\"'")[:120]
