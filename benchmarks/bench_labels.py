"""Label quality on a corpus with known categories, and whether the offline label score
predicts it (issue #13).

Ground truth, from the corpus alone: each category's distinctive words (the ``--words``
words whose document frequency in the category most exceeds the rest's, by a smoothed
log ratio; no stopwords, numbers or single characters). A latent *separates* a category
when its presence alone classifies "in this category" with AUROC >= ``--min-auroc``
(its best category). Its label *names* the category when one of the label's words is one
of those distinctive words (or shares its first 5 letters: "font" / "fonts").

Prints, for the labels in the store (and for ``--before STORE``: the same SAE's latents
labelled by another version, e.g. one from before the keyword rules of #13):

- the share of separating latents whose label names their category;
- how well the label score predicts that (AUROC of ``score`` and of
  ``detect_precision`` for "names it"; 0.5: the score says nothing) — run
  ``saedata label --score`` on the store first.

    python benchmarks/corpora.py debian deb.jsonl --per-section 200
    python benchmarks/bench_real.py deb.jsonl --workdir w/      # builds w/run.duckdb
    saedata label --score --db w/run.duckdb
    python benchmarks/bench_labels.py w/run.duckdb [--before old.duckdb]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def distinctive_words(texts: list[str], classes: list[str], n_words: int) -> dict[str, set[str]]:
    """Per class, the ``n_words`` words most over-represented in its documents."""
    import math
    from collections import Counter

    from saedata.label import STOPWORDS, words

    df: dict[str, Counter] = {}
    size = Counter(classes)
    for text, c in zip(texts, classes, strict=True):
        df.setdefault(c, Counter()).update(set(words(text)))
    total = Counter()
    for counts in df.values():
        total.update(counts)
    n = len(texts)
    out = {}
    for c, counts in df.items():
        scored = []
        for w, k in counts.items():
            if k < 3 or w in STOPWORDS or len(w) < 2 or w.isdigit():
                continue
            inside = (k + 0.5) / (size[c] + 1)
            outside = (total[w] - k + 0.5) / (n - size[c] + 1)
            scored.append((math.log(inside / outside) * inside, w))
        out[c] = {w for _, w in sorted(scored, reverse=True)[:n_words]}
    return out


def names(label: str | None, vocab: set[str]) -> bool:
    from saedata.label import words

    if not label:
        return False
    stems = {w[:5] for w in vocab if len(w) >= 5}
    return any(w in vocab or (len(w) >= 5 and w[:5] in stems) for w in words(label))


def separating_latents(db: str, field: str, min_auroc: float, min_docs: int):
    """(latent, best class, its AUROC) of every latent whose presence separates a class."""
    import numpy as np

    import saedata
    from saedata.analysis.scope import documents_frame, latent_matrix, resolve_scope

    with saedata.open(db) as store:
        scope = resolve_scope(store, None)
        docs = documents_frame(store, scope, fields=[field])
        P = latent_matrix(store, scope, doc_ids=docs["doc_id"].to_numpy()).present().tocsc()
    classes = np.array([str(v) for v in docs[field].to_list()])
    support = np.asarray(P.sum(0)).ravel()
    best, best_class = np.zeros(P.shape[1]), np.empty(P.shape[1], dtype=object)
    for c in sorted(set(classes)):
        y = classes == c
        tpr = np.asarray(P[y].sum(0)).ravel() / y.sum()
        fpr = np.asarray(P[~y].sum(0)).ravel() / (~y).sum()
        auc = 0.5 * (tpr + 1 - fpr)
        better = auc > best
        best[better], best_class[better] = auc[better], c
    keep = np.flatnonzero((best >= min_auroc) & (support >= min_docs))
    return docs, classes, [(int(i), best_class[i], float(best[i])) for i in keep]


def labels_of(db: str):
    import saedata

    with saedata.open(db) as store:
        lat = store.sql("SELECT latent, label, label_source, score, detect_precision FROM latents")
    return {r["latent"]: r for r in lat.iter_rows(named=True)}


def main() -> None:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store", help="A store of a categorised corpus (bench_real.py --workdir leaves one)")
    ap.add_argument("--before", default=None, help="The same store labelled by another version")
    ap.add_argument("--field", default="section")
    ap.add_argument("--words", type=int, default=40, help="Distinctive words per category")
    ap.add_argument("--min-auroc", type=float, default=0.75)
    ap.add_argument("--min-docs", type=int, default=10)
    args = ap.parse_args()

    docs, classes, latents = separating_latents(args.store, args.field, args.min_auroc, args.min_docs)
    vocab = distinctive_words(docs["text"].to_list(), list(classes), args.words)
    print(f"categories: {len(vocab)}; latents separating one (AUROC >= {args.min_auroc}, "
          f">= {args.min_docs} documents): {len(latents)}")
    for name, db in (("before", args.before), ("now", args.store)):
        if db is None:
            continue
        labels = labels_of(db)
        hits = [names(labels.get(lat, {}).get("label"), vocab[c]) for lat, c, _ in latents]
        share = float(np.mean(hits)) if hits else float("nan")
        weak = sum(1 for lat, _, _ in latents if labels.get(lat, {}).get("label_source") == "frequent-words")
        print(f"{name}: share of separating latents whose label names their category: {share:.3f} "
              f"({sum(hits)} of {len(hits)}; {weak} weak labels)")
        for col in ("score", "detect_precision"):
            vals = [labels.get(lat, {}).get(col) for lat, _, _ in latents]
            ok = [(v, h) for v, h in zip(vals, hits, strict=True) if v is not None]
            if len(ok) < 10 or len({h for _, h in ok}) < 2:
                print(f"{name}: {col}: not scored (run saedata label --score)")
                continue
            v, h = np.array([a for a, _ in ok], dtype=float), np.array([b for _, b in ok])
            print(f"{name}: AUROC of {col} for 'the label names its category': {roc_auc_score(h, v):.3f} "
                  f"(mean {col} {v[h].mean():.3f} when it does, {v[~h].mean():.3f} when not; {len(ok)} scored)")
    examples = labels_of(args.store)
    print("examples (latent, category, AUROC, label, names it):")
    for lat, c, auc in sorted(latents, key=lambda t: -t[2])[:12]:
        label = examples.get(lat, {}).get("label")
        print(f"  {lat:5d} {c:12s} {auc:.2f} {label!s:45.45s} {names(label, vocab[c])}")


if __name__ == "__main__":
    main()
