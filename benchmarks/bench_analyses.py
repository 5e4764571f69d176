"""Analyses benchmark: diff, retrieval and clustering, each against a baseline in the same run.

Prints ``name: value`` lines and a PASS/FAIL line per target:

1. diff, planted properties: corpora A and B from ``saedata.demo`` differ in three
   planted ways (pets 4x as common in B, science 4x as common in A, questions 3x as
   common in B); both are embedded with the default reader and an SAE trained on both.
   For each property: the rank of the first latent among the top 10 of ``diff`` whose
   strongest documents (top 20) are at least 70% of that property and that moves in
   the planted direction. Target: every property recovered.
2. diff speed: a synthetic store built in SQL (no reader): 1M documents x 32 active
   latents (two datasets of 500k, d_sae 4096). ``diff`` end to end vs the DuckDB scan
   ``SELECT latent, count(*) FROM activations WHERE sae_id = 1 GROUP BY latent`` over
   the same activations. Target: ratio <= 2. Also ``search`` by 16 and by 128 latents
   with and without the by-latent index (``saedata index``) on that store, and which
   of the two ``search`` picks by default.
3. retrieval: precision@50 of ``saedata search`` (default 128 query latents, and 16)
   vs cosine similarity of the reader's mean-pooled dense embedding (mean over
   non-special tokens of the same layer; the query embedded the same way), on real
   text (2,000 paragraphs of the CPython docs: every paragraph of 8 modules plus
   others; each query names one module's subject, relevant = that module's
   paragraphs) and on the planted demo corpora (relevant = the planted topic,
   question or sentiment).
4. clustering: adjusted Rand index against the planted sentiment of k-means over the
   latents of the axis "sentiment" vs over all latents (dataset A).

    python benchmarks/bench_analyses.py                     # ~6-8 minutes on 2 CPU cores
    python benchmarks/bench_analyses.py --parts speed --docs 200000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PARTS = ("diff", "speed", "retrieval", "cluster")

# (query, category whose paragraphs are relevant) on python_docs_corpus
DOCS_QUERIES = [
    ("Draw shapes by moving the turtle pen on the screen.", "turtle"),
    ("Run the event loop and await coroutines and tasks concurrently.", "asyncio"),
    ("Compute the mean, median and standard deviation of the data.", "statistics"),
    ("Compare two sequences of lines and show the differences.", "difflib"),
    ("Copy, move and delete whole directory trees of files.", "shutil"),
    ("Type hints: generic types, type variables and protocols.", "typing"),
    ("Examples in docstrings are run and checked as tests.", "doctest"),
    ("Write characters to the terminal window and read keys.", "curses"),
]

# (query, metadata field, relevant value) on the planted demo corpora
DEMO_QUERIES = [
    ("Why did the dog do that?", "is_question", True),
    ("my dog played with the ball", "topic", "pets"),
    ("The chef baked a chocolate cake", "topic", "cooking"),
    ("The storm flooded the coast.", "topic", "weather"),
    ("It was terrible. Everyone hated it.", "sentiment", "negative"),
]


def _print(name: str, value) -> None:
    print(f"{name}: {value:.4g}" if isinstance(value, float) else f"{name}: {value}", flush=True)


def _target(name: str, ok: bool) -> None:
    print(f"target {name}: {'PASS' if ok else 'FAIL'}", flush=True)


def _import(module: str, attr: str):
    """An analysis function, or None (printed as skipped) when its module is not there yet."""
    import importlib

    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        print(f"skipped: {module}.{attr} is not importable ({e})", flush=True)
        return None


# -- shared: the planted store ------------------------------------------------------------------


PLANTED = {
    "pets more in B": ("topic", "pets", +1),
    "science more in A": ("topic", "science", -1),
    "questions more in B": ("is_question", True, +1),
}


def build_planted_store(work: Path, n_docs: int) -> Path:
    """Datasets "a" and "b" (n_docs each) with the planted differences of PLANTED."""
    from saedata.config import InputConfig, ReaderConfig, TrainConfig
    from saedata.demo import TOPICS, make_corpus, write_jsonl
    from saedata.embed.local import embed
    from saedata.embed.train import train

    topics = list(TOPICS)
    weights_a = [4.0 if t == "science" else 1.0 for t in topics]
    a = write_jsonl(make_corpus(n_docs, seed=1, topic_weights=weights_a, question_rate=0.2, id_prefix="a"),
                    work / "a.jsonl")
    weights_b = [4.0 if t == "pets" else 1.0 for t in topics]
    b = write_jsonl(make_corpus(n_docs, seed=2, topic_weights=weights_b, question_rate=0.6, id_prefix="b"),
                    work / "b.jsonl")
    db = work / "planted.duckdb"
    reader = ReaderConfig(device="cpu")
    t0 = time.perf_counter()
    # One SAE trained on both corpora, so that neither side's concepts are favoured.
    both = work / "ab.jsonl"
    both.write_text(a.read_text(encoding="utf-8") + b.read_text(encoding="utf-8"), encoding="utf-8")
    train(str(both), work / "planted.sae", input_cfg=InputConfig(id_field="id"), reader_cfg=reader,
          train_cfg=TrainConfig(max_tokens=200_000, batch_size=2048, device="cpu", seed=0))
    for corpus in (a, b):
        embed(str(corpus), db, work / "planted.sae", input_cfg=InputConfig(id_field="id"), reader_cfg=reader)
    _print("planted_store_seconds", time.perf_counter() - t0)
    return db


def _meta_text(v) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


# -- 1. diff recovers planted properties -----------------------------------------------------------


def bench_diff_recovery(db: Path) -> None:
    """Each top-10 latent stands for the planted property its top 20 documents are richest in
    (largest lift over the property's rate in both datasets, at least 70% of them, moving in
    the planted direction); a property is recovered when some top-10 latent stands for it."""
    diff = _import("saedata.analysis.diff", "diff")
    if diff is None:
        return
    import saedata

    t0 = time.perf_counter()
    result = diff(str(db), "a", "b")
    _print("diff_planted_seconds", time.perf_counter() - t0)
    table = result.table.head(10)
    found: dict[str, tuple] = {}
    with saedata.open(db) as store:
        rates = {name: store.one("SELECT avg(((meta->>$f) = $v)::INT) FROM documents",
                                 {"f": f, "v": _meta_text(v)})[0] for name, (f, v, _) in PLANTED.items()}
        for rank, row in enumerate(table.iter_rows(named=True), start=1):
            best = None
            for name, (field, value, sign) in PLANTED.items():
                if (row["freq_b"] - row["freq_a"]) * sign <= 0:
                    continue
                (share,) = store.one(
                    "SELECT avg(((d.meta->>$f) = $v)::INT) FROM top_docs(1, $lat, n := 20) AS t "
                    "JOIN documents AS d USING (doc_id)",
                    {"f": field, "v": _meta_text(value), "lat": int(row["latent"])},
                )
                if share is not None and share >= 0.7 and (best is None or share / rates[name] > best[1]):
                    best = (name, share / rates[name], share)
            if best is not None and best[0] not in found:
                found[best[0]] = (rank, row["latent"], row["label"], best[2], best[1])
    for name in PLANTED:
        if name in found:
            rank, latent, label, share, lift = found[name]
            _print(f"diff_recovered[{name}]", f"rank {rank} (latent {latent} '{label}', {share:.0%} of its "
                                              f"top 20 docs, {lift:.1f}x the base rate)")
        else:
            _print(f"diff_recovered[{name}]", "not in the top 10")
    _print("diff_properties_recovered", f"{len(found)}/{len(PLANTED)}")
    _target("diff recovers every planted property in its top 10", len(found) == len(PLANTED))


# -- 2. speed on a 1M-document synthetic store --------------------------------------------------------


def build_synthetic_store(path: Path, n_docs: int, k: int = 32, d_sae: int = 4096) -> None:
    """Two datasets of n_docs / 2 synthetic documents, each with k distinct active latents.

    Latent j * (d_sae / k) + r for j < k, with r skewed towards 0 (so frequencies
    vary); dataset "b" is skewed less, so the two differ. Built entirely in SQL.
    """
    from saedata.store import Store

    band = d_sae // k
    half = n_docs // 2
    with Store(path, read_only=False) as store:
        con = store.con
        con.execute("INSERT INTO saes (sae_id, name, d_in, d_sae, activation, fingerprint) "
                    "VALUES (1, 'synthetic', 384, ?, 'topk', 'synthetic')", [d_sae])
        con.execute("INSERT INTO latents (sae_id, latent) SELECT 1, range FROM range(?)", [d_sae])
        con.execute("INSERT INTO datasets (dataset_id, name, source, sae_id, complete, n_docs) "
                    "VALUES (1, 'a', 'synthetic', 1, true, ?), (2, 'b', 'synthetic', 1, true, ?)",
                    [half, n_docs - half])
        con.execute("INSERT INTO documents SELECT range, CASE WHEN range < $half THEN 1 ELSE 2 END, "
                    "'s' || range, 'synthetic document ' || range, NULL, 8 + (hash(range) % 56)::INTEGER "
                    "FROM range($n)", {"half": half, "n": n_docs})
        con.execute("SELECT setseed(0.25)")
        con.execute(
            "INSERT INTO activations SELECT d, 1, "
            "(j * $band + floor(pow(random(), CASE WHEN d < $half THEN 2.0 ELSE 1.6 END) * $band))::INTEGER, "
            "round(0.1 + 5 * random(), 3)::REAL, 0 FROM range($n) AS t(d), range($k) AS u(j)",
            {"band": band, "half": half, "n": n_docs, "k": k},
        )
        store.refresh_latent_stats(1)
        t0 = time.perf_counter()
        for dataset_id in (1, 2):
            store.complete_dataset(dataset_id)  # what finishing a dataset writes when embedding
        _print("latent_counts_build_seconds", time.perf_counter() - t0)
        store.checkpoint()


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_speed(work: Path, n_docs: int) -> None:
    import random

    import saedata
    from saedata.analysis.retrieve import score_documents, search
    from saedata.store import Store

    db = work / "synthetic.duckdb"
    t0 = time.perf_counter()
    build_synthetic_store(db, n_docs)
    _print("synthetic_build_seconds", time.perf_counter() - t0)
    with saedata.open(db) as store:
        (n_acts,) = store.one("SELECT count(*) FROM activations")
        _print("synthetic_documents", n_docs)
        _print("synthetic_activations", int(n_acts))
        scan_sql = "SELECT latent, count(*) FROM activations WHERE sae_id = 1 GROUP BY latent"
        scan = _best(lambda: store.rows(scan_sql), 3)
        by_ds_sql = ("SELECT d.dataset_id, a.latent, count(*) FROM activations AS a JOIN documents AS d "
                     "USING (doc_id) WHERE a.sae_id = 1 GROUP BY ALL")
        scan_ds = _best(lambda: store.rows(by_ds_sql), 3)
    _print("duckdb_count_scan_seconds", scan)
    _print("duckdb_count_by_dataset_seconds", scan_ds)

    diff = _import("saedata.analysis.diff", "diff")
    if diff is not None:
        with saedata.open(db) as store:
            t_diff = _best(lambda: diff(store, "a", "b"), 2)
            t_raw = _best(lambda: diff(store, "a", "b", length_control=False, examples=0), 2)
            # a threshold above 0 cannot use the per-dataset counts: the scan of activations
            # (values here are >= 0.1, so the table is the same)
            t_scan_path = _best(lambda: diff(store, "a", "b", threshold=0.01), 2)
        _print("diff_1m_seconds", t_diff)
        _print("diff_1m_no_length_control_no_examples_seconds", t_raw)
        _print("diff_1m_scan_path_seconds", t_scan_path)
        _print("diff_scan_path_vs_scan_ratio", t_scan_path / scan)
        _print("diff_vs_scan_ratio", t_diff / scan)
        _print("diff_vs_scan_by_dataset_ratio", t_diff / scan_ds)
        _target("diff time <= 2x DuckDB count scan", t_diff / scan <= 2.0)

    rng = random.Random(0)
    queries = {n: sorted(rng.sample(range(4096), n)) for n in (16, 128)}
    t_scan, t_score_scan, plain = {}, {}, {}
    with saedata.open(db) as store:
        for n, lats in queries.items():
            t_scan[n] = _best(lambda: search(store, latents=lats, top=50, use_index=False), 5)
            t_score_scan[n] = _best(lambda: score_documents(store, 1, lats, [1.0] * n, use_index=False), 5)
            plain[n] = search(store, latents=lats, top=50, use_index=False)
    size = db.stat().st_size
    t0 = time.perf_counter()
    with Store(db, read_only=False) as store:
        store.build_latent_index()
    _print("latent_index_build_seconds", time.perf_counter() - t0)
    _print("latent_index_bytes_per_activation", (db.stat().st_size - size) / n_acts)
    same, good_choice = True, True
    with saedata.open(db) as store:
        for n, lats in queries.items():
            t_index = _best(lambda: search(store, latents=lats, top=50, use_index=True), 5)
            t_score_index = _best(lambda: score_documents(store, 1, lats, [1.0] * n, use_index=True), 5)
            indexed = search(store, latents=lats, top=50, use_index=True)
            auto = search(store, latents=lats, top=50).used_index
            _print(f"search_{n}_latents_scan_seconds", t_scan[n])
            _print(f"search_{n}_latents_index_seconds", t_index)
            _print(f"search_{n}_latents_index_speedup", t_scan[n] / t_index)
            _print(f"score_docs_{n}_latents_scan_seconds", t_score_scan[n])
            _print(f"score_docs_{n}_latents_index_seconds", t_score_index)
            _print(f"score_docs_{n}_latents_index_speedup", t_score_scan[n] / t_score_index)
            _print(f"search_{n}_latents_default_path", "by-latent index" if auto else "scan")
            same &= indexed.docs.equals(plain[n].docs)
            good_choice &= (t_index if auto else t_scan[n]) <= 1.1 * min(t_index, t_scan[n])
    _print("search_index_same_results", same)
    _target("by-latent index gives the same results", same)
    _target("search's default path is within 10% of the faster one", good_choice)


# -- 3. retrieval vs dense cosine -----------------------------------------------------------------------


def dense_embeddings(texts: list[str], layer: int, batch: int = 256):
    """(n, d_model) mean over non-special tokens of the reader's layer ``layer``, L2-normalised."""
    import numpy as np
    import torch

    from saedata.config import ReaderConfig
    from saedata.reader import Reader

    reader = Reader(ReaderConfig(device="cpu", layer=layer))
    out = []
    for start in range(0, len(texts), batch):
        b = reader.read(texts[start : start + batch])
        n = len(b.n_tokens)
        sums = torch.zeros(n, b.acts.shape[1]).index_add_(0, b.doc_index.cpu(), b.acts.cpu())
        out.append((sums / torch.as_tensor(b.n_tokens).clamp(min=1)[:, None]).numpy())
    X = np.concatenate(out).astype(np.float64)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def _compare_retrieval(db: Path, queries: list[tuple[str, str, object]], tag: str, top: int = 50) -> None:
    import numpy as np

    import saedata

    with saedata.open(db) as store:
        docs = store.sql("SELECT doc_id, text, meta FROM documents ORDER BY doc_id")
        (layer,) = store.one("SELECT layer FROM saes WHERE sae_id = 1")
        t0 = time.perf_counter()
        X = dense_embeddings(docs["text"].to_list(), layer)
        _print(f"{tag}_dense_embed_seconds", time.perf_counter() - t0)
        Q = dense_embeddings([q for q, _, _ in queries], layer)
        import json

        metas = [json.loads(m) if m else {} for m in docs["meta"].to_list()]
        doc_ids = docs["doc_id"].to_numpy()
        sae_p, sae16_p, dense_p, times, n_latents = [], [], [], [], []
        for (query, field, value), q in zip(queries, Q):
            t0 = time.perf_counter()
            r = saedata.search(store, query, top=top, eval_field=field, eval_value=value)
            times.append(time.perf_counter() - t0)
            n_latents.append(r.query_latents.height)
            r16 = saedata.search(store, query, top=top, eval_field=field, eval_value=value, query_latents=16)
            best = np.lexsort((doc_ids, -(X @ q)))[:top]
            want = _meta_text(value)
            p_dense = float(np.mean([_meta_text(metas[i].get(field)) == want for i in best]))
            sae_p.append(r.precision)
            sae16_p.append(r16.precision)
            dense_p.append(p_dense)
            _print(f"{tag}_p@{top}[{query}]", f"search {r.precision:.2f}  (16 query latents {r16.precision:.2f})  "
                                              f"dense cosine {p_dense:.2f}  (base rate {r.base_rate:.3f}, "
                                              f"{field} = {want})")
    _print(f"{tag}_mean_p@{top}_search", statistics.mean(sae_p))
    _print(f"{tag}_mean_p@{top}_search_16_query_latents", statistics.mean(sae16_p))
    _print(f"{tag}_mean_p@{top}_dense_cosine", statistics.mean(dense_p))
    _print(f"{tag}_median_latents_per_query", statistics.median(n_latents))
    _print(f"{tag}_search_seconds_per_query", statistics.median(times))


