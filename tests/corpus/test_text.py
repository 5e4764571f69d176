"""Tests for saedata.io: every format round-trips, batches stream, every input mistake
raises a one-line InputError naming the file and line."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import gzip
import io
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import saedata.corpus.text as sio
from saedata.config import InputConfig
from saedata.corpus import CorpusReader, Document, count_documents, detect_format, read_documents
from saedata.errors import ConfigError, InputError, UnsupportedFormatError

REVIEWS = [
    {"id": "r1", "text": "The battery lasts two full days.", "stars": 5, "product": "phone"},
    {"id": "r2", "text": "Screen cracked after a week, \"sturdy\" my foot.", "stars": 1, "product": "phone"},
    {"id": "r3", "text": "Fits my 5\" tablet, but the zip is stiff.", "stars": 3, "product": "case"},
    {"id": "r4", "text": "Café-quality espresso — naïve me expected less. ☕", "stars": 4, "product": "espresso"},
    {"id": "r5", "text": "Line one of a long review.\nLine two, after a newline.", "stars": 4, "product": "kettle"},
]


def docs_of(reader) -> list[Document]:
    return [d for batch in reader for d in batch]


def write_jsonl(path: Path, rows, blank_after: int | None = None) -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    if blank_after is not None:
        lines.insert(blank_after, "")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def raises_at(path: Path | str, line: int | None, exc=InputError, **cfg) -> InputError:
    """Read the corpus, expect ``exc`` naming ``path``'s file and ``line``; return it."""
    with pytest.raises(exc) as info:
        docs_of(read_documents(path, InputConfig(**cfg)))
    return check_message(info.value, path, line)


def check_message(err: InputError, path: Path | str, line: int | None) -> InputError:
    msg = str(err)
    assert "\n" not in msg and "\r" not in msg
    name = Path(path).name if path != "-" else "<stdin>"
    if line is None:
        assert f"{name}: " in msg
    else:
        assert f"{name}:{line}: " in msg, msg
        assert err.line == line
    return err


@pytest.fixture
def small_chunks(monkeypatch):
    """Read input in tiny blocks, so lines and CSV rows straddle block boundaries."""
    monkeypatch.setattr(sio, "_CHUNK_BYTES", 64)


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("corpus.jsonl", "jsonl"),
        ("corpus.NDJSON", "jsonl"),
        ("dump.json", "jsonl"),
        ("corpus.jsonl.gz", "jsonl"),
        ("reviews.csv", "csv"),
        ("reviews.tsv.gz", "csv"),
        ("shard-0001.parquet", "parquet"),
        ("shard.pq", "parquet"),
        ("lines.txt", "txt"),
        ("lines.text.gz", "txt"),
        ("-", "jsonl"),
    ],
)
def test_detect_format_by_extension(name, fmt):
    assert detect_format(name, None) == fmt


def test_detect_format_explicit_wins():
    assert detect_format("notes.dat", "txt") == "txt"
    assert detect_format("-", "csv") == "csv"


@pytest.mark.parametrize("name", ["corpus.xlsx", "README", "data.parquet.gz", "corpus.gz"])
def test_detect_format_unsupported(name):
    with pytest.raises(UnsupportedFormatError) as info:
        detect_format(name, None)
    msg = str(info.value)
    assert msg.startswith(f"{name}: ") and "\n" not in msg
    if name != "data.parquet.gz":
        assert ".jsonl" in msg and ".csv" in msg and "--input-format" in msg


def test_detect_format_unknown_explicit():
    with pytest.raises(UnsupportedFormatError, match="unknown input format 'xml'"):
        detect_format("corpus.xml", "xml")


def test_unsupported_extension_names_file(tmp_path):
    path = tmp_path / "corpus.xlsx"
    path.write_bytes(b"PK\x03\x04")
    with pytest.raises(UnsupportedFormatError) as info:
        read_documents(path)
    check_message(info.value, path, None)
    assert "--input-format" in str(info.value) and ".parquet" in str(info.value)
    # ... and an explicit format reads it anyway
    path.write_text('{"text": "hi"}\n')
    assert [d.text for d in docs_of(read_documents(path, InputConfig(format="jsonl")))] == ["hi"]


# --------------------------------------------------------------------------- round trips


def test_jsonl_round_trip(tmp_path):
    path = write_jsonl(tmp_path / "reviews.jsonl", REVIEWS, blank_after=2)
    reader = read_documents(path, InputConfig(id_field="id"))
    assert reader.format == "jsonl" and reader.source == str(path.resolve())
    docs = docs_of(reader)
    assert [d.ext_id for d in docs] == ["r1", "r2", "r3", "r4", "r5"]
    assert [d.text for d in docs] == [r["text"] for r in REVIEWS]
    assert docs[3].meta == {"stars": 4, "product": "espresso"}
    assert [d.line for d in docs] == [1, 2, 4, 5, 6]  # the blank line 3 is skipped but counted
    assert reader.n_read == 5 and reader.n_empty == 0


