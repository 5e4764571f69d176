"""HTML report of an SAE evaluation: the FVU / L0 frontier, the metrics table, and the
best latent of each concept."""

from __future__ import annotations

import os
from pathlib import Path

from saedata.embed.evaluate import EvalResult
from saedata.reports.html import Figure, Table, Text, write_report
from saedata.reports.png import frontier

COLUMNS = """fvu: fraction of variance unexplained (0 = perfect reconstruction, 1 = no better than the mean);
l0: mean active latents per token (l0_std, l0_p10, l0_p90: its spread over tokens); dead: share of latents that
never fired on these tokens; dense: share that fired on more than 10% of them; afa_ratio: mean ||decoder-weighted
codes|| / ||input|| (1 = norm-matched); eps_lbo: lower bound on the decoder's quasi-orthogonality implied by the
codes; coh_max / coh_mean: largest and mean |cos| between two decoder atoms; js_sep: mean over
concepts of the best latent's Jensen-Shannon distance (base 2: 0 = same distribution with and without the concept,
1 = disjoint); label_score: median label score of the SAE's latents in the store."""


def write_eval_report(result: EvalResult, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write an offline HTML report of ``result``; returns the path."""
    t = result.table
    blocks: list = [Text(w) for w in result.warnings]
    where = f" of {result.corpus}" if result.corpus else ""
    docs = f" from {result.n_docs:,} documents" if result.n_docs else ""
    reader = f", read by {result.reader}" if result.reader else ""
    blocks.append(Text(f"{t.height} SAE{'s' * (t.height != 1)} on the same {result.n_tokens:,} token activations"
                       f"{where}{docs}{reader}."))
    fig = frontier(t["l0"].to_list(), t["fvu"].to_list(), t["sae"].to_list(), title="Sparsity against reconstruction",
                   xlabel="mean L0 (active latents per token)", ylabel="FVU (lower is better)")
    caption = "Each point is an SAE; down and to the left is better; the line joins the SAEs no other beats on both."
    blocks += [Figure(fig, caption), Text("Metrics", 2), Table(t, float_digits=4), Text(" ".join(COLUMNS.split()))]
    if result.concepts.height:
        blocks += [Text(f"Concepts: values of {result.concept}", 2),
                   Text("For each concept, the latent whose max-pooled activation is distributed most differently "
                        "on documents with and without it (Jensen-Shannon distance, base 2)."),
                   Table(result.concepts.sort("sae", "js", descending=[False, True], maintain_order=True),
                         max_rows=500)]
    title = title or "SAE evaluation"
    return write_report(path, title, blocks, subtitle=result.corpus or "")
