"""A causal reader opened with grads=True reads the gradient of the next-token loss at its
hook point (what gradient SAEs train with); read(keep_special=True) keeps added special tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from saedata.config import ReaderConfig
from saedata.errors import ConfigError
from saedata.reader import Reader

TEXTS = ["The dog chased the ball across the park.", "Our lab measured the data carefully, twice?", "Hi there"]


@pytest.fixture(scope="module")
def reader(tiny_gpt2) -> Reader:
    return Reader(ReaderConfig(model=tiny_gpt2, layer=0, hook="resid_post", device="cpu"), grads=True)


def _loss(reader: Reader, text: str, token: int, delta: torch.Tensor) -> float:
    """The summed next-token loss of ``text`` with ``delta`` added to the hook's tensor at ``token`` (float64)."""
    enc = reader.tokenizer(text, return_tensors="pt")

    def add(_m, _args, output):
        output = output.clone()
        output[0, token] += delta
        return output

    handle = reader.blocks[0].register_forward_hook(add)
    try:
        with torch.no_grad():
            logits = reader.lm(**enc).logits[0].double()
    finally:
        handle.remove()
    return float(F.cross_entropy(logits[:-1], enc["input_ids"][0, 1:], reduction="sum"))


def test_the_reader_reads_the_next_token_losss_gradient_at_the_hook(reader):
    batch = reader.read(TEXTS, grads=True)
    plain = reader.read(TEXTS)
    assert torch.equal(batch.doc_index, plain.doc_index) and np.array_equal(batch.token_ids, plain.token_ids)
    torch.testing.assert_close(batch.acts, plain.acts, atol=1e-5, rtol=1e-5)  # the same activations
    assert batch.grads is not None and batch.grads.shape == batch.acts.shape and plain.grads is None
    # a document's gradients do not depend on the documents padded beside it
    alone = reader.read([TEXTS[2]], grads=True).grads
    torch.testing.assert_close(batch.grads[batch.doc_index == 2], alone, atol=1e-5, rtol=1e-4)
    # central finite differences along random directions, in float64
    reader.lm.double()
    try:
        g = torch.Generator().manual_seed(0)
        rows = batch.grads[batch.doc_index == 0]
        for token in (0, 3, rows.shape[0] - 2):
            v = torch.randn(rows.shape[1], generator=g, dtype=torch.float64)
            eps = 1e-4
            numeric = (_loss(reader, TEXTS[0], token, eps * v) - _loss(reader, TEXTS[0], token, -eps * v)) / (2 * eps)
            assert float(rows[token].double() @ v) == pytest.approx(numeric, rel=1e-3, abs=1e-5)
        # the last token predicts nothing: no gradient reaches it
        assert torch.all(rows[-1] == 0)
    finally:
        reader.lm.float()

def test_an_encoder_reader_is_a_one_line_config_error(tiny_bert):
    with pytest.raises(ConfigError, match="encoder that reads both ways"):
        Reader(ReaderConfig(model=tiny_bert, device="cpu"), grads=True)


@pytest.mark.parametrize("hook, head", [("mlp_post", None), ("z", 1), ("resid_pre", None)])
def test_gradients_at_other_hook_points_match_their_activations(tiny_gpt2, hook, head):
    reader = Reader(ReaderConfig(model=tiny_gpt2, layer=1, hook=hook, head=head, device="cpu"), grads=True)
    batch = reader.read(TEXTS, grads=True)
    torch.testing.assert_close(batch.acts, reader.read(TEXTS).acts, atol=1e-5, rtol=1e-5)
    assert batch.grads.shape == batch.acts.shape == (batch.acts.shape[0], reader.d_model)
    assert batch.grads.abs().sum() > 0


def test_keep_special_keeps_the_tokens_the_tokenizer_adds(tiny_bert):
    reader = Reader(ReaderConfig(model=tiny_bert, device="cpu"))
    plain, kept = reader.read(TEXTS), reader.read(TEXTS, keep_special=True)
    assert np.array_equal(kept.n_tokens, plain.n_tokens + 2)  # [CLS] and [SEP]
    first = kept.token_ids[(kept.doc_index == 0).numpy()]
    assert first[0] == reader.tokenizer.cls_token_id and first[-1] == reader.tokenizer.sep_token_id
