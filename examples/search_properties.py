"""Property retrieval end to end: find documents by a property described in words.

Writes a corpus with planted topics, sentiment and questions (saedata.demo, written for
this project), embeds it with the default reader and an SAE trained on it, builds the
by-latent index, then searches for four properties and scores each result list against
the planted truth (precision@top vs the base rate a random ranking would get).

    python examples/search_properties.py --out search-demo         # under a minute on CPU
    python examples/search_properties.py --quick --out search-demo  # ~30 seconds

Outputs in --out: corpus.jsonl, run.duckdb (the store, with its SAE in run.sae/),
search_results.csv (the top documents of every query) and search_report.html.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

OUTPUTS = ("corpus.jsonl", "run.duckdb", "search_results.csv", "search_report.html")

# (query, metadata field, value that counts as relevant)
QUERIES = [
    ("Why did the dog do that?", "is_question", True),
    ("my dog played with the ball", "topic", "pets"),
    ("The chef baked a chocolate cake", "topic", "cooking"),
    ("It was terrible. Everyone hated it.", "sentiment", "negative"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="search-demo", help="output directory")
    parser.add_argument("--quick", action="store_true", help="smaller corpus and SAE (for tests)")
    parser.add_argument("--top", type=int, default=20, help="documents per query")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import polars as pl

    import saedata
    from saedata.config import InputConfig, ReaderConfig, TrainConfig
    from saedata.demo import make_corpus, write_jsonl
    from saedata.reports import html, png

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    db = out / "run.duckdb"
    for stale in (db, out / "run.duckdb.wal"):
        stale.unlink(missing_ok=True)

    # 1. A corpus with known properties: 8 topics, 3 sentiments, a third are questions.
    n_docs = 240 if args.quick else 600
    corpus = write_jsonl(make_corpus(n_docs, seed=0, question_rate=0.33), out / "corpus.jsonl")

    # 2. Embed it: train an SAE on the corpus (saved to run.sae/), pool codes per document.
    train = TrainConfig(max_tokens=40_000 if args.quick else 150_000, batch_size=1024, device="cpu", seed=0)
    result = saedata.embed(corpus, db=db, input_cfg=InputConfig(id_field="id"),
                           reader_cfg=ReaderConfig(device="cpu"), train_cfg=train)
    print(f"embedded {result.n_docs} documents, {result.n_activations} activations")

    # 3. The by-latent index (what `saedata index` does). Search reads it on stores large
    #    enough for it to pay off (over ~0.5M activations); here a full scan is as fast.
    saedata.build_index(db)

    # 4. Search: each query is read once, mapped to latents, and documents are scored
    #    from the stored activations alone.
    frames, summary, blocks = [], [], []
    with saedata.open(db) as store:
        for query, field, value in QUERIES:
            r = saedata.search(store, query, top=args.top, eval_field=field, eval_value=value)
            print(f"\n{query!r}: precision@{args.top} {r.precision:.2f} (base rate {r.base_rate:.2f}, "
                  f"{field} = {r.eval_value}; {'by-latent index' if r.used_index else 'full scan'})")
            for row in r.docs.head(3).iter_rows(named=True):
                print(f"  {row['rank']}. {row['score']:.2f}  {row['text'][:90]}")
            summary.append({"query": query, "property": f"{field} = {r.eval_value}",
                            "precision": r.precision, "base_rate": r.base_rate})
            frames.append(r.docs.with_columns(pl.lit(query).alias("query")))
            blocks += [
                html.Text(query, level=2),
                html.Text(f"precision@{args.top} {r.precision:.2f} against {field} = {r.eval_value} "
                          f"(base rate {r.base_rate:.2f})"),
                html.Table(r.query_latents, caption="latents the query maps to"),
                html.Table(r.docs.select("rank", "score", "matched", "text"), max_rows=10,
                           caption="top documents, with the latents that matched [and where they peaked]"),
            ]

    results = pl.concat(frames).select("query", "rank", "doc_id", "ext_id", "score", "matched", "text")
    results.write_csv(out / "search_results.csv")
    table = pl.DataFrame(summary)
    fig, ax = png.new_figure(8, 3.5)
    ys = list(range(len(summary)))[::-1]
    ax.barh([y + 0.2 for y in ys], table["precision"].to_list(), height=0.4, label=f"precision@{args.top}")
    ax.barh([y - 0.2 for y in ys], table["base_rate"].to_list(), height=0.4, label="base rate", color="#bbb")
    ax.set_yticks(ys, table["query"].to_list(), fontsize=8)
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    html.write_report(out / "search_report.html", "Property retrieval",
                      [html.Figure(fig, "precision of each query vs a random ranking"), html.Table(table), *blocks],
                      subtitle=f"{result.n_docs} planted documents; saedata search")
    for name in OUTPUTS:
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
