"""Small corpora with planted, known properties: for examples, tests and benchmarks.

Documents are built from hand-written sentence templates over eight topics, with a
sentiment and a question/statement form, so that a user (or a test) can check that
the concepts saedata finds match what was planted. Deterministic in ``seed``.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

TOPICS: dict[str, dict[str, list[str]]] = {
    "pets": {
        "subject": ["my dog", "the puppy", "our cat", "the kitten", "my parrot", "the old hamster",
                    "our golden retriever", "the rescue cat"],
        "verb": ["chased", "slept next to", "barked at", "played with", "purred beside", "ignored",
                 "sniffed", "carried"],
        "object": ["the ball", "a squeaky toy", "the vet", "its leash", "a bowl of kibble", "the litter box",
                   "the neighbour's dog", "a chew bone"],
    },
    "science": {
        "subject": ["the physicist", "our lab", "the chemist", "a team of scientists", "the biologist",
                    "the research group", "the astronomer", "the geneticist"],
        "verb": ["measured", "published", "tested", "observed", "modelled", "replicated", "analysed",
                 "discovered"],
        "object": ["the experiment", "a new particle", "the hypothesis", "the enzyme", "a distant galaxy",
                   "the data", "the protein structure", "the quantum effect"],
    },
    "sports": {
        "subject": ["the striker", "our team", "the goalkeeper", "the coach", "the sprinter",
                    "the home side", "the tennis player", "the captain"],
        "verb": ["scored against", "defeated", "trained for", "lost to", "celebrated", "won",
                 "tackled", "qualified for"],
        "object": ["the final", "the league title", "the rival club", "the championship", "a penalty",
                   "the match", "the relay race", "the world cup"],
    },
    "cooking": {
        "subject": ["the chef", "my grandmother", "the baker", "our kitchen", "the cook",
                    "the pastry chef", "my roommate", "the restaurant"],
        "verb": ["baked", "simmered", "seasoned", "roasted", "chopped", "whisked", "grilled", "served"],
        "object": ["the sourdough bread", "a tomato sauce", "the garlic", "a chocolate cake", "the onions",
                   "fresh pasta", "the vegetable soup", "a lemon tart"],
    },
    "weather": {
        "subject": ["the storm", "a cold front", "the forecast", "heavy rain", "the heatwave",
                    "the wind", "a thick fog", "the snowfall"],
        "verb": ["hit", "flooded", "covered", "swept across", "battered", "cooled", "delayed", "froze"],
        "object": ["the coast", "the city", "the valley", "the airport", "the northern region",
                   "the mountain pass", "the harbour", "the farmland"],
    },
    "finance": {
        "subject": ["the central bank", "investors", "the stock market", "the company", "the hedge fund",
                    "the treasury", "shareholders", "the startup"],
        "verb": ["raised", "cut", "bought", "sold", "reported", "borrowed", "invested in", "audited"],
        "object": ["interest rates", "its quarterly earnings", "government bonds", "the shares",
                   "a new loan", "the dividend", "the budget", "venture capital"],
    },
    "travel": {
        "subject": ["the tourists", "my sister", "the backpacker", "our family", "the pilot",
                    "the tour guide", "the travellers", "a young couple"],
        "verb": ["flew to", "explored", "booked", "hiked through", "visited", "toured", "sailed to",
                 "photographed"],
        "object": ["the old town", "a beach resort", "the museum", "the national park", "the island",
                   "a mountain village", "the cathedral", "the night market"],
    },
    "music": {
        "subject": ["the band", "the pianist", "the orchestra", "the singer", "the drummer",
                    "the choir", "the guitarist", "the composer"],
        "verb": ["performed", "recorded", "rehearsed", "composed", "played", "released", "sang",
                 "arranged"],
        "object": ["a new album", "the symphony", "the chorus", "a jazz standard", "the concert",
                   "the opening song", "a piano sonata", "the encore"],
    },
}

POSITIVE = ["It was wonderful.", "Everyone loved it.", "What a delightful day.", "I am thrilled about it.",
            "Absolutely fantastic.", "It made us so happy."]
NEGATIVE = ["It was terrible.", "Everyone hated it.", "What an awful day.", "I am furious about it.",
            "Absolutely dreadful.", "It made us so miserable."]
QUESTIONS = ["Why did {s} do that?", "Have you ever seen {s} like this?", "Did {s} really do it?",
             "What will {s} do next?"]


def make_document(rng: random.Random, topic: str, sentiment: str, question: bool) -> str:
    """One document: two or three sentences on ``topic``, a sentiment remark, maybe a question."""
    words = TOPICS[topic]
    sentences = []
    for _ in range(rng.randint(2, 3)):
        s = f"{rng.choice(words['subject'])} {rng.choice(words['verb'])} {rng.choice(words['object'])}."
        sentences.append(s[0].upper() + s[1:])
    remark = {"positive": POSITIVE, "negative": NEGATIVE}.get(sentiment)
    if remark:
        sentences.append(rng.choice(remark))
    if question:
        sentences.append(rng.choice(QUESTIONS).format(s=rng.choice(words["subject"])))
    return " ".join(sentences)


def make_corpus(
    n_docs: int = 400,
    seed: int = 0,
    topics: list[str] | None = None,
    topic_weights: list[float] | None = None,
    question_rate: float = 0.25,
    id_prefix: str = "d",
) -> list[dict[str, Any]]:
    """Documents as dicts: id, text, topic, sentiment, is_question, n_words."""
    rng = random.Random(seed)
    topics = topics or list(TOPICS)
    docs = []
    for i in range(n_docs):
        topic = rng.choices(topics, weights=topic_weights)[0]
        sentiment = rng.choice(["positive", "negative", "neutral"])
        question = rng.random() < question_rate
        text = make_document(rng, topic, sentiment, question)
        docs.append({"id": f"{id_prefix}{i:05d}", "text": text, "topic": topic, "sentiment": sentiment,
                     "is_question": question, "n_words": len(text.split())})
    return docs


PAIR_DIFFERENCES = "b is about pets and science 4x as often as a, and asks questions 3x as often"
"""What :func:`make_pair` plants between its two corpora (what a diff should find)."""


def make_pair(n_docs: int = 300, seed: int = 11, id_prefixes: tuple[str, str] = ("a", "b")
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Two corpora with planted differences (:data:`PAIR_DIFFERENCES`): ``a`` over all
    topics uniformly with a quarter questions (seed ``seed``), ``b`` with pets and science
    weighted 4x and three quarters questions (seed ``seed + 1``)."""
    topics = list(TOPICS)
    weights = [4.0 if t in ("pets", "science") else 1.0 for t in topics]
    a = make_corpus(n_docs, seed=seed, id_prefix=id_prefixes[0])
    b = make_corpus(n_docs, seed=seed + 1, topics=topics, topic_weights=weights, question_rate=0.75,
                    id_prefix=id_prefixes[1])
    return a, b


