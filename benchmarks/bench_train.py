"""Benchmark TopK SAE training: sparse decoder (embedding_bag) vs dense decoder.

One run, one synthetic data set (seeded), one initial SAE copied into both variants;
both take the same steps on the same batches. Prints plain ``name: value`` lines:

    python benchmarks/bench_train.py                 # d_in=384, d_sae=3072, k=32, batch 4096
    python benchmarks/bench_train.py --corpus-acts acts.safetensors   # also train on real activations
    python benchmarks/bench_train.py --real-corpus   # + `saedata train` end to end on ~3,700 real documents

Four variants are timed: ``dense`` (dense decoder, dense encoder backward: plain
autograd), ``sparse_decoder`` (embedding_bag decoder only), ``dense_decoder_sparse_encoder``
and ``sparse`` (both sparse, the training default). Targets: speed-up of the sparse decoder
over the dense one >= 1.5 and a maximum difference of the training loss (absolute, over
every step) <= 1e-4. Runs in well under 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saedata.config import SAEConfig, TrainConfig  # noqa: E402
from saedata.sae.train import SAETrainer, default_lr, initialize_sae, train_step  # noqa: E402


def synthetic_activations(
    n_tokens: int = 16_384, d_in: int = 384, n_features: int = 4096, active: int = 24, seed: int = 0
) -> torch.Tensor:
    """(n_tokens, d_in) activations with planted sparse structure: each row is a non-negative
    combination of ``active`` of ``n_features`` random unit directions, plus a mean offset and
    a little Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_features, d_in, generator=g)
    directions /= directions.norm(dim=1, keepdim=True)
    # Zipf-like feature frequencies: a few common features, many rare ones
    freq = 1.0 / torch.arange(1, n_features + 1, dtype=torch.float32).pow(0.7)
    idx = torch.multinomial(freq.expand(n_tokens, -1), active, replacement=False, generator=g)
    coef = torch.rand(n_tokens, active, generator=g) * 2.0 + 0.5
    x = torch.zeros(n_tokens, d_in)
    for j in range(active):
        x += coef[:, j : j + 1] * directions[idx[:, j]]
    offset = torch.randn(d_in, generator=g) * 0.5
    return x + offset + 0.05 * torch.randn(n_tokens, d_in, generator=g)


VARIANTS = {
    # name: (sparse_decoder, sparse_encoder)
    "dense": (False, False),
    "sparse_decoder": (True, False),
    "dense_decoder_sparse_encoder": (False, True),
    "sparse": (True, True),
}
"""Decoder / encoder-backward combinations; ``sparse`` is the training default."""


def time_variant(sae, data, batch_size, steps, warmup, sparse_decoder, sparse_encoder, train_cfg):
    """Train a copy of ``sae`` for ``warmup + steps`` steps; return (timed step seconds, losses)."""
    sae = copy.deepcopy(sae).train()
    tc = train_cfg.replace(sparse_decoder=sparse_decoder, sparse_encoder=sparse_encoder)
    opt = torch.optim.Adam(sae.parameters(), lr=tc.lr)
    tokens_since_fired = torch.zeros(sae.d_sae, dtype=torch.int64)
    times, losses = [], []
    n = data.shape[0]
    for i in range(warmup + steps):
        start = (i * batch_size) % n
        x = data[start : start + batch_size]
        if x.shape[0] < batch_size:
            x = torch.cat([x, data[: batch_size - x.shape[0]]])
        t0 = time.perf_counter()
        out = train_step(sae, opt, x, tokens_since_fired, tc)
        dt = time.perf_counter() - t0
        losses.append(float(out.loss.detach()))
        if i >= warmup:
            times.append(dt)
    return times, losses


def compare_decoders(args: argparse.Namespace) -> dict[str, float]:
    """Median step time and loss trajectory of every variant from the same initial SAE."""
    torch.manual_seed(args.seed)
    data = synthetic_activations(args.tokens, args.d_in, seed=args.seed)
    sc = SAEConfig(d_in=args.d_in, d_sae=args.d_sae, activation="topk", k=args.k)
    tc = TrainConfig(batch_size=args.batch_size, lr=default_lr(args.d_sae), seed=args.seed)
    sae = initialize_sae(sc, data[: tc.buffer_tokens], tc.seed)
    times, losses = {}, {}
    for name, (dec, enc) in VARIANTS.items():
        t, losses[name] = time_variant(sae, data, args.batch_size, args.steps, args.warmup, dec, enc, tc)
        times[name] = statistics.median(t)

    def max_diff(a: str, b: str) -> float:
        return max(abs(x - y) for x, y in zip(losses[a], losses[b]))

    out: dict[str, float] = {"threads": torch.get_num_threads(), "steps": args.warmup + args.steps}
    for name in VARIANTS:
        out[f"{name}_step_seconds"] = times[name]
    # the headline: sparse vs dense decoder, everything else equal (dense encoder backward)
    out["speedup_sparse_decoder"] = times["dense"] / times["sparse_decoder"]
    out["max_loss_diff_sparse_decoder"] = max_diff("sparse_decoder", "dense")
    # the same comparison when the encoder backward is sparse too (the training default)
    out["speedup_sparse_decoder_with_sparse_encoder"] = times["dense_decoder_sparse_encoder"] / times["sparse"]
    out["max_loss_diff_sparse_decoder_with_sparse_encoder"] = max_diff("sparse", "dense_decoder_sparse_encoder")
    # the whole sparse path against plain autograd
    out["speedup_sparse_path"] = times["dense"] / times["sparse"]
    out["max_loss_diff_sparse_path"] = max_diff("sparse", "dense")
    out["max_loss_rel_diff_sparse_path"] = max(
        abs(x - y) / max(abs(y), 1e-12) for x, y in zip(losses["sparse"], losses["dense"])
    )
    out["final_loss"] = losses["dense"][-1]
    return out


