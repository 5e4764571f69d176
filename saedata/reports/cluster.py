"""HTML report and map of a filtered clustering: the 2-D map (UMAP) as PNG, the clusters,
the latents that describe them and their central documents."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import polars as pl

from saedata.analysis.cluster import ClusterResult
from saedata.reports.html import Figure, Html, Table, Text, highlight_words, write_report
from saedata.reports.png import figure_png, save_png, scatter_map


def cluster_map(result: ClusterResult) -> Any:
    """The 2-D map of documents coloured by cluster (a matplotlib figure), or None without one."""
    a = result.assignments
    if a["x"].null_count() == a.height:
        return None
    what = f"axis {result.axis!r}" if result.axis else f"{result.latents_used.height} latents"
    return scatter_map(a.select("x", "y").to_numpy(), a["cluster"].to_numpy(),
                       title=f"UMAP of documents on {what} ({result.method})", legend_title="cluster")


def write_cluster_map(result: ClusterResult, path: str | os.PathLike) -> Path | None:
    """Write the 2-D map as PNG; None (nothing written) when the clustering has no map
    (fewer than 10 documents: its warnings say so)."""
    fig = cluster_map(result)
    return save_png(fig, path) if fig is not None else None


def write_cluster_report(result: ClusterResult, path: str | os.PathLike, png: str | os.PathLike | None = None
                         ) -> tuple[Path, Path | None]:
    """Write the offline HTML report (map, comparison, clusters with their latents and example
    documents) and the map as PNG (default: beside the HTML, same name). Returns both paths."""
    html_path = Path(path)
    png_path = Path(png) if png is not None else html_path.with_suffix(".png")
    blocks: list = [Text(w) for w in result.warnings]
    fig = cluster_map(result)
    if fig is not None:
        png_bytes = figure_png(fig)
        png_path.write_bytes(png_bytes)
        blocks.append(Figure(png_bytes, "documents (points) coloured by cluster; grey: noise"))
    else:
        png_path = None
    blocks += [Text("Clusterings", 2), Table(result.comparison)]
    if result.ari_unfiltered is not None:
        blocks.append(Text(f"Adjusted Rand index between the filtered clustering and the one on all "
                                f"latents: {result.ari_unfiltered:.3f} (1: identical, 0: unrelated)."))
    blocks += [Text("Latents clustered on", 2), Table(result.latents_used),
               Text("Clusters", 2), Table(result.clusters)]
    for c in result.clusters["cluster"].to_list():
        size = int(result.clusters.filter(pl.col("cluster") == c)["size"][0])
        blocks.append(Text(f"Cluster {c} ({size} documents)" if c != -1 else f"Noise ({size} documents)", 3))
        d = result.descriptions.filter(pl.col("cluster") == c).drop("cluster")
        if d.height:
            blocks.append(Table(d))
        for row in result.examples.filter(pl.col("cluster") == c).iter_rows(named=True):
            blocks.append(Html(highlight_words(row["text"], [row["word"]] if row["word"] else [])))
    what = f"axis {result.axis!r}" if result.axis else f"{result.latents_used.height} latents"
    write_report(html_path, f"Clusters on {what}: {', '.join(result.datasets)}", blocks,
                      subtitle=f"{result.method}, k = {result.k}, scale = {result.scale}, seed = {result.seed}, "
                               f"{result.n_docs} documents, SAE {result.sae_id}")
    return html_path, png_path
