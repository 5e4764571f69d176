"""Property tests for saedata.corpus.text: random documents written with each format's own
writer (json.dumps per line, csv.writer, polars' write_parquet, plain lines) read back
exactly; damaged files either read or raise a one-line InputError naming file and line."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import saedata.corpus.text as sio
from saedata.config import InputConfig
from saedata.corpus import Document, read_documents
from saedata.errors import InputError

PROPERTY = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
"""Deterministic (CI-stable) and small enough for a few seconds per property."""

# Characters that break naive readers, mixed into otherwise arbitrary Unicode (never surrogates).
TRICKY = ["\x00", "\n", "\r", "\t", '"', "'", ",", ";", "\\", "{", "[", "\ufeff", "\u2028", "\x85",
          "\U0001f600", "\u0301", "\u200d", "0", "1", ".", "-", "e", " "]
chars = st.one_of(st.sampled_from(TRICKY), st.characters(exclude_categories=("Cs",)))
texts = st.text(chars, max_size=20)
keys = st.text(chars, max_size=6).filter(lambda k: k not in ("text", "id"))
numbers = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, texts),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(keys, kids, max_size=3),
    max_leaves=8,
)


def spelled(value: Any) -> str:
    """A JSON text or id value as a Document holds it: strings as they are, other values as written."""
    return value if isinstance(value, str) else json.dumps(value)


def dropped_nulls(value: Any) -> Any:
    """A JSONL metadata value as documented: null members of objects left out (not in arrays)."""
    if isinstance(value, dict):
        return {k: dropped_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [dropped_nulls(v) for v in value]
    return value


def is_blank(text: Any) -> bool:
    """Whether a document with this text is skipped (and counted in ``n_empty``)."""
    return text is None or (isinstance(text, str) and (not text or text.isspace()))


def typed(docs: list[Document]) -> list[tuple]:
    """Documents comparable with types (1, 1.0 and true differ; key order does not matter)."""
    return [(d.ext_id, d.text, json.dumps(d.meta, sort_keys=True), d.line) for d in docs]


@contextlib.contextmanager
def chunk_bytes(n: int) -> Iterator[None]:
    """Read input in blocks of ``n`` bytes (hypothesis cannot use the monkeypatch fixture)."""
    old = sio._CHUNK_BYTES
    sio._CHUNK_BYTES = n
    try:
        yield
    finally:
        sio._CHUNK_BYTES = old


def read(path: Path, data: bytes, how: str, cfg: InputConfig) -> tuple[list[Document], int]:
    """(documents, n_empty) of ``data`` read as a plain file, gzip file or stdin."""
    if how == "stdin":
        reader = read_documents("-", cfg, stdin=io.BytesIO(data))
    else:
        path.write_bytes(gzip.compress(data, mtime=0) if how == "gzip" else data)
        reader = read_documents(path, cfg)
    docs = [d for batch in reader for d in batch]
    return docs, reader.n_empty


def reading(chunks: list[int], hows: tuple[str, ...] = ("plain", "gzip", "stdin")) -> st.SearchStrategy[dict]:
    """How a test reads its file: as a plain file, gzip file or stdin; in blocks of ``chunks``
    bytes; in batches of 1 to 1000 documents."""
    return st.fixed_dictionaries({
        "how": st.sampled_from(hows),
        "chunk": st.sampled_from(chunks),
        "batch_size": st.sampled_from([1, 2, 5, 1000]),
    })


LINE_CHUNKS = [1, 17, 64, 256, 4 << 20]
"""Block sizes for JSONL and text: lines straddle blocks (a block may hold no line end at all)."""
CSV_CHUNKS = [4096, 4 << 20]
"""pyarrow's CSV block must hold a whole row (rows here are under 1 KB)."""


class Corpus(NamedTuple):
    """A corpus file as its format's own writer wrote it, and what reading it must give."""

    data: bytes
    docs: list[Document]
    """The documents it holds, in order."""
    n_empty: int
    """Documents with blank text, skipped."""
    id_field: str | None
    sep: str = ","


def check_round_trip(corpus: Corpus, fmt: str, how: dict) -> None:
    """Reading ``corpus`` gives exactly its documents and its count of blank ones."""
    with tempfile.TemporaryDirectory() as tmp, chunk_bytes(how["chunk"]):
        cfg = InputConfig(id_field=corpus.id_field, batch_size=how["batch_size"], format=fmt,
                          extra={"separator": corpus.sep})
        docs, n_empty = read(Path(tmp) / f"corpus.{fmt}", corpus.data, how["how"], cfg)
    assert typed(docs) == typed(corpus.docs)
    assert n_empty == corpus.n_empty


# --------------------------------------------------------------------------- round trips


