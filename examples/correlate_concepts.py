"""Concept correlation end to end: which concepts co-occur, and which go with metadata.

Writes a corpus with planted topics, sentiment and questions (saedata.demo, written for
this project), embeds it with the default reader and an SAE trained on it, then

1. counts every pair of latents that fire in the same documents (in DuckDB) and ranks
   the pairs by NPMI among those significant after Benjamini-Hochberg correction;
2. associates the latents with the planted `topic` (per-topic frequency, chi-square)
   and with the document length `n_words` (Spearman's rho).

    python examples/correlate_concepts.py                  # ~1 minute on CPU
    python examples/correlate_concepts.py --quick --out /tmp/corr-demo

Outputs in --out (default: a new temporary folder): corpus.jsonl, run.duckdb (the store,
with its SAE in run.sae/), pairs.csv, correlate_report.html (NPMI heatmap, pair table,
documents where both concepts fire) and topic_report.html (topic x latent heatmap).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

OUTPUTS = ("corpus.jsonl", "run.duckdb", "pairs.csv", "correlate_report.html", "topic_report.html")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="output directory [default: a new temporary folder]")
    parser.add_argument("--quick", action="store_true", help="smaller corpus and SAE (for tests)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import polars as pl

    import saedata
    from saedata.config import InputConfig, ReaderConfig, TrainConfig
    from saedata.demo import make_corpus, write_jsonl

    out = Path(args.out or tempfile.mkdtemp(prefix="saedata-correlate-"))
    out.mkdir(parents=True, exist_ok=True)
    db = out / "run.duckdb"
    for stale in (db, out / "run.duckdb.wal"):
        stale.unlink(missing_ok=True)

    # 1. A corpus with known structure: 8 topics, 3 sentiments, a quarter are questions.
    n_docs = 240 if args.quick else 600
    corpus = write_jsonl(make_corpus(n_docs, seed=0), out / "corpus.jsonl")

    # 2. Embed it: train an SAE on the corpus (saved to run.sae/), max-pool codes per document.
    train = TrainConfig(max_tokens=40_000 if args.quick else 150_000, batch_size=1024, device="cpu", seed=0)
    result = saedata.embed(corpus, db=db, input_cfg=InputConfig(id_field="id"),
                           reader_cfg=ReaderConfig(device="cpu"), train_cfg=train)
    print(f"embedded {result.n_docs} documents, {result.n_activations} activations")

    with saedata.open(db) as store:
        # 3. Latent pairs: counted by the `cooccur` macro, tested, ranked by NPMI.
        pairs = saedata.correlate(store, min_support=10, top=50)
        print(f"\n{pairs.n_tested} pairs fire together in >= 10 of {pairs.n_docs} documents; "
              f"{pairs.n_significant} are significant at q <= 0.05. The most unexpected:")
        for row in pairs.pairs.head(5).iter_rows(named=True):
            flag = "  (redundant)" if row["redundant"] else ""
            print(f"  NPMI {row['npmi']:.2f}  [{row['label_i']}] + [{row['label_j']}]  "
                  f"in {row['n_ij']} documents{flag}")
        ex = pairs.examples.filter(pl.col("rank") == 1).row(0, named=True)
        print(f"  e.g. {ex['text'][:100]!r} (peaks at {ex['word_i']!r} and {ex['word_j']!r})")

        # 4. Latents and metadata: a categorical column, then a numeric one.
        topic = saedata.correlate_metadata(store, None, "topic", per_class=3)
        print("\nmost over-represented concept per planted topic:")
        for row in topic.classes.filter(pl.col("rank") == 1).iter_rows(named=True):
            print(f"  {row['class']:<8} [{row['label']}]  {row['freq_in']:.0%} of its documents vs "
                  f"{row['freq_out']:.0%} elsewhere")
        length = saedata.correlate_metadata(store, None, "n_words")
        print("\nconcepts that go with longer documents (Spearman):")
        for row in length.latents.head(3).iter_rows(named=True):
            print(f"  rho {row['rho']:+.2f}  [{row['label']}]")

    pairs.pairs.write_csv(out / "pairs.csv")
    print()
    print(f"wrote {out / 'pairs.csv'}")
    print(f"wrote {saedata.write_report(pairs, out / 'correlate_report.html')}")
    print(f"wrote {saedata.write_report(topic, out / 'topic_report.html')}")


if __name__ == "__main__":
    main()