def test_jsonl_numbers_lines_without_id_field(tmp_path):
    path = write_jsonl(tmp_path / "reviews.jsonl", REVIEWS, blank_after=1)
    docs = docs_of(read_documents(path))
    assert [d.ext_id for d in docs] == ["1", "3", "4", "5", "6"]
    assert docs[0].meta == {"id": "r1", "stars": 5, "product": "phone"}


def test_jsonl_meta_nested_and_json_ready(tmp_path):
    rows = [
        {"text": "a", "tags": ["x", "y"], "author": {"name": "Ann", "age": 31}, "ok": True},
        {"text": "b", "tags": [], "author": {"name": "Bo"}, "score": 0.5, "note": None},
        {"text": 42, "big": 123456789012345678901234567890},
    ]
    docs = docs_of(read_documents(write_jsonl(tmp_path / "c.jsonl", rows)))
    assert docs[0].meta == {"tags": ["x", "y"], "author": {"name": "Ann", "age": 31}, "ok": True}
    # absent and null fields are both left out, also inside objects
    assert docs[1].meta == {"tags": [], "author": {"name": "Bo"}, "score": 0.5}
    assert docs[2].text == "42" and docs[2].meta == {"big": 123456789012345678901234567890}
    for d in docs:
        json.dumps(d.meta, allow_nan=False)


