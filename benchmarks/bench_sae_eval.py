"""Benchmark `saedata sae eval`'s metric pass against a bare forward pass of the same SAE.

One run, one SAE (384 -> 3072 TopK, k=32, initialised on the data as training does), one
set of synthetic token activations (seeded: sparse non-negative combinations of random
directions plus an offset and noise), batches of 4,096 tokens, documents of 50 tokens
labelled with 10 random concepts. Three measurements:

- ``forward``: encode + decode (``encode_sparse`` then ``decode_sparse``) of every token,
  nothing else;
- ``eval``: :func:`saedata.embed.evaluate.evaluate_activations` end to end, with the
  concepts: FVU, L0 and its spread, dead / dense fractions, AFA ratio, eps-LBO, decoder
  coherence, max-pooling per document and JS separability;
- ``interleaved``: the same work batch by batch, each batch's bare forward pass timed
  right before its evaluation step (``SAEEvaluator.update`` + ``max_pool``), then the
  end-of-pass work (decoder coherence, JS histograms) added to the evaluation side. On a
  machine shared with other work, a whole pass's wall time varies by up to 3x from one
  minute to the next; timed side by side, both sides see the same load, so this ratio is
  the one the target is judged on.

Targets (issue #14): eval under 60 s wall on 2 cores, and <= 3x the forward pass.

    python benchmarks/bench_sae_eval.py                   # 500,000 tokens, ~2-3 minutes on 2 cores
    python benchmarks/bench_sae_eval.py --tokens 100000   # quicker
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saedata.config import SAEConfig  # noqa: E402
from saedata.embed.evaluate import BATCH_TOKENS, ConceptLabels, evaluate_activations  # noqa: E402
from saedata.sae.eval import SAEEvaluator, js_separability, max_pool  # noqa: E402
from saedata.sae.train import initialize_sae  # noqa: E402


def synthetic_activations(n_tokens: int, d_in: int = 384, n_features: int = 4096, active: int = 24,
                          seed: int = 0, chunk: int = 65_536) -> torch.Tensor:
    """(n_tokens, d_in) rows, each a non-negative combination of ``active`` of ``n_features``
    random unit directions, plus a mean offset and a little noise; made in chunks."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_features, d_in, generator=g)
    directions /= directions.norm(dim=1, keepdim=True)
    offset = torch.randn(d_in, generator=g) * 0.5
    out = torch.empty(n_tokens, d_in)
    for start in range(0, n_tokens, chunk):
        n = min(chunk, n_tokens - start)
        idx = torch.randint(0, n_features, (n, active), generator=g)
        coef = torch.rand(n, active, generator=g) * 2.0 + 0.5
        x = torch.nn.functional.embedding_bag(idx, directions, per_sample_weights=coef, mode="sum")
        out[start:start + n] = x + offset + 0.05 * torch.randn(n, d_in, generator=g)
    return out


DOC_TOKENS = 50
"""Tokens per synthetic document."""


@torch.inference_mode()
def forward_pass(sae, acts: torch.Tensor, batch: int) -> float:
    """Wall seconds to encode and decode every row, ``batch`` rows at a time."""
    start = time.perf_counter()
    for s in range(0, acts.shape[0], batch):
        sae.decode_sparse(sae.encode_sparse(acts[s:s + batch]))
    return time.perf_counter() - start


@torch.inference_mode()
def interleaved(sae, acts: torch.Tensor, doc_index: torch.Tensor, labels: ConceptLabels,
                batch: int) -> tuple[float, float]:
    """(forward seconds, evaluation seconds) timed batch by batch, side by side."""
    ev = SAEEvaluator(sae)
    pooled = []
    fwd = evl = 0.0
    step = batch - batch % DOC_TOKENS  # whole documents in each batch
    for s in range(0, acts.shape[0], step):
        e = min(s + step, acts.shape[0])
        x = acts[s:e]
        t0 = time.perf_counter()
        sae.decode_sparse(sae.encode_sparse(x))
        t1 = time.perf_counter()
        codes = ev.update(x)
        pooled.append(max_pool(codes, doc_index[s:e], sae.d_sae))
        t2 = time.perf_counter()
        fwd, evl = fwd + t1 - t0, evl + t2 - t1
    t = time.perf_counter()
    ev.result()
    doc, lat, val = (torch.cat(parts) for parts in zip(*pooled))
    js_separability(doc, lat, val, labels.doc_concept, len(labels.values), sae.d_sae)
    return fwd, evl + time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=500_000)
    ap.add_argument("--d-sae", type=int, default=3072)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t = time.perf_counter()
    acts = synthetic_activations(args.tokens)
    print(f"activations: {acts.shape[0]:,} x {acts.shape[1]} ({time.perf_counter() - t:.1f} s to make)")
    cfg = SAEConfig(d_in=acts.shape[1], d_sae=args.d_sae, activation="topk", k=args.k)
    sae = initialize_sae(cfg, acts[:16_384], seed=0).eval()
    doc_index = torch.arange(acts.shape[0]) // DOC_TOKENS
    n_docs = int(doc_index[-1]) + 1
    labels = ConceptLabels("c", [f"c{i}" for i in range(10)],
                           torch.randint(0, 10, (n_docs,), generator=torch.Generator().manual_seed(1)), [])
    print(f"sae: topk {cfg.d_in} -> {cfg.d_sae}, k={cfg.k}; threads: {torch.get_num_threads()}; "
          f"batch: {BATCH_TOKENS} tokens; {n_docs:,} documents, {len(labels.values)} concepts")
    print(f"load average at start (other work on this machine): {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    forward_pass(sae, acts[:BATCH_TOKENS * 2], BATCH_TOKENS)  # warm-up

    fwd = forward_pass(sae, acts, BATCH_TOKENS)
    t = time.perf_counter()
    result = evaluate_activations([sae], acts, names=["bench"], doc_index=doc_index, concepts=labels,
                                  batch_tokens=BATCH_TOKENS)
    eval_s = time.perf_counter() - t
    side_fwd, side_eval = interleaved(sae, acts, doc_index, labels, BATCH_TOKENS)

    row = result.table.row(0, named=True)
    print("metrics: " + ", ".join(f"{k} {row[k]:.4g}" for k in ("fvu", "l0", "l0_std", "dead", "dense",
                                                                   "afa_ratio", "eps_lbo", "coh_max", "js_sep")))
    print(f"forward_seconds: {fwd:.2f}")
    print(f"eval_seconds: {eval_s:.2f}")
    print(f"ratio_eval_to_forward (whole passes, one after the other): {eval_s / fwd:.2f}")
    print(f"interleaved_seconds: forward {side_fwd:.2f}, eval {side_eval:.2f}")
    print(f"ratio_eval_to_forward (interleaved): {side_eval / side_fwd:.2f}")
    ok = eval_s < 60 and side_eval / side_fwd <= 3
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    print(f"target (eval < 60 s wall, <= 3x forward interleaved): {'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    main()
