"""Corpora: files and folders in, batches of :class:`Document` out.

    corpus = open_corpus("reviews.jsonl", InputConfig(id_field="id"))
    for batch in corpus:           # lists of Documents, in file order, memory flat in corpus size
        ...

:mod:`~saedata.corpus.formats` holds the one table of formats, :mod:`~saedata.corpus.text`
reads text files (JSONL, CSV/TSV, Parquet, plain text, gzip, stdin) and
:mod:`~saedata.corpus.images` image folders and lists.
"""

from __future__ import annotations

import os

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
]


def open_corpus(path: str | os.PathLike, cfg: InputConfig = InputConfig()) -> CorpusReader | ImageCorpusReader:
    """The reader for any corpus: images for a folder (or ``format="images"``), else text files."""
    if is_image_source(path, cfg):
        return ImageCorpusReader(path, cfg)
    return CorpusReader(path, cfg)


def corpus_size(corpus: CorpusReader | ImageCorpusReader) -> int | None:
    """Documents a corpus holds, cheaply, for progress bars (None when unknown: stdin, gzip)."""
    if isinstance(corpus, ImageCorpusReader):
        return len(corpus)
    if corpus.source == STDIN:
        return None
    return count_documents(corpus.source, corpus.cfg)