@st.composite
def jsonl_corpora(draw) -> Corpus:
    """JSON Lines written with json.dumps: random texts, ids, metadata, blank lines, BOM, CRLF."""
    n = draw(st.integers(1, 10))
    ids = draw(st.lists(st.one_of(numbers, st.text(chars, min_size=1, max_size=8)),
                        min_size=n, max_size=n, unique_by=spelled))
    id_field = draw(st.sampled_from(["id", None]))
    ensure_ascii = draw(st.booleans())
    separators = draw(st.sampled_from([(", ", ": "), (",", ":")]))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    lines = ["\ufeff"] if draw(st.booleans()) else [""]
    docs, n_empty, number = [], 0, 0
    for i in range(n):
        if draw(st.integers(0, 5)) == 0:
            lines.append(draw(st.sampled_from(["", "  ", "\t"])))  # a blank line, skipped
        text = draw(st.one_of(texts, texts, numbers, st.booleans(), st.none()))
        meta = draw(st.dictionaries(keys, json_values, max_size=4))
        items = [("text", text), *meta.items()] + ([("id", ids[i])] if id_field else [])
        items = draw(st.permutations(items))
        lines.append(json.dumps(dict(items), ensure_ascii=ensure_ascii, separators=separators))
        number = len(lines) - 1
        if is_blank(text):
            n_empty += 1
            continue
        ext_id = spelled(ids[i]) if id_field else str(number)
        expected = {k: dropped_nulls(v) for k, v in meta.items() if v is not None}
        docs.append(Document(ext_id, spelled(text), expected, number))
    data = lines[0] + newline.join(lines[1:])
    if draw(st.booleans()):
        data += newline
    return Corpus(data.encode(), docs, n_empty, id_field)


@PROPERTY
@given(corpus=jsonl_corpora(), how=reading(LINE_CHUNKS))
def test_jsonl_round_trips(corpus, how):
    check_round_trip(corpus, "jsonl", how)


@st.composite
def csv_corpora(draw) -> Corpus:
    """CSV or TSV written with csv.writer: random quoting, line ends, column order, BOM, and
    fields with quotes, separators, line ends and NULs."""
    sep = draw(st.sampled_from([",", "\t"]))
    # csv.writer quotes a field holding a line end only if that is part of its lineterminator
    quoting, newline = draw(st.sampled_from([(csv.QUOTE_MINIMAL, "\r\n"), (csv.QUOTE_ALL, "\r\n"),
                                             (csv.QUOTE_ALL, "\n")]))
    id_field = draw(st.sampled_from(["id", None]))
    columns = draw(st.permutations(["id", "text", "stars", "note"]))
    n = draw(st.integers(1, 10))
    ids = draw(st.lists(st.text(chars, min_size=1, max_size=8), min_size=n, max_size=n, unique=True))
    out = io.StringIO()
    writer = csv.writer(out, delimiter=sep, quoting=quoting, lineterminator=newline)
    writer.writerow(columns)
    docs, n_empty = [], 0
    for i in range(n):
        row = {"id": ids[i], "text": draw(texts), "stars": draw(texts), "note": draw(texts)}
        writer.writerow([row[c] for c in columns])
        if is_blank(row["text"]):
            n_empty += 1
            continue
        meta = {c: row[c] for c in columns if c != "text" and c != id_field}
        docs.append(Document(ids[i] if id_field else str(i + 1), row["text"], meta, i + 1))
    bom = "\ufeff" if draw(st.booleans()) else ""
    return Corpus((bom + out.getvalue()).encode(), docs, n_empty, id_field, sep)


@PROPERTY
@given(corpus=csv_corpora(), how=reading(CSV_CHUNKS))
def test_csv_round_trips(corpus, how):
    check_round_trip(corpus, "csv", how)


@st.composite
def parquet_corpora(draw) -> Corpus:
    """Parquet written with polars' write_parquet: typed, nullable columns, small row groups."""
    n = draw(st.integers(1, 10))
    int_ids = draw(st.booleans())
    ids = draw(st.lists(st.integers(-(2**62), 2**62) if int_ids else st.text(chars, min_size=1, max_size=8),
                        min_size=n, max_size=n, unique=True))
    id_field = draw(st.sampled_from(["id", None]))
    column = {
        "text": st.one_of(texts, st.none()),
        "n": st.one_of(st.none(), st.integers(-(2**62), 2**62)),
        "x": st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
        "s": st.one_of(st.none(), texts),
        "b": st.one_of(st.none(), st.booleans()),
        "tags": st.one_of(st.none(), st.lists(st.one_of(st.none(), texts), max_size=3)),
    }
    rows = [{"id": ids[i], **{name: draw(values) for name, values in column.items()}} for i in range(n)]
    schema = {"id": pl.Int64 if int_ids else pl.String, "text": pl.String, "n": pl.Int64, "x": pl.Float64,
              "s": pl.String, "b": pl.Boolean, "tags": pl.List(pl.String)}
    sink = io.BytesIO()
    pl.DataFrame(rows, schema=schema).write_parquet(sink, row_group_size=draw(st.sampled_from([1, 3, 1000])))
    docs, n_empty = [], 0
    for i, row in enumerate(rows, start=1):
        if is_blank(row["text"]):
            n_empty += 1
            continue
        meta = {k: v for k, v in row.items() if k != "text" and k != id_field}
        docs.append(Document(str(row["id"]) if id_field else str(i), row["text"], meta, i))
    return Corpus(sink.getvalue(), docs, n_empty, id_field)