def bench_retrieval_docs(work: Path, n_docs: int, train_tokens: int) -> None:
    import random

    from saedata.config import InputConfig, ReaderConfig, TrainConfig
    from saedata.demo import python_docs_corpus, write_jsonl
    from saedata.embed.local import embed

    # Every paragraph of the queried modules, plus others drawn at random up to n_docs.
    docs = python_docs_corpus()
    wanted = {c for _, c in DOCS_QUERIES}
    relevant = [d for d in docs if d["category"] in wanted]
    others = [d for d in docs if d["category"] not in wanted]
    rng = random.Random(0)
    rng.shuffle(others)
    docs = relevant + others[: max(0, n_docs - len(relevant))]
    rng.shuffle(docs)
    corpus = write_jsonl(docs, work / "pydocs.jsonl")
    db = work / "pydocs.duckdb"
    t0 = time.perf_counter()
    embed(str(corpus), db, input_cfg=InputConfig(id_field="id"), reader_cfg=ReaderConfig(device="cpu"),
          train_cfg=TrainConfig(max_tokens=train_tokens, batch_size=4096, device="cpu", seed=0))
    _print("pydocs_documents", len(docs))
    _print("pydocs_train_and_embed_seconds", time.perf_counter() - t0)
    _compare_retrieval(db, [(q, "category", c) for q, c in DOCS_QUERIES], "pydocs")