def train_and_report(
    acts: torch.Tensor,
    d_sae: int | None = None,
    k: int = 32,
    max_tokens: int = 500_000,
    batch_size: int = 4096,
    seed: int = 0,
    activation: str = "topk",
) -> dict[str, float]:
    """Train a TopK SAE on real activations ``acts`` (n_tokens, d_in); return FVU, L0,
    dead fraction and wall time (seconds)."""
    acts = acts.to(torch.float32)
    d_in = acts.shape[1]
    sc = SAEConfig(d_in=d_in, d_sae=d_sae or 8 * d_in, activation=activation, k=k)  # type: ignore[arg-type]
    tc = TrainConfig(batch_size=batch_size, max_tokens=max_tokens, seed=seed,
                     buffer_tokens=min(262_144, acts.shape[0]), device="cpu")
    t0 = time.perf_counter()
    result = SAETrainer(sc, tc, progress=False).fit(acts)
    m = result.metrics
    return {
        "corpus_tokens": acts.shape[0],
        "corpus_fvu": m["fvu"],
        "corpus_l0": m["l0"],
        "corpus_dead_fraction": m["dead_fraction"],
        "corpus_steps": m["steps"],
        "corpus_seconds": time.perf_counter() - t0,
    }


def train_real_corpus(n_docs: int | None = None, seed: int = 0) -> dict[str, float]:
    """``saedata train`` end to end with its defaults (all-MiniLM-L6-v2, topk k=32, d_sae=3072)
    on real text shipped with CPython (reference-manual paragraphs and stdlib docstrings):
    reading the activations plus training, timed together. Target: <= 300 s on 2 cores."""
    import tempfile

    from saedata.config import InputConfig, ReaderConfig
    from saedata.demo import python_docs_corpus, write_jsonl
    from saedata.embed.train import train

    with tempfile.TemporaryDirectory() as tmp:
        docs = python_docs_corpus(n_docs, seed=seed)
        corpus = write_jsonl(docs, Path(tmp) / "pydocs.jsonl")
        t0 = time.perf_counter()
        result = train(str(corpus), Path(tmp) / "sae", input_cfg=InputConfig(id_field="id"),
                       reader_cfg=ReaderConfig(device="cpu"), train_cfg=TrainConfig(seed=seed, device="cpu"))
        seconds = time.perf_counter() - t0
    m = result.metrics
    return {
        "real_docs": len(docs),
        "real_train_tokens": m["tokens"],
        "real_fvu": m["fvu"],
        "real_l0": m["l0"],
        "real_dead_fraction": m["dead_fraction"],
        "real_train_seconds": m["seconds"],
        "real_total_seconds": seconds,
    }


def _load_acts(path: str) -> torch.Tensor:
    from safetensors.torch import load_file

    tensors = load_file(path)
    if "acts" in tensors:
        return tensors["acts"]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise SystemExit(f"{path}: expected a tensor named 'acts' (found {', '.join(sorted(tensors))})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=16_384, help="synthetic activation rows")
    p.add_argument("--d-in", type=int, default=384)
    p.add_argument("--d-sae", type=int, default=3072)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=12, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--corpus-acts", default=None, help="safetensors file with real activations ('acts')")
    p.add_argument("--corpus-max-tokens", type=int, default=500_000)
    p.add_argument("--real-corpus", action="store_true",
                   help="also run `saedata train` end to end on ~3,700 real documents (about 3 minutes)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = compare_decoders(args)
    if args.corpus_acts:
        results.update(train_and_report(_load_acts(args.corpus_acts), k=args.k,
                                        max_tokens=args.corpus_max_tokens, batch_size=args.batch_size,
                                        seed=args.seed))
    if args.real_corpus:
        results.update(train_real_corpus(seed=args.seed))
    for name, value in results.items():
        print(f"{name}: {value:.6g}" if isinstance(value, float) else f"{name}: {value}")
    ok = results["speedup_sparse_decoder"] >= 1.5
    print(f"target speedup_sparse_decoder >= 1.5: {'PASS' if ok else 'FAIL'}")
    ok = results["max_loss_diff_sparse_decoder"] <= 1e-4
    print(f"target max_loss_diff_sparse_decoder <= 1e-4: {'PASS' if ok else 'FAIL'}")
    if args.real_corpus:
        ok = results["real_total_seconds"] <= 300
        print(f"target real corpus (read + train) <= 300 s: {'PASS' if ok else 'FAIL'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
