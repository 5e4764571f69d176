"""Latent labels.

Offline contrastive keywords: while documents are embedded, every latent's strongest
documents are kept as *evidence* -- the word at the token where the latent peaked in
that document, and the word before it. A latent's label is the few words most
over-represented in its evidence relative to their document frequency in the whole
corpus (e.g. "science / scientists / scientific"). Everything is computed from the
per-token codes of the embedding pass; the reader never runs again.

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

import numpy as np
import polars as pl

from saedata.errors import ConfigError, SaedataError

if TYPE_CHECKING:
    import torch

    from saedata.store import Store

WORD_RE = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
"""A word: letters/digits (with inner apostrophes), or one punctuation character."""


class DocWords:
    """The words of one document with their character spans, for mapping tokens to words."""

    __slots__ = ("words", "starts", "ends")

    def __init__(self, text: str):
        spans = [(m.start(), m.end()) for m in WORD_RE.finditer(text)]
        self.words = [text[s:e].lower() for s, e in spans]
        self.starts = np.fromiter((s for s, _ in spans), dtype=np.int64, count=len(spans))
        self.ends = np.fromiter((e for _, e in spans), dtype=np.int64, count=len(spans))

    def word_at(self, char: int) -> int:
        """Index of the word containing character ``char`` (or the nearest before it); -1 if none."""
        i = int(np.searchsorted(self.starts, char, side="right")) - 1
        return i


def word_document_frequency(docs: list[DocWords]) -> pl.DataFrame:
    """(word, df): in how many of ``docs`` each word occurs."""
    counts: Counter[str] = Counter()
    for d in docs:
        counts.update(set(d.words))
    return pl.DataFrame(
        {"word": list(counts.keys()), "df": list(counts.values())},
        schema={"word": pl.String, "df": pl.Int64},
    )


class EvidenceCollector:
    """Keeps the ``top_docs`` strongest (document, value) pairs per latent seen so far.

    ``collect`` takes one batch's pooled peaks and returns only the rows that enter some
    latent's running top list, so the evidence written per batch shrinks as the
    thresholds rise. ``load`` restores the running lists from the store (resume, append).
    """

    def __init__(self, d_sae: int, top_docs: int):
        self.d_sae = d_sae
        self.top_docs = top_docs
        self.best = np.full((d_sae, top_docs), -np.inf, dtype=np.float32)
        """(d_sae, top_docs) values of the current top documents, descending."""

    @property
    def threshold(self) -> np.ndarray:
        """(d_sae,) value a new document must beat to enter each latent's top list."""
        return self.best[:, -1]

    def load(self, store: Store, sae_id: int) -> None:
        rows = store.rows(
            "SELECT latent, list(value ORDER BY value DESC)[1:?] FROM label_evidence "
            "WHERE sae_id = ? GROUP BY latent",
            [self.top_docs, sae_id],
        )
        for latent, values in rows:
            self.best[latent, : len(values)] = values

    def collect(
        self,
        doc_local: np.ndarray,
        latent: np.ndarray,
        value: np.ndarray,
        peak_token: np.ndarray,
        doc_ids: np.ndarray,
        words: list[DocWords],
        offsets: np.ndarray,
        sae_id: int,
    ) -> pl.DataFrame:
        """Evidence rows for the pooled entries that beat their latent's running threshold.

        ``doc_local``, ``latent``, ``value``, ``peak_token``: one entry per non-zero pooled
        activation (document within the batch, latent, pooled value, index into the
        batch's token arrays of the token where the latent peaked). ``offsets`` are the
        batch's (n_tokens, 2) character spans; ``doc_ids`` the store ids of the batch.
        """
        strength = np.abs(value)
        keep = strength > self.threshold[latent]
        if not keep.any():
            return _empty_evidence()
        d, lat, val, tok = doc_local[keep], latent[keep], strength[keep], peak_token[keep]
        # Within the batch, only the top_docs strongest per latent can matter.
        order = np.lexsort((-val, lat))
        d, lat, val, tok = d[order], lat[order], val[order], tok[order]
        first = np.r_[0, np.flatnonzero(np.diff(lat)) + 1]
        rank = np.arange(len(lat)) - np.repeat(first, np.diff(np.r_[first, len(lat)]))
        sel = rank < self.top_docs
        d, lat, val, tok = d[sel], lat[sel], val[sel], tok[sel]
        self._merge(lat, val)
        starts = np.zeros(len(d), dtype=np.int32)
        ends = np.zeros(len(d), dtype=np.int32)
        prev = np.full(len(d), -1, dtype=np.int32)
        found = np.zeros(len(d), dtype=bool)
        for j, (di, ti) in enumerate(zip(d.tolist(), tok.tolist())):
            w = words[di]
            # The token's last character lies inside its word even when the token
            # carries a leading space (GPT-2 style byte-level BPE).
            i = w.word_at(int(max(offsets[ti, 1] - 1, offsets[ti, 0])))
            if i < 0:
                continue
            found[j] = True
            starts[j], ends[j] = w.starts[i], w.ends[i]
            if i > 0:
                prev[j] = w.starts[i - 1]
        d, lat, val = d[found], lat[found], val[found]
        return pl.DataFrame(
            {
                "sae_id": np.full(len(d), sae_id, dtype=np.int32),
                "latent": lat.astype(np.int32),
                "doc_id": doc_ids[d].astype(np.int64),
                "value": val.astype(np.float32),
                "word_start": starts[found],
                "word_end": ends[found],
                "prev_start": pl.Series(prev[found]).replace(-1, None),
            },
            schema=_EVIDENCE_SCHEMA,
        )

    def _merge(self, latent: np.ndarray, value: np.ndarray) -> None:
        """Fold new values (sorted by latent, at most top_docs each) into the running top lists."""
        uniq, start = np.unique(latent, return_index=True)
        counts = np.diff(np.r_[start, len(latent)])
        new = np.full((len(uniq), self.top_docs), -np.inf, dtype=np.float32)
        cols = np.arange(len(latent)) - np.repeat(start, counts)
        new[np.repeat(np.arange(len(uniq)), counts), cols] = value
        merged = np.concatenate([self.best[uniq], new], axis=1)
        merged = -np.sort(-merged, axis=1)[:, : self.top_docs]
        self.best[uniq] = merged


