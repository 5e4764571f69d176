"""Corpora: files and folders in, batches of :class:`Document` out.

    corpus = open_corpus("reviews.jsonl", InputConfig(id_field="id"))
    for batch in corpus:           # lists of Documents, in file order, memory flat in corpus size
        ...

:mod:`~saedata.corpus.formats` holds the one table of formats, :mod:`~saedata.corpus.text`
reads text files (JSONL, CSV/TSV, Parquet, plain text, gzip, stdin) and
:mod:`~saedata.corpus.images` image folders and lists.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from saedata.config import InputConfig
from saedata.corpus.formats import (
    EXTENSIONS,
    FORMATS,
    IMAGE_EXTENSIONS,
    STDIN,
    Document,
    dataset_name,
    detect_format,
    looks_like_corpus,
)
from saedata.corpus.images import ImageCorpusReader, is_image_source
from saedata.corpus.text import CorpusReader, count_documents, read_documents

__all__ = [
    "EXTENSIONS",
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "CorpusReader",
    "Document",
    "ImageCorpusReader",
    "corpus_size",
    "count_documents",
    "dataset_name",
    "detect_format",
    "is_image_source",
    "looks_like_corpus",
    "open_corpus",
    "read_documents",
    "rechunk",
    "same_source",
    "source_fingerprint",
]


def rechunk(batches: Iterable[list[Document]], size: int) -> Iterator[list[Document]]:
    """The documents of ``batches``, in order, as lists of ``size`` (the last shorter)."""
    buf: list[Document] = []
    for batch in batches:
        buf.extend(batch)
        while len(buf) >= size:
            yield buf[:size]
            buf = buf[size:]
    if buf:
        yield buf


def open_corpus(path: str | os.PathLike, cfg: InputConfig = InputConfig()) -> CorpusReader | ImageCorpusReader:
    """The reader for any corpus: images for a folder (or ``format="images"``), else text files."""
    if is_image_source(path, cfg):
        return ImageCorpusReader(path, cfg)
    return CorpusReader(path, cfg)


def source_fingerprint(path: str | os.PathLike) -> dict[str, Any] | None:
    """What a corpus held when it was read: ``size`` (bytes), ``mtime_ns`` and ``sha256``
    of its bytes (for a folder of images, of its files' relative paths, sizes and
    modification times); None for stdin or a pipe, which cannot be read twice. Two fingerprints
    describe the same corpus when :func:`same_source` says so."""
    raw = os.fspath(path)
    root = Path(raw)
    if raw == "-" or not (root.is_file() or root.is_dir()):
        return None  # stdin, a pipe: it can be read once only
    digest = hashlib.sha256()
    if root.is_dir():
        size = mtime = 0
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            st = f.stat()
            size, mtime = size + st.st_size, max(mtime, st.st_mtime_ns)
            digest.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return {"size": size, "mtime_ns": mtime, "sha256": digest.hexdigest()}
    st = root.stat()
    with root.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest.hexdigest()}


def same_source(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two fingerprints describe the same bytes (size and SHA-256; a touched but
    unchanged file is the same). An unknown side (stdin, an older store) is not a change."""
    if a is None or b is None:
        return True
    return (a.get("size"), a.get("sha256")) == (b.get("size"), b.get("sha256"))


def corpus_size(corpus: CorpusReader | ImageCorpusReader) -> int | None:
    """Documents a corpus holds, cheaply, for progress bars (None when unknown: stdin, gzip)."""
    if isinstance(corpus, ImageCorpusReader):
        return len(corpus)
    if corpus.source == STDIN:
        return None
    return count_documents(corpus.source, corpus.cfg)