# -- 4. clustering along an axis ------------------------------------------------------------------------------


def bench_cluster(db: Path) -> None:
    cluster = _import("saedata", "cluster")
    if cluster is None:
        return
    import json

    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    import saedata

    with saedata.open(db) as store:
        docs = store.sql("SELECT doc_id, meta FROM documents JOIN datasets USING (dataset_id) WHERE name = 'a'")
    truth = {d: json.loads(m)["sentiment"] for d, m in zip(docs["doc_id"].to_list(), docs["meta"].to_list())}
    scores = {}
    for name, kwargs in (("unfiltered", {}), ("axis_sentiment", {"axis": "sentiment"})):
        t0 = time.perf_counter()
        r = cluster(str(db), "a", k=3, seed=0, map=False, **kwargs)
        a = r.assignments
        y = [truth[d] for d in a["doc_id"].to_list()]
        scores[name] = adjusted_rand_score(y, np.asarray(a["cluster"].to_list()))
        _print(f"cluster_ari_{name}", scores[name])
        _print(f"cluster_{name}_seconds", time.perf_counter() - t0)
    _target("clustering on the sentiment axis beats unfiltered (ARI)", scores["axis_sentiment"] > scores["unfiltered"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--docs", type=int, default=1_000_000, help="documents in the synthetic store")
    parser.add_argument("--planted-docs", type=int, default=400, help="documents per planted dataset")
    parser.add_argument("--pydocs-docs", type=int, default=2000,
                        help="CPython-docs paragraphs to search (all of the queried modules' + random others)")
    parser.add_argument("--train-tokens", type=int, default=600_000, help="SAE training tokens on the CPython docs")
    parser.add_argument("--work", default=None, help="keep the stores here instead of a temporary folder")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if "speed" in parts:
            bench_speed(work, args.docs)
        planted = None
        if {"diff", "cluster", "retrieval"} & set(parts):
            planted = work / "planted.duckdb"
            if not planted.exists():
                planted = build_planted_store(work, args.planted_docs)
        if "diff" in parts:
            bench_diff_recovery(planted)
        if "retrieval" in parts:
            _compare_retrieval(planted, DEMO_QUERIES, "planted", top=50)
            bench_retrieval_docs(work, args.pydocs_docs, args.train_tokens)
        if "cluster" in parts:
            bench_cluster(planted)
    _print("total_seconds", time.perf_counter() - t_all)


if __name__ == "__main__":
    main()