_EVIDENCE_SCHEMA = {
    "sae_id": pl.Int32,
    "latent": pl.Int32,
    "doc_id": pl.Int64,
    "value": pl.Float32,
    "word_start": pl.Int32,
    "word_end": pl.Int32,
    "prev_start": pl.Int32,
}


def _empty_evidence() -> pl.DataFrame:
    return pl.DataFrame(schema=_EVIDENCE_SCHEMA)


_KEYWORD_SQL = """
WITH ranked AS (
    SELECT e.latent,
           lower(substr(d.text, e.word_start + 1, e.word_end - e.word_start)) AS word,
           CASE WHEN e.prev_start IS NOT NULL THEN
               lower(regexp_replace(substr(d.text, e.prev_start + 1, e.word_end - e.prev_start), '\\s+', ' ', 'g'))
           END AS bigram,
           row_number() OVER (PARTITION BY e.latent ORDER BY e.value DESC, e.doc_id) AS rk
    FROM label_evidence AS e JOIN documents AS d USING (doc_id)
    WHERE e.sae_id = $sae
),
top AS (SELECT * FROM ranked WHERE rk <= $top_docs),
n_ev AS (SELECT latent, count(*) AS n FROM top GROUP BY latent),
total AS (
    SELECT greatest(count(*), 1) AS n_docs
    FROM documents JOIN datasets USING (dataset_id) WHERE datasets.sae_id = $sae
),
words AS (
    SELECT latent, word, count(*) AS c,
           mode(bigram) AS bigram,
           count(*) FILTER (WHERE bigram = mode_bigram) AS c_bigram
    FROM (SELECT *, mode(bigram) OVER (PARTITION BY latent, word) AS mode_bigram FROM top)
    GROUP BY latent, word
),
scored AS (
    SELECT w.latent, w.word, w.c, n_ev.n,
           -- the phrase "prev word" stands for the word when it accounts for at least half of
           -- its occurrences and the previous word is not a corpus-wide filler ("the", "of")
           CASE WHEN w.c_bigram >= 2 AND 2 * w.c_bigram >= w.c
                     AND coalesce(pw.df, 0) < 0.1 * total.n_docs
                THEN w.bigram ELSE w.word END AS term,
           -- contribution of this word to KL(evidence || corpus): p * ln(p / q)
           (w.c / n_ev.n) * ln((w.c / n_ev.n) / ((coalesce(wc.df, 0) + 1) / (total.n_docs + 1))) AS score
    FROM words AS w
    JOIN n_ev USING (latent)
    CROSS JOIN total
    LEFT JOIN word_counts AS wc ON wc.sae_id = $sae AND wc.word = w.word
    LEFT JOIN word_counts AS pw ON pw.sae_id = $sae AND pw.word = split_part(w.bigram, ' ', 1)
    WHERE w.c >= least(2, n_ev.n)
)
SELECT latent, term, c, n, score,
       score > 0 AS contrastive,
       row_number() OVER (PARTITION BY latent ORDER BY score > 0 DESC,
                          CASE WHEN score > 0 THEN score ELSE c END DESC, term) AS rk
FROM scored
QUALIFY rk <= $n_words AND (contrastive OR NOT bool_or(score > 0) OVER (PARTITION BY latent))
ORDER BY latent, rk
"""