def write_jsonl(docs: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write documents as JSON Lines; returns the path."""
    out = Path(path)
    with out.open("w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    return out


PYDOC_MODULES = (
    "os", "re", "json", "csv", "math", "random", "datetime", "collections", "itertools", "functools",
    "pathlib", "subprocess", "threading", "asyncio", "socket", "http.client", "urllib.request", "email",
    "sqlite3", "logging", "argparse", "unittest", "typing", "dataclasses", "decimal", "fractions",
    "statistics", "string", "textwrap", "difflib", "zipfile", "tarfile", "shutil", "tempfile", "pickle",
    "xml.etree.ElementTree", "html.parser", "inspect", "ast", "dis", "contextlib", "heapq", "bisect",
    "array", "struct", "codecs", "io", "time", "calendar", "locale", "gettext", "hashlib", "hmac", "secrets",
    "ssl", "select", "selectors", "signal", "mmap", "ctypes", "multiprocessing", "concurrent.futures",
    "queue", "sched", "uuid", "base64", "binascii", "zlib", "gzip", "bz2", "lzma", "configparser",
    "tomllib", "pprint", "reprlib", "enum", "numbers", "cmath", "operator", "copy", "weakref", "types",
    "abc", "importlib", "pkgutil", "platform", "sys", "sysconfig", "warnings", "traceback", "gc",
    "pdb", "timeit", "trace", "tracemalloc", "doctest", "ipaddress", "mimetypes", "wave", "colorsys",
    "turtle", "tkinter", "curses", "getpass", "glob", "fnmatch", "filecmp", "stat", "shelve", "dbm",
)


def python_docs_corpus(n_docs: int | None = None, min_words: int = 12, seed: int = 0) -> list[dict[str, Any]]:
    """Real English text that ships with CPython: reference-manual topics and stdlib docstrings.

    Each document is one paragraph with ``source`` ("reference" or "docstring") and
    ``category`` (the manual topic, or the top-level module name). Paragraphs are
    shuffled with ``seed`` and cut to ``n_docs``. Used by the benchmarks as a real,
    offline corpus of a few thousand documents.
    """
    import importlib
    import inspect
    import warnings

    docs: list[dict[str, Any]] = []
    seen: set[str] = set()

    def add(text: str, source: str, category: str) -> None:
        text = " ".join(text.split())
        if len(text.split()) >= min_words and text not in seen:
            seen.add(text)
            docs.append({"text": text, "source": source, "category": category})

    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - stripped Python builds
        topics = {}
    for name, body in topics.items():
        for para in body.split("\n\n"):
            add(para, "reference", name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mod_name in PYDOC_MODULES:
            try:
                mod = importlib.import_module(mod_name)
            except Exception:  # noqa: BLE001 - optional stdlib parts (tkinter, curses) may be absent
                continue
            category = mod_name.split(".")[0]
            objects = [mod] + [obj for _, obj in inspect.getmembers(mod) if inspect.isclass(obj) or inspect.isroutine(obj)]
            for obj in objects:
                doc = inspect.getdoc(obj) or ""
                for para in doc.split("\n\n"):
                    add(para, "docstring", category)
    rng = random.Random(seed)
    rng.shuffle(docs)
    for i, d in enumerate(docs):
        d["id"] = f"py{i:05d}"
    return docs[:n_docs] if n_docs else docs