def test_jsonl_block_polars_cannot_type_falls_back(tmp_path):
    # "m" is an object on one line and an array on the next: valid JSON Lines that polars
    # cannot fit one schema; the block is read line by line instead.
    rows = [{"text": "a", "m": {"k": 1}}, {"text": "b", "m": [1, "two"]}, {"text": "c", "x": float("nan")}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    docs = docs_of(read_documents(path))
    assert [d.meta for d in docs] == [{"m": {"k": 1}}, {"m": [1, "two"]}, {}]


def test_jsonl_crlf_bom_and_no_final_newline(tmp_path):
    path = tmp_path / "win.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "first"}\r\n\r\n{"text": "second"}')
    docs = docs_of(read_documents(path))
    assert [(d.text, d.line) for d in docs] == [("first", 1), ("second", 3)]


def test_csv_round_trip(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_bytes(
        b"\xef\xbb\xbfid,text,stars,product\r\n"
        b'r1,The battery lasts two full days.,5,phone\r\n'
        b'r2,"Screen cracked, ""sturdy"" my foot.",1,phone\r\n'
        b'r3,Fits my 5" tablet,3,\r\n'
        b'r4,"Line one.\r\nLine two.",4,kettle\r\n'
        b"r5,007 is a fine agent,2,film\r\n"
    )
    reader = read_documents(path, InputConfig(id_field="id"))
    assert reader.format == "csv"
    docs = docs_of(reader)
    assert [d.ext_id for d in docs] == ["r1", "r2", "r3", "r4", "r5"]
    assert [d.text for d in docs] == [
        "The battery lasts two full days.",
        'Screen cracked, "sturdy" my foot.',
        'Fits my 5" tablet',
        "Line one.\r\nLine two.",
        "007 is a fine agent",
    ]
    # CSV values stay strings, exactly as written; an empty cell is ""
    assert docs[0].meta == {"stars": "5", "product": "phone"}
    assert docs[2].meta == {"stars": "3", "product": ""}
    assert [d.line for d in docs] == [1, 2, 3, 4, 5]  # data rows, header excluded


def test_tsv_and_separator_option(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("text\tlabel\nbonjour, le monde\tfr\nhello\ten\n")
    docs = docs_of(read_documents(tsv))
    assert [(d.text, d.meta) for d in docs] == [("bonjour, le monde", {"label": "fr"}), ("hello", {"label": "en"})]
    semi = tmp_path / "euro.csv"
    semi.write_text("text;price\nZwei Kaffee;3,50\n")
    docs = docs_of(read_documents(semi, InputConfig(extra={"separator": ";"})))
    assert [(d.text, d.meta) for d in docs] == [("Zwei Kaffee", {"price": "3,50"})]


def test_csv_across_many_blocks(tmp_path, small_chunks):
    path = tmp_path / "many.csv"
    rows = [f'{i},"review {i}, with a comma\nand a newline",{i % 5}' for i in range(200)]
    path.write_text("id,text,stars\n" + "\n".join(rows) + "\n")
    docs = docs_of(read_documents(path, InputConfig(id_field="id", batch_size=7)))
    assert [d.ext_id for d in docs] == [str(i) for i in range(200)]
    assert docs[123].text == "review 123, with a comma\nand a newline" and docs[123].line == 124


def test_parquet_round_trip(tmp_path):
    path = tmp_path / "reviews.parquet"
    table = pa.table(
        {
            "doc_id": pa.array([101, 102, 103, 104], pa.int64()),
            "text": ["Great kettle.", None, "   ", "Loud fan, otherwise fine."],
            "date": [dt.date(2024, 1, 2), dt.date(2024, 1, 3), None, dt.date(2024, 2, 29)],
            "seen": [dt.datetime(2024, 1, 2, 3, 4, 5)] * 4,
            "price": pa.array([decimal.Decimal("19.99")] * 4, pa.decimal128(5, 2)),
            "score": [0.5, float("nan"), 1.0, 2.0],
            "tags": [["home"], [], None, ["office", "noise"]],
            "blob": [b"\xff\x00", b"ok", None, None],
        }
    )
    pq.write_table(table, path, row_group_size=2)
    reader = read_documents(path, InputConfig(id_field="doc_id", batch_size=3))
    docs = docs_of(reader)
    assert [(d.ext_id, d.text, d.line) for d in docs] == [
        ("101", "Great kettle.", 1),
        ("104", "Loud fan, otherwise fine.", 4),
    ]
    assert reader.n_empty == 2 and reader.n_read == 2
    assert docs[0].meta == {
        "date": "2024-01-02",
        "seen": "2024-01-02T03:04:05",
        "price": 19.99,
        "score": 0.5,
        "tags": ["home"],
        "blob": "/wA=",  # bytes that are not UTF-8 become base64
    }
    assert docs[1].meta["tags"] == ["office", "noise"] and docs[1].meta["blob"] is None
    for d in docs:
        json.dumps(d.meta, allow_nan=False)


def test_txt_round_trip(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_bytes("first line\r\n\n  \nthird — with unicode ✓\nlast, no newline".encode())
    reader = read_documents(path)
    docs = docs_of(reader)
    assert [(d.ext_id, d.text, d.line, d.meta) for d in docs] == [
        ("1", "first line", 1, {}),
        ("4", "third — with unicode ✓", 4, {}),
        ("5", "last, no newline", 5, {}),
    ]
    assert reader.n_empty == 2


def test_txt_rejects_id_field(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("a\n")
    with pytest.raises(InputError, match="--id-field"):
        read_documents(path, InputConfig(id_field="id"))


# --------------------------------------------------------------------------- stdin and gzip


def test_stdin_defaults_to_jsonl():
    data = "\n".join(json.dumps(r) for r in REVIEWS).encode()
    reader = read_documents("-", InputConfig(id_field="id"), stdin=io.BytesIO(data))
    assert reader.source == "<stdin>" and reader.format == "jsonl"
    assert [d.ext_id for d in docs_of(reader)] == ["r1", "r2", "r3", "r4", "r5"]
    with pytest.raises(RuntimeError):
        docs_of(reader)  # stdin is consumed


@pytest.mark.parametrize("fmt", ["csv", "txt", "parquet"])
def test_stdin_other_formats(fmt, tmp_path):
    if fmt == "csv":
        data = b'id,text\na,"hello, world"\nb,bye\n'
    elif fmt == "txt":
        data = b"hello, world\nbye\n"
    else:
        sink = io.BytesIO()
        pq.write_table(pa.table({"id": ["a", "b"], "text": ["hello, world", "bye"]}), sink)
        data = sink.getvalue()
    cfg = InputConfig(format=fmt, id_field=None if fmt == "txt" else "id")
    docs = docs_of(read_documents("-", cfg, stdin=io.BytesIO(data)))
    assert [d.text for d in docs] == ["hello, world", "bye"]
    assert [d.ext_id for d in docs] == (["1", "2"] if fmt == "txt" else ["a", "b"])


def test_stdin_gzip_and_errors_name_stdin():
    data = gzip.compress(b'{"text": "zipped"}\n{"text": oops}\n')
    with pytest.raises(InputError) as info:
        docs_of(read_documents("-", stdin=io.BytesIO(data)))
    check_message(info.value, "-", 2)
    assert str(info.value).startswith("<stdin>:2: invalid JSON")


@pytest.mark.parametrize("name", ["corpus.jsonl.gz", "corpus.csv.gz", "corpus.txt.gz"])
def test_gzip_files(tmp_path, name):
    if ".jsonl" in name:
        raw = "\n".join(json.dumps(r) for r in REVIEWS).encode()
    elif ".csv" in name:
        raw = b'text\n"The battery lasts two full days."\n'
    else:
        raw = b"The battery lasts two full days.\n"
    path = tmp_path / name
    path.write_bytes(gzip.compress(raw))
    docs = docs_of(read_documents(path))
    assert docs[0].text == "The battery lasts two full days."
    assert count_documents(path, InputConfig()) is None


def test_gzip_detected_by_content(tmp_path):
    path = tmp_path / "export.dat"
    path.write_bytes(gzip.compress(b"alpha\nbeta\n"))
    assert [d.text for d in docs_of(read_documents(path, InputConfig(format="txt")))] == ["alpha", "beta"]


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "corpus.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "a"}\n' * 1000)[:-30])
    err = raises_at(path, None)
    assert "corrupt gzip" in str(err)


# --------------------------------------------------------------------------- batching and streaming


def test_batches_respect_batch_size(tmp_path, small_chunks):
    rows = [{"id": f"d{i}", "text": f"document number {i}" if i % 10 else " "} for i in range(95)]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    reader = read_documents(path, InputConfig(id_field="id", batch_size=8))
    batches = list(reader)
    sizes = [len(b) for b in batches]
    assert all(isinstance(b, list) for b in batches)
    assert sizes[:-1] == [8] * (len(sizes) - 1) and 0 < sizes[-1] <= 8
    assert reader.n_read == sum(sizes) == 85 and reader.n_empty == 10
    # tiny blocks give the same documents as one big block
    again = docs_of(read_documents(path, InputConfig(id_field="id", batch_size=1000)))
    assert [d for b in batches for d in b] == again


class EndlessCorpus(io.RawIOBase):
    """A stdin that never ends: proves the reader does not read ahead of its consumer."""

    def __init__(self):
        self.lines_served = 0
        self._buf = b""

    def readable(self):
        return True

    def readinto(self, b):
        while len(self._buf) < len(b):
            self.lines_served += 1
            self._buf += json.dumps({"text": f"endless document {self.lines_served}"}).encode() + b"\n"
        n = len(b)
        b[:n], self._buf = self._buf[:n], self._buf[n:]
        return n


def test_reading_is_lazy_on_an_endless_stream(monkeypatch):
    monkeypatch.setattr(sio, "_CHUNK_BYTES", 4096)
    stream = EndlessCorpus()
    reader = read_documents("-", InputConfig(batch_size=16), stdin=stream)
    batches = []
    for batch in reader:
        batches.append(batch)
        if len(batches) == 50:
            break
    assert all(len(b) == 16 for b in batches)
    assert batches[-1][-1].text == "endless document 800"
    assert stream.lines_served < 800 + 400  # at most a block or two read ahead


def test_memory_flat_in_corpus_size(tmp_path, monkeypatch):
    monkeypatch.setattr(sio, "_CHUNK_BYTES", 64 << 10)
    path = tmp_path / "big.jsonl"
    with path.open("w") as fh:
        for i in range(30_000):
            fh.write(json.dumps({"text": f"document {i} " + "lorem ipsum " * 8, "n": i}) + "\n")
    assert path.stat().st_size > 3_000_000
    tracemalloc.start()
    try:
        n = sum(len(b) for b in read_documents(path, InputConfig(batch_size=64)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 30_000
    assert peak < 3_000_000, peak  # holding the corpus as Documents would take > 15 MB


def test_iterating_twice_restarts(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", REVIEWS)
    reader = read_documents(path, InputConfig(id_field="id"))
    assert docs_of(reader) == docs_of(reader)  # no false "duplicate id" on the second pass
    assert reader.n_read == 5


def test_100k_short_jsonl_docs_all_arrive_in_order(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text(
        "".join(f'{{"id": "d{i}", "text": "short doc {i}", "lang": "en"}}\n' for i in range(100_000))
    )
    docs = [d for b in read_documents(path, InputConfig(id_field="id")) for d in b]
    assert len(docs) == 100_000
    assert docs[-1].ext_id == "d99999" and docs[-1].line == 100_000 and docs[-1].meta == {"lang": "en"}


def test_bad_batch_size():
    with pytest.raises(ConfigError):
        CorpusReader("-", InputConfig(batch_size=0))


# --------------------------------------------------------------------------- empty documents and files


def test_empty_texts_are_counted_not_errors(tmp_path):
    rows = [{"text": "kept"}, {"text": ""}, {"text": " \t "}, {"text": None}, {"text": "also kept"}]
    reader = read_documents(write_jsonl(tmp_path / "c.jsonl", rows))
    assert [d.text for d in docs_of(reader)] == ["kept", "also kept"]
    assert reader.n_empty == 3 and reader.n_read == 2


def test_empty_csv_cells_are_empty_documents(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('id,text\na,hello\nb,\nc,""\nd,  \n')
    reader = read_documents(path, InputConfig(id_field="id"))
    assert [d.ext_id for d in docs_of(reader)] == ["a"] and reader.n_empty == 3


@pytest.mark.parametrize(
    "name, content",
    [
        ("e.jsonl", b""),
        ("blank.jsonl", b"\n\n  \n"),
        ("e.txt", b""),
        ("e.csv", b""),
        ("header-only.csv", b"id,text\n"),
        ("e.parquet", b""),
    ],
)
def test_empty_files_are_not_errors(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    reader = read_documents(path)
    assert docs_of(reader) == [] and reader.n_read == 0


def test_empty_parquet_table(tmp_path):
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)
    assert docs_of(read_documents(path)) == []
    assert count_documents(path, InputConfig()) == 0


# --------------------------------------------------------------------------- errors: JSONL


def test_malformed_json_names_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"text": f"doc {i}"}) for i in range(15)] + ["", '{"text": "doc 16", "stars": 5 "x": 1}']
    path.write_text("\n".join(lines) + "\n")
    err = raises_at(path, 17)
    assert str(err) == f"{path}:17: invalid JSON (Expecting ',' delimiter at column 31)"


def test_malformed_json_across_blocks(tmp_path, small_chunks):
    rows = [json.dumps({"id": i, "text": f"a longer document number {i}"}) for i in range(40)]
    rows[33] = rows[33][:-1]  # drop the closing brace
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(rows) + "\n")
    raises_at(path, 34)


@pytest.mark.parametrize(
    "line, kind", [('["text", "a list"]', "an array"), ("42", "a number"), ('"just text"', "a string"), ("null", "null")]
)
def test_line_not_an_object(tmp_path, line, kind):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    err = raises_at(path, 2)
    assert f"expected a JSON object, got {kind}" in str(err)


def test_json_array_file_gets_a_hint(tmp_path):
    path = tmp_path / "corpus.json"
    path.write_text(json.dumps(REVIEWS, indent=2))
    err = raises_at(path, 1)
    assert "JSON Lines" in str(err)


def test_missing_text_field_lists_fields(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"body": "hello", "id": "a"}\n')
    err = raises_at(path, 1)
    assert str(err) == f"{path}:1: no field 'text' (fields: body, id); use --text-field"
    assert [d.text for d in docs_of(read_documents(path, InputConfig(text_field="body")))] == ["hello"]


def test_missing_text_field_on_a_later_line(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"text": "a"}, {"text": None}, {"txt": "typo"}, {"text": "d"}])
    err = raises_at(path, 3)
    assert "no field 'text' (fields: txt)" in str(err)


def test_text_field_holding_an_object(tmp_path):
    rows = [{"text": "[Verse 1] a song"}, {"text": 1.5}, {"text": {"en": "b"}}]
    err = raises_at(write_jsonl(tmp_path / "corpus.jsonl", rows), 3)
    assert "field 'text' holds an object, not text" in str(err)
    err = raises_at(write_jsonl(tmp_path / "lists.jsonl", [{"text": ["a", "b"]}]), 1)
    assert "field 'text' holds an array that is not a chat transcript (message 1 is a string" in str(err)
    docs = docs_of(read_documents(write_jsonl(tmp_path / "ok.jsonl", rows[:2] + [{"text": True}])))
    assert [d.text for d in docs] == ["[Verse 1] a song", "1.5", "true"]


def test_missing_and_null_id_field(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"id": "a", "text": "x"}, {"text": "y", "uid": "b"}])
    err = raises_at(path, 2, id_field="id")
    assert "no field 'id' (fields: text, uid); use --id-field" in str(err)
    path = write_jsonl(tmp_path / "nulls.jsonl", [{"id": "a", "text": "x"}, {"id": None, "text": "y"}])
    err = raises_at(path, 2, id_field="id")
    assert "empty id" in str(err)


def test_duplicate_ids_name_both_lines(tmp_path):
    rows = [{"id": f"a{i}", "text": f"doc {i}"} for i in range(1, 8)]
    rows[4]["id"] = "a3"
    path = write_jsonl(tmp_path / "corpus.jsonl", rows)
    err = raises_at(path, 5, id_field="id")
    assert str(err) == f"{path}:5: duplicate id 'a3' (first seen on line 3)"


def test_duplicate_ids_across_blocks_and_types(tmp_path, small_chunks):
    rows = [{"id": i, "text": f"document {i} " * 3} for i in range(50)]
    rows.append({"id": "7", "text": "the string id '7' equals the number 7"})
    path = write_jsonl(tmp_path / "corpus.jsonl", rows)
    err = raises_at(path, 51, id_field="id")
    assert "duplicate id '7' (first seen on line 8)" in str(err)


def test_invalid_utf8_jsonl(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9 latin-1"}\n')
    err = raises_at(path, 2)
    assert "invalid UTF-8 (byte 0xe9 at column 14)" in str(err)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(InputError) as info:
        read_documents(path)
    check_message(info.value, path, None)
    assert "no such file" in str(info.value)
    with pytest.raises(InputError):
        count_documents(path, InputConfig())
    with pytest.raises(InputError, match="directory"):
        read_documents(tmp_path)


# --------------------------------------------------------------------------- errors: text, CSV, Parquet


def test_invalid_utf8_txt(tmp_path, small_chunks):
    path = tmp_path / "lines.txt"
    path.write_bytes(b"one\ntwo\nthr\xffee\nfour\n")
    err = raises_at(path, 3)
    assert "invalid UTF-8 (byte 0xff at column 4)" in str(err)


def test_csv_missing_text_column(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text("id,body\n1,hello\n")
    err = raises_at(path, 1)
    assert str(err) == f"{path}:1: no column 'text' (columns: id, body); use --text-field"
    err = raises_at(path, 1, text_field="body", id_field="doc_id")
    assert "no column 'doc_id'" in str(err) and "--id-field" in str(err)


def test_csv_duplicate_and_empty_ids(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text("id,text\nq1,first\nq2,second\nq1,third\n")
    err = raises_at(path, 3, id_field="id")
    assert "duplicate id 'q1' (first seen on line 1)" in str(err)
    path.write_text("id,text\nq1,first\n,second\n")
    raises_at(path, 2, id_field="id")


def test_csv_ragged_row(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text('id,text\n1,"fine, quoted"\n2,"multi\nline"\n3,too,many,fields\n4,ok\n')
    err = raises_at(path, 3)
    assert "4 fields, but the header has 2" in str(err)


def test_csv_invalid_utf8(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_bytes(b"id,text\n1,ok\n2,na\xefve\n")
    err = raises_at(path, 2)
    assert "invalid UTF-8 in column 'text'" in str(err)


def test_csv_duplicate_header(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text("text,text\na,b\n")
    assert "duplicate column 'text'" in str(raises_at(path, 1))


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"id,text\r1,classic Mac line ends\r", "malformed CSV header (new-line character seen in unquoted field"),
        (b"id,te\x00xt,text\n1,a,b\n", "column name 'te\\x00xt' holds a NUL character"),
    ],
)
def test_csv_header_problems_name_line_1(tmp_path, data, problem):
    path = tmp_path / "corpus.csv"
    path.write_bytes(data)
    assert problem in str(raises_at(path, 1))


def test_a_file_holding_only_a_bom_is_empty(tmp_path, monkeypatch):
    monkeypatch.setattr(sio, "_CHUNK_BYTES", 1)
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf")
    reader = read_documents(path)
    assert docs_of(reader) == [] and reader.n_empty == 0
    path.write_bytes(b'\xef\xbb\xbf{"text": "after a BOM"}')
    assert [d.text for d in docs_of(read_documents(path, InputConfig(format="jsonl")))] == ["after a BOM"]


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "corpus.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    err = raises_at(path, None)
    assert "not a valid Parquet file" in str(err)
    with pytest.raises(InputError):
        count_documents(path, InputConfig())


def test_parquet_missing_column_and_duplicate_ids(tmp_path):
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"id": [1, 2, 1], "body": ["a", "b", "c"]}), path)
    err = raises_at(path, 1)
    assert "no column 'text' (columns: id, body)" in str(err)
    err = raises_at(path, 3, text_field="body", id_field="id")
    assert "duplicate id '1' (first seen on line 1)" in str(err)


# --------------------------------------------------------------------------- count_documents


def test_count_documents(tmp_path):
    cfg = InputConfig()
    assert count_documents(write_jsonl(tmp_path / "c.jsonl", REVIEWS), cfg) == 5
    txt = tmp_path / "c.txt"
    txt.write_text("a\nb\nc")  # no final newline
    assert count_documents(txt, cfg) == 3
    csv_path = tmp_path / "c.csv"
    csv_path.write_text("id,text\n1,a\n2,b\n")
    assert count_documents(csv_path, cfg) == 2
    pq_path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(1234)]}), pq_path, row_group_size=100)
    assert count_documents(pq_path, cfg) == 1234
    assert count_documents("-", cfg) is None
    empty = tmp_path / "e.jsonl"
    empty.write_bytes(b"")
    assert count_documents(empty, cfg) == 0


