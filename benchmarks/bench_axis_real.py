"""Filtered clustering along a named axis (issue #11) on real text, against what a user
of a dense embedding would do, in one run.

On the Debian store of ``bench_real.py``, an axis is named by example values that are
sections ("games, fonts, mail, sound"); ``saedata cluster --axis ... --k K`` (K = the
number of values) clusters every document on the latents matched to the axis. Scored by
NMI against the section, on the documents of those sections. Baselines on the same
documents: k-means (same K) on the dense mean-pooled reader embedding of every document,
and a zero-shot assignment of each document to the value whose dense embedding is
nearest (not a clustering, but what the dense embedding offers for a named axis).

    python benchmarks/bench_axis_real.py --db bench/run.duckdb    # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

AXES = ["games, fonts, mail, sound", "database, editors, science", "video, graphics, hamradio, tex"]


def main() -> None:
    import numpy as np
    from bench_analyses import dense_embeddings
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score as nmi

    import saedata

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True, help="a store of benchmarks/corpora.py debian (bench_real.py builds one)")
    args = ap.parse_args()
    with saedata.open(args.db) as store:
        docs = store.sql("SELECT doc_id, text, meta FROM documents ORDER BY doc_id")
        (layer,) = store.one("SELECT layer FROM saes WHERE sae_id = 1")
    section = np.array([json.loads(m)["section"] for m in docs["meta"].to_list()])
    X = dense_embeddings(docs["text"].to_list(), layer)
    for axis in AXES:
        values = [v.strip() for v in axis.split(",")]
        on_axis = np.isin(section, values)
        r = saedata.cluster(args.db, axis=axis, k=len(values), map=False)
        filtered = r.assignments.sort("doc_id")["cluster"].to_numpy()
        dense = KMeans(len(values), n_init=10, random_state=0).fit_predict(X)
        nearest = (X @ dense_embeddings(values, layer).T).argmax(axis=1)
        scores = {name: nmi(section[on_axis], labels[on_axis])
                  for name, labels in (("saedata", filtered), ("dense_kmeans", dense), ("dense_nearest", nearest))}
        print(f"{axis!r} ({int(on_axis.sum())} documents): " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()),
              flush=True)
        ok = scores["saedata"] > scores["dense_kmeans"]
        print(f"target filtered clustering beats dense clustering on {axis!r}: {'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    main()
