"""The reader: per-token activations at one layer, special/padding tokens out, truncation counted."""

from __future__ import annotations

import pytest
import torch

from saedata.config import ReaderConfig
from saedata.errors import ReaderError
from saedata.reader import Reader, default_model_path

TEXTS = ["The dog chased the ball.", "Our lab measured the data carefully?", "Hi"]


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_gpt2"])
def test_activations_match_the_models_hidden_states(fixture, request):
    path = request.getfixturevalue(fixture)
    reader = Reader(ReaderConfig(model=path, layer=0, device="cpu"))
    batch = reader.read(TEXTS)
    assert batch.acts.shape == (int(batch.n_tokens.sum()), reader.d_model)
    for i, text in enumerate(TEXTS):
        enc = reader.tokenizer(text, return_tensors="pt", return_special_tokens_mask=True)
        special = enc.pop("special_tokens_mask")[0].bool()
        with torch.no_grad():
            hidden = reader.model(**enc, output_hidden_states=True).hidden_states[1][0]  # block 0 output
        expected = hidden[~special]
        got = batch.acts[batch.doc_index == i]
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_special_tokens_are_excluded_and_offsets_point_into_text(tiny_bert):
    reader = Reader(ReaderConfig(model=tiny_bert, device="cpu"))
    batch = reader.read(TEXTS)
    cls, sep = reader.tokenizer.cls_token_id, reader.tokenizer.sep_token_id
    assert cls not in batch.token_ids and sep not in batch.token_ids
    first = batch.offsets[(batch.doc_index == 0).numpy()]
    assert [TEXTS[0][s:e] for s, e in first[:3]] == ["The", "dog", "chased"]


def test_truncation_is_counted(tiny_bert):
    reader = Reader(ReaderConfig(model=tiny_bert, max_tokens=6, device="cpu"))
    batch = reader.read(["one two three four five six seven eight", "short one"])
    assert batch.truncated.tolist() == [True, False]
    assert batch.n_tokens.tolist() == [4, 2]  # 6 minus [CLS] and [SEP]


def test_last_layer_by_default_and_negative_layers(tiny_bert):
    assert Reader(ReaderConfig(model=tiny_bert, device="cpu")).layer == 1
    assert Reader(ReaderConfig(model=tiny_bert, layer=-2, device="cpu")).layer == 0
    with pytest.raises(ReaderError, match="--layer 5 is out of range.*2 layers"):
        Reader(ReaderConfig(model=tiny_bert, layer=5, device="cpu"))


def test_bad_models_and_devices_are_clear_errors(tmp_path):
    with pytest.raises(ReaderError, match="cannot load reader model"):
        Reader(ReaderConfig(model=str(tmp_path / "nothing-here"), device="cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ReaderError, match="no CUDA GPU"):
            Reader(ReaderConfig(device="cuda"))


def test_default_reader_loads_offline_from_its_pypi_package():
    assert default_model_path() is not None
    reader = Reader(ReaderConfig(device="cpu"))
    assert reader.d_model == 384 and reader.n_layers == 6 and reader.layer == 5
    batch = reader.read(["Dogs are loyal pets.", "Quantum physics is hard."])
    assert batch.acts.shape[1] == 384 and batch.n_tokens.tolist() == [5, 5]


def test_a_huge_document_is_cut_before_tokenising(tiny_bert):
    """Only the first CHARS_PER_TOKEN x max_tokens characters can reach the model: a 5 MB
    document gives the activations of that prefix, flagged truncated."""
    from saedata.reader import CHARS_PER_TOKEN

    reader = Reader(ReaderConfig(model=tiny_bert, device="cpu", max_tokens=64))
    huge = "the dog barked at the postman. " * 170_000
    prefix = huge[: CHARS_PER_TOKEN * 64]
    big, small = reader.read([huge, "short text"]), reader.read([prefix, "short text"])
    assert big.n_tokens.tolist() == small.n_tokens.tolist() == [62, 2]  # 64 minus [CLS] and [SEP]
    assert big.truncated.tolist() == [True, False]
    assert torch.equal(big.acts, small.acts)
    spaces = reader.read([" " * 10_000 + "a late word"])
    assert spaces.truncated.tolist() == [True]  # cut, although fewer than 64 tokens were left
