"""correlate at 10,000 and 100,000 documents (issue #11) against a bare scipy ``P.T @ P``
over the same presence matrix, in one run.

The documents are real ones resampled: each synthetic document is a copy of the pooled
activations (values, token counts, length) of a document drawn at random from a store of
real text (``bench_real.py``'s Debian store), so the density and the co-occurrence
structure are those of real descriptions (about 800 firing latents per document). The
baseline is what ``correlate`` must at least do: the latent x latent co-occurrence
counts of the presence matrix, as one scipy sparse product.

    python benchmarks/bench_correlate_scale.py --source bench/run.duckdb --docs 10000 100000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(source: str, out: Path, n_docs: int, seed: int = 0) -> None:
    """A store of ``n_docs`` documents resampled from the store ``source``."""
    import json

    import numpy as np
    import polars as pl

    import saedata
    from saedata.store import Store

    with saedata.open(source) as src:
        sae = src.saes().row(0, named=True)
        docs = src.sql("SELECT doc_id, n_tokens FROM documents ORDER BY doc_id")
        acts = src.sql("SELECT doc_id, latent, value, peak, tokens FROM activations ORDER BY doc_id, latent")
    starts = np.searchsorted(acts["doc_id"].to_numpy(), docs["doc_id"].to_numpy())
    ends = np.append(starts[1:], acts.height)
    rng = np.random.default_rng(seed)
    with Store(out, read_only=False) as store:
        sae_id = store.register_sae("resampled", {"d_in": sae["d_in"], "d_sae": sae["d_sae"],
                                                  "activation": "topk", "reader": "r"}, None, "fp")
        state = store.create_dataset("docs", "resampled.jsonl", sae_id, {})
        step = 5000
        for first in range(0, n_docs, step):
            picks = rng.integers(0, docs.height, min(step, n_docs - first))
            idx = np.concatenate([np.arange(starts[p], ends[p]) for p in picks])
            new_ids = np.repeat(np.arange(first, first + len(picks)), ends[picks] - starts[picks])
            rows = acts[idx].with_columns(doc_id=pl.Series(new_ids, dtype=pl.Int64), sae_id=pl.lit(sae_id, pl.Int32))
            frame = pl.DataFrame({"doc_id": np.arange(first, first + len(picks), dtype=np.int64),
                                  "dataset_id": np.full(len(picks), state.dataset_id, dtype=np.int32),
                                  "ext_id": [f"d{i}" for i in range(first, first + len(picks))],
                                  "text": [""] * len(picks), "meta": [json.dumps({})] * len(picks),
                                  "n_tokens": docs["n_tokens"].to_numpy()[picks].astype(np.int32)})
            store.append_batch(frame, rows.select("doc_id", "sae_id", "latent", "value", "peak", "tokens"))
        store.complete_dataset(state.dataset_id)
        store.refresh_latent_stats(sae_id)


def main() -> None:
    import numpy as np

    import saedata
    import saedata.analysis.correlate  # noqa: F401  (loaded before timing)
    from saedata.analysis.scope import latent_matrix, read_presence, resolve_scope

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, help="a store of real documents (bench_real.py's run.duckdb)")
    ap.add_argument("--docs", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_corr_"))
    work.mkdir(parents=True, exist_ok=True)
    for n in args.docs:
        db = work / f"resampled{n}.duckdb"
        if not db.exists():
            t0 = time.perf_counter()
            build(args.source, db, n)
            print(f"built {n} documents in {time.perf_counter() - t0:.0f} s", flush=True)
        # each timed twice, the faster kept (the machine is shared); modules are loaded first
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            result = saedata.correlate(db, min_support=5, top=20)
            times.append(time.perf_counter() - t0)
        t_corr = min(times)
        with saedata.open(db) as store:
            scope = resolve_scope(store, None)
            P = read_presence(latent_matrix(store, scope), "excess", 0.0, scope.describe())[0].astype(np.int32)
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            _ = P.T @ P
            times.append(time.perf_counter() - t0)
        t_mm = min(times)
        ratio = t_corr / t_mm
        print(f"{n} documents ({P.nnz / n:.0f} present latents each): correlate {t_corr:.1f} s "
              f"({result.n_tested} pairs tested), scipy P.T @ P {t_mm:.1f} s, ratio {ratio:.2f}; "
              f"target <= 1.5: {'PASS' if ratio <= 1.5 else 'FAIL'}", flush=True)


if __name__ == "__main__":
    main()
