"""LLM labels and LLM label scores (saedata.label.llm), against a local stub endpoint.

The stub is an OpenAI-compatible ``/chat/completions`` server started on port 0 in a
thread. Its "LLM" answers from the prompt alone: a latent's label is the word marked most
often in its evidence; detection answers 1 for excerpts holding that word, fuzzing for
excerpts whose marked word it is -- right on the toy store, where each of latents 0-2
fires exactly on the documents holding its word. Other modes answer "no" to everything or
at random (scores at chance), fail some requests, or reply with garbage.
"""

from __future__ import annotations

import json
import re
import threading
import time
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import duckdb
import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from saedata.cli import main
from saedata.config import LLMConfig
from saedata.errors import ConfigError, LLMError, NotFoundError
from saedata.label import peak_snippet, word_document_frequency
from saedata.label.llm import balanced_accuracy, llm_relabel, parse_answers, parse_label
from saedata.store import Store

TOPICS = {0: ("science", "Report {i}: the science team met on day {i} to plan."),
          1: ("dog", "Story {i}: a dog ran along the road on day {i}."),
          2: ("rain", "Weather {i}: heavy rain fell over the hills on day {i}."),
          3: ("bank", "Money {i}: the bank raised its rates on day {i}.")}
"""latent -> (the word it fires on, its documents); latent 3 fires on banks of money only."""
RIVERS = "River {i}: the river bank flooded the fields on day {i}."
"""Documents holding "bank" where latent 3 is silent: its near misses."""


def _toy_store(path) -> Store:
    """24 documents per latent 0-2, 12 for latent 3, 12 river-bank and 20 other documents;
    each latent peaks on the last character of its word; latents 4-7 never fire."""
    texts, fires = [], []
    for latent, (word, template) in TOPICS.items():
        for i in range(24 if latent < 3 else 12):
            fires.append((len(texts), latent, 10.0 - 0.1 * i, word))
            texts.append(template.format(i=i))
    texts += [RIVERS.format(i=i) for i in range(12)] + [f"Nothing much happened on day {i}." for i in range(20)]
    store = Store(path, read_only=False)
    sae = store.register_sae("toy", {"d_in": 2, "d_sae": 8, "activation": "topk"}, None, "fp")
    ds = store.create_dataset("d", "d.jsonl", sae, {})
    n = len(texts)
    docs = pl.DataFrame({"doc_id": list(range(n)), "dataset_id": [ds.dataset_id] * n,
                         "ext_id": [str(i) for i in range(n)], "text": texts, "meta": [None] * n, "n_tokens": [10] * n},
                        schema_overrides={"meta": pl.String})
    rows = [(d, sae, lat, v, texts[d].index(w) + len(w) - 1) for d, lat, v, w in fires]
    acts = pl.DataFrame(rows, schema=["doc_id", "sae_id", "latent", "value", "peak"], orient="row")
    store.append_batch(docs, acts, word_document_frequency(texts), sae)
    store.complete_dataset(ds.dataset_id)
    store.refresh_latent_stats(sae)
    return store