def keyword_labels(store: Store, sae_id: int, top_docs: int = 64, n_words: int = 3) -> pl.DataFrame:
    """Contrastive keyword labels for every latent with evidence: (latent, label, label_source).

    A word's score is its share of the latent's evidence times the log ratio of that
    share to the word's document frequency in the corpus; the ``n_words`` best words
    make the label, each replaced by its most common two-word phrase when that phrase
    accounts for at least half of the word's occurrences and its first word is not a
    filler found in a tenth of the corpus (e.g. "york" -> "new york", never "the york").
    A latent whose evidence has no over-represented word (it fires on "the" or "." all
    over the corpus) gets its commonest evidence words, with label_source
    ``frequent-words`` to say the label is weak.
    """
    rows = store.sql(_KEYWORD_SQL, {"sae": sae_id, "top_docs": top_docs, "n_words": n_words})
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


def prune_evidence(store: Store, sae_id: int, top_docs: int) -> None:
    """Drop evidence rows outside each latent's top ``top_docs`` documents."""
    store.con.execute(
        "DELETE FROM label_evidence AS e USING ("
        "  SELECT latent, doc_id, row_number() OVER (PARTITION BY latent ORDER BY value DESC, doc_id) AS rk"
        "  FROM label_evidence WHERE sae_id = ?"
        ") AS r WHERE e.sae_id = ? AND e.latent = r.latent AND e.doc_id = r.doc_id AND r.rk > ?",
        [sae_id, sae_id, top_docs],
    )


def label_latents(store: Store, sae_id: int, top_docs: int = 64, n_words: int = 3) -> int:
    """Compute keyword labels for an SAE and write them; returns how many latents got one."""
    labels = keyword_labels(store, sae_id, top_docs=top_docs, n_words=n_words)
    store.con.execute(
        "UPDATE latents SET label = NULL, label_source = NULL "
        "WHERE sae_id = ? AND label_source IN ('keywords', 'frequent-words')",
        [sae_id],
    )
    store.set_labels(sae_id, labels)
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
    for latent in latents:
        docs = store.macro("top_docs", sae_id, int(latent), n=n_examples)
        if docs.height == 0:
            continue
        kw = store.one("SELECT label FROM latents WHERE sae_id = ? AND latent = ?", [sae_id, int(latent)])
        examples = "\n".join(f"- {t[:300]!r}" for t in docs["text"].to_list())
        prompt = (
            "These documents most strongly activate one feature of a sparse autoencoder"
            + (f" (keywords: {kw[0]})" if kw and kw[0] else "")
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
