"""Every SAE design saedata trains, on the same activations of a real corpus, side by side.

One run reads a real categorised corpus once with the default reader (all-MiniLM-L6-v2,
last layer), holds out every fifth document, and trains each design on the same training
tokens with the same budget, seed, width (8 x 384 = 3,072 latents) and learning rate, at
matched L0 where the design allows (k = 32: TopK, BatchTopK, AbsTopK, MP's 32 pursuit
steps, the vSAE's TopK, GBA's targets adding up to 32; top-AFA picks its own L0). Each is
then scored by ``saedata sae eval``'s metric pass on the held-out documents' tokens: FVU,
mean L0, dead latents (never firing on the held-out tokens), the AFA ratio and eps-LBO,
and JS separability of the corpus's categories (the best latent's Jensen-Shannon
distance between documents of a category and the rest, averaged over categories). Step
time is each design's training seconds per step over TopK's (TopK uses the sparse
decoder, as by default).

Not here: g-SAE needs a causal language model's next-token loss (no causal LM ships with
this machine's packages; ``tests/sae/test_gsae.py`` checks its selection rule on a tiny
one), and Semi-NMF factorises MLP activations, not the residual stream the others read
(``tests/sae/test_snmf.py``).

    python benchmarks/corpora.py debian deb.jsonl --per-section 200
    python benchmarks/bench_sae_designs.py --corpus deb.jsonl --concept section --out designs.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DESIGNS = {
    # name: (SAEConfig overrides, TrainConfig overrides, paper claim against TopK)
    "topk": ({"activation": "topk"}, {}, "the reference (Gao et al. 2024)"),
    "batchtopk": ({"activation": "batchtopk"}, {}, "lower FVU than TopK at the same mean L0 (Bussmann et al. 2024)"),
    "abstopk": ({"activation": "abstopk"}, {}, "signed codes; FVU at least TopK's at the same L0"),
    "topafa": ({"activation": "topafa"}, {}, "no k to tune; eps-LBO near 0 and FVU like TopK's (Lee et al. 2025)"),
    "mp": ({"activation": "mp"}, {}, "lower FVU than TopK at the same L0 (Costa et al. 2025)"),
    "vsae": ({"activation": "topk"}, {"method": "vsae"}, "many more dead latents, worse FVU (Baker and Li 2025)"),
    "vsae_kl0.01": ({"activation": "topk"}, {"method": "vsae", "vsae_kl": 0.01}, "(a lighter KL weight)"),
    "gba": ({"activation": "relu"}, {"method": "gba"}, "better sparsity-loss trade-off than TopK (Chen et al. 2025)"),
}


def main() -> None:
    import polars as pl
    import torch

    from saedata.config import InputConfig, ReaderConfig, SAEConfig, TrainConfig
    from saedata.embed.evaluate import concept_labels, evaluate_activations
    from saedata.embed.train import corpus_lr, read_activations, trainer_class
    from saedata.reader import open_reader

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, help="a JSONL corpus with a categorical field")
    ap.add_argument("--concept", required=True, help="the categorical field scored by JS separability")
    ap.add_argument("--tokens", type=int, default=300_000, help="token activations read (train + held out)")
    ap.add_argument("--train-tokens", type=int, default=250_000, help="training budget of every design")
    ap.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS))
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--out", default=None, help="write the table and settings as JSON here")
    args = ap.parse_args()

    reader = open_reader(ReaderConfig())
    t0 = time.perf_counter()
    read = read_activations(args.corpus, reader, InputConfig(), max_tokens=args.tokens, keep_docs=True,
                            purpose="for the design benchmark")
    acts, doc_index = torch.cat(read.chunks), torch.cat(read.doc_index)
    held = doc_index % 5 == 0
    train_acts = acts[~held]
    held_docs = sorted(set(doc_index[held].tolist()))
    position = {d: i for i, d in enumerate(held_docs)}
    eval_acts = acts[held]
    eval_index = torch.tensor([position[d] for d in doc_index[held].tolist()], dtype=torch.int64)
    labels = concept_labels([read.docs[d] for d in held_docs], args.concept, source=args.corpus)
    print(f"read {acts.shape[0]:,} tokens of {len(read.docs):,} documents with {reader.describe()} in "
          f"{time.perf_counter() - t0:.0f} s: training on {train_acts.shape[0]:,}, scoring on {eval_acts.shape[0]:,} "
          f"tokens of {len(held_docs):,} held-out documents ({len(labels.values) - len(labels.skipped)} "
          f"{args.concept} values)", flush=True)

    d_in = acts.shape[1]
    saes, rows = [], []
    for name in args.designs:
        sae_over, train_over, _ = DESIGNS[name]
        sc = SAEConfig(d_in=d_in, d_sae=args.expansion * d_in, k=args.k, **sae_over)
        tc = TrainConfig(max_tokens=args.train_tokens, batch_size=4096, stop_tolerance=0, device="cpu",
                         checkpoint_every=0, k=args.k, activation=sc.activation, **train_over)
        tc = tc.replace(lr=corpus_lr(tc, sc.d_sae))
        result = trainer_class(tc.method)(sc, tc, progress=False).fit(train_acts)
        m = result.metrics
        rows.append({"design": name, "steps": int(m["steps"]), "train_s": m["seconds"],
                     "step_s": m["seconds"] / max(m["steps"], 1), "train_fvu": m["fvu"],
                     "train_dead": m["dead_fraction"]})
        saes.append(result.sae.eval())
        print(f"{name}: {m['steps']:.0f} steps in {m['seconds']:.0f} s, training FVU {m['fvu']:.3f}, "
              f"L0 {m['l0']:.1f}", flush=True)

    scored = evaluate_activations(saes, eval_acts, names=args.designs, doc_index=eval_index, concepts=labels)
    table = pl.DataFrame(rows).join(scored.table.rename({"sae": "design"}), on="design")
    base = table.filter(pl.col("design") == "topk")
    ref_step = float(base["step_s"][0]) if base.height else float("nan")
    table = table.with_columns(step_vs_topk=pl.col("step_s") / ref_step)
    show = table.select("design", "fvu", "l0", "dead", "dense", "afa_ratio", "eps_lbo", "js_sep",
                        "step_s", "step_vs_topk")
    with pl.Config(tbl_rows=-1, tbl_cols=-1, float_precision=3, tbl_width_chars=200):
        print(show)
    for name in args.designs:
        print(f"  {name}: paper: {DESIGNS[name][2]}")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "corpus": args.corpus, "concept": args.concept, "reader": reader.describe(),
            "tokens_read": int(acts.shape[0]), "train_tokens": args.train_tokens, "k": args.k,
            "d_sae": args.expansion * d_in, "rows": table.to_dicts()}, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
