"""Read a corpus file (JSONL, CSV/TSV, Parquet, plain text; optionally gzip-compressed)
into batches of :class:`Document`, with memory flat in corpus size.

    reader = read_documents("corpus.jsonl", InputConfig(text_field="body", id_field="id"))
    for batch in reader:            # lists of at most cfg.batch_size Documents, in file order
        ...
    reader.n_read, reader.n_empty   # documents yielded, documents skipped for empty text

Every mistake in the input raises :class:`~saedata.errors.InputError` with a one-line
message that names the file and the line (JSONL, text) or data row (CSV: header
excluded; Parquet) at fault, e.g. ``/data/corpus.jsonl:17: invalid JSON (Expecting ','
delimiter at column 23)``. An empty corpus is not an error here; the caller decides.

How each format is streamed:

- JSONL and text: the raw bytes are read in blocks of about ``_CHUNK_BYTES`` and cut
  into lines; a JSONL block is parsed at once with ``polars.read_ndjson`` when polars
  gives every line its own values. Otherwise the block is parsed line by line with
  ``json.loads``, which also names a bad line: when polars rejects the block, when it
  would change values to give each column one type (``1`` -> ``1.0`` beside a float,
  ``5`` -> ``"5"`` beside a string; see ``_polars_kept_values``), when the block holds a
  surrogate escape (``\\ud83d``, which polars reads wrongly when lone), or a line that
  may nest too deeply (objects nested some 550 deep crash polars).
- CSV/TSV: ``pyarrow.csv.open_csv``, a streaming reader over any byte stream (so gzip
  and stdin need no temporary copy of the data in memory), every column read as text;
  each block becomes a polars frame through ``pl.from_arrow``. polars 2.1 has no
  ``read_csv_batched``, and ``scan_csv(...).collect_batches()`` reads up to a few hundred
  MB ahead of its consumer, needs a file path and rejects quotes inside unquoted
  fields (``5" screen``). When pyarrow rejects the file, it is read again with Python's
  ``csv`` module to name the row at fault; so it is when the file holds an odd number of
  quote characters, since pyarrow silently reads a quoted field that never ends to the
  end of the file (the last block is held back until then). A quote inside an unquoted
  field makes the count odd too, but is fine; an unterminated quote together with such a
  quote can go unnoticed.
- Parquet: ``pyarrow.parquet.ParquetFile.iter_batches`` then ``pl.from_arrow``.

Metadata (``Document.meta``) holds every field but the text and id, as JSON-ready values:
dates and times become ISO strings, durations seconds, decimals floats, NaN None. CSV
values stay strings, exactly as written (empty cells are ""). In JSONL, ``meta`` holds
each line's own JSON values, whatever its neighbours hold (``1`` stays an integer, ``"1"``
a string, objects and arrays as they are), except that a field that is null is left out,
the same as a field that is absent, also inside objects. A JSONL text or id that is a
number is spelled as in the file (``1.50`` -> ``"1.50"``). A lone surrogate escape
(``\\ud800``, not a character) is invalid text, as invalid UTF-8 is; a line may nest
objects and arrays ``_MAX_DEPTH`` (128) levels deep, its own object included.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import datetime as _dt
import decimal
import gzip
import io
import itertools
import json
import math
import os
import re
import shutil
import sys
import tempfile
import zlib
from typing import Any, BinaryIO, Callable, Iterator, Sequence

import polars as pl

from saedata.config import InputConfig
from saedata.corpus.formats import STDIN, Document, detect_format, plain_transcript
from saedata.errors import ConfigError, InputError

_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"

_CHUNK_BYTES = 4 << 20
"""Bytes read (and parsed) at a time from JSONL, text and CSV input; bounds memory."""

_MAX_DEPTH = 128
"""Levels of objects and arrays a JSONL line may nest (the line's own object is one): deeper
lines are an error, so that neither json.loads nor a later json.dumps of the metadata runs
out of stack."""

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
"""A JSON escape of a UTF-16 surrogate (``\\ud83d``): half of a pair, or a lone one that is
not a character; polars reads a lone one as NUL, so such lines are read by json.loads."""

_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")
"""A surrogate code point in a decoded string (json.loads joins the halves of a pair)."""

_END = "\ufdd0\ufdd1"
"""Noncharacters appended to a CSV file read by :meth:`CorpusReader._csv_diagnose`: they
end up in a field only when a quote is still open at the end of the file."""

_CONVERTED_JSON = r"^(?:[\[{]|true$|false$|-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?$)"
"""How polars writes a number, boolean, object or array it read into a string column."""

# polars' Rust panics derive from BaseException, not Exception.
_POLARS_ERRORS: tuple[type[BaseException], ...] = (Exception, pl.exceptions.PanicException)
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)
# dtypes whose Python values are JSON-ready as they come out of polars
_PLAIN_DTYPES = (pl.String, pl.Boolean, pl.Null, pl.Categorical, pl.Enum,
                 pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.Int128,
                 pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)


def _check_file(source: str) -> None:
    if not os.path.exists(source):
        raise InputError("no such file", path=source)
    if os.path.isdir(source):
        raise InputError("is a directory, not a corpus file", path=source)
    if not os.access(source, os.R_OK):
        raise InputError("permission denied", path=source)


def _is_gzip_file(source: str) -> bool:
    with open(source, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


# --------------------------------------------------------------------------- the reader


class CorpusReader:
    """Iterate a corpus in batches of Documents, memory flat in corpus size.

    Iterating yields lists of ``cfg.batch_size`` documents (the last may be shorter) in
    file order; documents with empty or whitespace-only text are skipped and counted in
    ``n_empty``. A file can be iterated again (counters restart); stdin only once.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        cfg: InputConfig = InputConfig(),
        stdin: BinaryIO | None = None,
    ):
        if cfg.batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {cfg.batch_size}")
        raw = os.fspath(path)
        self.cfg = cfg
        self._stdin = stdin
        self._is_stdin = raw == "-"
        self.source: str = STDIN if self._is_stdin else os.path.abspath(raw)
        """Absolute path of the corpus, or ``"<stdin>"``."""
        if not self._is_stdin:
            _check_file(self.source)
        self.format: str = detect_format(raw if self._is_stdin else self.source, cfg.format)
        """One of ``jsonl``, ``csv``, ``parquet``, ``txt``."""
        self.n_read: int = 0
        """Documents yielded so far."""
        self.n_empty: int = 0
        """Documents skipped so far because their text was empty or whitespace-only."""
        if self.format == "txt" and cfg.id_field is not None:
            raise InputError(
                f"a plain-text corpus has no fields, so --id-field {cfg.id_field!r} cannot "
                "apply (documents are numbered by line)",
                path=self.source,
            )
        name = self.source.lower()
        self._separator: str = cfg.extra.get("separator") or (
            "\t" if name.endswith((".tsv", ".tsv.gz")) else ","
        )
        self._seen: dict[str, int] = {}
        self._stdin_used = False

    def __repr__(self) -> str:
        return f"CorpusReader({self.source!r}, format={self.format!r})"

    def __iter__(self) -> Iterator[list[Document]]:
        if self._is_stdin:
            if self._stdin_used:
                raise RuntimeError("stdin can be read only once")
            self._stdin_used = True
        self.n_read = 0
        self.n_empty = 0
        self._seen = {}
        chunks = {
            "jsonl": self._jsonl_chunks,
            "txt": self._txt_chunks,
            "csv": self._csv_chunks,
            "parquet": self._parquet_chunks,
        }[self.format]
        size = self.cfg.batch_size
        buf: list[Document] = []
        for docs in chunks():
            buf.extend(docs)
            start = 0
            while len(buf) - start >= size:
                batch = buf[start : start + size]
                start += size
                self.n_read += len(batch)
                yield batch
            buf = buf[start:]
        if buf:
            self.n_read += len(buf)
            yield buf

    # ------------------------------------------------------------------ raw input

    def _error(self, message: str, line: int | None = None) -> InputError:
        return InputError(_one_line(message), path=self.source, line=line)

    @contextlib.contextmanager
    def _open(self) -> Iterator[BinaryIO]:
        """The corpus as a binary stream, gzip decompressed (detected by magic bytes)."""
        if self._is_stdin:
            stream = self._stdin if self._stdin is not None else sys.stdin.buffer
            head = _read_exactly(stream, 2)
            stream = io.BufferedReader(_Prepend(head, stream))
            yield gzip.GzipFile(fileobj=stream, mode="rb") if head == _GZIP_MAGIC else stream
            return
        with self._open_path(self.source) as stream:
            yield stream

    @contextlib.contextmanager
    def _open_path(self, path: str) -> Iterator[BinaryIO]:
        """The file at ``path`` as a binary stream, gzip decompressed (detected by magic bytes)."""
        try:
            fh = open(path, "rb")
        except OSError as e:
            raise self._error(f"cannot open ({e.strerror or e})") from e
        with fh:
            magic = fh.read(2)
            fh.seek(0)
            if magic == _GZIP_MAGIC:
                with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
                    yield gz  # type: ignore[misc]
            else:
                yield fh

    @contextlib.contextmanager
    def _local_path(self) -> Iterator[str]:
        """A path to the (still compressed) corpus; stdin is first copied to a temporary file."""
        if not self._is_stdin:
            yield self.source
            return
        stream = self._stdin if self._stdin is not None else sys.stdin.buffer
        fd, tmp = tempfile.mkstemp(prefix="saedata-stdin-")
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(_Prepend(b"", stream), out, 1 << 20)  # type: ignore[misc]
            yield tmp
        finally:
            os.unlink(tmp)

    def _line_chunks(self) -> Iterator[tuple[int, list[bytes]]]:
        """(number of the first line, lines without their b"\\n") for each block of input."""
        lineno = 1
        pending: list[bytes] = []
        first = True
        with self._open() as stream:
            while True:
                try:
                    block = stream.read(max(_CHUNK_BYTES, len(_BOM)))  # a whole BOM, if any
                except _GZIP_ERRORS as e:
                    raise self._error(f"corrupt gzip data ({e})", None) from e
                if not block:
                    break
                if first:
                    first = False
                    if block.startswith(_BOM):
                        block = block[len(_BOM) :]
                        if not block:
                            continue  # nothing but a BOM (so far)
                cut = block.rfind(b"\n")
                if cut < 0:
                    pending.append(block)
                    continue
                if pending:
                    pending.append(block[:cut])
                    head, pending = b"".join(pending), []
                else:
                    head = block[:cut]
                lines = head.split(b"\n")
                rest = block[cut + 1 :]
                if rest:
                    pending.append(rest)
                yield lineno, lines
                lineno += len(lines)
        if pending:
            yield lineno, [b"".join(pending)]

    # ------------------------------------------------------------------ building documents

    def _emit(
        self,
        lines: Sequence[int],
        texts: Sequence[Any],
        ids: Sequence[Any] | None,
        metas: Sequence[dict[str, Any]] | None,
        bad: dict[int, str],
        null_check: Callable[[int, str], str | None] | None = None,
    ) -> list[Document]:
        """Documents for one block of rows, raising at the first row at fault, in order.

        ``texts`` and ``ids`` hold strings or None; ``bad`` maps row -> error message;
        ``null_check(row, field)`` tells a null field from a missing one (JSONL).
        """
        tf, idf = self.cfg.text_field, self.cfg.id_field
        seen = self._seen
        docs: list[Document] = []
        append = docs.append
        for i, line in enumerate(lines):
            if bad and i in bad:
                raise self._error(bad[i], line)
            text = texts[i]
            if ids is None:
                ext = str(line)
            else:
                ext = ids[i]
                if ext is None:
                    msg = null_check(i, idf) if null_check else None  # type: ignore[arg-type]
                    raise self._error(msg or f"empty id (field {idf!r} is null)", line)
                if ext == "":
                    raise self._error(f"empty id (field {idf!r} is '')", line)
                first = seen.get(ext)
                if first is not None:
                    raise self._error(f"duplicate id {ext!r} (first seen on line {first})", line)
                seen[ext] = line
            if text is None:
                msg = null_check(i, tf) if null_check else None
                if msg:
                    raise self._error(msg, line)
                self.n_empty += 1
                continue
            messages = None
            if isinstance(text, tuple):
                messages, text = text, plain_transcript(text)
                if all(not c or c.isspace() for _, c in messages):
                    text = ""
            if not text or text.isspace():
                self.n_empty += 1
                continue
            append(Document(ext, text, metas[i] if metas is not None else {}, line, messages))
        return docs

    def _frame_docs(
        self,
        df: pl.DataFrame,
        lines: Sequence[int],
        *,
        drop_nulls: bool = False,
        null_check: Callable[[int, str], str | None] | None = None,
    ) -> list[Document]:
        """Documents from a polars frame whose row ``i`` came from line/row ``lines[i]``."""
        tf, idf = self.cfg.text_field, self.cfg.id_field
        bad: dict[int, str] = {}
        n = df.height
        if tf in df.columns:
            texts = _column_values(df.get_column(tf), tf, bad, transcript=True)
        else:
            texts = [None] * n
        ids = None
        if idf is not None:
            ids = _column_values(df.get_column(idf), idf, bad) if idf in df.columns else [None] * n
        meta_cols = [c for c in df.columns if c != tf and c != idf]
        metas = _frame_meta(df.select(meta_cols), drop_nulls) if meta_cols else None
        return self._emit(lines, texts, ids, metas, bad, null_check)

    # ------------------------------------------------------------------ JSONL

    def _jsonl_chunks(self) -> Iterator[list[Document]]:
        for start, raw in self._line_chunks():
            numbers = [start + i for i, b in enumerate(raw) if b and not b.isspace()]
            lines = [raw[k - start] for k in numbers]
            if not lines:
                continue
            df = self._jsonl_frame(lines)
            if df is None:
                yield self._jsonl_slow(numbers, lines)
                continue

            def null_check(i: int, field: str, lines: list[bytes] = lines) -> str | None:
                obj = json.loads(lines[i])
                if field in obj:
                    return None  # present but null
                return _missing_field(field, obj, field == self.cfg.id_field)

            yield self._frame_docs(df, numbers, drop_nulls=True, null_check=null_check)

    def _jsonl_frame(self, lines: list[bytes]) -> pl.DataFrame | None:
        """The block parsed at once by polars, or None when it must be read line by line:
        polars rejects it (bad JSON somewhere, or no one schema fits), it holds an escape
        polars reads wrongly (a surrogate), a line may nest too deeply for polars (objects
        some 550 deep crash it), or polars changed some line's value to give a column one
        type (:meth:`_polars_kept_values`)."""
        block = b"\n".join(lines)
        if _SURROGATE_ESCAPE.search(block):
            return None
        if any(line.count(b"{") + line.count(b"[") > _MAX_DEPTH for line in lines):
            return None  # maybe nested too deeply: json.loads tells (_MAX_DEPTH)
        try:
            df = pl.read_ndjson(block, infer_schema_length=None)
        except _POLARS_ERRORS:
            return None
        if df.height != len(lines) or not self._polars_kept_values(df, lines):
            return None
        return df

    def _polars_kept_values(self, df: pl.DataFrame, lines: list[bytes]) -> bool:
        """Whether every value polars read from the block is the line's own JSON value.

        polars gives each column one type: when lines disagree it reads integers as floats
        (``1`` -> ``1.0``) and numbers, booleans, objects and arrays as their JSON text
        (``5`` -> ``"5"``), also inside nested values. So only flat columns, and arrays of
        flat values, are trusted: integers, booleans, floats none of which is whole, and
        strings, once the lines where one looks like converted JSON are seen to hold
        strings there. The text and id must be spelled as written, so a float there
        (``1.50``) or a zero (``-0``) is not trusted either.
        """
        spelled = (self.cfg.text_field, self.cfg.id_field)
        suspects: dict[int, list[tuple[str, bool]]] = {}  # row -> (column, is an array)
        for col in df.get_columns():
            is_list = isinstance(col.dtype, pl.List)
            values = col.explode() if is_list else col
            dtype = values.dtype
            if dtype == pl.String:
                looks_converted = (col.list.eval(pl.element().str.contains(_CONVERTED_JSON)).list.any()
                                   if is_list else col.str.contains(_CONVERTED_JSON))
                for i in looks_converted.arg_true().to_list():
                    suspects.setdefault(i, []).append((col.name, is_list))
            elif dtype.is_float():
                if col.name in spelled or (values == values.floor()).any():
                    return False
            elif dtype.is_integer():
                if col.name in spelled and (values == 0).any():
                    return False
            elif dtype not in (pl.Boolean, pl.Null):
                return False
        for i, columns in suspects.items():
            obj = json.loads(lines[i])
            if not all(_holds_strings(obj.get(name), is_list) for name, is_list in columns):
                return False
        return True

    def _jsonl_slow(self, numbers: list[int], lines: list[bytes]) -> list[Document]:
        """Parse a block line by line with json.loads, every value the line's own,
        stopping at the first bad line."""
        tf, idf = self.cfg.text_field, self.cfg.id_field
        texts: list[Any] = []
        ids: list[Any] = []
        metas: list[dict[str, Any]] = []
        bad: dict[int, str] = {}
        for i, raw in enumerate(lines):
            try:
                obj, problem = _parse_json_line(raw, numbers[i])
                if problem is None:
                    problem = self._jsonl_problem(obj, raw)
                if problem is None:
                    texts.append(_text_value(_spelled(obj[tf], raw, tf), tf, bad, i, transcript=True))
                    ids.append(_text_value(_spelled(obj[idf], raw, idf), idf, bad, i) if idf is not None else None)
                    metas.append({k: c for k, v in obj.items()
                                  if k != tf and k != idf and (c := _clean(v, _MAX_DEPTH - 1)) is not None})
            except RecursionError:  # from json.loads, or _clean past _MAX_DEPTH
                problem = f"too deeply nested JSON (more than {_MAX_DEPTH} levels of objects and arrays)"
            if problem is not None:
                bad[i] = problem  # _emit raises here, after the rows before it
                numbers = numbers[: i + 1]
                break
        return self._emit(numbers, texts, ids if idf is not None else None, metas, bad)

    def _jsonl_problem(self, obj: dict[str, Any], raw: bytes) -> str | None:
        """What is wrong with a line's object as a document (a missing text or id field, a
        lone surrogate), or None."""
        tf, idf = self.cfg.text_field, self.cfg.id_field
        if tf not in obj:
            return _missing_field(tf, obj, False)
        if idf is not None and idf not in obj:
            return _missing_field(idf, obj, True)
        if _SURROGATE_ESCAPE.search(raw):
            return _lone_surrogate(obj)
        return None

    # ------------------------------------------------------------------ plain text

    def _txt_chunks(self) -> Iterator[list[Document]]:
        for start, raw in self._line_chunks():
            try:
                texts = b"\n".join(raw).decode("utf-8").split("\n")
            except UnicodeDecodeError:
                for i, b in enumerate(raw):
                    try:
                        b.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise self._error(_utf8_message(e), start + i) from None
                raise  # pragma: no cover - the block failed, so some line does
            texts = [t[:-1] if t.endswith("\r") else t for t in texts]
            yield self._emit(range(start, start + len(texts)), texts, None, None, {})

    # ------------------------------------------------------------------ CSV

    def _csv_chunks(self) -> Iterator[list[Document]]:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        sep = self._separator
        with self._local_path() as path:
            with self._open_path(path) as stream:
                header = stream.readline()
                if header.startswith(_BOM):
                    header = header[len(_BOM) :]
                if not header.strip():
                    if not header and not stream.read(1):
                        return  # an empty file: no documents
                    raise self._error("the first line is empty; a CSV corpus needs a header row", 1)
                names = self._csv_header(header, sep)
                quotes = _QuoteCounter(stream, header.count(b'"'))
                rows = 0
                held: list[Document] = []  # the last block, yielded once the quotes are checked
                try:
                    reader = pacsv.open_csv(
                        quotes,
                        read_options=pacsv.ReadOptions(column_names=names, block_size=_CHUNK_BYTES),
                        parse_options=pacsv.ParseOptions(delimiter=sep, newlines_in_values=True),
                        convert_options=pacsv.ConvertOptions(
                            column_types={n: pa.string() for n in names},
                            strings_can_be_null=False,
                            quoted_strings_can_be_null=False,
                        ),
                    )
                    for batch in reader:
                        df = pl.from_arrow(batch)
                        assert isinstance(df, pl.DataFrame)
                        yield held
                        held = self._frame_docs(df, range(rows + 1, rows + 1 + df.height))
                        rows += df.height
                except (pa.ArrowException, *_GZIP_ERRORS) as e:
                    if isinstance(e, _GZIP_ERRORS):
                        raise self._error(f"corrupt gzip data ({e})") from e
                    if rows == 0 and "Empty CSV file" in str(e):
                        return  # a header and nothing else: no documents
                    found = self._csv_diagnose(path, sep, names)
                    if found is not None:
                        raise self._error(found[1], found[0]) from e
                    raise self._error(f"cannot parse CSV ({_one_line(str(e))})", None) from e
                if quotes.count % 2:
                    # a quoted field that never ends, which pyarrow silently reads to the end
                    # of the file; or a quote inside an unquoted field (5" screen), which is fine
                    found = self._csv_diagnose(path, sep, names)
                    if found is not None:
                        raise self._error(found[1], found[0])
                yield held

    def _csv_header(self, header: bytes, sep: str) -> list[str]:
        """Column names from the header line; checks the text and id columns are there."""
        try:
            text = header.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self._error(_utf8_message(e) + " in the header", 1) from None
        try:
            names = next(csv.reader([text.rstrip("\r\n")], delimiter=sep))
        except csv.Error as e:  # a line end inside the header ("\r" alone)
            raise self._error(f"malformed CSV header ({e})", 1) from None
        seen: set[str] = set()
        for n in names:
            if n in seen:
                raise self._error(f"duplicate column {n!r} in the header", 1)
            if "\x00" in n:  # Arrow passes column names to polars as C strings
                raise self._error(f"column name {n!r} holds a NUL character", 1)
            seen.add(n)
        self._check_columns(names)
        return names

    def _check_columns(self, names: list[str]) -> None:
        """Raise unless the text and id columns are among ``names`` (CSV header, Parquet schema)."""
        fields = ((self.cfg.text_field, "--text-field"), (self.cfg.id_field, "--id-field"))
        for field, option in fields:
            if field is not None and field not in names:
                columns = ", ".join(names)
                raise self._error(f"no column {field!r} (columns: {columns}); use {option}", 1)

    def _csv_diagnose(self, path: str, sep: str, names: list[str]) -> tuple[int, str] | None:
        """(data row, problem) for the first row at fault, found by reading the file again
        with Python's csv module, as leniently as pyarrow reads it: a quoted field that
        never ends, a wrong number of fields, or invalid UTF-8."""
        limit = csv.field_size_limit()
        csv.field_size_limit(sys.maxsize)
        try:
            with self._open_path(path) as raw:
                text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
                text.readline()  # the header: one line, as _csv_chunks reads it
                # _END becomes a row of its own, unless a quoted field is still open at the end
                reader = csv.reader(itertools.chain(text, [_END]), delimiter=sep)
                row = 0
                try:
                    for fields in reader:
                        if not fields:
                            continue  # a blank line, skipped as pyarrow does
                        if fields == [_END]:
                            break
                        row += 1
                        if fields[-1].endswith(_END):
                            last_line = reader.line_num  # the header, and all but _END
                            opened = last_line - _line_breaks(fields[-1][: -len(_END)])
                            return row, f"unterminated quote: the quoted field that starts on line {opened} never ends"
                        if len(fields) != len(names):
                            return row, f"{len(fields)} fields, but the header has {len(names)}"
                        for name, value in zip(names, fields):
                            try:
                                value.encode("utf-8")
                            except UnicodeEncodeError:
                                return row, f"invalid UTF-8 in column {name!r}"
                except csv.Error as e:
                    return row + 1, f"malformed CSV ({e})"
                except _GZIP_ERRORS:
                    return None
        finally:
            csv.field_size_limit(limit)
        return None

    # ------------------------------------------------------------------ Parquet

    def _parquet_chunks(self) -> Iterator[list[Document]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        with self._local_path() as path:
            if os.path.getsize(path) == 0:
                return  # an empty file: no documents
            try:
                pf = pq.ParquetFile(path)
            except (pa.ArrowException, OSError) as e:
                raise self._error(f"not a valid Parquet file ({_one_line(str(e))})") from e
            with pf:
                names = pf.schema_arrow.names
                self._check_columns(names)
                rows = 0
                batches = pf.iter_batches(batch_size=self.cfg.batch_size)
                while True:
                    try:
                        batch = next(batches, None)
                        if batch is None:
                            break
                        df = pl.from_arrow(batch)
                    except (pa.ArrowException, OSError, *_POLARS_ERRORS) as e:
                        raise self._error(f"corrupt Parquet data ({_one_line(str(e))})", rows + 1) from e
                    assert isinstance(df, pl.DataFrame)
                    yield self._frame_docs(df, range(rows + 1, rows + 1 + df.height))
                    rows += df.height


def read_documents(
    path: str | os.PathLike, cfg: InputConfig = InputConfig(), stdin: BinaryIO | None = None
) -> CorpusReader:
    """A :class:`CorpusReader` over ``path`` (``"-"`` for stdin); see the module docstring."""
    return CorpusReader(path, cfg, stdin=stdin)


def count_documents(path: str | os.PathLike, cfg: InputConfig = InputConfig()) -> int | None:
    """A cheap estimate of the number of documents, for progress bars.

    Lines (JSONL: blank ones included; CSV: header excluded) or Parquet's row count from
    its metadata; None for stdin and gzip-compressed input, which would cost a full read.
    """
    raw = os.fspath(path)
    if raw == "-":
        return None
    source = os.path.abspath(raw)
    _check_file(source)
    fmt = detect_format(source, cfg.format)
    if os.path.getsize(source) == 0:
        return 0
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(source).metadata.num_rows
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"not a valid Parquet file ({_one_line(str(e))})", path=source) from e
    if _is_gzip_file(source):
        return None
    lines = 0
    last = b"\n"
    with open(source, "rb") as fh:
        while block := fh.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"
    return max(lines - 1, 0) if fmt == "csv" else lines


