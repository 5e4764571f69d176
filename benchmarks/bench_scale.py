"""Scale-out benchmark: `embed --engine ray` vs the single-process run, and analyses over
Parquet shards vs over a store file, each against its baseline in the same run.

- throughput: the same corpus (real CPython documentation paragraphs) and SAE embedded
  by the single-process pipeline into a store file, and by the Ray Data engine into
  shards with 1 worker (as many torch threads as the single process) and with 2
  workers (one thread each); docs/s and the ratio to the single-process run, with and
  without Ray's start-up (``ray.init`` and the actors loading the reader);
- shards vs store: a diff over the same synthetic documents (1M x 32 active latents by
  default) held in a DuckDB store file and in a shard folder of Parquet parts; the
  time of each and the ratio; and the same for a SQL count per latent.

    python benchmarks/bench_scale.py                    # about 5 minutes on 2 CPU cores
    python benchmarks/bench_scale.py --docs 600 --synthetic-docs 100000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def _print(key: str, value) -> None:
    print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}", flush=True)


def bench_throughput(work: Path, n_docs: int, part_docs: int) -> None:
    import ray
    from bench_embed import _make_sae, _write_corpus

    from saedata.config import EmbedConfig, InputConfig, ReaderConfig
    from saedata.embed.local import embed
    from saedata.embed.ray import embed_ray

    corpus, sae = work / "corpus.jsonl", work / "sae"
    _write_corpus(corpus, n_docs)
    _make_sae(sae, 384, 8, 32)
    inp, reader = InputConfig(id_field="id"), ReaderConfig(device="cpu", batch_size=32)
    embed_cfg = EmbedConfig()
    threads = os.cpu_count() or 1
    t0 = time.perf_counter()
    embed(str(corpus), work / "single.duckdb", str(sae), input_cfg=inp, reader_cfg=reader, embed_cfg=embed_cfg)
    single = time.perf_counter() - t0
    _print("corpus_documents", n_docs)
    _print("cpu_cores", threads)
    _print("single_process_docs_per_second", n_docs / single)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    runs = {"ray_1_worker": (1, float(threads)), "ray_2_workers": (2, 1.0)}
    for name, (workers, cpus) in runs.items():
        t0 = time.perf_counter()
        ray.init(num_cpus=threads, include_dashboard=False, log_to_driver=False)
        started = time.perf_counter() - t0
        result = embed_ray([str(corpus)], work / name, sae, input_cfg=inp, reader_cfg=reader, embed_cfg=embed_cfg,
                           num_workers=workers, cpus_per_worker=cpus, part_docs=part_docs)
        total = time.perf_counter() - t0
        ray.shutdown()
        _print(f"{name}_docs_per_second", n_docs / total)
        _print(f"{name}_vs_single_process", single / total)
        _print(f"{name}_ray_init_seconds", started)
        _print(f"{name}_embed_ray_seconds", result.seconds)
        _print(f"{name}_vs_single_process_without_ray_init", single / result.seconds)


def _shards_from_store(db: Path, out: Path, n_parts: int) -> None:
    """The store's tables written as a shard folder of ``n_parts`` parts per dataset,
    as `embed --engine ray` would (same columns, manifest, latent_counts per part)."""
    import duckdb

    from saedata.store import shards

    con = duckdb.connect(str(db), read_only=True)
    sae = dict(zip(["sae_id", "name", "d_in", "d_sae", "activation", "fingerprint"],
                   con.execute("SELECT sae_id, name, d_in, d_sae, activation, fingerprint FROM saes").fetchone()))
    manifest = shards.Manifest(sae=sae | {"path": None, "reader": None, "layer": None, "cfg": {}},
                               reader={}, embed={}, complete=True)
    for dataset_id, name, n_docs in con.execute("SELECT dataset_id, name, n_docs FROM datasets ORDER BY 1").fetchall():
        lo, hi = con.execute("SELECT min(doc_id), max(doc_id) + 1 FROM documents WHERE dataset_id = ?",
                             [dataset_id]).fetchone()
        step = -(-(hi - lo) // n_parts)
        for i in range(n_parts):
            a, b = lo + i * step, min(hi, lo + (i + 1) * step)
            files = {t: out / shards._part_file(t, name, i) for t in shards.TABLES}
            for f in files.values():
                f.parent.mkdir(parents=True, exist_ok=True)
            rng = f"doc_id >= {a} AND doc_id < {b}"
            con.execute(f"COPY (SELECT * FROM documents WHERE {rng} ORDER BY doc_id) TO '{files['documents']}'")
            con.execute(f"COPY (SELECT * FROM activations WHERE {rng} ORDER BY doc_id, latent) "
                        f"TO '{files['activations']}'")
            con.execute(f"COPY (SELECT ''::VARCHAR AS word, 0::BIGINT AS df WHERE false) TO '{files['word_counts']}'")
            con.execute(f"COPY (SELECT * FROM activations WHERE false) TO '{files['label_candidates']}'")
            con.execute(
                f"COPY (SELECT d.dataset_id, a.sae_id, length_floor(d.n_tokens) AS len_floor, a.latent, "
                f"count(*)::BIGINT AS n_active FROM activations a JOIN documents d USING (doc_id) "
                f"WHERE a.{rng} GROUP BY ALL) TO '{files['latent_counts']}'")
            manifest.parts[shards.part_key(name, i)] = {"dataset": name, "index": i, "n_docs": b - a,
                                                        "n_activations": 0, "n_truncated": 0}
        manifest.datasets.append({"dataset_id": dataset_id, "name": name, "source": "synthetic", "n_parts": n_parts,
                                  "n_docs": n_docs, "complete": True})
    con.close()
    manifest.labelled = False
    shards.write_manifest(out, manifest)
    shards.finish_run(out, top_docs=64, n_words=3)  # what embed --engine ray does at the end
    manifest.labelled = True
    shards.write_manifest(out, manifest)


def bench_shards_vs_store(work: Path, n_docs: int, n_parts: int) -> None:
    from bench_analyses import _best, build_synthetic_store

    import saedata
    from saedata.analysis.diff import diff

    db, out = work / "synthetic.duckdb", work / "synthetic-shards"
    build_synthetic_store(db, n_docs)
    t0 = time.perf_counter()
    _shards_from_store(db, out, n_parts)
    _print("synthetic_documents", n_docs)
    _print("shard_parts", 2 * n_parts)
    _print("shards_write_seconds", time.perf_counter() - t0)
    _print("store_bytes", db.stat().st_size)
    _print("shards_bytes", sum(f.stat().st_size for f in out.rglob("*.parquet")))
    count_sql = "SELECT latent, count(*) FROM activations GROUP BY latent"
    with saedata.open(db) as store:
        t_store = _best(lambda: diff(store, "a", "b"), 3)
        t_store_scan = _best(lambda: diff(store, "a", "b", threshold=0.01), 2)
        t_store_sql = _best(lambda: store.rows(count_sql), 3)
        ref = diff(store, "a", "b").table
    t0 = time.perf_counter()
    with saedata.open(out) as sh:
        _print("shards_open_seconds", time.perf_counter() - t0)
        t_shards = _best(lambda: diff(sh, "a", "b"), 3)
        t_shards_scan = _best(lambda: diff(sh, "a", "b", threshold=0.01), 2)
        t_shards_sql = _best(lambda: sh.rows(count_sql), 3)
        same = diff(sh, "a", "b").table.select("latent", "n_a", "n_b", "adj_q").equals(
            ref.select("latent", "n_a", "n_b", "adj_q"))
    _print("diff_store_seconds", t_store)
    _print("diff_shards_seconds", t_shards)
    _print("diff_shards_vs_store_ratio", t_shards / t_store)
    _print("diff_scan_path_store_seconds", t_store_scan)
    _print("diff_scan_path_shards_seconds", t_shards_scan)
    _print("diff_scan_path_shards_vs_store_ratio", t_shards_scan / t_store_scan)
    _print("sql_count_store_seconds", t_store_sql)
    _print("sql_count_shards_seconds", t_shards_sql)
    _print("sql_count_shards_vs_store_ratio", t_shards_sql / t_store_sql)
    _print("diff_shards_same_table", same)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2000, help="real documents embedded by each engine")
    parser.add_argument("--part-docs", type=int, default=256, help="documents per shard part")
    parser.add_argument("--synthetic-docs", type=int, default=1_000_000, help="documents in the synthetic store")
    parser.add_argument("--parts", type=int, default=32, help="shard parts per synthetic dataset")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: throughput, shards")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "throughput" not in skip:
            bench_throughput(work, args.docs, args.part_docs)
        if "shards" not in skip:
            bench_shards_vs_store(work, args.synthetic_docs, args.parts)
    _print("total_seconds", time.perf_counter() - t_all)


if __name__ == "__main__":
    main()
