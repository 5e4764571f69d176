"""Shared fixtures: tiny randomly initialised readers and small planted corpora, all offline."""

from __future__ import annotations

import os

import numpy as np
import pytest

from saedata.demo import make_corpus, write_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer, 32-wide BERT with random weights and the MiniLM WordPiece tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from saedata.reader import default_model_path

    path = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(str(default_model_path()))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    _quiet_transformers()
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> str:
    """A 2-layer causal GPT-2 with random weights and a byte-level BPE trained on demo text."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2Model, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-gpt2")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([d["text"] for d in make_corpus(300, seed=1)], vocab_size=500,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                     bos_token_id=0, eos_token_id=0)
    _quiet_transformers()
    GPT2Model(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture
def corpus(tmp_path) -> str:
    """120 planted documents as JSONL with ids and metadata."""
    return str(write_jsonl(make_corpus(120, seed=0), tmp_path / "corpus.jsonl"))


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory) -> dict:
    """A real store for the analyses: the default reader (all-MiniLM-L6-v2), an SAE trained on
    the corpus, and two planted datasets built once per test session (~20 s on 2 CPU cores).

    - "a": 160 documents over all eight topics, uniform.
    - "b": 160 documents where "pets" and "science" are 4x as common, and questions 3x as
      common as in "a".
    Both carry metadata topic, sentiment, is_question, n_words. Tests must open the store
    read-only (saedata.open) or copy the file before writing.
    """
    from saedata.config import InputConfig, ReaderConfig, TrainConfig
    from saedata.demo import make_pair
    from saedata.embed.local import embed

    root = tmp_path_factory.mktemp("demo-store")
    docs_a, docs_b = make_pair(160)
    a, b = write_jsonl(docs_a, root / "a.jsonl"), write_jsonl(docs_b, root / "b.jsonl")
    db = root / "run.duckdb"
    reader = ReaderConfig(device="cpu")
    train = TrainConfig(max_tokens=60_000, batch_size=1024, device="cpu", seed=0)
    embed(str(a), db, input_cfg=InputConfig(id_field="id"), reader_cfg=reader, train_cfg=train)
    embed(str(b), db, input_cfg=InputConfig(id_field="id"), reader_cfg=reader)
    return {"db": str(db), "a": str(a), "b": str(b), "sae": str(root / "run.sae"), "root": str(root)}


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's 8x8 digits scaled to [0, 1] (float32) and their labels."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> str:
    """A 2-layer, 32-wide ViT (32x32 input, 8x8 patches -> 16 patches) with random weights."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    path = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64)
    _quiet_transformers()
    ViTModel(cfg).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)
