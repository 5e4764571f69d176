"""Words of queries, axes and labels: one tokeniser, one stopword list, one plural rule.

Analyses match free text a user types (a search query, a cluster axis) against latent
labels ("dog / puppies / vet"). A word is a run of letters or digits (with inner
apostrophes), or ``?`` / ``!`` (a question is a property too); a *content* word has at
least three characters (or is ``?``/``!``) and is not a function word. Singular and
plural match through :func:`forms`. The word rule, the stopwords and what makes a label
weak live in :mod:`saedata.label` (labels are made there, a layer below the analyses)
and are re-exported here; the label *evidence* words follow the ``word_at`` SQL macro.
"""

from __future__ import annotations

from saedata.label import STOPWORDS, WEAK_SOURCE, WORD, source_kind, weak_label, words

__all__ = ["STOPWORDS", "WEAK_SOURCE", "WORD", "source_kind", "content_words", "forms", "label_words", "matching_forms",
           "weak_label", "words"]

def content_words(text: str) -> set[str]:
    """The content words of ``text``: three characters or more (or ``?``/``!``), no stopwords."""
    return {w for w in words(text) if (len(w) >= 3 or w in "?!") and w not in STOPWORDS}


def forms(word: str) -> set[str]:
    """``word`` with its plural and singular forms ("story" -> story, storys, stories;
    "boxes" -> boxes, boxess, box, boxe), so that either spelling matches the other."""
    out = {word, word + "s"}
    if word.endswith("ies"):
        out.add(word[:-3] + "y")
    elif word.endswith(("ses", "xes", "ches", "shes")):
        out.add(word[:-2])
    if word.endswith("s") and not word.endswith("ss"):
        out.add(word[:-1])
    if word.endswith("y"):
        out.add(word[:-1] + "ies")
    return out


def matching_forms(text: str) -> set[str]:
    """Every form of every content word of ``text``: a label word in this set matches it."""
    return {f for w in content_words(text) for f in forms(w)}


def label_words(label: str | None) -> set[str]:
    """The words (two characters or more) of a label, lower-cased: what near-duplicate
    labels share."""
    return {w for w in words(label) if len(w) >= 2} if label else set()
