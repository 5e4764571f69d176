"""Words of queries, axes and labels: one tokeniser, one stopword list, one plural rule.

Analyses match free text a user types (a search query, a cluster axis) against latent
labels ("dog / puppies / vet"). A word is a run of letters or digits (with inner
apostrophes), or ``?`` / ``!`` (a question is a property too); a *content* word has at
least three characters (or is ``?``/``!``) and is not a function word. Singular and
plural match through :func:`forms`. (Labels themselves are made by
:mod:`saedata.label`, whose word rule follows the ``word_at`` SQL macro.)
"""

from __future__ import annotations

import re

WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*|[?!]")
"""A word: letters or digits with inner apostrophes, or a question or exclamation mark."""

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
    "frequent-words"), or with no term holding a content word of letters (punctuation,
    digits, function words: ". / my / our", "? / !", "of"). Search and associate leave
    such latents out unless asked. A latent with no label at all is not weak: nothing
    is known about it."""
    if not label:
        return False
    if source == WEAK_SOURCE:
        return True
    return not any(len(w) >= 3 and w.isalpha() and w not in STOPWORDS for w in words(label))


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased, in order."""
    return WORD.findall(text.lower())


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
