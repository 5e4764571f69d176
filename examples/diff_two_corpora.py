"""Dataset diffing end to end: which concepts are more common in one corpus than another.

Writes two corpora with planted differences (saedata.demo, written for this project):
"blogs" covers eight topics evenly; "forum" talks about pets and science 4x as often and
asks questions 3x as often, so its posts are also longer. Then, as `saedata diff
blogs.jsonl forum.jsonl` would:

1. trains an SAE on both corpora together and embeds each with the default reader;
2. counts, per latent, the documents of each side where it is active (one DuckDB scan),
   tests each difference (two-proportion z-test, and Cochran-Mantel-Haenszel across
   length bins, since forum posts are longer), with Benjamini-Hochberg q-values;
3. merges near-duplicate latents and prints the top findings;
4. writes diff.html: bars of the top latents, the ranked table and example documents
   with the word where each latent peaked marked. It opens offline.

    python examples/diff_two_corpora.py                  # ~1 minute on CPU
    python examples/diff_two_corpora.py --quick --out /tmp/diff-demo

Outputs in --out (default: a new temporary folder): blogs.jsonl, forum.jsonl, run.duckdb
(the store, with its SAE in run.sae/), diff.csv (the ranked table) and diff.html.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

OUTPUTS = ("blogs.jsonl", "forum.jsonl", "run.duckdb", "diff.csv", "diff.html")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="output directory [default: a new temporary folder]")
    parser.add_argument("--quick", action="store_true", help="smaller corpora and SAE (for tests)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import polars as pl

    import saedata
    from saedata.config import InputConfig, ReaderConfig, TrainConfig
    from saedata.demo import make_pair, write_jsonl

    out = Path(args.out or tempfile.mkdtemp(prefix="saedata-diff-"))
    out.mkdir(parents=True, exist_ok=True)
    db = out / "run.duckdb"
    for stale in (db, out / "run.duckdb.wal"):
        stale.unlink(missing_ok=True)
    shutil.rmtree(out / "run.sae", ignore_errors=True)

    # 1. Two corpora with known differences.
    n_docs = 160 if args.quick else 300
    docs_blogs, docs_forum = make_pair(n_docs, id_prefixes=("blog", "post"))
    blogs = write_jsonl(docs_blogs, out / "blogs.jsonl")
    forum = write_jsonl(docs_forum, out / "forum.jsonl")

    # 2. Embed both (an SAE trained on both corpora together) and diff them.
    train = TrainConfig(max_tokens=60_000 if args.quick else 150_000, batch_size=1024, device="cpu", seed=0)
    result = saedata.diff_files(blogs, forum, db, input_cfg=InputConfig(id_field="id"),
                                reader_cfg=ReaderConfig(device="cpu"),
                                train_cfg=train, log=print)

    # 3. The findings.
    print()
    print(result.summary())
    for w in result.warnings:
        print(f"warning: {w}")
    top = result.rows(5, compact=True).select("more_in", "latent", "label", "freq_a", "freq_b", "adj_diff_b_minus_a",
                                              "adj_q", "merged")
    with pl.Config(tbl_rows=-1, fmt_str_lengths=45, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
                   float_precision=3, tbl_width_chars=140):
        print(top)
    first = result.table.row(0, named=True)
    richer = first["more_in"]
    example = result.examples.filter((pl.col("latent") == first["latent"]) & (pl.col("side") == richer)).head(2)
    for row in example.iter_rows(named=True):
        print(f"  e.g. {row['side']}:{row['ext_id']} (peak at {row['at_word']!r}): {row['text'][:100]}")

    # 4. Files.
    result.display_table(result.table).write_csv(out / "diff.csv")
    saedata.write_report(result, out / "diff.html")
    for name in OUTPUTS:
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
