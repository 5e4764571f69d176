"""Hook points: for each architecture people put SAEs on, the reader's tensor at every hook
is the one TransformerLens's name refers to, checked against tensors computed here
independently (the model's own ``output_hidden_states``, and the residual stream's sums)."""

from __future__ import annotations

import pytest
import torch

from saedata.config import HOOKS, ReaderConfig
from saedata.errors import ConfigError, ReaderError
from saedata.reader import Reader

TEXTS = ["The dog chased the ball.", "Our lab measured the data carefully, twice?", "Hi"]
WIDTH, HEADS, LAYERS = 32, 4, 2


def _tokenizer(path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from saedata.demo import make_corpus

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([d["text"] for d in make_corpus(200, seed=2)], vocab_size=400,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.save_pretrained(path)
    return tok


def _config(arch: str, vocab: int):
    """A 2-block, 32-wide config of ``arch`` (grouped-query attention where the family has it)."""
    import transformers as tf

    common = dict(vocab_size=vocab, hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  intermediate_size=64, max_position_embeddings=128)
    gqa = dict(common, num_key_value_heads=2)
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=vocab, n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS, n_inner=64, n_positions=128)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(**common)
    classes = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config,
               "qwen3": tf.Qwen3Config, "gemma2": tf.Gemma2Config, "gemma3": tf.Gemma3TextConfig}
    return classes[arch](**gqa) if arch in ("llama", "mistral", "qwen2") else classes[arch](**gqa, head_dim=8)


DECODERS = ["gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gpt_neox"]
ARCHS = [*DECODERS, "bert"]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_bert):
    """One tiny randomly initialised model per architecture, saved with a fast tokenizer."""
    from transformers import AutoModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    out = {"bert": tiny_bert}
    tok = _tokenizer(tmp_path_factory.mktemp("tokenizer"))
    for arch in DECODERS:
        path = tmp_path_factory.mktemp(arch)
        tok.save_pretrained(path)
        torch.manual_seed(0)
        AutoModel.from_config(_config(arch, len(tok))).save_pretrained(path)
        out[arch] = str(path)
    return out


def _capture(path: str, hook: str, layer: int, head: int | None = None):
    """(reader, tokenised inputs, the reader's (batch, seq, width) tensor at the hook)."""
    reader = Reader(ReaderConfig(model=path, layer=layer, hook=hook, head=head, device="cpu"))
    enc = reader.tokenizer(TEXTS, padding=True, return_tensors="pt")
    return reader, enc, reader.forward_layer(dict(enc))


def _hidden_states(reader: Reader, enc) -> tuple:
    with torch.no_grad():
        return reader.model(**enc, output_hidden_states=True).hidden_states


def _close(got, expected, mask):
    torch.testing.assert_close(got[mask], expected[mask], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_hook_is_the_tensor_transformerlens_names(arch, models):
    path = models[arch]
    for layer in range(LAYERS):
        reader, enc, pre = _capture(path, "resid_pre", layer)
        mask = enc["attention_mask"].bool()
        hidden = _hidden_states(reader, enc)
        _close(pre, hidden[layer], mask)  # blocks.L.hook_resid_pre = the input of block L
        post = _capture(path, "resid_post", layer)[2]
        attn = _capture(path, "attn_out", layer)[2]
        mlp = _capture(path, "mlp_out", layer)[2]
        z = _capture(path, "z", layer)[2]
        assert pre.shape[-1] == post.shape[-1] == attn.shape[-1] == mlp.shape[-1] == reader.d_model == WIDTH
        block = reader.blocks[layer]
        if arch == "bert":  # post-LN: each sublayer's sum is normalised before it goes on
            mid = block.attention.output.LayerNorm(pre + attn)
            _close(post, block.output.LayerNorm(mid + mlp), mask)
        else:  # pre-LN (sequential or parallel): what each sublayer adds sums to the block's output
            _close(post, pre + attn + mlp, mask)
        if layer < LAYERS - 1:  # the last entry of hidden_states has the final norm applied
            _close(post, hidden[layer + 1], mask)
        # z is what the attention's output projection (and, in Gemma, its post-norm) turns into attn_out
        proj = {"gpt2": "attn.c_proj", "gpt_neox": "attention.dense",
                "bert": "attention.output.dense"}.get(arch, "self_attn.o_proj")
        with torch.no_grad():
            from_z = block.get_submodule(proj)(z)
            if arch.startswith("gemma"):
                from_z = block.post_attention_layernorm(from_z)
        _close(attn, from_z, mask)
        d_head = z.shape[-1] // reader.model.config.num_attention_heads
        head = _capture(path, "z", layer, head=1)[2]
        _close(head, z[..., d_head : 2 * d_head], mask)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2", "bert"])
def test_mlp_post_is_the_input_of_the_mlps_down_projection(arch, models):
    reader, enc, post = _capture(models[arch], "mlp_post", 1)
    mask = enc["attention_mask"].bool()
    mlp = _capture(models[arch], "mlp_out", 1)[2]
    block = reader.blocks[1]
    down = {"llama": "mlp.down_proj", "gpt2": "mlp.c_proj", "gemma2": "mlp.down_proj", "bert": "output.dense"}[arch]
    with torch.no_grad():
        out = block.get_submodule(down)(post)
        if arch == "gemma2":
            out = block.post_feedforward_layernorm(out)
    assert post.shape[-1] == reader.d_model == 64
    _close(mlp, out, mask)


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_mlp_post_is_the_mlps_hidden_layer_after_its_nonlinearity(arch, models):
    """What semi-NMF factorises: act(W_in h + b_in), the MLP neurons' activations."""
    reader, enc, post = _capture(models[arch], "mlp_post", 1)
    mask = enc["attention_mask"].bool()
    pre, attn = _capture(models[arch], "resid_pre", 1)[2], _capture(models[arch], "attn_out", 1)[2]
    block = reader.blocks[1]
    with torch.no_grad():
        if arch == "gpt2":  # pre-LN: the MLP reads ln_2 of the stream after attention
            hidden = block.mlp.act(block.mlp.c_fc(block.ln_2(pre + attn)))
        else:  # post-LN: the intermediate layer reads the normalised attention output
            hidden = block.intermediate.intermediate_act_fn(
                block.intermediate.dense(block.attention.output.LayerNorm(pre + attn)))
    _close(post, hidden, mask)


def test_read_returns_the_hooks_tensor_for_real_tokens(models):
    reader = Reader(ReaderConfig(model=models["llama"], layer=1, hook="resid_pre", device="cpu"))
    batch = reader.read(TEXTS)
    for i, text in enumerate(TEXTS):
        enc = reader.tokenizer(text, return_tensors="pt", return_special_tokens_mask=True)
        special = enc.pop("special_tokens_mask")[0].bool()
        expected = _hidden_states(reader, enc)[1][0][~special]
        torch.testing.assert_close(batch.acts[batch.doc_index == i], expected, atol=2e-5, rtol=1e-4)
    assert "resid_pre" in reader.describe()


def test_bad_hooks_and_heads_are_one_line_errors(models):
    assert set(HOOKS) >= {"resid_pre", "resid_post", "mlp_out", "attn_out", "z"}
    with pytest.raises(ConfigError, match="--hook"):
        ReaderConfig(hook="resid_mid")
    with pytest.raises(ConfigError, match="--head.*z"):
        ReaderConfig(hook="mlp_out", head=1)
    with pytest.raises(ReaderError, match="--head 9 is out of range.*4 attention heads"):
        Reader(ReaderConfig(model=models["gpt2"], hook="z", head=9, device="cpu"))
