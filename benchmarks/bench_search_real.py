"""Real-corpus property search (issue #11): mean average precision of ``saedata search``
against a dense embedding of the same reader and BM25, on Debian package descriptions
by section (``benchmarks/corpora.py debian``), in one run.

Two kinds of query per section: a **topic phrase** ("amateur ham radio") and an
**example sentence** (the synopsis line of one package of the section, which is then left
out of every ranking). A document is relevant when it is in the section. Average
precision over the first ``--top`` documents (AP@top, relevant documents beyond it count
as missed), mean over sections. Baselines: cosine similarity of the mean-pooled reader
layer the SAE reads (the dense embedding a user would reach for), the same with one
round of pseudo-relevance feedback (Rocchio: the 20 best documents' mean added to the
query; saedata's search does a round of its own), and BM25 (Okapi, k1 = 1.2, b = 0.75)
over lower-cased words. Target: saedata >= dense + 0.05 on both.

Two more kinds check that a query for a property cutting across sections is not
pulled to one topic: the package kinds "-common", "-data", "-utils" and "-plugin" (by
the package name's ending, which no description states as such), each as a phrase
("architecture-independent common files") and as one such package's synopsis.

    python benchmarks/corpora.py debian deb.jsonl --per-section 200
    python benchmarks/bench_real.py deb.jsonl --workdir bench/      # embeds it once
    python benchmarks/bench_search_real.py --db bench/run.duckdb     # ~8 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

KINDS = {"-common": "architecture-independent common files", "-data": "data files for the application",
         "-utils": "command-line utilities", "-plugin": "a plugin for the application"}
TOPICS = {
    "admin": "system administration tools", "comm": "communication programs, modems and fax",
    "database": "database servers and clients", "editors": "text editors", "electronics":
    "electronics and circuit design", "fonts": "fonts and typefaces", "games": "games", "gnome": "GNOME desktop",
    "graphics": "graphics and image editing", "hamradio": "amateur ham radio", "httpd": "web servers",
    "kde": "KDE desktop", "kernel": "Linux kernel and drivers", "localization": "translations and language support",
    "mail": "email", "math": "mathematics", "net": "networking", "science": "science", "sound": "sound and audio",
    "tex": "TeX and LaTeX typesetting", "text": "text processing", "vcs": "version control systems",
    "video": "video", "web": "web applications", "x11": "X window system",
}
WORD = re.compile(r"\w+")


def average_precision(ranked_relevant: list[bool], n_relevant: int) -> float:
    """AP of a ranking (relevance of each ranked item, best first) with ``n_relevant`` in all."""
    hits, total = 0, 0.0
    for k, rel in enumerate(ranked_relevant, start=1):
        if rel:
            hits += 1
            total += hits / k
    return total / max(n_relevant, 1)


def bm25_scores(docs: list[list[str]], query: list[str], k1: float = 1.2, b: float = 0.75):
    import math
    from collections import Counter

    import numpy as np

    n = len(docs)
    df = Counter(w for d in docs for w in set(d))
    avg = sum(len(d) for d in docs) / n
    out = np.zeros(n)
    for i, d in enumerate(docs):
        tf = Counter(d)
        for w in set(query):
            if w in tf:
                idf = math.log(1 + (n - df[w] + 0.5) / (df[w] + 0.5))
                out[i] += idf * tf[w] * (k1 + 1) / (tf[w] + k1 * (1 - b + b * len(d) / avg))
    return out


def main() -> None:
    import numpy as np
    from bench_analyses import dense_embeddings

    import saedata

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True, help="a store of benchmarks/corpora.py debian (bench_real.py builds one)")
    ap.add_argument("--top", type=int, default=200)
    args = ap.parse_args()

    with saedata.open(args.db) as store:
        docs = store.sql("SELECT doc_id, text, meta FROM documents ORDER BY doc_id")
        (layer,) = store.one("SELECT layer FROM saes WHERE sae_id = 1")
    doc_ids = docs["doc_id"].to_numpy()
    texts = docs["text"].to_list()
    sections = np.array([json.loads(m).get("section") for m in docs["meta"].to_list()])
    names = [json.loads(m).get("id") or "" for m in docs["meta"].to_list()]  # the package
    words = [WORD.findall(t.lower()) for t in texts]
    t0 = time.perf_counter()
    X = dense_embeddings(texts, layer)
    print(f"dense_embed_seconds: {time.perf_counter() - t0:.0f}", flush=True)

    queries = []  # (kind, what, relevant mask, text, doc_id left out or None)
    for s in sorted(TOPICS):
        mask = sections == s
        first = int(np.flatnonzero(mask)[0])
        queries.append(("topic", s, mask, TOPICS[s], None))
        queries.append(("example", s, mask, texts[first].split("\n", 1)[0], int(doc_ids[first])))
    for suffix, phrase in KINDS.items():
        mask = np.array([n.endswith(suffix) for n in names])
        first = int(np.flatnonzero(mask)[0])
        queries.append(("kind_phrase", suffix, mask, phrase, None))
        queries.append(("kind_example", suffix, mask, texts[first].split("\n", 1)[0], int(doc_ids[first])))
    Q = dense_embeddings([q[3] for q in queries], layer)
    methods = ("saedata", "dense", "dense+feedback", "bm25")
    scores: dict[tuple[str, str], list[float]] = {}
    times = []
    position = {d: i for i, d in enumerate(doc_ids.tolist())}

    def ap_of(order, mask, relevant):
        return average_precision([bool(mask[i]) for i in order[: args.top]], relevant)

    with saedata.open(args.db) as store:
        for (kind, what, mask, query, left_out), q in zip(queries, Q):
            keep = doc_ids != left_out if left_out is not None else np.ones(len(doc_ids), bool)
            relevant = int((mask & keep).sum())
            t0 = time.perf_counter()
            r = saedata.search(store, query, top=args.top + 1)
            times.append(time.perf_counter() - t0)
            ranked = [position[d] for d in r.docs["doc_id"].to_list() if d != left_out]
            dense = np.where(keep, X @ q, -np.inf)
            top_dense = np.lexsort((doc_ids, -dense))
            centroid = X[top_dense[:20]].mean(axis=0)
            fed = np.where(keep, X @ (q + centroid / np.linalg.norm(centroid)), -np.inf)
            bm = bm25_scores(words, WORD.findall(query.lower()))
            bm = np.where(keep & (bm > 0), bm, -np.inf)
            got = {"saedata": ap_of(ranked, mask, relevant), "dense": ap_of(top_dense, mask, relevant),
                   "dense+feedback": ap_of(np.lexsort((doc_ids, -fed)), mask, relevant),
                   "bm25": ap_of([i for i in np.lexsort((doc_ids, -bm)) if np.isfinite(bm[i])], mask, relevant)}
            for method, value in got.items():
                scores.setdefault((kind, method), []).append(value)
            print(f"  {kind} {what} {query[:50]!r}: " + ", ".join(f"{m} {v:.3f}" for m, v in got.items())
                  + f" ({r.feedback_note})", flush=True)
    for kind in ("topic", "example", "kind_phrase", "kind_example"):
        means = {m: statistics.mean(scores[(kind, m)]) for m in methods}
        print(f"{kind}_mean_ap@{args.top}: " + ", ".join(f"{m} {v:.3f}" for m, v in means.items()))
        if kind in ("topic", "example"):
            ok = means["saedata"] >= means["dense"] + 0.05
            print(f"target {kind} queries: saedata mean AP >= dense + 0.05: {'PASS' if ok else 'FAIL'}")
    print(f"search_seconds_per_query: {statistics.median(times):.2f}")


if __name__ == "__main__":
    main()