class Stub:
    """A fake LLM behind a local OpenAI-compatible endpoint (see the module docstring).

    ``mode``: right, no or random. ``fail``: HTTP statuses the next requests get, in turn.
    ``garbage``: a word; a label request whose evidence is marked on it gets a body that is
    not JSON. ``fatal_after``: requests after this many get HTTP 401."""

    def __init__(self, mode: str = "right"):
        self.mode = mode
        self.fail: list[int] = []
        self.garbage: str | None = None
        self.fatal_after: int | None = None
        self.delay = 0.0
        self.in_flight = self.most_in_flight = 0
        self.prompts: list[str] = []
        self.usage = Counter()
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self.path.endswith("/v1/chat/completions"):
                    return self._send(404, b'{"error": {"message": "no such route"}}')
                prompt = body["messages"][0]["content"]
                with stub.lock:
                    stub.prompts.append(prompt)
                    status = stub.fail.pop(0) if stub.fail else 200
                    if stub.fatal_after is not None and len(stub.prompts) > stub.fatal_after:
                        status = 401
                if status != 200:
                    return self._send(status, b'{"error": {"message": "try again"}}', {"Retry-After": "0"})
                with stub.lock:
                    stub.in_flight += 1
                    stub.most_in_flight = max(stub.most_in_flight, stub.in_flight)
                time.sleep(stub.delay)
                with stub.lock:
                    stub.in_flight -= 1
                if stub.garbage and "ACTIVATING:" in prompt and _marked(prompt)[0] == stub.garbage:
                    return self._send(200, b"<html>502 Bad Gateway</html>")
                reply = stub.answer(prompt)
                usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(reply.split())}
                with stub.lock:
                    stub.usage.update(usage)
                self._send(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}],
                                            "usage": usage}).encode())

            def _send(self, status, data, headers=None):
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def answer(self, prompt: str) -> str:
        if "ACTIVATING:" in prompt:
            return f'Label: "{_marked(prompt)[0]}".'
        label = re.search(r'described as: "(.*?)"', prompt).group(1).lower()
        excerpts = re.findall(r"^\d+\. (.*)$", prompt, re.M)
        if self.mode == "no":
            answers = [0] * len(excerpts)
        elif self.mode == "random":
            rng = np.random.default_rng(zlib.crc32(prompt.encode()))
            answers = rng.integers(0, 2, len(excerpts)).tolist()
        elif "fires on some" in prompt:  # detection
            answers = [int(bool(re.search(rf"\b{re.escape(label)}\b", e, re.I))) for e in excerpts]
        else:  # fuzzing
            answers = [int(re.search(r"<<(.+?)>>", e).group(1).lower() == label) for e in excerpts]
        return json.dumps(answers)

    def __enter__(self) -> Stub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _marked(prompt: str) -> list[str]:
    """The words marked in a label prompt's ACTIVATING excerpts, commonest first (ties: alphabetical)."""
    section = prompt.split("ACTIVATING:", 1)[1].split("NOT ACTIVATING:", 1)[0]
    counts = Counter(w.lower() for w in re.findall(r"<<(.+?)>>", section))
    return sorted(counts, key=lambda w: (-counts[w], w))


def _cfg(stub: Stub, **kw) -> LLMConfig:
    return LLMConfig(base_url=stub.url, model="stub", backoff=0.01, timeout=10, **kw)


def _calls(store: Store) -> pl.DataFrame:
    return store.sql("SELECT * FROM llm_calls ORDER BY latent, purpose")


def test_llm_labels_from_contrastive_evidence_and_scores(tmp_path):
    with Stub() as stub, _toy_store(tmp_path / "s.duckdb") as store:
        run = llm_relabel(store, None, _cfg(stub), score=True)
        lat = store.latents(1).filter(pl.col("label").is_not_null())
        calls = _calls(store)
        texts = set(store.documents()["text"])
    assert dict(lat.select("latent", "label").iter_rows()) == {0: "science", 1: "dog", 2: "rain", 3: "bank"}
    assert set(lat["label_source"]) == {"llm:stub"}
    # a label tells where its latent fires: every answer right -> 1.0
    assert lat.filter(pl.col("latent") < 3)[["llm_detection", "llm_fuzzing"]].to_numpy().tolist() == [[1.0, 1.0]] * 3
    # the label's evidence: the strongest documents with their peak marked, and near misses
    bank = calls.filter((pl.col("latent") == 3) & (pl.col("purpose") == "label"))["prompt"].item()
    fires, silent = bank.split("NOT ACTIVATING:")
    assert fires.count("<<bank>>") == 8 and "Money 0: the <<bank>> raised its rates" in fires
    assert re.search(r"^1\. River \d+: the river bank flooded", silent, re.M) and "<<" not in silent
    # detection shows documents whole (these are shorter than an excerpt), unmarked
    for prompt in calls.filter(pl.col("purpose") == "detection")["prompt"]:
        assert set(re.findall(r"^\d+\. (.*)$", prompt, re.M)) <= texts
    # every request is stored, with the tokens the endpoint counted
    assert run.calls == calls.height == 12 and run.labelled == run.scored == run.latents == 4 and not run.errors
    assert calls.group_by("latent").len().sort("latent")["len"].to_list() == [3, 3, 3, 3]
    assert set(calls["purpose"]) == {"label", "detection", "fuzzing"} and set(calls["run"]) == {1}
    assert calls["error"].null_count() == 12 and set(calls["attempts"]) == {1}
    assert run.prompt_tokens == calls["prompt_tokens"].sum() == stub.usage["prompt_tokens"]
    assert run.completion_tokens == calls["completion_tokens"].sum() == stub.usage["completion_tokens"]


