"""HTML reports of concept correlation: pairs of latents, and latents against a metadata column."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from saedata.analysis.correlate import CorrelateResult, MetadataResult
from saedata.reports.html import Figure, Html, Table, Text, highlight_words, write_report
from saedata.reports.png import heatmap


def write_correlate_report(result: CorrelateResult, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write an offline HTML report: NPMI heatmap of the top pairs' latents, the pair table
    and the example documents with both peak words highlighted. Returns the path."""
    blocks: list = [Text(w) for w in result.warnings]
    blocks.append(Text(
        f"{result.n_tested} pairs of {result.n_latents} latents fire together in at least {result.min_support} "
        f"of {result.n_docs} documents; {result.n_significant} are significant at q <= {result.alpha}. "
        "Ranked by NPMI among significant pairs."))
    if result.matrix.shape[0] >= 2:
        names = [_short(lat, lab) for lat, lab in result.matrix_latents.iter_rows()]
        fig = heatmap(result.matrix, names, names, title="NPMI among the latents of the top pairs",
                           cbar_label="NPMI", vmin=-1, vmax=1)
        blocks.append(Figure(fig, "NPMI: 1 always together, 0 independent, -1 never together"))
    blocks += [Text("Top pairs", 2), Table(result.pairs)]
    if result.examples.height:
        blocks.append(Text("Documents where both fire", 2))
        for (rank,), group in result.examples.group_by("rank", maintain_order=True):
            pair = result.pairs.filter(pl.col("rank") == rank).row(0, named=True)
            blocks.append(Text(
                f"#{rank}: {_short(pair['latent_i'], pair['label_i'])}  +  {_short(pair['latent_j'], pair['label_j'])}"
                f"  (NPMI {pair['npmi']:.2f}, {pair['n_ij']} documents)", 3))
            for row in group.iter_rows(named=True):
                words = [w for w in (row["word_i"], row["word_j"]) if w]
                blocks.append(Html(highlight_words(row["text"], words)))
    title = title or f"Concept correlation: {', '.join(result.datasets)}"
    return write_report(path, title, blocks, subtitle=f"SAE {result.sae_id}")


def write_metadata_report(result: MetadataResult, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write an offline HTML report for a metadata association: a class x latent frequency
    heatmap and the per-class table (categorical), or the rho table (numeric)."""
    blocks: list = [Text(w) for w in result.warnings]
    if result.kind == "categorical":
        if result.frequencies.height:
            wide = result.frequencies.pivot(on="class", index=["latent", "label"], values="freq",
                                            maintain_order=True)
            classes = [c for c in wide.columns if c not in ("latent", "label")]
            rows = [_short(lat, lab) for lat, lab in wide.select("latent", "label").iter_rows()]
            fig = heatmap(wide.select(classes).to_numpy().T, classes, rows,
                               title=f"Activation frequency by {result.column}", cbar_label="fraction of documents",
                               cmap="viridis", vmin=0, vmax=1)
            blocks.append(Figure(fig, f"rows: values of {result.column}; columns: the latents below"))
        blocks += [Text(f"Most over-represented latents per {result.column}", 2), Table(result.classes)]
    blocks += [Text("All latents tested", 2), Table(result.latents, max_rows=50)]
    title = title or f"Latents and {result.column}: {', '.join(result.datasets)}"
    return write_report(path, title, blocks, subtitle=f"{result.kind} column; {result.n_docs} documents")


def _short(latent: int, label: str | None, width: int = 38) -> str:
    text = f"{latent} {label or ''}".strip()
    return text if len(text) <= width else text[: width - 3] + "..."