# --------------------------------------------------------------------------- helpers


class _Prepend(io.RawIOBase):
    """A raw stream that yields ``head`` and then the rest of ``stream`` (bytes or text)."""

    def __init__(self, head: bytes, stream: Any):
        self._head = head
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._head:
            data, self._head = self._head[: len(b)], self._head[len(b) :]
        else:
            data = self._stream.read(len(b))
            if isinstance(data, str):
                data = data.encode("utf-8")
        b[: len(data)] = data
        return len(data)


class _QuoteCounter(io.RawIOBase):
    """A raw stream over ``stream`` that counts the quote characters (``"``) read through it."""

    def __init__(self, stream: BinaryIO, count: int = 0):
        self._stream = stream
        self.count = count

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._stream.read(len(b))
        b[: len(data)] = data
        self.count += data.count(b'"')
        return len(data)


def _line_breaks(text: str) -> int:
    """Line ends in ``text`` (``\\n``, ``\\r\\n`` or ``\\r``), but for one that ends it."""
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith(("\n", "\r")):
        text = text[:-1]
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def _read_exactly(stream: Any, n: int) -> bytes:
    out = b""
    while len(out) < n:
        data = stream.read(n - len(out))
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not data:
            break
        out += data
    return out


def _one_line(message: str) -> str:
    return message.strip().replace("\r", "\\r").replace("\n", "\\n")


