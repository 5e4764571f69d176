"""Chat transcripts: a text field holding [{role, content}, ...] is rendered with the
reader's chat template and pooled over the assistant's answer tokens."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import saedata
from saedata.cli import main
from saedata.config import EmbedConfig, InputConfig, ReaderConfig, SAEConfig
from saedata.corpus import read_documents
from saedata.errors import InputError
from saedata.reader import Reader
from saedata.sae import SparseAutoencoder, save_sae

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n"
          "{% endfor %}")

TRANSCRIPTS = [
    [{"role": "user", "content": "What is a good name for a dog?"},
     {"role": "assistant", "content": "  Rex is a classic name for a loyal dog.  "}],
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": "Tell me about cats."},
     {"role": "assistant", "content": "Cats purr and sleep a lot."},
     {"role": "user", "content": "And kittens?"},
     {"role": "assistant", "content": [{"type": "text", "text": "Kittens play "}, {"type": "image_url"},
                                       {"type": "text", "text": "all day."}]}],
]


@pytest.fixture(scope="module")
def chat_gpt2(tiny_gpt2, tmp_path_factory) -> str:
    """The tiny GPT-2 with a ChatML-style chat template (its markers are plain text here)."""
    path = tmp_path_factory.mktemp("chat-gpt2")
    shutil.copytree(tiny_gpt2, path, dirs_exist_ok=True)
    cfg_path = path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHATML
    cfg_path.write_text(json.dumps(cfg))
    (path / "chat_template.jinja").write_text(CHATML)
    return str(path)


def _write(path, transcripts, **extra) -> str:
    with open(path, "w") as f:
        for i, messages in enumerate(transcripts):
            f.write(json.dumps({"id": f"t{i}", "messages": messages, **extra}) + "\n")
    return str(path)


def _sae(path, d_in=32) -> str:
    torch.manual_seed(0)
    save_sae(SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=96, k=8)), path)
    return str(path)


def test_a_list_of_messages_is_read_as_a_transcript(tmp_path):
    path = _write(tmp_path / "c.jsonl", TRANSCRIPTS)
    docs = [d for b in read_documents(path, InputConfig(text_field="messages", id_field="id")) for d in b]
    assert [d.ext_id for d in docs] == ["t0", "t1"]
    assert docs[0].messages == (("user", "What is a good name for a dog?"),
                                ("assistant", "  Rex is a classic name for a loyal dog.  "))
    assert docs[1].messages[-1] == ("assistant", "Kittens play all day.")  # text parts joined
    assert docs[0].text == "user: What is a good name for a dog?\n\nassistant:   Rex is a classic name for a loyal dog.  "


@pytest.mark.parametrize("bad, problem", [
    ([{"role": "user"}, "hi"], "message 2 is a string"),
    ([{"content": "hi"}], "message 1 has no 'role' string"),
    ([{"role": "user", "content": 3}], "message 1 has a 'content' that is a number"),
    ([], "no messages"),
])
def test_a_bad_transcript_names_its_line(tmp_path, bad, problem):
    path = _write(tmp_path / "c.jsonl", [TRANSCRIPTS[0], bad])
    with pytest.raises(InputError) as e:
        [d for b in read_documents(path, InputConfig(text_field="messages")) for d in b]
    assert str(e.value).startswith(f"{path}:2: field 'messages' holds an array that is not a chat transcript")
    assert problem in str(e.value)


def test_render_applies_the_template_and_finds_the_answers(chat_gpt2):
    reader = Reader(ReaderConfig(model=chat_gpt2, device="cpu"))
    messages = (("user", "Hi there"), ("assistant", " Hello, friend. "), ("user", "Bye"), ("assistant", "Bye now"))
    text, spans = reader.render(messages, "unused")
    assert text == ("<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello, friend.<|im_end|>\n"
                    "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nBye now<|im_end|>\n")
    assert [text[s:e] for s, e in spans] == ["Hello, friend.", "Bye now"]


def test_a_reader_without_a_template_reads_the_plain_transcript(tiny_bert):
    reader = Reader(ReaderConfig(model=tiny_bert, device="cpu"))
    plain = "user: Hi there\n\nassistant: Hello"
    text, spans = reader.render((("user", "Hi there"), ("assistant", "Hello")), plain)
    assert text == plain and [text[s:e] for s, e in spans] == ["Hello"]


def _peaks(db) -> list[tuple[str, int]]:
    with saedata.open(db) as s:
        return s.sql("SELECT d.text, a.peak FROM activations a JOIN documents d USING (doc_id)").rows()


def test_embed_pools_the_answer_tokens_only(tmp_path, chat_gpt2):
    corpus = _write(tmp_path / "chats.jsonl", TRANSCRIPTS * 3)
    sae = _sae(tmp_path / "sae")
    runs = {}
    for tokens in ("assistant", "all"):
        db = tmp_path / f"{tokens}.duckdb"
        saedata.embed(corpus, db, sae, reader_cfg=ReaderConfig(model=chat_gpt2, device="cpu"),
                      input_cfg=InputConfig(text_field="messages", id_field="id"),
                      embed_cfg=EmbedConfig(chat_tokens=tokens))
        with saedata.open(db) as s:
            runs[tokens] = s.documents().sort("doc_id")
        peaks = _peaks(db)
        assert peaks
        outside = 0
        for text, peak in peaks:
            answers = [(text.index(a), text.index(a) + len(a)) for a in
                       ("Rex is a classic name for a loyal dog.", "Cats purr and sleep a lot.", "Kittens play all day.")
                       if a in text]
            outside += not any(s <= peak < e for s, e in answers)
        if tokens == "assistant":
            assert outside == 0  # every pooled code peaked inside an answer
        else:
            assert outside > 0
    docs = runs["assistant"]
    assert docs["text"][0].startswith("<|im_start|>user\nWhat is a good name")  # stored as the reader read it
    assert (docs["n_tokens"].to_numpy() < runs["all"]["n_tokens"].to_numpy()).all()
    # the answer-token count is what the reader's tokens inside the answers number
    reader = Reader(ReaderConfig(model=chat_gpt2, device="cpu"))
    text = docs["text"][0]
    start = text.index("Rex")
    end = start + len("Rex is a classic name for a loyal dog.")
    offsets = reader.read([text]).offsets
    assert docs["n_tokens"][0] == int(((offsets[:, 0] >= start) & (offsets[:, 1] <= end)).sum())


def test_a_transcript_without_an_answer_is_a_one_line_error(tmp_path, chat_gpt2):
    corpus = _write(tmp_path / "chats.jsonl", [TRANSCRIPTS[0], [{"role": "user", "content": "Anyone?"}]])
    db = tmp_path / "run.duckdb"
    result = CliRunner().invoke(main, ["embed", corpus, "--db", str(db), "--sae", _sae(tmp_path / "sae"),
                                       "--model", chat_gpt2, "--device", "cpu", "--text-field", "messages"])
    assert result.exit_code == 1
    assert f"{corpus}:2: the transcript has no assistant message to pool" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(main, ["embed", corpus, "--db", str(db), "--sae", str(tmp_path / "sae"),
                                       "--model", chat_gpt2, "--device", "cpu", "--text-field", "messages",
                                       "--chat-tokens", "all"])
    assert result.exit_code == 0, result.output
    with saedata.open(db) as s:
        assert s.documents().height == 2
        assert np.all(s.documents()["n_tokens"].to_numpy() > 0)


def test_diff_reads_two_models_answers(tmp_path, chat_gpt2):
    prompts = ["Name a pet.", "Name a colour.", "Name a city.", "Name a food."] * 3
    a = _write(tmp_path / "model_a.jsonl", [[{"role": "user", "content": p}, {"role": "assistant", "content": "Sure."}]
                                            for p in prompts])
    b = _write(tmp_path / "model_b.jsonl", [[{"role": "user", "content": p},
                                             {"role": "assistant", "content": "I cannot help with that request."}]
                                            for p in prompts])
    db = tmp_path / "run.duckdb"
    result = CliRunner().invoke(main, ["diff", a, b, "--db", str(db), "--sae", _sae(tmp_path / "sae"),
                                       "--model", chat_gpt2, "--device", "cpu", "--text-field", "messages"])
    assert result.exit_code == 0, result.output
    with saedata.open(db) as s:
        docs = s.documents().sort("doc_id")
    assert docs.height == 24
    n = docs["n_tokens"].to_numpy()
    assert len(set(n[:12])) == 1 and len(set(n[12:])) == 1 and n[12] > n[0]  # answers only: same length per model
