"""Latent labels, and scores of them, from an LLM behind any OpenAI-compatible endpoint.

**Labels from contrastive evidence.** For each latent the LLM is shown its strongest
documents, the word where it peaked marked <<like this>> (:func:`saedata.label.peak_snippet`,
the marking ``saedata latent N`` shows), beside *near misses*: documents close to them
where the latent is silent -- documents holding the words it peaked on, and documents
where the latents that fire with it fire (the ``near_misses`` macro). It is asked for a
short label naming what separates the two; the contrast keeps "mentions of banks" from
standing for a latent that fires on banks of money and not of rivers.

**Scores** (Paulo et al., 2024, "Automatically interpreting millions of features in large
language models"; EleutherAI's delphi): the two cheap scorers, each one request per latent
over documents held out from the label's evidence, drawn with the run's seed.
*Detection*: the label and a shuffled mix of documents where the latent fires and where
it is silent; the LLM says which it fires on; the score is the balanced accuracy of its
answers (0.5 for answers that say nothing, 1 for none wrong). *Fuzzing*: documents where
it fires, some with the peak word marked, others with another word marked; the LLM says
whether the marked text is what the label names; balanced accuracy again.

Every request -- prompt, reply, error, tokens counted by the endpoint's ``usage`` -- is a
row of ``llm_calls``, written in the transaction that writes the latent's label and
scores, so a run stopped half-way leaves the latents it finished whole and no others.
"""

from __future__ import annotations

import re
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from saedata.config import LLMConfig
from saedata.console import Log, progress_bar, silent
from saedata.errors import LLMError, NotFoundError
from saedata.label import peak_snippet, peak_span
from saedata.label.client import Reply, chat

if TYPE_CHECKING:
    from saedata.store import Store

MARK = ("<<", ">>")
"""How a prompt marks the text where a latent fired."""
PURPOSES = ("label", "detection", "fuzzing")
"""What an LLM request is for (``llm_calls.purpose``)."""
DEFAULT_LATENTS = 50
"""Latents labelled when none are named: the most frequent."""
LABEL_WORDS, LABEL_CHARS = 8, 80
"""A label is cut to at most this many words and characters."""


# -- evidence: which documents a latent's prompts show ---------------------------------------

@dataclass(frozen=True)
class Example:
    """A document in a prompt, and the character its excerpt centres on (None: its start)."""

    doc_id: int
    text: str
    at: int | None


@dataclass(frozen=True)
class Evidence:
    """The documents one latent's prompts are made of."""

    sae_id: int
    latent: int
    top: tuple[Example, ...]
    """Its strongest documents, ``at`` where it peaked: the label's evidence."""
    near: tuple[Example, ...]
    """Near misses: documents close to those where it fires, where it is silent."""
    held_out: tuple[Example, ...]
    """Other documents where it fires (drawn with the seed), ``at`` where it peaked: what the scorers show."""
    silent: tuple[Example, ...]
    """Documents where it is silent (drawn with the seed), for detection."""


def gather_evidence(store: Store, sae_id: int, latents: list[int], cfg: LLMConfig) -> dict[int, Evidence]:
    """The evidence of each of ``latents`` that fires at all, from three macro calls
    (``latent_examples``, ``near_misses``, ``silent_examples``)."""
    ids = [int(lat) for lat in latents]
    examples = store.macro("latent_examples", sae_id, ids, n_top=cfg.n_top, n_sample=cfg.n_score, seed=cfg.seed)
    near = store.macro("near_misses", sae_id, ids, n=cfg.n_near) if cfg.n_near else None
    silent_docs = store.macro("silent_examples", sae_id, ids, n=cfg.n_score, seed=cfg.seed) if cfg.n_score else None
    out: dict[int, Evidence] = {}
    for (latent,), group in examples.group_by("latent", maintain_order=True):
        rows = group.rows(named=True)
        top = tuple(Example(r["doc_id"], r["text"] or "", r["peak"]) for r in rows if r["kind"] == "top")
        held = tuple(Example(r["doc_id"], r["text"] or "", r["peak"]) for r in rows if r["kind"] == "sample")
        misses = _near_examples(near.filter(pl.col("latent") == latent), cfg.n_near) if near is not None else ()
        quiet = (tuple(Example(d, t or "", None) for d, t in
                       silent_docs.filter(pl.col("latent") == latent).select("doc_id", "text").iter_rows())
                 if silent_docs is not None else ())
        out[int(latent)] = Evidence(sae_id, int(latent), top, misses, held, quiet)
    return out