# --------------------------------------------------------------------------- CSV: unterminated quotes


def unterminated_csv(sep: str = ",") -> bytes:
    """300 data rows; row 5 (file line 6) opens a quote that never closes."""
    rows = ["id" + sep + "text"] + [f"{i}{sep}review number {i}" for i in range(1, 301)]
    rows[5] = f'5{sep}"this quote never closes'
    return ("\n".join(rows) + "\n").encode()


@pytest.mark.parametrize("how", ["plain", "gzip", "stdin", "tsv"])
def test_csv_unterminated_quote_names_the_line(tmp_path, how):
    data = unterminated_csv("\t" if how == "tsv" else ",")
    path = tmp_path / ("corpus.tsv" if how == "tsv" else "corpus.csv")
    path.write_bytes(gzip.compress(data) if how == "gzip" else data)
    with pytest.raises(InputError) as info:
        if how == "stdin":
            docs_of(read_documents("-", InputConfig(format="csv", id_field="id"), stdin=io.BytesIO(data)))
        else:
            docs_of(read_documents(path, InputConfig(id_field="id")))
    err = check_message(info.value, "-" if how == "stdin" else path, 5)
    assert str(err).endswith(":5: unterminated quote: the quoted field that starts on line 6 never ends")


@pytest.mark.parametrize(
    "row, opened",
    [
        ('5,"two\nlines","never closed', 7),  # an earlier field of the row spans two lines
        ('5,"never closed, x', 6),  # swallows the rest into too few fields: pyarrow fails itself
    ],
)
def test_csv_unterminated_quote_line_is_where_the_quote_opens(tmp_path, small_chunks, row, opened):
    rows = ["id,text,note"] + [f"{i},review {i},n{i}" for i in range(1, 41)]
    rows[5] = row
    path = tmp_path / "corpus.csv"
    path.write_text("\r\n".join(rows) + "\r\n")
    err = raises_at(path, 5)
    assert f"the quoted field that starts on line {opened} never ends" in str(err)