def _utf8_message(e: UnicodeDecodeError) -> str:
    return f"invalid UTF-8 (byte 0x{e.object[e.start]:02x} at column {e.start + 1})"


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def _missing_field(field: str, obj: dict[str, Any], is_id: bool) -> str:
    option = "--id-field" if is_id else "--text-field"
    return f"no field {field!r} (fields: {', '.join(map(str, obj)) or 'none'}); use {option}"


def _parse_json_line(raw: bytes, line: int) -> tuple[Any, str | None]:
    """(object, None) or (None, problem) for one JSONL line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, _utf8_message(e)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        hint = ""
        if line == 1 and text.lstrip().startswith("["):
            hint = "; this looks like a JSON array, but a corpus must be JSON Lines (one object per line)"
        return None, f"invalid JSON ({e.msg} at column {e.colno}){hint}"
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {_kind(obj)}"
    return obj, None


def _spelled(value: Any, raw: bytes, field: str) -> Any:
    """A JSONL line's text or id value, with a float or a zero as the line spells it
    (``1.50``, ``1e5``, ``-0``: Python would write 1.5, 100000.0, 0); other values as they are."""
    if isinstance(value, float) or (type(value) is int and value == 0):
        return json.loads(raw, parse_int=str, parse_float=str, parse_constant=str)[field]
    return value


def _holds_strings(value: Any, is_list: bool) -> bool:
    """Whether a JSON value is a string (``is_list``: an array of strings and nulls)."""
    if not is_list:
        return isinstance(value, str)
    return isinstance(value, list) and all(v is None or isinstance(v, str) for v in value)


def _lone_surrogate(obj: dict[str, Any]) -> str | None:
    """A message naming the first lone surrogate (an escape such as ``\\ud800`` that is not
    a character) in a JSON object's names and strings, or None."""
    for key, value in obj.items():
        stack = [key, value]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                stack.extend(item.values())
                stack.extend(item.keys())
            elif isinstance(item, list):
                stack.extend(item)
            elif isinstance(item, str) and (found := _LONE_SURROGATE.search(item)):
                return f"invalid text: lone surrogate \\u{ord(found.group()):04x} in field {key!r}"
    return None