def _near_examples(rows: pl.DataFrame, n: int) -> tuple[Example, ...]:
    """Up to ``n`` near misses, taking the two kinds in turn (words first), each centred on
    what makes it near: the first shared word, or where a co-firing latent peaked."""
    kinds = [rows.filter(pl.col("kind") == k).sort("rk").rows(named=True) for k in ("words", "co-firing")]
    picked: list[Example] = []
    seen: set[int] = set()
    for i in range(max((len(k) for k in kinds), default=0)):
        for kind in kinds:
            if i < len(kind) and kind[i]["doc_id"] not in seen and len(picked) < n:
                r = kind[i]
                seen.add(r["doc_id"])
                at = _first_word(r["text"] or "", r["cues"]) if r["cues"] is not None else r["pos"]
                picked.append(Example(r["doc_id"], r["text"] or "", at))
    return tuple(picked)


def _first_word(text: str, cues: list[str]) -> int | None:
    """Where the first of ``cues`` (lower-case words) occurs in ``text`` as a whole word."""
    found = [m.start() for w in cues for m in [re.search(rf"(?<![\w'’]){re.escape(w)}(?![\w'’])", text, re.I)] if m]
    return min(found) if found else None


# -- prompts ------------------------------------------------------------------------------------

_FEATURE = "a feature of a sparse autoencoder that reads text"
_LIST_REPLY = ("Reply with a list of {n} numbers, one per excerpt in order, and nothing else, "
               "like [1, 0, 0, 1].")


def _numbered(excerpts: list[str]) -> str:
    return "\n".join(f"{i}. {e}" for i, e in enumerate(excerpts, 1))


def label_prompt(ev: Evidence, width: int) -> str:
    """The request for a label: the strongest documents with the peak marked, and the near misses."""
    fires = _numbered([peak_snippet(e.text, e.at, width, MARK) for e in ev.top])
    parts = [f"We are naming {_FEATURE}. It fires on the excerpts under ACTIVATING; in each, "
             f"the text where it fires most strongly is marked {MARK[0]}like this{MARK[1]}."]
    if ev.near:
        parts[0] += (" It does not fire on the excerpts under NOT ACTIVATING, although they are near "
                     "misses: they share words, or other features, with the first ones.")
    parts += ["", "ACTIVATING:", fires]
    if ev.near:
        parts += ["", "NOT ACTIVATING:", _numbered([peak_snippet(e.text, e.at, width, ("", "")) for e in ev.near])]
    ask = ("what the ACTIVATING excerpts have at the marked text that the NOT ACTIVATING ones lack" if ev.near
           else "what the ACTIVATING excerpts have in common at the marked text")
    parts += ["", f"Name {ask}, in a short label of 2 to 6 words. Reply with the label only, on one line."]
    return "\n".join(parts)


@dataclass(frozen=True)
class Task:
    """A scorer's request and the answers that would be right (1 / 0 per excerpt, in order)."""

    prompt: str
    truth: tuple[int, ...]


def _rng(ev: Evidence, seed: int, purpose: str) -> np.random.Generator:
    """The generator of one latent's sampling for one purpose: the same whatever else the run does."""
    return np.random.default_rng([seed, ev.sae_id, ev.latent, PURPOSES.index(purpose)])


def detection_task(ev: Evidence, label: str, cfg: LLMConfig) -> Task | None:
    """Shuffled excerpts of held-out documents where the latent fires (centred on its peak,
    unmarked) and where it is silent (centred on a word drawn at random); None without both kinds."""
    if not ev.held_out or not ev.silent:
        return None
    rng = _rng(ev, cfg.seed, "detection")
    items = [(peak_snippet(e.text, e.at, cfg.width, ("", "")), 1) for e in ev.held_out]
    for e in ev.silent:
        starts = [m.start() for m in re.finditer(r"\w+", e.text)]
        at = starts[int(rng.integers(len(starts)))] if starts else None
        items.append((peak_snippet(e.text, at, cfg.width, ("", "")), 0))
    order = rng.permutation(len(items))
    shown = [items[i] for i in order]
    prompt = "\n".join([
        f'We have {_FEATURE}, described as: "{label}".',
        "It fires on some of the numbered excerpts below and not on others.", "",
        _numbered([text for text, _ in shown]), "",
        "For each excerpt, answer 1 if the feature fires on it and 0 if it does not. "
        + _LIST_REPLY.format(n=len(shown))])
    return Task(prompt, tuple(t for _, t in shown))