def test_answers_that_ignore_the_excerpts_score_at_chance(tmp_path):
    scores = {}
    for mode in ("no", "random"):
        with Stub(mode) as stub, _toy_store(tmp_path / f"{mode}.duckdb") as store:
            llm_relabel(store, None, _cfg(stub), score=True)
            scores[mode] = store.latents(1).filter(pl.col("latent") < 4)[["llm_detection", "llm_fuzzing"]].to_numpy()
    assert (scores["no"] == 0.5).all()  # "never fires": all of the silent right, none of the rest
    assert 0.35 < scores["random"].mean() < 0.65 and scores["random"].max() < 0.95


def test_a_failing_request_is_retried_on_5xx_and_429_only(tmp_path):
    with Stub() as stub, _toy_store(tmp_path / "s.duckdb") as store:
        stub.fail = [500, 429, 503]
        llm_relabel(store, None, _cfg(stub), [0])
        stub.fail = [400]
        run = llm_relabel(store, None, _cfg(stub, retries=1), [1, 2], )
        calls = _calls(store)
    assert calls.filter(pl.col("latent") == 0)[["attempts", "error"]].rows() == [(4, None)]
    assert len(stub.prompts) == 4 + 2  # the 400 is not retried
    failed = calls.filter(pl.col("error").is_not_null())
    assert failed.height == 1 and failed["attempts"].item() == 1 and failed["error"].item().startswith("HTTP 400")
    assert run.labelled == 1 and len(run.errors) == 1


def test_a_bad_reply_for_one_latent_keeps_the_others(tmp_path):
    with Stub() as stub, _toy_store(tmp_path / "s.duckdb") as store:
        stub.garbage = "dog"
        run = llm_relabel(store, None, _cfg(stub), score=True)
        labels = dict(store.latents(1).select("latent", "label").iter_rows())
        calls = _calls(store)
    assert labels[1] is None and {labels[0], labels[2], labels[3]} == {"science", "rain", "bank"}
    bad = calls.filter(pl.col("latent") == 1)
    assert bad["purpose"].to_list() == ["label"] and bad["error"].item() == "the reply is not a chat completion"
    assert bad["reply"].item() == "<html>502 Bad Gateway</html>"  # kept for the audit
    assert run.errors == ("latent 1: label: the reply is not a chat completion",) and run.labelled == 3


def test_an_endpoint_that_refuses_stops_the_run_and_keeps_the_latents_done(tmp_path):
    with Stub() as stub, _toy_store(tmp_path / "s.duckdb") as store:
        stub.fatal_after = 2
        with pytest.raises(LLMError, match=r"refused the request: HTTP 401: try again .*after labelling 2 latents"):
            llm_relabel(store, None, _cfg(stub, workers=1), [0, 1, 2, 3])
        labelled = store.latents(1).filter(pl.col("label").is_not_null())["latent"].to_list()
        assert labelled == sorted(set(_calls(store)["latent"])) == [0, 1]  # each latent whole, or untouched
    with _toy_store(tmp_path / "t.duckdb") as store, pytest.raises(LLMError, match="cannot reach the LLM endpoint"):
        llm_relabel(store, None, LLMConfig(base_url="http://127.0.0.1:9/v1", model="m", timeout=5), [0])