def _text_value(value: Any, field: str, bad: dict[int, str], row: int,
                transcript: bool = False) -> str | tuple[tuple[str, str], ...] | None:
    """A text or id field's value as a string (numbers via str()), or None; odd types go to
    ``bad``. With ``transcript`` (the text field) a list of chat messages is read as a
    transcript: a tuple of (role, content) pairs."""
    if value is None or isinstance(value, str):
        return value
    if transcript and isinstance(value, (list, tuple)):
        messages = _transcript(value)
        if isinstance(messages, str):
            bad.setdefault(row, f"field {field!r} holds an array that is not a chat transcript ({messages})")
            return None
        return messages
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, decimal.Decimal)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            bad.setdefault(row, f"field {field!r}: {_utf8_message(e)}")
            return None
    if isinstance(value, (dict, list, tuple)):
        bad.setdefault(row, f"field {field!r} holds {_kind(value)}, not text")
        return None
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat()
    return str(value)


def _column_values(series: pl.Series, field: str, bad: dict[int, str], transcript: bool = False) -> list[Any]:
    """A text or id column as Python strings (or None; transcripts as in :func:`_text_value`);
    rows of unusable values go to ``bad``."""
    values = series.to_list()
    if series.dtype == pl.String or series.dtype == pl.Null:
        return values
    return [_text_value(v, field, bad, i, transcript) for i, v in enumerate(values)]