@PROPERTY
@given(corpus=parquet_corpora(), how=reading([4 << 20], hows=("plain", "stdin")))
def test_parquet_round_trips(corpus, how):
    check_round_trip(corpus, "parquet", how)


@PROPERTY
@given(lines=st.lists(st.text(st.one_of(chars, st.just("\r")).filter(lambda c: c != "\n"), max_size=20), min_size=1,
                      max_size=10), bom=st.booleans(), how=reading(LINE_CHUNKS))
def test_txt_round_trips(lines, bom, how):
    data = ("\ufeff" if bom else "") + "\n".join(lines)
    expected, n_empty = [], 0
    for number, line in enumerate(lines, start=1):
        if number == 1 and not bom:
            line = line.removeprefix("\ufeff")  # read as a byte order mark
        if number == len(lines) and not line:
            break  # the file ends with a line end (or is empty)
        text = line[:-1] if line.endswith("\r") else line  # a CRLF line end
        if is_blank(text):
            n_empty += 1
            continue
        expected.append(Document(str(number), text, {}, number))
    check_round_trip(Corpus(data.encode(), expected, n_empty, None), "txt", how)


# --------------------------------------------------------------------------- damaged files

DAMAGE = [b'"', b'""', b"{", b"}", b"[", b"]", b",", b"\t", b"\n", b"\r", b"\\", b":", b"\xff", b"\xc3",
          b"\x00", b"\\ud800", b"\\udc00", b"\\ud83d", b"NaN", b"1e999", b"null", b"[" * 3000, b"{}"]


@st.composite
def damaged(draw, corpora) -> Corpus:
    """A valid corpus with a few random bytes inserted or cut (its ``docs`` no longer apply)."""
    corpus = draw(corpora)
    data = corpus.data
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        if draw(st.booleans()):
            data = data[:at] + draw(st.sampled_from(DAMAGE)) + data[at:]
        else:
            data = data[:at] + data[at + draw(st.integers(1, 8)):]
    return corpus._replace(data=data)


def check_damaged(corpus: Corpus, fmt: str, how: dict) -> None:
    """Reading either gives well-formed documents or raises InputError naming file and line."""
    with tempfile.TemporaryDirectory() as tmp, chunk_bytes(how["chunk"]):
        path = Path(tmp) / f"corpus.{fmt}"
        cfg = InputConfig(id_field=corpus.id_field, batch_size=how["batch_size"], format=fmt,
                          extra={"separator": corpus.sep})
        try:
            docs, _ = read(path, corpus.data, how["how"], cfg)
        except InputError as e:
            shown = "<stdin>" if how["how"] == "stdin" else str(path)
            assert re.match(re.escape(shown) + r":[0-9]+: \S", str(e)), str(e)
            assert "\n" not in str(e) and "\r" not in str(e)
            return
    lines = [d.line for d in docs]
    assert lines == sorted(set(lines))
    assert len({d.ext_id for d in docs}) == len(docs)
    for d in docs:
        # what the embedding stores must be valid UTF-8 and standard JSON
        (d.ext_id + d.text).encode("utf-8")
        json.dumps(d.meta, ensure_ascii=False, allow_nan=False).encode("utf-8")
        assert d.text and not d.text.isspace()


@PROPERTY
@given(corpus=damaged(jsonl_corpora()), how=reading(LINE_CHUNKS))
def test_damaged_jsonl_reads_or_names_the_line(corpus, how):
    check_damaged(corpus, "jsonl", how)


@PROPERTY
@given(corpus=damaged(csv_corpora()), how=reading(CSV_CHUNKS))
def test_damaged_csv_reads_or_names_the_line(corpus, how):
    check_damaged(corpus, "csv", how)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_damage_leaves_some_files_readable_and_breaks_others(fmt):
    """The properties above test both outcomes, not only one."""
    outcomes = set()

    @settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @given(corpus=damaged(jsonl_corpora() if fmt == "jsonl" else csv_corpora()))
    def run(corpus):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = InputConfig(id_field=corpus.id_field, format=fmt, extra={"separator": corpus.sep})
            try:
                read(Path(tmp) / f"corpus.{fmt}", corpus.data, "plain", cfg)
                outcomes.add("read")
            except InputError:
                outcomes.add("error")

    run()
    assert outcomes == {"read", "error"}
