"""Sequential training on chat transcripts (FAST, Li et al. 2025): whole transcripts, in
corpus order, as the chat template renders them, special tokens included."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import saedata
from saedata.cli import main
from saedata.config import InputConfig, ReaderConfig, TrainConfig
from saedata.embed.train import collect_activations, split_heldout_documents
from saedata.errors import ConfigError
from saedata.reader import Reader
from saedata.sae import SAETrainer

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n"
          "{% endfor %}")
MARKERS = ["<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def chat_model(tiny_gpt2, tmp_path_factory) -> str:
    """A tiny GPT-2 whose tokenizer knows the ChatML markers as special tokens and starts
    every text with a BOS token (as Llama's does)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    path = tmp_path_factory.mktemp("chatml-gpt2")
    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    tok.add_special_tokens({"additional_special_tokens": MARKERS})
    tok._tokenizer.post_processor = TemplateProcessing(single=f"{tok.bos_token} $A",
                                                       special_tokens=[(tok.bos_token, tok.bos_token_id)])
    tok.chat_template = CHATML
    torch.manual_seed(0)
    GPT2Model(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128)).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _transcripts(n: int) -> list[list[dict]]:
    topics = ["dogs", "cats", "rain", "bread", "trains", "music"]
    return [[{"role": "user", "content": f"Tell me about {topics[i % 6]}, please ({i})."},
             {"role": "assistant", "content": f"Here is what I know about {topics[i % 6]}." + " More." * (i % 4)}]
            for i in range(n)]


@pytest.fixture
def chats(tmp_path) -> str:
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"id": f"c{i}", "messages": m}) + "\n" for i, m in enumerate(_transcripts(30))))
    return str(path)


def _expected(chat_model: str) -> tuple[Reader, list[torch.Tensor], list]:
    """Each transcript rendered by the template and read alone, every token kept."""
    reader = Reader(ReaderConfig(model=chat_model, device="cpu"))
    texts = [reader.render(tuple((m["role"], m["content"]) for m in t), "")[0] for t in _transcripts(30)]
    batches = [reader.read([t], keep_special=True) for t in texts]
    return reader, [b.acts for b in batches], batches


def test_collect_reads_whole_transcripts_in_corpus_order_with_their_special_tokens(chat_model, chats):
    reader, expected, batches = _expected(chat_model)
    chunks = collect_activations(chats, reader, InputConfig(text_field="messages", batch_size=7), sequential=True)
    assert len(chunks) == 30
    for got, want in zip(chunks, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    markers = set(reader.tokenizer.convert_tokens_to_ids(MARKERS))
    for b in batches:  # each transcript starts with BOS; its template markers are there (2 per message)
        assert b.token_ids[0] == reader.tokenizer.bos_token_id
        assert sum(int(t in markers) for t in b.token_ids) == 4
    text = reader.tokenizer.decode(batches[0].token_ids[1:])
    assert reader.read([text]).acts.shape[0] == batches[0].acts.shape[0] - 1  # embedding's read drops the BOS
    # a budget ends at a transcript's end: no transcript is cut
    few = collect_activations(chats, reader, InputConfig(text_field="messages"), sequential=True,
                              max_tokens=sum(len(e) for e in expected[:3]) + 5)
    assert [len(c) for c in few] == [len(e) for e in expected[:3]]


class _Recorder(SAETrainer):
    fed: list[torch.Tensor] = []

    def _step(self, sae, opt, x, tokens_since_fired):
        _Recorder.fed.append(x.clone())
        return super()._step(sae, opt, x, tokens_since_fired)


def test_the_trainer_is_fed_the_transcripts_concatenated_in_order(chat_model, chats, tmp_path, monkeypatch):
    import saedata.sae

    _, expected, _ = _expected(chat_model)
    stream = torch.cat(expected)
    n = stream.shape[0]
    monkeypatch.setattr(saedata.sae, "SAETrainer", _Recorder)
    _Recorder.fed = []
    train = TrainConfig(chat_sequential=True, k=4, expansion=2, batch_size=64, max_tokens=2 * n, max_epochs=2,
                        device="cpu")
    result = saedata.train(chats, tmp_path / "fast", input_cfg=InputConfig(text_field="messages"),
                           reader_cfg=ReaderConfig(model=chat_model, device="cpu"), train_cfg=train)
    fed = torch.cat(_Recorder.fed)
    assert fed.shape[0] == (2 * n) // 64 * 64
    torch.testing.assert_close(fed[:n], stream, atol=1e-5, rtol=1e-4)  # pass 1: every transcript, in order
    torch.testing.assert_close(fed[n:], stream[: fed.shape[0] - n], atol=1e-5, rtol=1e-4)  # pass 2: the same
    assert result.metrics["steps"] == len(_Recorder.fed) and result.metrics["l0"] == 4.0
    assert json.loads((tmp_path / "fast" / "cfg.json").read_text())["activation"] == "topk"
    # shuffled training (the default) feeds the same tokens in another order, special tokens left out
    _Recorder.fed = []
    saedata.train(chats, tmp_path / "bt", input_cfg=InputConfig(text_field="messages"),
                  reader_cfg=ReaderConfig(model=chat_model, device="cpu"), train_cfg=train.replace(chat_sequential=False))
    shuffled = torch.cat(_Recorder.fed)
    assert not torch.allclose(shuffled[:64], stream[:64])


def test_held_out_documents_are_whole_and_the_rest_keep_their_order():
    chunks = [torch.full((300, 2), float(i)) for i in range(40)]
    train, held = split_heldout_documents(chunks)
    assert held is not None and held[:, 0].unique().tolist() == [19.0, 39.0]
    assert train[:, 0].unique_consecutive().tolist() == [float(i) for i in range(40) if i % 20 != 19]
    assert split_heldout_documents(chunks[:5])[1] is None  # too few tokens to hold any out


def test_the_cli_trains_sequentially(chat_model, chats, tmp_path):
    result = CliRunner().invoke(main, ["train", chats, "--out", str(tmp_path / "s"), "--model", chat_model,
                                       "--device", "cpu", "--text-field", "messages", "--chat-sequential",
                                       "--train-tokens", "3000", "--k", "4", "--expansion", "2"])
    assert result.exit_code == 0, result.output
    assert "saved" in result.stdout and "whole documents in order" in result.stderr


def test_sequential_training_needs_text_and_its_tokens_as_one_tensor(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "a.png")
    with pytest.raises(ConfigError, match="not images"):
        saedata.train(str(images), tmp_path / "s", train_cfg=TrainConfig(chat_sequential=True, device="cpu"))
    with pytest.raises(ConfigError, match="one tensor"):
        SAETrainer(saedata.config.SAEConfig(d_in=4, d_sae=8, k=2),
                   TrainConfig(chat_sequential=True, device="cpu")).fit(iter([torch.randn(10, 4)]))