def _transcript(value: list[Any] | tuple[Any, ...]) -> tuple[tuple[str, str], ...] | str:
    """A list of chat messages as (role, content) pairs, or what is wrong with it. A message is
    an object with a string ``role`` and a ``content`` that is a string or a list of parts
    (``{"type": "text", "text": ...}``; the text parts are joined, other parts skipped)."""
    if not value:
        return "no messages"
    out = []
    for n, message in enumerate(value, start=1):
        if not isinstance(message, dict):
            return f"message {n} is {_kind(message)}, not an object with role and content"
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            return f"message {n} has no 'role' string"
        if isinstance(content, list):
            parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if not all(isinstance(p, str) for p in parts):
                return f"message {n} has a text part without a 'text' string"
            content = "".join(parts)  # type: ignore[arg-type]
        if content is None:
            content = ""
        if not isinstance(content, str):
            return f"message {n} has a 'content' that is {_kind(content)}, not text"
        out.append((role, content))
    return tuple(out)


def _frame_meta(df: pl.DataFrame, drop_nulls: bool) -> list[dict[str, Any]]:
    """Rows of ``df`` as JSON-ready dicts (nulls left out when ``drop_nulls``)."""
    dicts = df.to_dicts()
    convert = [c for c in df.columns if _needs_conversion(df.get_column(c))]
    nullable = [c for c in df.columns if df.get_column(c).null_count()] if drop_nulls else []
    if not convert and not nullable:
        return dicts
    clean = _clean if drop_nulls else _jsonable
    for d in dicts:
        for c in convert:
            d[c] = clean(d[c])
        for c in nullable:
            if d[c] is None:
                del d[c]
    return dicts


def _needs_conversion(series: pl.Series) -> bool:
    """Whether some Python value of ``series`` is not JSON-ready as polars gives it."""
    dtype = series.dtype
    if isinstance(dtype, _PLAIN_DTYPES):
        return False
    if dtype.is_float():
        return bool(series.is_nan().any() or series.is_infinite().any())
    return True


def _jsonable(value: Any) -> Any:
    """``value`` as something ``json.dumps`` writes as standard JSON."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (_dt.date, _dt.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(data).decode("ascii")
    return str(value)


def _clean(value: Any, depth: int = _MAX_DEPTH) -> Any:
    """:func:`_jsonable`, also leaving null members out of objects (JSONL meta); raises
    RecursionError when objects and arrays nest more than ``depth`` levels deep."""
    if isinstance(value, (dict, list)) and depth <= 0:
        raise RecursionError(f"more than {_MAX_DEPTH} levels of objects and arrays")
    if isinstance(value, dict):
        return {str(k): c for k, v in value.items() if (c := _clean(v, depth - 1)) is not None}
    if isinstance(value, list):
        return [_clean(v, depth - 1) for v in value]
    return _jsonable(value)
