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
is configured, and score labels as the auto-interpretability work does (detection,
fuzzing): see :mod:`saedata.label.llm`. The evidence shown to it marks where each
latent peaked, as ``saedata latent N`` does (:func:`peak_snippet`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Callable

import numpy as np
import polars as pl

from saedata.console import Log, silent
from saedata.errors import ConfigError

if TYPE_CHECKING:
    from saedata.store import Store

WORD_RE = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
"""A word: letters/digits (with inner apostrophes), or one punctuation character (the
words ``word_at`` finds in SQL, whose document frequencies labels contrast with)."""

WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*|[?!]")
"""A word of a label or a query: letters or digits with inner apostrophes, or a question
or exclamation mark (:func:`words`; analyses use it through :mod:`saedata.analysis.words`)."""

STOPWORDS = frozenset(
    "a an the and or but of to in on at by for with from as is are was were be been being it its "
    "this that these those there here which whom whose do does did done "
    "has have had not no yes can could would should will shall may might must about into over under "
    "than then so such very just also some any all each every more most other own same i me my we us "
    "our you your he him his she her they them their written mentions mention text document documents "
    "about like".split()
)
"""Words never matched (function words, and words about documents themselves)."""


WEAK_SOURCE = "frequent-words"
"""label_source of a keyword label made from words frequent everywhere (see saedata.label)."""


def weak_label(label: str | None, source: str | None = None) -> bool:
    """Whether a latent's label is weak: made from corpus-wide frequent words (``source``
    "frequent-words"), or with no term holding a word that says anything: every word a
    stopword, a single character or a number (". / my / our", "? / !", "of", "4 / 64";
    "x11", "qt" and "cd" are not weak). Keyword labels are never made of such terms
    (:func:`keyword_labels`); search and associate leave weak latents out unless asked.
    A latent with no label at all is not weak: nothing is known about it."""
    if not label:
        return False
    if source_kind(source) == WEAK_SOURCE:
        return True
    return all(_filler(w) for w in words(label))


def source_kind(source: str | None) -> str | None:
    """What made a label, without its qualifier: "keywords" of "keywords:a" (a label made
    against dataset a's background), "llm" of "llm:gpt-4o-mini"."""
    return source.split(":", 1)[0] if source else source


def _filler(word: str) -> bool:
    return word in STOPWORDS or len(word) < 2 or word.isdigit()


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased, in order."""
    return WORD.findall(text.lower())


def peak_span(text: str, peak: int) -> tuple[int, int]:
    """The characters ``[start, end)`` of the word of ``text`` holding character ``peak``
    (letters, digits and underscores), or the character alone when it is none of those
    (punctuation): the span a latent's evidence marks. ``0 <= peak < len(text)``."""
    start = peak
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_") and text[peak].isalnum():
        start -= 1
    end = peak + 1
    while end < len(text) and (text[end].isalnum() or text[end] == "_") and text[peak].isalnum():
        end += 1
    return start, end


def peak_snippet(text: str, peak: int | None, width: int = 100, mark: tuple[str, str] = ("[", "]"),
                 spans: list | None = None) -> str:
    """About ``width`` characters of ``text`` around character ``peak``, the word there
    between the two strings of ``mark`` (``("", "")``: unmarked), on one line ("...a
    [golden] retriever..."), or with ``spans`` ([start, end) of every token where a
    latent fires, ``--store-tokens``) each of those in the window marked; the start of
    the text when there is no peak (images, or a peak past the text)."""
    flat = " ".join(text.split()) if peak is None or not 0 <= peak < len(text) else None
    if flat is not None:
        return flat[:width] + ("..." if len(flat) > width else "")
    start, end = peak_span(text, peak)
    lo, hi = max(0, start - width // 2), min(len(text), end + width // 2)
    marks = sorted((max(s, lo), min(e, hi)) for s, e in (spans or [(start, end)]) if s < hi and e > lo and e > s)
    gaps, words, pos = [], [], lo
    for s, e in marks:
        if s >= pos:
            gaps.append(text[pos:s])
            words.append(f"{mark[0]}{' '.join(text[s:e].split())}{mark[1]}")
            pos = e
    gaps.append(text[pos:hi])
    out = []
    for i, gap in enumerate(gaps):  # whitespace squashed, a space kept where one was
        inner = " ".join(gap.split())
        lead = " " if i > 0 and gap[:1].isspace() else ""
        trail = " " if i < len(gaps) - 1 and gap[-1:].isspace() and (inner or not lead) else ""
        out.append(lead + inner + trail)
        if i < len(words):
            out.append(words[i])
    return ("..." if lo else "") + "".join(out) + ("..." if hi < len(text) else "")


KEYWORD_SOURCES = ("keywords", WEAK_SOURCE)
"""label_source of offline keyword labels (strong, and weak); relabelling replaces these only."""

CANDIDATE_TERMS = 4
"""Terms fetched per latent for each term a label holds: the spares replace stopwords and
punctuation and tell apart latents whose labels would be the same."""


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
                   candidates: str = "activations", datasets: Sequence[int] | None = None) -> pl.DataFrame:
    """Contrastive keyword labels for every latent with evidence: (latent, label, label_source).

    A ``keywords`` label holds no stopword, punctuation mark (but ``?`` and ``!``), single
    character or number: such terms are dropped, and a latent left with none of its own
    says what it fires on as a weak ``frequent-words`` label (". / ,"). No two latents
    share a label (:func:`_distinct_labels`).

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
    With ``datasets`` (ids), the evidence is those datasets' documents and the background
    their word frequencies alone (label sources "keywords:NAME", "frequent-words:NAME"):
    what a latent means in one corpus against that corpus, not against the store.
    """
    if candidates not in ("activations", "label_candidates"):
        raise ValueError(f"candidates must be activations or label_candidates, not {candidates!r}")
    words, ds, suffix = "word_counts", None, ""
    if datasets is not None:
        ds = [int(d) for d in datasets]
        counts = [word_document_frequency(texts) for texts in store.texts(sae_id, only=ds)]
        frame = (pl.concat(counts).group_by("word").agg(pl.col("df").sum()) if counts
                 else pl.DataFrame(schema={"word": pl.String, "df": pl.Int64}))
        store.temp_table("_label_words", frame.with_columns(sae_id=pl.lit(sae_id, pl.Int32)))
        words = "_label_words"
        names = dict(store.datasets().select("dataset_id", "name").iter_rows())
        suffix = ":" + ",".join(names[d] for d in ds)
    rows = store.macro("keyword_terms", sae_id, top_docs=top_docs, n_words=n_words * CANDIDATE_TERMS, src=candidates,
                       words=words, ds=ds)
    schema = {"latent": pl.Int32, "label": pl.String, "label_source": pl.String}
    if rows.height == 0:
        return pl.DataFrame(schema=schema)
    chosen: dict[int, tuple[list[str], list[str], str]] = {}  # latent -> (label terms, spare terms, source)
    for (latent,), group in rows.sort("latent", "rk").group_by("latent", maintain_order=True):
        raw = [_phrase(t) for t in group["term"].to_list()]
        terms = list(dict.fromkeys(raw))
        contrastive: dict[str, bool] = {}
        for t, c in zip(raw, group["contrastive"].to_list(), strict=True):
            contrastive.setdefault(t, c)
        # a term is its peak word, maybe after the word before it ("new york"): the peak word decides;
        # "?" and "!" are words here (a question is a property), if weak ones for topics (weak_label)
        strong = [t for t in terms if contrastive[t] and (t.rsplit(" ", 1)[-1] in ("?", "!")
                                                          or not weak_label(t.rsplit(" ", 1)[-1]))]
        if strong:
            chosen[int(latent)] = (strong[:n_words], strong[n_words:], "keywords" + suffix)
        else:  # nothing over-represented but stopwords, punctuation, digits: say what it fires on, as weak
            chosen[int(latent)] = (terms[:n_words], terms[n_words:], WEAK_SOURCE + suffix)
    first = Counter(" / ".join(terms) for terms, _, _ in chosen.values())
    clashing = [lat for lat, (terms, _, _) in chosen.items() if first[" / ".join(terms)] > 1]
    context = _context_words(store, sae_id, clashing, top_docs, candidates, words, ds) if clashing else {}
    labels = _distinct_labels({lat: (terms, spare + context.get(lat, [])) for lat, (terms, spare, _) in chosen.items()})
    latents = sorted(chosen)
    return pl.DataFrame({"latent": latents, "label": [labels[lat] for lat in latents],
                         "label_source": [chosen[lat][2] for lat in latents]}, schema=schema)


def _phrase(term: str) -> str:
    """A label term without a leading word that is only punctuation (a phrase '" nf2' is 'nf2')."""
    first, _, rest = term.partition(" ")
    return rest if rest and not any(ch.isalnum() for ch in first) else term


def _context_words(store: Store, sae_id: int, latents: list[int], top_docs: int, src: str,
                   words: str = "word_counts", ds: list[int] | None = None, n: int = 8) -> dict[int, list[str]]:
    """For each of ``latents``, the ``n`` words most over-represented in its strongest
    documents as wholes (not only at the peak), scored as the label terms are (share of
    those documents p against document frequency q: p ln(p / q)), filler words left out:
    what tells apart latents whose peak words are the same ("font" in bitmap fonts, in
    CJK fonts)."""
    texts = store.macro("top_texts", sae_id, [int(lat) for lat in latents], n=top_docs, src=src, ds=ds)
    if texts.height == 0:
        return {}
    df = dict(store.sql("SELECT word, sum(df)::BIGINT FROM query_table(?) WHERE sae_id = ? GROUP BY word",
                        [words, sae_id]).rows())
    (n_docs,) = store.one("SELECT count(*) FROM documents JOIN datasets USING (dataset_id) WHERE datasets.sae_id = ? "
                          "AND (?::INTEGER[] IS NULL OR list_contains(?::INTEGER[], documents.dataset_id))",
                          [sae_id, ds, ds]) or (0,)
    out: dict[int, list[str]] = {}
    for (latent,), group in texts.group_by("latent"):
        docs = group["text"].to_list()
        scored = []
        for w, c in word_document_frequency(docs).iter_rows():
            if c < 2 or _filler(w) or not any(ch.isalnum() for ch in w):
                continue
            p, q = c / len(docs), (df.get(w, 0) + 1) / (n_docs + 1)
            scored.append((p * math.log(p / q), w))
        out[int(latent)] = [w for score, w in sorted(scored, key=lambda x: (-x[0], x[1])) if score > 0][:n]
    return out


def _distinct_labels(terms: dict[int, tuple[list[str], list[str]]], rounds: int = 3) -> dict[int, str]:
    """``" / "``-joined labels, no two the same. Latents that would share one each take
    their best spare term that none of the others holds ("font / fonts" -> "font / fonts /
    typeface", "font / fonts / script"); a latent with no such term (its evidence is the
    others', a near-duplicate latent), or still clashing after ``rounds`` additions, takes
    its number ("help / helper / #94")."""
    current = {lat: list(t) for lat, (t, _) in terms.items()}
    spares = {lat: [w for w in s if w not in t] for lat, (t, s) in terms.items()}
    for round_ in range(rounds + 1):
        by_label: dict[str, list[int]] = {}
        for lat, t in current.items():
            by_label.setdefault(" / ".join(t), []).append(lat)
        clashes = [lats for lats in by_label.values() if len(lats) > 1]
        if not clashes:
            break
        for lats in clashes:
            for lat in lats:
                others = {w for o in lats if o != lat for w in current[o] + spares[o]}
                pick = next((w for w in spares[lat] if w not in others), None)
                if pick is None or round_ == rounds:
                    current[lat].append(f"#{lat}")
                    spares[lat] = []
                else:
                    current[lat].append(pick)
                    spares[lat].remove(pick)
    return {lat: " / ".join(t) for lat, t in current.items()}


def label_latents(store: Store, sae_id: int, top_docs: int = 64, n_words: int = 3,
                  datasets: Sequence[int] | None = None) -> int:
    """Compute keyword labels for an SAE (against the background of ``datasets`` alone when
    given) and write them; returns how many latents got one."""
    labels = keyword_labels(store, sae_id, top_docs=top_docs, n_words=n_words, datasets=datasets)
    store.set_labels(sae_id, labels, replace=KEYWORD_SOURCES)
    return labels.height


def relabel(store: Store, sae_id: int | None = None, *, log: Log = silent,
            embed_texts: Callable[[list[str]], np.ndarray] | None = None, dataset: str | None = None) -> int:
    """Recompute the keyword labels of SAE ``sae_id`` (the store's only one when None),
    against the whole store's background or, with ``dataset``, that dataset's alone; with
    ``embed_texts``, then score every label (:func:`score_labels`). Returns how many
    latents got a label. LLM labels and their LLM scores: :func:`saedata.label.llm.llm_relabel`."""
    datasets = None
    if dataset is not None:
        state = store.dataset_state(dataset)
        sae_id = state.sae_id if sae_id is None else sae_id
        if state.sae_id != store.resolve_sae(sae_id):
            raise ConfigError(f"dataset {dataset!r} was embedded with SAE {state.sae_id}, not SAE {sae_id}")
        datasets = [state.dataset_id]
    sae_id = store.resolve_sae(sae_id)
    n = label_latents(store, sae_id, datasets=datasets)
    log(f"labelled {n} latents with keywords" + (f" against dataset {dataset!r}" if dataset else ""))
    _score(store, sae_id, embed_texts, log)
    return n


def _score(store: Store, sae_id: int, embed_texts: Callable[[list[str]], np.ndarray] | None, log: Log) -> None:
    if embed_texts is None:
        return
    scores = score_labels(store, sae_id, embed_texts, log=log)
    store.set_label_scores(sae_id, scores)
    s = scores["score"].drop_nulls()
    if s.len():
        log(f"scored {s.len()} labels: median {s.median():.2f}; {int((s >= 0.75).sum())} at 0.75 or more "
            "(0.5: the label tells nothing about where the latent fires)")


# -- label scores, offline ----------------------------------------------------------------

SCORE_DOCS = 2000
"""Documents (chosen by a hash of their id: the same ones every time) a label is scored on."""


def score_labels(store: Store, sae_id: int, embed_texts: Callable[[list[str]], np.ndarray],
                 n_docs: int = SCORE_DOCS, log: Log = silent) -> pl.DataFrame:
    """How well each label predicts where its latent fires, without an LLM, on ``n_docs``
    documents of the SAE's datasets: (latent, score, detect_precision, detect_recall).

    ``score``: the auto-interpretability *embedding scoring* -- the AUROC of the cosine
    similarity between the label and each document (both embedded by ``embed_texts``;
    documents by their first 400 characters) for the documents where the latent fires
    against those where it does not: 0.5 says the label tells nothing, 1.0 that it ranks
    every such document first. ``detect_precision`` / ``detect_recall``: the label's
    words as a detector -- of the documents holding one of its words (stopwords, single
    characters and numbers left out), the share where the latent fires; of those where it
    fires, the share holding one. None where the latent fires in none or all of the
    documents (nothing to rank), or the label has no such word."""
    from scipy import sparse, stats

    labels = store.latents(sae_id).filter(pl.col("label").is_not_null())
    schema = {"latent": pl.Int32, "score": pl.Float64, "detect_precision": pl.Float64,
              "detect_recall": pl.Float64}
    docs = store.macro("sample_docs", sae_id, n=n_docs)
    if labels.height == 0 or docs.height == 0:
        return pl.DataFrame(schema=schema)
    fired = store.macro("doc_latents", sae_id, docs["doc_id"].to_list())
    row = {d: i for i, d in enumerate(docs["doc_id"].to_list())}
    col = {lat: j for j, lat in enumerate(labels["latent"].to_list())}
    pairs = [(row[d], col[lat]) for d, lat in fired.select("doc_id", "latent").iter_rows() if lat in col]
    n, m = docs.height, labels.height
    Y = sparse.csr_matrix((np.ones(len(pairs)), ([p[0] for p in pairs], [p[1] for p in pairs])), shape=(n, m))
    n_pos = np.asarray(Y.sum(axis=0)).ravel()
    log(f"scoring {m} labels on {n} documents")
    D = embed_texts([t[:400] for t in docs["text"].to_list()])
    L = embed_texts(labels["label"].to_list())
    R = stats.rankdata(L @ D.T, axis=1)  # (m, n) ranks of each document's similarity to each label
    rank_sum = np.asarray(Y.T.multiply(R).sum(axis=1)).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        auroc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos))
    auroc[(n_pos == 0) | (n_pos == n)] = np.nan
    # the label's words as a detector of where the latent fires
    vocab: dict[str, int] = {}
    label_words = [[vocab.setdefault(w, len(vocab)) for w in set(words(lab)) if not _filler(w)]
                   for lab in labels["label"].to_list()]
    W_rows, W_cols = [], []
    for i, text in enumerate(docs["text"].to_list()):
        for w in set(words(text)) & vocab.keys():
            W_rows.append(i)
            W_cols.append(vocab[w])
    W = sparse.csr_matrix((np.ones(len(W_rows)), (W_rows, W_cols)), shape=(n, max(len(vocab), 1)))
    lw_rows = [v for ws in label_words for v in ws]
    lw_cols = [j for j, ws in enumerate(label_words) for _ in ws]
    Lw = sparse.csr_matrix((np.ones(len(lw_rows)), (lw_rows, lw_cols)), shape=(max(len(vocab), 1), m))
    pred = (W @ Lw).astype(bool).astype(np.float64)
    tp = np.asarray(pred.multiply(Y).sum(axis=0)).ravel()
    n_pred = np.asarray(pred.sum(axis=0)).ravel()
    has_words = np.array([bool(ws) for ws in label_words])
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(has_words & (n_pred > 0), tp / n_pred, np.nan)
        recall = np.where(has_words & (n_pos > 0), tp / n_pos, np.nan)
    return pl.DataFrame({"latent": labels["latent"], "score": auroc, "detect_precision": precision,
                         "detect_recall": recall}, schema=schema).fill_nan(None)