def fuzzing_task(ev: Evidence, label: str, cfg: LLMConfig) -> Task | None:
    """Excerpts of held-out documents where the latent fires, half of them (drawn) with
    another word than its peak word marked, the rest with the peak word; None when there
    are fewer than two or no other word to mark."""
    rng = _rng(ev, cfg.seed, "fuzzing")
    examples = [e for e in ev.held_out if e.at is not None and 0 <= e.at < len(e.text)]
    wrong = set(rng.permutation(len(examples))[: len(examples) // 2].tolist())
    items: list[tuple[str, int]] = []
    for i, e in enumerate(examples):
        start, end = peak_span(e.text, e.at)
        at, truth = e.at, 1
        if i in wrong:
            word = e.text[start:end].lower()
            others = [m.start() for m in re.finditer(r"\w+", e.text) if m.group().lower() != word]
            if others:
                at, truth = others[int(rng.integers(len(others)))], 0
        items.append((peak_snippet(e.text, at, cfg.width, MARK), truth))
    if len(items) < 2 or len({t for _, t in items}) < 2:
        return None
    prompt = "\n".join([
        f'We have {_FEATURE}, described as: "{label}".',
        f"In each numbered excerpt below some text is marked {MARK[0]}like this{MARK[1]}: in some of them it is "
        "where the feature fires most strongly, in the others it is other text.", "",
        _numbered([text for text, _ in items]), "",
        "For each excerpt, answer 1 if the marked text is what the description names and 0 if it is not. "
        + _LIST_REPLY.format(n=len(items))])
    return Task(prompt, tuple(t for _, t in items))


# -- replies ------------------------------------------------------------------------------------

_THINKING = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_PREFIX = re.compile(r"^(?:label|answer|feature|name)\s*[:：-]\s*", re.IGNORECASE)
_ANSWERS = {"1": 1, "0": 0, "yes": 1, "no": 0, "true": 1, "false": 0}


def parse_label(reply: str) -> str:
    """A label from a reply: its first line with words, without a "Label:" prefix,
    quotes, emphasis or a final full stop, cut to ``LABEL_WORDS`` words and
    ``LABEL_CHARS`` characters. ValueError when no line is mostly letters."""
    for line in _THINKING.sub("", reply).splitlines():
        text = _PREFIX.sub("", line.strip().lstrip("#*-> ").strip())
        text = text.strip(" \t\"'`*_.,;:“”‘’«»").strip()
        letters = sum(ch.isalpha() for ch in text)
        if letters and letters >= 0.5 * len(text.replace(" ", "")):
            label = " ".join(text.split()[:LABEL_WORDS])
            if len(label) > LABEL_CHARS:
                label = label[:LABEL_CHARS].rsplit(" ", 1)[0]
            return label.rstrip(" ,;:.")
    raise ValueError(f"no label in the reply {_shown(reply)}")


def parse_answers(reply: str, n: int) -> list[int]:
    """``n`` answers (1 / 0) from a reply: a list like [1, 0, 1] (the last with ``n`` of
    them), else lines like "3: yes", else exactly ``n`` bare 0/1/yes/no words. ValueError
    otherwise."""
    text = _THINKING.sub("", reply)
    for body in reversed(re.findall(r"\[([^\[\]]*)\]", text)):
        items = [x.strip().strip("'\"").lower() for x in body.split(",") if x.strip()]
        if len(items) == n and all(x in _ANSWERS for x in items):
            return [_ANSWERS[x] for x in items]
    numbered = re.findall(r"^\s*(?:excerpt\s*)?(\d+)\s*[:.)=-]\s*(yes|no|true|false|1|0)\b", text, re.I | re.M)
    answers = {int(k): _ANSWERS[v.lower()] for k, v in numbered}
    if numbered and set(answers) == set(range(1, n + 1)) and len(numbered) == n:
        return [answers[i] for i in range(1, n + 1)]
    bare = re.findall(r"\b(yes|no|true|false|1|0)\b", text, re.I)
    if len(bare) == n:
        return [_ANSWERS[x.lower()] for x in bare]
    raise ValueError(f"expected {n} answers like [1, 0, ...], got {_shown(reply)}")


def _shown(reply: str) -> str:
    flat = " ".join(reply.split())
    return repr(flat[:80] + ("..." if len(flat) > 80 else ""))


def balanced_accuracy(truth: tuple[int, ...] | list[int], answers: list[int]) -> float | None:
    """The mean of the shares right among the 1s and among the 0s of ``truth`` (None
    without both): 0.5 for any answers that ignore the excerpts, 1 for no mistake."""
    t, a = np.asarray(truth), np.asarray(answers)
    if not (t == 1).any() or not (t == 0).any():
        return None
    return float(((a[t == 1] == 1).mean() + (a[t == 0] == 0).mean()) / 2)


# -- one latent: the requests and their results ----------------------------------------------

@dataclass(frozen=True)
class Call:
    """One request as ``llm_calls`` records it."""

    purpose: str
    prompt: str
    reply: Reply
    error: str | None
    """Why the reply was not used: the request's error, or the reply's (unparsable)."""


@dataclass(frozen=True)
class Outcome:
    """What the requests for one latent gave."""

    latent: int
    label: str | None
    detection: float | None
    fuzzing: float | None
    calls: tuple[Call, ...]

    @property
    def errors(self) -> list[str]:
        return [f"latent {self.latent}: {c.purpose}: {c.error}" for c in self.calls if c.error]


def label_latent(ev: Evidence, cfg: LLMConfig, score: bool) -> Outcome:
    """Ask for ``ev``'s label, then (with ``score``) detect and fuzz with it. Runs in a
    worker thread: it touches no store. Raises LLMError when the endpoint refuses."""
    calls: list[Call] = []

    def ask(purpose: str, prompt: str, parse):
        reply = chat(cfg, prompt)
        if reply.error:
            calls.append(Call(purpose, prompt, reply, reply.error))
            return None
        try:
            value = parse(reply.text)
        except ValueError as e:
            calls.append(Call(purpose, prompt, reply, str(e)))
            return None
        calls.append(Call(purpose, prompt, reply, None))
        return value

    label = ask("label", label_prompt(ev, cfg.width), parse_label)
    scores: dict[str, float | None] = {"detection": None, "fuzzing": None}
    if label is not None and score:
        for purpose, make in (("detection", detection_task), ("fuzzing", fuzzing_task)):
            task = make(ev, label, cfg)
            if task is not None:
                answers = ask(purpose, task.prompt, lambda text, n=len(task.truth): parse_answers(text, n))
                if answers is not None:
                    scores[purpose] = balanced_accuracy(task.truth, answers)
    return Outcome(ev.latent, label, scores["detection"], scores["fuzzing"], tuple(calls))


# -- a run ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LLMRun:
    """What ``saedata label --llm`` did: its number in ``llm_calls``, and what it cost."""

    run: int
    model: str
    latents: int
    """Latents asked for (those that never fire are not sent)."""
    labelled: int
    scored: int
    """Latents given at least one LLM score."""
    calls: int
    prompt_tokens: int
    completion_tokens: int
    errors: tuple[str, ...]
    """One line per request whose reply was not used ("latent 7: label: no label in the reply ''")."""

    def summary(self) -> str:
        scored = f", scored {self.scored}" if self.scored else ""
        failed = f"; {len(self.errors)} requests failed (llm_calls.error)" if self.errors else ""
        return (f"labelled {self.labelled} of {self.latents} latents with llm:{self.model}{scored} (run {self.run}): "
                f"{self.calls} calls, {self.prompt_tokens + self.completion_tokens:,} tokens "
                f"({self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion){failed}")


def llm_relabel(store: Store, sae_id: int | None, cfg: LLMConfig, latents: list[int] | None = None, *,
                score: bool = False, log: Log = silent, progress: bool = False) -> LLMRun:
    """Label ``latents`` of SAE ``sae_id`` (default: the 50 most frequent) with the LLM at
    ``cfg``, ``cfg.workers`` requests at a time; with ``score``, then score each new label
    by detection and fuzzing. Each latent's label, scores and requests are written in one
    transaction as it finishes. A reply that cannot be used is an error of that latent
    (recorded, the others go on); an endpoint that refuses or cannot be reached stops the
    run (LLMError) after writing the latents already done; so does a run where no latent
    got a label."""
    sae_id = store.resolve_sae(sae_id)
    d_sae = int(store.sae_info(sae_id)["d_sae"])
    if latents is None:
        latents = (store.latents(sae_id).filter(pl.col("freq") > 0)
                   .sort("freq", descending=True, maintain_order=True).head(DEFAULT_LATENTS)["latent"].to_list())
    bad = [lat for lat in latents if not 0 <= lat < d_sae]
    if bad:
        raise NotFoundError(f"SAE {sae_id} has no latent {bad[0]} (it has 0..{d_sae - 1})")
    evidence = gather_evidence(store, sae_id, list(dict.fromkeys(latents)), cfg)
    never = [lat for lat in latents if lat not in evidence]
    if never:
        log(f"skipping {len(never)} latents that never fire: {', '.join(map(str, never[:10]))}"
            + (" ..." if len(never) > 10 else ""))
    run = store.next_llm_run()
    log(f"labelling {len(evidence)} latents with llm:{cfg.model}{' and scoring them' if score else ''} "
        f"(run {run}, {cfg.workers} requests at a time)")
    tally = {"labelled": 0, "scored": 0, "calls": 0, "prompt": 0, "completion": 0}
    errors: list[str] = []
    fatal: LLMError | None = None
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool, \
            progress_bar(len(evidence), "LLM labels", progress, unit="latent") as bar:
        futures: list[Future] = [pool.submit(label_latent, ev, cfg, score) for ev in evidence.values()]
        try:
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                try:
                    out: Outcome = future.result()
                except LLMError as e:
                    if fatal is None:
                        fatal = e
                        for f in futures:
                            f.cancel()
                    continue
                _record(store, sae_id, run, cfg.model, out)
                tally["labelled"] += out.label is not None
                tally["scored"] += out.detection is not None or out.fuzzing is not None
                tally["calls"] += len(out.calls)
                tally["prompt"] += sum(c.reply.prompt_tokens or 0 for c in out.calls)
                tally["completion"] += sum(c.reply.completion_tokens or 0 for c in out.calls)
                for line in out.errors:
                    log(line)
                errors += out.errors
                bar.update(1)
        except BaseException:  # Ctrl-C: what is written stays, no new request starts
            for f in futures:
                f.cancel()
            raise
    result = LLMRun(run, cfg.model, len(evidence), tally["labelled"], tally["scored"], tally["calls"],
                    tally["prompt"], tally["completion"], tuple(errors))
    if fatal is not None:
        raise LLMError(f"{fatal}" + (f" (stopped after labelling {result.labelled} latents, which are kept)"
                                     if result.labelled else ""))
    if evidence and result.labelled == 0:
        raise LLMError(f"the LLM labelled none of {len(evidence)} latents: {errors[0] if errors else 'no reply'} "
                       f"(every request is in llm_calls, run {run})")
    return result


def _record(store: Store, sae_id: int, run: int, model: str, out: Outcome) -> None:
    """Write one latent's outcome: its requests, label and scores, in one transaction."""
    calls = pl.DataFrame({
        "run": [run] * len(out.calls), "sae_id": [sae_id] * len(out.calls), "latent": [out.latent] * len(out.calls),
        "purpose": [c.purpose for c in out.calls], "model": [model] * len(out.calls),
        "prompt": [c.prompt for c in out.calls], "reply": [c.reply.text for c in out.calls],
        "error": [c.error for c in out.calls], "prompt_tokens": [c.reply.prompt_tokens for c in out.calls],
        "completion_tokens": [c.reply.completion_tokens for c in out.calls],
        "attempts": [c.reply.attempts for c in out.calls],
    }, schema={"run": pl.Int32, "sae_id": pl.Int32, "latent": pl.Int32, "purpose": pl.String, "model": pl.String,
               "prompt": pl.String, "reply": pl.String, "error": pl.String, "prompt_tokens": pl.Int32,
               "completion_tokens": pl.Int32, "attempts": pl.Int32})
    store.record_llm_latent(sae_id, out.latent, calls, label=out.label,
                            label_source=f"llm:{model}" if out.label is not None else None,
                            detection=out.detection, fuzzing=out.fuzzing)
