"""Real-corpus property search (issue #11): mean average precision of ``saedata search``
against a dense embedding of the same reader and BM25, on Debian package descriptions
by section (``benchmarks/corpora.py debian``), in one run.

Two kinds of query per section: a **topic phrase** ("amateur ham radio") and an
**example sentence** (the synopsis line of one package of the section, which is then left
out of every ranking). A document is relevant when it is in the section. Average
precision over the first ``--top`` documents (AP@top, relevant documents beyond it count
as missed), mean over sections. Baselines: cosine similarity of the mean-pooled reader
layer the SAE reads (the dense embedding a user would reach for), and BM25 (Okapi,
k1 = 1.2, b = 0.75) over lower-cased words. Target: saedata >= dense + 0.05 on both.

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
    words = [WORD.findall(t.lower()) for t in texts]
    t0 = time.perf_counter()
    X = dense_embeddings(texts, layer)
    print(f"dense_embed_seconds: {time.perf_counter() - t0:.0f}", flush=True)

    queries = []  # (kind, section, text, doc_id left out or None)
    for s in sorted(TOPICS):
        queries.append(("topic", s, TOPICS[s], None))
        first = int(np.flatnonzero(sections == s)[0])
        queries.append(("example", s, texts[first].split("\n", 1)[0], int(doc_ids[first])))
    Q = dense_embeddings([q for _, _, q, _ in queries], layer)
    scores: dict[tuple[str, str], list[float]] = {}
    times = []
    with saedata.open(args.db) as store:
        for (kind, section, query, left_out), q in zip(queries, Q):
            keep = doc_ids != left_out if left_out is not None else np.ones(len(doc_ids), bool)
            relevant = int(((sections == section) & keep).sum())
            t0 = time.perf_counter()
            r = saedata.search(store, query, top=args.top + 1)
            times.append(time.perf_counter() - t0)
            ranked = [d for d in r.docs["doc_id"].to_list() if d != left_out][: args.top]
            sec_of = dict(zip(doc_ids.tolist(), sections.tolist()))
            sae_ap = average_precision([sec_of[d] == section for d in ranked], relevant)
            dense = np.where(keep, X @ q, -np.inf)
            top_dense = np.lexsort((doc_ids, -dense))[: args.top]
            dense_ap = average_precision([sections[i] == section for i in top_dense], relevant)
            bm = np.where(keep, bm25_scores(words, WORD.findall(query.lower())), -np.inf)
            top_bm = np.lexsort((doc_ids, -bm))[: args.top]
            bm_ap = average_precision([sections[i] == section and bm[i] > 0 for i in top_bm], relevant)
            for method, value in (("saedata", sae_ap), ("dense", dense_ap), ("bm25", bm_ap)):
                scores.setdefault((kind, method), []).append(value)
            print(f"  {kind} {section} {query[:50]!r}: saedata {sae_ap:.3f} ({r.query_latents.height} latents), "
                  f"dense {dense_ap:.3f}, bm25 {bm_ap:.3f}", flush=True)
    for kind in ("topic", "example"):
        means = {m: statistics.mean(scores[(kind, m)]) for m in ("saedata", "dense", "bm25")}
        print(f"{kind}_mean_ap@{args.top}: " + ", ".join(f"{m} {v:.3f}" for m, v in means.items()))
        ok = means["saedata"] >= means["dense"] + 0.05
        print(f"target {kind} queries: saedata mean AP >= dense + 0.05: {'PASS' if ok else 'FAIL'}")
    print(f"search_seconds_per_query: {statistics.median(times):.2f}")


if __name__ == "__main__":
    main()
