"""Real-corpus benchmark for issue #11's findings: one strong and one weaker difference
between two corpora nobody here wrote, both found?

The pair (``benchmarks/corpora.py``'s ``debian_pair``): A is 1,000 English Debian
package descriptions spread over 25 sections; in B, 22% are German descriptions of other
packages (the strong difference) and 15% are from section "games" (the weaker one: 4%
in A). Steps, in one run:

1. ``saedata diff a.jsonl b.jsonl`` as a user runs it (an SAE trained on both, then
   both embedded), timed;
2. findings: the rank of the first finding whose example documents are mostly German,
   and of the first mostly "games" (target: both among the top 5);
3. the ranked latent table (``--by-latent``, what a user read before findings): the rank
   of the first latent whose top documents are mostly German / games;
4. the baseline a user would reach for without saedata: the same reader's dense
   embedding (mean-pooled layer), k-means (k = 20) over A and B, clusters ranked by how
   much more of B than of A they hold (two-proportion z): the rank of the first mostly
   German and mostly games cluster.

    python benchmarks/bench_findings.py --workdir /tmp/pair     # ~8 min on 2 cores
(needs ``apt-get update -o Acquire::Languages=en,de`` once)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MOSTLY = 0.6
"""A finding, latent or cluster "is" German (or games) when this share of its documents are."""


def _kind(meta: list[tuple[str, str]], theme: str) -> str | None:
    """"de", the theme, or None: what most (MOSTLY) of these (lang, section) documents are."""
    if not meta:
        return None
    n = len(meta)
    if sum(lang == "de" for lang, _ in meta) >= MOSTLY * n:
        return "de"
    if sum(lang == "en" and section == theme for lang, section in meta) >= MOSTLY * n:
        return theme
    return None


def _first(kinds: list[str | None], kind: str) -> int | None:
    """1-based rank of the first ``kind`` in ``kinds``."""
    return next((i + 1 for i, k in enumerate(kinds) if k == kind), None)


def main() -> None:
    import numpy as np
    import polars as pl
    from bench_analyses import dense_embeddings
    from corpora import debian_pair

    import saedata
    from saedata.config import ReaderConfig, TrainConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--n-docs", type=int, default=1000)
    ap.add_argument("--theme", default="games")
    ap.add_argument("--k", type=int, default=20, help="k of the dense k-means baseline")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_findings_"))
    work.mkdir(parents=True, exist_ok=True)
    a, b, db = work / "a.jsonl", work / "b.jsonl", work / "run.duckdb"
    if not (a.exists() and b.exists()):
        debian_pair(a, b, n_docs=args.n_docs, theme=args.theme)
    meta = {}
    texts = []
    for path in (a, b):
        for line in path.open(encoding="utf-8"):
            d = json.loads(line)
            meta[d["text"]] = (d["lang"], d["section"])
            texts.append(d["text"])
    for name, path in (("a", a), ("b", b)):
        docs = [json.loads(line) for line in path.open(encoding="utf-8")]
        c = Counter("de" if d["lang"] == "de" else d["section"] for d in docs)
        print(f"{name}: {len(docs)} documents, {c['de'] / len(docs):.0%} German, "
              f"{c[args.theme] / len(docs):.0%} {args.theme}", flush=True)

    # -- 1. the diff as a user runs it ----------------------------------------------------
    t0 = time.perf_counter()
    result = saedata.diff_files(str(a), str(b), db, reader_cfg=ReaderConfig(device="cpu"),
                                train_cfg=TrainConfig(device="cpu"), examples=10, log=print)
    print(f"diff_seconds (train + embed + diff, or diff alone when stored): {time.perf_counter() - t0:.1f}")
    print(result.summary())

    # -- 2. findings ----------------------------------------------------------------------
    ex = result.finding_examples.with_columns(meta=pl.col("text").map_elements(
        lambda t: list(meta.get(t, ("?", "?"))), return_dtype=pl.List(pl.String)))
    kinds = [_kind([tuple(m) for m in ex.filter(pl.col("finding") == f)["meta"].to_list()], args.theme)
             for f in result.findings["finding"].to_list()]
    ranks = {k: _first(kinds, k) for k in ("de", args.theme)}
    print(f"findings: {result.findings.height}; first German finding at rank {ranks['de']}, "
          f"first {args.theme} finding at rank {ranks[args.theme]}")
    for row in result.findings.head(6).iter_rows(named=True):
        print(f"  {row['finding']}. more in {row['more_in']}: {row['description']} ({row['n_latents']} latents, "
              f"{row['share_a']:.0%} of a, {row['share_b']:.0%} of b)")
    ok = all(r is not None and r <= 5 for r in ranks.values())
    print(f"target both differences among the top 5 findings: {'PASS' if ok else 'FAIL'}")

    # -- 3. the latent table ----------------------------------------------------------------
    top = result.table.head(300)
    with saedata.open(db) as store:
        docs = store.sql("SELECT a.latent, d.text FROM activations a JOIN documents d USING (doc_id) "
                         "WHERE a.sae_id = ? AND list_contains(?, a.latent) "
                         "QUALIFY row_number() OVER (PARTITION BY a.latent ORDER BY a.value DESC, a.doc_id) <= 20",
                         [result.sae_id, top["latent"].to_list()])
    by_latent = {lat: [meta.get(t, ("?", "?")) for t in g["text"].to_list()]
                 for (lat,), g in docs.group_by("latent")}
    lkinds = [_kind(by_latent.get(lat, []), args.theme) for lat in top["latent"].to_list()]
    print(f"latent table: first mostly-German latent at rank {_first(lkinds, 'de')}, first mostly-{args.theme} "
          f"latent at rank {_first(lkinds, args.theme)} (of {top.height} shown; top 20 documents each)")

    # -- 4. dense embedding + k-means, clusters ranked by over-representation in B ----------
    from sklearn.cluster import KMeans

    t0 = time.perf_counter()
    with saedata.open(db) as store:
        (layer,) = store.one("SELECT layer FROM saes WHERE sae_id = ?", [result.sae_id])
    dense = dense_embeddings(texts, layer)
    n_a = sum(1 for _ in a.open(encoding="utf-8"))
    side_b = np.arange(len(texts)) >= n_a
    clusters = KMeans(args.k, n_init=10, random_state=0).fit_predict(dense)
    rows = []
    for c in range(args.k):
        in_c = clusters == c
        pa, pb = in_c[~side_b].mean(), in_c[side_b].mean()
        p = in_c.mean()
        z = (pb - pa) / max(np.sqrt(p * (1 - p) * (1 / (~side_b).sum() + 1 / side_b.sum())), 1e-12)
        rows.append((z, c, _kind([meta[texts[i]] for i in np.flatnonzero(in_c)], args.theme), pa, pb))
    rows.sort(key=lambda r: -abs(r[0]))
    ckinds = [k for _, _, k, _, _ in rows]
    print(f"dense k-means (k={args.k}, {time.perf_counter() - t0:.0f} s): first mostly-German cluster at rank "
          f"{_first(ckinds, 'de')}, first mostly-{args.theme} cluster at rank {_first(ckinds, args.theme)}")
    for z, c, k, pa, pb in rows[:5]:
        print(f"  cluster {c}: {pa:.0%} of a, {pb:.0%} of b (z {z:+.1f}), mostly {k or 'mixed'}")


if __name__ == "__main__":
    main()