def test_requests_run_a_few_at_a_time_through_the_api(tmp_path, monkeypatch):
    import saedata

    db = tmp_path / "s.duckdb"
    _toy_store(db).close()
    with Stub() as stub:
        stub.delay = 0.2
        monkeypatch.setenv("SAEDATA_LLM_BASE_URL", stub.url)
        monkeypatch.setenv("SAEDATA_LLM_MODEL", "stub")
        assert saedata.relabel(db, llm=True, latents=[0, 1, 2, 3, 4], score=True) == 4  # 4 never fires
        assert stub.most_in_flight == 4  # 4 latents, one request each at a time, 4 workers
        stub.most_in_flight = 0
        run = saedata.llm_label(db, latents=[0, 1, 2, 3], workers=2)
    assert stub.most_in_flight == 2 and run.run == 2 and run.calls == 4
    with pytest.raises(NotFoundError, match="no store at"):
        saedata.llm_label(tmp_path / "missing.duckdb")


def test_the_documents_a_prompt_shows_follow_the_seed(tmp_path):
    prompts = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        with Stub() as stub, _toy_store(tmp_path / f"{name}.duckdb") as store:
            llm_relabel(store, None, _cfg(stub, seed=seed), [0, 3], score=True)
            prompts[name] = _calls(store).select("latent", "purpose", "prompt").rows()
    assert prompts["a"] == prompts["b"]
    assert [p for p in prompts["a"] if p[1] == "label"] == [p for p in prompts["c"] if p[1] == "label"]  # the top
    assert [p for p in prompts["a"] if p[1] != "label"] != [p for p in prompts["c"] if p[1] != "label"]


