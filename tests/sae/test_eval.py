"""SAE evaluation: the metrics on constructed SAEs, JS separability, batching and pooling,
and SAEs ranked as they should be (saedata/sae/eval.py, saedata/embed/evaluate.py)."""

from __future__ import annotations

import pytest
import torch

from saedata.config import SAEConfig, TrainConfig
from saedata.embed.evaluate import ConceptLabels, check_saes, concept_labels, evaluate_activations
from saedata.errors import ConfigError, DimensionMismatchError, InputError
from saedata.sae import SAETrainer, SparseAutoencoder, SparseCodes
from saedata.sae.eval import SAEEvaluator, histogram_bins, js_distance, js_separability
from saedata.sae.metrics import afa_score, decoder_coherence, fvu


def exact_sae(d_in: int = 8) -> SparseAutoencoder:
    """A ReLU SAE with decoder rows +e_i and -e_i: relu(x) - relu(-x) = x, so it reconstructs exactly."""
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=2 * d_in, activation="relu"))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_dec.copy_(torch.cat([eye, -eye]))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.input_scale.fill_(0.5)
    return sae.eval()


def switch_sae() -> SparseAutoencoder:
    """TopK k=2 on 4 latents: latent 0 always on (constant 100), 1 on where x_0 > 0, 2 where
    x_0 < 0, 3 never (bias -100)."""
    sae = SparseAutoencoder(SAEConfig(d_in=4, d_sae=4, activation="topk", k=2))
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[0, 1], sae.W_enc[0, 2] = 1.0, -1.0
        sae.b_enc.copy_(torch.tensor([100.0, 0.0, 0.0, -100.0]))
    return sae.eval()


def test_exact_reconstruction_has_zero_fvu_and_fvu_matches_metrics_over_batches():
    torch.manual_seed(0)
    x = torch.randn(3000, 8) * 2 + 40.0  # a large mean: the batch merge must not lose the variance
    ev = SAEEvaluator(exact_sae())
    for start in range(0, 3000, 700):
        ev.update(x[start:start + 700])
    assert ev.result().fvu < 1e-10
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=32, k=3)).eval()
    ev = SAEEvaluator(sae)
    for start in range(0, 3000, 700):
        ev.update(x[start:start + 700])
    with torch.no_grad():
        whole = float(fvu(x, sae.decode_sparse(sae.encode_sparse(x))))
    assert ev.result().fvu == pytest.approx(whole, rel=1e-5)
    assert 0.05 < whole  # a random SAE is far from exact


def test_dead_dense_and_topk_l0_on_a_constructed_sae():
    torch.manual_seed(0)
    x = torch.randn(2000, 4)
    ev = SAEEvaluator(switch_sae())
    for start in range(0, 2000, 512):
        ev.update(x[start:start + 512])
    m = ev.result()
    assert ev.fires.tolist()[0] == 2000 and ev.fires.tolist()[3] == 0
    assert ev.fires[1] + ev.fires[2] == 2000 and 0.4 < float(ev.fires[1]) / 2000 < 0.6
    assert m.dead == 0.25  # latent 3 never fires
    assert m.dense == 0.75  # 0 fires on every token, 1 and 2 on about half
    assert (m.l0, m.l0_std, m.l0_p10, m.l0_p90) == (2.0, 0.0, 2.0, 2.0)  # TopK: exactly k per token
    assert m.n_tokens == 2000


def test_l0_spread_of_relu_codes():
    x = torch.tensor([[1.0, 0, 0, 0], [1.0, 1, 0, 0], [1.0, 1, 1, 0], [1.0, 1, 1, 1]]).repeat(25, 1)
    ev = SAEEvaluator(exact_sae(4))
    ev.update(x)
    m = ev.result()
    assert m.l0 == 2.5 and m.l0_p10 == 1 and m.l0_p90 == 4
    assert m.l0_std == pytest.approx(torch.tensor([1.0, 2, 3, 4]).std(unbiased=False).item())


def test_afa_and_coherence_agree_with_metrics():
    torch.manual_seed(1)
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=32, k=3))
    with torch.no_grad():
        sae.b_dec.normal_(std=0.3)
        sae.input_scale.fill_(1.7)
    sae.eval()
    x = torch.randn(1000, 8)
    ev = SAEEvaluator(sae)
    ev.update(x[:400])
    ev.update(x[400:])
    m = ev.result()
    ref = afa_score(sae, x)
    assert m.afa_ratio == pytest.approx(ref.ratio_mean, rel=1e-5)
    assert m.epsilon_lbo == pytest.approx(ref.epsilon_lbo, rel=1e-5)
    assert (m.coherence_max, m.coherence_mean) == pytest.approx(decoder_coherence(sae.W_dec), rel=1e-6)