def test_csv_quotes_inside_unquoted_fields_are_not_unterminated(tmp_path, small_chunks):
    # an odd number of quote characters, all of them valid: nothing is reported, nothing lost
    rows = ["id,text"] + [f'{i},"a {i}"" tablet"' if i % 2 else f'{i},my {i}" screen' for i in range(1, 60)]
    path = tmp_path / "screens.csv"
    path.write_text("\n".join(rows) + "\n")
    assert path.read_bytes().count(b'"') % 2 == 1
    docs = docs_of(read_documents(path, InputConfig(id_field="id")))
    assert [d.text for d in docs[:2]] == ['a 1" tablet', 'my 2" screen'] and len(docs) == 59


# --------------------------------------------------------------------------- JSONL: each line's own values


def jsonl_bytes(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def typed(docs: list[Document]) -> list[tuple]:
    """Documents with their meta as JSON text, so that 1, 1.0 and true differ."""
    return [(d.ext_id, d.text, json.dumps(d.meta), d.line) for d in docs]


@pytest.mark.parametrize(
    "line, field, escape",
    [
        (r'{"text": "bad \ud800 here"}', "text", r"\ud800"),
        (r'{"text": "reversed pair \ude00\ud83d"}', "text", r"\ude00"),
        (r'{"text": "ok", "id": "x\uDBFF"}', "id", r"\udbff"),
        (r'{"text": "ok", "m": {"k": ["\udc00"]}}', "m", r"\udc00"),
    ],
)
def test_jsonl_lone_surrogate_is_invalid_text(tmp_path, line, field, escape):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(jsonl_bytes(['{"text": "fine", "id": "a"}', line]))
    err = raises_at(path, 2, id_field="id" if field == "id" else None)
    assert str(err).endswith(f":2: invalid text: lone surrogate {escape} in field {field!r}")


def test_jsonl_surrogate_pairs_round_trip(tmp_path):
    lines = [r'{"text": "smile \ud83d\ude00", "id": "\uD83D\uDE00", "m": "\ud83d\ude00"}',
             r'{"text": "not an escape: \\ud800", "id": "b"}']
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(jsonl_bytes(lines))
    docs = docs_of(read_documents(path, InputConfig(id_field="id")))
    assert [(d.ext_id, d.text, d.meta) for d in docs] == [
        ("\U0001f600", "smile \U0001f600", {"m": "\U0001f600"}),
        ("b", "not an escape: \\ud800", {}),
    ]


def test_jsonl_numeric_ids_and_texts_are_spelled_as_written(tmp_path):
    lines = ['{"id": 1, "text": 7}', '{"id": 1.5, "text": 2.50}', '{"id": "007", "text": "c"}',
             '{"id": 2.50, "text": 1E5}', '{"id": -0, "text": "e", "x": null}', '{"id": 10, "text": 3}']
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(jsonl_bytes(lines))
    docs = docs_of(read_documents(path, InputConfig(id_field="id")))
    assert [(d.ext_id, d.text) for d in docs] == [
        ("1", "7"), ("1.5", "2.50"), ("007", "c"), ("2.50", "1E5"), ("-0", "e"), ("10", "3")]
    # ... the same whatever the other lines of the block hold
    for i, line in enumerate(lines):
        path.write_bytes(jsonl_bytes([line]))
        assert [(d.ext_id, d.text) for d in docs_of(read_documents(path, InputConfig(id_field="id")))] == [
            (docs[i].ext_id, docs[i].text)]


MIXED_META = [
    '{"text": "a", "m": 1, "f": 0.5, "s": "x", "b": true}',
    '{"text": "b", "m": "1", "f": 2, "s": 3, "b": "true"}',
    '{"text": "c", "m": 1.5, "f": 2.0, "s": {"k": [1, "two", 3.0]}, "b": false}',
    '{"text": "d", "m": true, "f": null, "s": [1, 2], "b": 1}',
    '{"text": "e", "m": {"a": 1}, "s": {"k": "v"}, "b": null}',
    '{"text": "f", "m": [1, 2.5, "x", null, {"y": [true]}], "s": "[1, 2]", "b": "{\\"k\\": 1}"}',
    '{"text": "g", "m": 12345678901234567890123, "f": 1e300, "s": "-0"}',
]


def test_jsonl_meta_holds_each_lines_own_values(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(jsonl_bytes(MIXED_META))
    docs = docs_of(read_documents(path))
    expected = [{k: v for k, v in json.loads(line).items() if k != "text" and v is not None} for line in MIXED_META]
    assert [json.dumps(d.meta) for d in docs] == [json.dumps(m) for m in expected]


@pytest.mark.parametrize("chunk_bytes", [1, 70, 200, 4 << 20])
@pytest.mark.parametrize("batch_size", [1, 3, 1000])
def test_jsonl_documents_do_not_depend_on_blocks_or_batches(tmp_path, monkeypatch, chunk_bytes, batch_size):
    lines = MIXED_META * 3 + ['{"text": "h", "m": 2}', '{"text": "i", "m": 3.25}', '{"text": "j", "m": "z"}']
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(jsonl_bytes(lines))
    one_by_one = []  # each line read from a file of its own
    for i, line in enumerate(lines, start=1):
        alone = tmp_path / "alone.jsonl"
        alone.write_bytes(jsonl_bytes([line]))
        one_by_one += [dataclasses.replace(d, ext_id=str(i), line=i) for d in docs_of(read_documents(alone))]
    monkeypatch.setattr(sio, "_CHUNK_BYTES", chunk_bytes)
    docs = docs_of(read_documents(path, InputConfig(batch_size=batch_size)))
    assert typed(docs) == typed(one_by_one)


@pytest.mark.parametrize("arrays", [128, 2_000, 100_000])
def test_jsonl_too_deeply_nested(tmp_path, arrays):
    path = tmp_path / "deep.jsonl"
    deep = '{"text": "x", "m": ' + "[" * arrays + "]" * arrays + "}"
    path.write_bytes(jsonl_bytes(['{"text": "fine"}', deep]))
    err = raises_at(path, 2)
    assert str(err).endswith(":2: too deeply nested JSON (more than 128 levels of objects and arrays)")


def test_jsonl_deeply_nested_objects_do_not_crash(tmp_path):
    """polars crashes (a segfault, not an exception) on objects nested some 550 deep, so
    such a line must not reach it; read in a child process, so that a crash fails this
    test rather than ending the test run."""
    path = tmp_path / "deep.jsonl"
    path.write_bytes(jsonl_bytes(['{"text": "fine"}', '{"text": "x", "m": ' + '{"a": ' * 700 + "1" + "}" * 700 + "}"]))
    code = ("import sys\nfrom saedata.corpus import read_documents\nfrom saedata.errors import InputError\n"
            "try:\n    [d for b in read_documents(sys.argv[1]) for d in b]\nexcept InputError as e:\n    print(e)")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"{path}:2: too deeply nested JSON (more than 128 levels of objects and arrays)"


def test_jsonl_nesting_up_to_the_limit_is_kept(tmp_path):
    value: object = "leaf"
    for _ in range(127):  # the line's object and 127 arrays: 128 levels
        value = [value]
    path = write_jsonl(tmp_path / "deep.jsonl", [{"text": "x", "m": value}])
    assert docs_of(read_documents(path))[0].meta == {"m": value}