def test_cli_label_llm_prints_the_tokens_and_latents_shows_the_scores(tmp_path, monkeypatch):
    for var in ("SAEDATA_LLM_BASE_URL", "SAEDATA_LLM_MODEL", "SAEDATA_LLM_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    db = tmp_path / "s.duckdb"
    _toy_store(db).close()
    runner = CliRunner()
    with Stub() as stub:
        monkeypatch.setenv("SAEDATA_LLM_MODEL", "stub")
        result = runner.invoke(main, ["label", "--db", str(db), "--llm", "--score", "--llm-url", stub.url,
                                      "--latents", "0,1", "--concurrency", "2"])
    assert result.exit_code == 0, result.output
    total = stub.usage["prompt_tokens"] + stub.usage["completion_tokens"]
    assert result.stdout.strip() == (
        f"labelled 2 of 2 latents with llm:stub, scored 2 (run 1): 6 calls, {total:,} tokens "
        f"({stub.usage['prompt_tokens']:,} prompt + {stub.usage['completion_tokens']:,} completion)")
    shown = runner.invoke(main, ["latents", "--db", str(db), "--sort", "llm_detection", "--format", "csv"])
    assert shown.stdout.splitlines()[1].startswith("0,science,llm:stub,") and "llm_fuzzing" in shown.stdout
    page = runner.invoke(main, ["latent", "1", "--db", str(db), "--report", str(tmp_path / "l.html")])
    assert page.stdout.startswith("latent 1 of SAE 1: dog (llm:stub, detection 1.00, fuzzing 1.00)")
    assert "LLM detection 1.00, fuzzing 1.00" in (tmp_path / "l.html").read_text(encoding="utf-8")
    usage = runner.invoke(main, ["label", "--db", str(db), "--seed", "3"])
    assert usage.exit_code == 2 and "--seed goes with --llm" in usage.stderr


def test_cli_without_an_endpoint_says_so_in_one_line_and_changes_nothing(tmp_path, monkeypatch):
    for var in ("SAEDATA_LLM_BASE_URL", "SAEDATA_LLM_MODEL", "SAEDATA_LLM_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    db = tmp_path / "s.duckdb"
    _toy_store(db).close()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    result = CliRunner().invoke(main, ["label", "--db", str(db), "--llm", "--score"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "Error: the LLM labeller needs an OpenAI-compatible endpoint: set SAEDATA_LLM_BASE_URL (or --llm-url) and "
        "SAEDATA_LLM_MODEL (or --llm-model)"]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    for url, model in (("localhost:8000", "m"), ("http://a b", "m"), ("http://x\x00", "m"), ("http://x", "\x00")):
        with pytest.raises(ConfigError, match="URL|printable"):
            LLMConfig(base_url=url, model=model)


def test_an_old_store_gets_the_llm_columns_and_table(tmp_path):
    db = tmp_path / "old.duckdb"
    _toy_store(db).close()
    con = duckdb.connect(str(db))
    con.execute("DROP TABLE llm_calls")
    con.execute("ALTER TABLE latents DROP COLUMN llm_detection")
    con.execute("ALTER TABLE latents DROP COLUMN llm_fuzzing")
    con.close()
    with Store(db, read_only=True) as store:  # read-only: the macros and readers still bind
        assert store.latents(1)["llm_detection"].null_count() == 8
        assert store.sql("SELECT count(*) AS n FROM llm_calls")["n"].item() == 0
    with Store(db, read_only=False) as store:
        assert store.has_column("latents", "llm_fuzzing") and store.has_relation("llm_calls")
        assert store.next_llm_run() == 1


def test_a_changed_label_loses_its_llm_scores(tmp_path):
    with Stub() as stub, _toy_store(tmp_path / "s.duckdb") as store:
        llm_relabel(store, None, _cfg(stub), [0, 1], score=True)
        store.set_labels(1, pl.DataFrame({"latent": [0, 1], "label": ["science", "puppies"],
                                          "label_source": ["x", "x"]}))
        assert store.latent_scores(1)[["latent", "llm_detection"]].rows() == [(0, 1.0)]
        assert llm_relabel(store, None, _cfg(stub), [1]).run == 2


@pytest.mark.parametrize("reply, label", [
    ('Label: "Golden retrievers".', "Golden retrievers"),
    ("**Dog breeds**\n\nThese excerpts all mention dogs.", "Dog breeds"),
    ("<think>they mention banks</think>\nfinancial banks", "financial banks"),
    ("one two three four five six seven eight nine ten", "one two three four five six seven eight"),
])
def test_parse_label(reply, label):
    assert parse_label(reply) == label


@pytest.mark.parametrize("reply", ["", "   \n", "[1, 0, 1]", "12345 ..."])
def test_parse_label_refuses_replies_without_words(reply):
    with pytest.raises(ValueError, match="no label"):
        parse_label(reply)


def test_parse_answers():
    assert parse_answers("[1, 0, 1]", 3) == [1, 0, 1]
    assert parse_answers("Sure: [1,0] ... final: ['yes', 'no', 'yes']", 3) == [1, 0, 1]
    assert parse_answers("1: yes\n2. no\n3) yes", 3) == [1, 0, 1]
    assert parse_answers("yes no no", 3) == [1, 0, 0]
    with pytest.raises(ValueError, match="expected 3 answers"):
        parse_answers("[1, 0]", 3)


def test_balanced_accuracy():
    assert balanced_accuracy([1, 1, 0, 0], [1, 1, 0, 0]) == 1.0
    assert balanced_accuracy([1, 1, 1, 0], [0, 0, 0, 0]) == 0.5
    assert balanced_accuracy([1, 0, 0, 0], [1, 1, 0, 0]) == pytest.approx((1 + 2 / 3) / 2)
    assert balanced_accuracy([1, 1], [1, 1]) is None


def test_peak_snippet_marks_with_any_mark():
    text = "The quick brown fox jumps."
    assert peak_snippet(text, text.index("fox"), mark=("<<", ">>")) == "The quick brown <<fox>> jumps."
    assert peak_snippet(text, text.index("fox"), mark=("", "")) == text
