"""Filtered clustering end to end: cluster documents along one axis instead of all concepts.

Writes a corpus with planted topics and sentiment (saedata.demo, written for this
project), embeds it with the default reader and an SAE trained on it, then clusters the
documents twice: on the latents picked for the axis "sentiment" (their labels, embedded
with the reader, are close to the word), and on all latents. The planted labels show
what each clustering found: the filtered one follows sentiment, the unfiltered one topic.

    python examples/cluster_by_axis.py                     # ~1 minute on CPU
    python examples/cluster_by_axis.py --quick --out /tmp/cluster-demo

Outputs in --out (default: a new temporary folder): corpus.jsonl, run.duckdb (the store,
with its SAE in run.sae/), assignments.csv (each document's clusters),
clusters_sentiment.html (report) and clusters_sentiment.png (the UMAP map).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

OUTPUTS = ("corpus.jsonl", "run.duckdb", "assignments.csv", "clusters_sentiment.html", "clusters_sentiment.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="output directory [default: a new temporary folder]")
    parser.add_argument("--quick", action="store_true", help="smaller corpus and SAE (for tests)")
    parser.add_argument("--axis", default="sentiment", help="what to cluster along, in words")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import polars as pl
    from sklearn.metrics import adjusted_rand_score

    import saedata
    from saedata.config import InputConfig, ReaderConfig, TrainConfig
    from saedata.demo import make_corpus, write_jsonl

    out = Path(args.out or tempfile.mkdtemp(prefix="saedata-cluster-"))
    out.mkdir(parents=True, exist_ok=True)
    db = out / "run.duckdb"
    for stale in (db, out / "run.duckdb.wal"):
        stale.unlink(missing_ok=True)

    # 1. A corpus with two independent planted axes: 8 topics and 3 sentiments.
    n_docs = 240 if args.quick else 600
    corpus = write_jsonl(make_corpus(n_docs, seed=0), out / "corpus.jsonl")

    # 2. Embed it: train an SAE on the corpus (saved to run.sae/), max-pool codes per document.
    train = TrainConfig(max_tokens=40_000 if args.quick else 150_000, batch_size=1024, device="cpu", seed=0)
    result = saedata.embed(corpus, db=db, input_cfg=InputConfig(id_field="id"),
                           reader_cfg=ReaderConfig(device="cpu"), train_cfg=train)
    print(f"embedded {result.n_docs} documents, {result.n_activations} activations")

    with saedata.open(db) as store:
        # 3. Cluster on the axis' latents (k estimated by silhouette), and on all latents.
        r = saedata.cluster(store, axis=args.axis, unfiltered=True, eval_field="sentiment", seed=0)
    # the planted truth, from the corpus file itself (ext_id is its id field)
    truth = r.assignments.select("doc_id", "ext_id").join(
        pl.read_ndjson(corpus).select(pl.col("id").alias("ext_id"), "sentiment", "topic"), on="ext_id",
        maintain_order="left")

    print(f"\n--axis {args.axis!r} picked {r.latents_used.height} latents, e.g.:")
    for row in r.latents_used.head(6).iter_rows(named=True):
        print(f"  {row['latent']:>5}  [{row['label']}]  ({row['why']})")
    a = r.assignments
    print("\nagreement with the planted labels (adjusted Rand index; 1 = identical, 0 = chance):")
    for name, col in (("filtered", "cluster"), ("all latents", "cluster_all")):
        k = a[col].n_unique()
        print(f"  {name:<12} k={k:<3} sentiment {adjusted_rand_score(truth['sentiment'], a[col]):.2f}   "
              f"topic {adjusted_rand_score(truth['topic'], a[col]):.2f}")
    print(f"  the two clusterings agree: ARI {r.ari_unfiltered:.2f}")
    print("\nfiltered clusters, by their most over-represented concepts:")
    for row in r.clusters.iter_rows(named=True):
        print(f"  {row['cluster']}: {row['size']:>3} docs  {row['top_latents'][:90]}")

    a.join(truth.select("doc_id", "sentiment", "topic"), on="doc_id").drop("x", "y").write_csv(
        out / "assignments.csv")
    html_path = saedata.write_report(r, out / "clusters_sentiment.html")
    png_path = html_path.with_suffix(".png")
    print()
    print(f"wrote {out / 'assignments.csv'}")
    print(f"wrote {html_path}")
    print(f"wrote {png_path}")


if __name__ == "__main__":
    main()
