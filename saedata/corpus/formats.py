"""What every corpus reader yields, and the one table of corpus formats.

:class:`Document` is the unit every reader (text files, image folders) yields in
batches. ``EXTENSIONS`` maps file extensions to formats; :func:`detect_format`,
:func:`dataset_name` and :func:`looks_like_corpus` all read it, so a format is added in
one place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from saedata.errors import UnsupportedFormatError

FORMATS: tuple[str, ...] = ("jsonl", "csv", "parquet", "txt")
"""The formats a text corpus can be read in."""

EXTENSIONS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "txt",
    ".text": "txt",
}
"""File extension -> format; every format but Parquet may also be gzip-compressed (``.gz``)."""

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
"""Files of an image folder that are read as images (others are skipped and counted)."""

STDIN = "<stdin>"
"""How standard input (``-``) is named in messages and in ``source``."""


@dataclass(frozen=True, slots=True)
class Document:
    """One document of a corpus."""

    ext_id: str
    """The id field's value as a string (a JSON number as the file spells it: ``1.50`` ->
    ``"1.50"``), or the 1-based line/row number when there is no id field."""
    text: str
    """The document text, as in the file (never empty or whitespace-only); an image's absolute path."""
    meta: dict[str, Any]
    """Every other field/column, as JSON-serialisable values (JSONL: the line's own values,
    whatever the other lines hold)."""
    line: int
    """1-based line (JSONL, text) or data row (CSV: header excluded; Parquet) it came from."""
    messages: tuple[tuple[str, str], ...] | None = None
    """A chat transcript's (role, content) pairs, in order, when the text field held a list
    of ``{"role", "content"}`` messages (the OpenAI / Hugging Face chat format); ``text`` is
    then their plain rendering (:func:`plain_transcript`), which a reader with a chat
    template replaces with its own (:meth:`saedata.reader.Reader.render`)."""


def plain_transcript(messages: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> str:
    """A transcript as plain text, one ``role: content`` paragraph per message: how a
    reader without a chat template reads it."""
    return "\n\n".join(f"{role}: {content}" for role, content in messages)


def detect_format(path: str | os.PathLike, explicit: str | None) -> str:
    """The corpus format of ``path``: ``explicit`` when given, else from the extension.

    ``.jsonl .ndjson .json`` -> jsonl, ``.csv .tsv`` -> csv, ``.parquet .pq`` -> parquet,
    ``.txt .text`` -> txt, each but Parquet also with ``.gz`` appended; ``-`` (stdin) is
    jsonl. Raises :class:`UnsupportedFormatError` naming the file otherwise.
    """
    path = os.fspath(path)
    shown = STDIN if path == "-" else path
    if explicit is not None:
        if explicit not in FORMATS:
            raise UnsupportedFormatError(
                f"unknown input format {explicit!r}; choose one of {', '.join(FORMATS)}",
                path=shown,
            )
        return explicit
    if path == "-":
        return "jsonl"
    name = os.path.basename(path).lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[: -len(".gz")]
    ext = os.path.splitext(name)[1]
    fmt = EXTENSIONS.get(ext)
    if fmt == "parquet" and gz:
        raise UnsupportedFormatError(
            "gzip-compressed Parquet is not supported (Parquet compresses internally); "
            "decompress it first",
            path=shown,
        )
    if fmt is None:
        what = f"extension {ext!r}" if ext else "no file extension"
        raise UnsupportedFormatError(
            f"cannot tell the corpus format from {what}; supported: "
            f"{' '.join(EXTENSIONS)} (all but Parquet also as .gz); "
            f"or pass --input-format {'|'.join(FORMATS)}",
            path=shown,
        )
    return fmt


def dataset_name(source: str | os.PathLike) -> str:
    """The dataset name a corpus gets by default: its file name without the corpus
    extensions (``reviews.jsonl.gz`` -> ``reviews``); ``stdin`` for ``-``."""
    source = os.fspath(source)
    if source == "-":
        return "stdin"
    name = os.path.basename(source.rstrip("/\\"))
    for ext in (".gz", *EXTENSIONS):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
    return name or "dataset"


def looks_like_corpus(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like a corpus file (a corpus extension, or a path with a
    folder in it), as opposed to a dataset name."""
    name = os.fspath(path).lower()
    return name.endswith((*EXTENSIONS, ".gz")) or os.sep in name