def test_js_distance_bounds():
    p = torch.tensor([[3.0, 1.0, 0.0], [0.0, 5.0, 0.0]])
    assert js_distance(p, p * 7).tolist() == pytest.approx([0.0, 0.0], abs=1e-7)
    assert js_distance(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])).item() == pytest.approx(1.0)
    a, b = torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.0, 0.5, 0.5])
    assert js_distance(a, b).item() == pytest.approx(js_distance(b, a).item())
    assert js_distance(a, b).item() == pytest.approx(0.5 ** 0.5)  # JSD = 1/2 bit


def test_js_separability_on_pooled_codes():
    # 40 documents, concept 0 on the first 20; latent 0 fires on every document with the same
    # value, latent 1 only on concept 0's documents, latent 2 on no document
    n = 40
    concept = (torch.arange(n) >= 20).long()  # concept 0: docs 0..19, concept 1: docs 20..39
    doc = torch.cat([torch.arange(n), torch.arange(20)])
    latent = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(20, dtype=torch.long)])
    value = torch.cat([torch.full((n,), 3.0), torch.rand(20) + 0.5])
    sep = js_separability(doc, latent, value, concept, 2, d_sae=3)
    assert sep.js[:, 0].tolist() == [0.0, 0.0]  # identical distributions
    assert sep.js[0, 1].item() == pytest.approx(1.0)  # fires only with the concept
    assert sep.js[1, 1].item() == pytest.approx(1.0)  # ... and only without concept 1
    assert sep.js[:, 2].tolist() == [0.0, 0.0]  # never fires: all in the zero bin
    assert sep.best_latent.tolist() == [1, 1] and sep.n_with.tolist() == [20, 20]
    # unlabelled documents are left out; a concept nobody holds is undefined
    concept3 = torch.cat([concept[:30], torch.full((10,), -1)])
    sep = js_separability(doc, latent, value, concept3, 3, d_sae=3)
    assert sep.n_with.tolist() == [20, 10, 0] and sep.n_without.tolist() == [10, 20, 30]
    assert sep.best_latent[2].item() == -1 and torch.isnan(sep.best_js[2])
    assert histogram_bins(torch.tensor([20, 10]), torch.tensor([10, 0])) == 3
    assert histogram_bins(torch.tensor([10_000]), torch.tensor([10_000])) == 16


def test_evaluate_activations_pools_documents_and_finds_the_concept_latent():
    # latent 1 fires on tokens with x_0 > 0, which only concept "pos"'s documents have
    torch.manual_seed(0)
    n_docs, per_doc = 60, 30
    sign = torch.where(torch.arange(n_docs) % 2 == 0, 1.0, -1.0)
    x = torch.randn(n_docs * per_doc, 4)
    x[:, 0] = x[:, 0].abs() * sign.repeat_interleave(per_doc)
    doc_index = torch.arange(n_docs).repeat_interleave(per_doc)
    labels = ConceptLabels("sign", ["pos", "neg"], (torch.arange(n_docs) % 2), [])
    result = evaluate_activations([switch_sae()], x, names=["switch"], doc_index=doc_index, concepts=labels,
                                  batch_tokens=100)
    c = result.concepts
    assert c["best_latent"].to_list() == [1, 1] or c["best_latent"].to_list() == [1, 2]
    assert c["js"].to_list() == pytest.approx([1.0, 1.0])
    assert result.table["js_sep"].item() == pytest.approx(1.0)
    assert result.table["dead"].item() == 0.25 and result.n_docs == n_docs
    # documents in any order give the same result (pooling never splits a document's tokens)
    perm = torch.randperm(x.shape[0])
    shuffled = evaluate_activations([switch_sae()], x[perm], names=["switch"], doc_index=doc_index[perm],
                                    concepts=labels, batch_tokens=100)
    assert shuffled.concepts.equals(c)
    assert shuffled.table["fvu"].item() == pytest.approx(result.table["fvu"].item(), rel=1e-5)


def test_trained_sae_beats_random_init_on_fvu():
    # tokens are scaled copies of one of 16 unit directions in R^8; a trained TopK SAE finds them
    g = torch.Generator().manual_seed(0)
    D = torch.randn(16, 8, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    X = D[torch.randint(0, 16, (4000,), generator=g)] * (0.5 + torch.rand(4000, 1, generator=g))
    cfg = SAEConfig(d_in=8, d_sae=32, activation="topk", k=2)
    trained = SAETrainer(cfg, TrainConfig(batch_size=128, max_tokens=128 * 60, buffer_tokens=1024, lr=1e-2,
                                          device="cpu"), progress=False).fit(X[:3000]).sae.eval()
    random = SparseAutoencoder(cfg).eval()
    result = evaluate_activations([random, trained], X[3000:], names=["random", "trained"])
    fvus = dict(zip(result.table["sae"], result.table["fvu"]))
    assert fvus["trained"] < 0.25 * fvus["random"], fvus  # observed: 0.06 vs 0.61
    assert result.table["l0"].to_list() == pytest.approx([2.0, 2.0], abs=0.05)
    assert result.table.columns[:4] == ["sae", "activation", "d_sae", "fvu"]
    assert "js_sep" not in result.table.columns and result.concepts.height == 0


def test_saes_that_disagree_are_refused():
    a = SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, k=2, reader="m", layer=3))
    with pytest.raises(DimensionMismatchError, match="d_in=8.*d_in=4"):
        check_saes([a, SparseAutoencoder(SAEConfig(d_in=4, d_sae=16, k=2))], ["a", "b"])
    with pytest.raises(ConfigError, match="different layers: a reads 3, c reads 4"):
        check_saes([a, SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, k=2, reader="m", layer=4))], ["a", "c"])
    with pytest.raises(ConfigError, match="different readers"):
        check_saes([a, SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, k=2, reader="other"))], ["a", "d"])
    check_saes([a, SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, k=2))], ["a", "no metadata"])  # goes with any


def test_concept_labels():
    from saedata.corpus import Document

    docs = [Document(str(i), "t", {"topic": ["x", "y", "z"][i % 3] if i < 30 else None, "n": i}, i + 1)
            for i in range(34)]
    docs.append(Document("rare", "t", {"topic": "rare"}, 35))
    labels = concept_labels(docs, "topic")
    assert labels.values == ["x", "y", "z", "rare"] and labels.skipped == ["rare"]
    assert labels.doc_concept[:4].tolist() == [0, 1, 2, 0] and labels.doc_concept[30:].tolist() == [-1] * 4 + [3]
    with pytest.raises(InputError, match="no document has this field \\(fields: n, topic\\)"):
        concept_labels(docs, "colour")
    with pytest.raises(ConfigError, match="60 distinct values"):
        concept_labels([Document(str(i), "t", {"n": i}, i + 1) for i in range(60)], "n")
    with pytest.raises(InputError, match="line 2: --concept tags must be categorical"):
        concept_labels([Document("a", "t", {"tags": "x"}, 1), Document("b", "t", {"tags": ["x"]}, 2)], "tags")


@pytest.mark.parametrize("signed", [False, True])
def test_max_pool_gives_the_values_embedding_stores(signed):
    from saedata.embed.encode import pool_codes
    from saedata.sae.eval import max_pool

    g = torch.Generator().manual_seed(3)
    n, d_sae = 400, 50
    doc = torch.sort(torch.randint(0, 37, (n,), generator=g)).values * 3 + 5  # contiguous runs, gaps in ids
    values = torch.rand(n, 4, generator=g) * (2 * torch.randint(0, 2, (n, 4), generator=g) - 1 if signed else 1)
    values[torch.rand(n, 4, generator=g) < 0.2] = 0.0  # padding
    codes = SparseCodes(values, torch.randint(0, d_sae, (n, 4), generator=g))
    active = codes.values != 0
    rows = torch.arange(n)[:, None].expand_as(active)[active]
    ref = pool_codes(rows, codes.indices[active], codes.values[active], doc, torch.ones(200), d_sae, "max")
    for limit in (1 << 24, 120):  # all documents at once; a few at a time
        got = max_pool(codes, doc, d_sae, max_elements=limit)
        order = torch.argsort(got.doc * d_sae + got.latent)
        assert torch.equal(got.doc[order], ref.doc) and torch.equal(got.latent[order], ref.latent)
        assert torch.equal(got.value[order], ref.value)
