"""Figures for the reports: matplotlib on the Agg backend (no display needed), as PNG.

Each function returns a matplotlib figure; :func:`figure_png` turns one into PNG bytes
for an HTML report (:mod:`saedata.reports.html`) and :func:`save_png` into a file.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def new_figure(width: float = 8.0, height: float = 5.0):
    """A matplotlib (fig, ax) pair on the Agg backend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    return fig, ax


def figure_png(fig: Any) -> bytes:
    """The figure as PNG bytes (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def save_png(fig: Any, path: str | os.PathLike) -> Path:
    """Write the figure as a PNG file (the figure is closed); returns the path."""
    out = Path(path)
    out.write_bytes(figure_png(fig))
    return out


def diverging_bars(labels: list[str], values: list[float], title: str = "", xlabel: str = "",
                   left_name: str = "", right_name: str = ""):
    """Horizontal bars around zero (e.g. frequency in B minus frequency in A), top row first."""
    fig, ax = new_figure(9, max(2.5, 0.32 * len(labels) + 1))
    ys = list(range(len(labels)))[::-1]
    colours = ["#d95f02" if v < 0 else "#1b9e77" for v in values]
    ax.barh(ys, values, color=colours)
    ax.set_yticks(ys, [lab if len(lab) <= 60 else lab[:57] + "..." for lab in labels], fontsize=8)
    ax.axvline(0, color="#333", lw=0.8)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    if left_name or right_name:
        lo, hi = ax.get_xlim()
        m = max(abs(lo), abs(hi))
        ax.set_xlim(-m, m)
        ax.text(0.01, 1.01, f"more in {left_name}", transform=ax.transAxes, color="#d95f02", fontsize=8)
        ax.text(0.99, 1.01, f"more in {right_name}", transform=ax.transAxes, color="#1b9e77", fontsize=8,
                ha="right")
    fig.tight_layout()
    return fig


def heatmap(matrix, row_labels: list[str], col_labels: list[str], title: str = "", cbar_label: str = "",
            cmap: str = "RdBu_r", vmin: float | None = None, vmax: float | None = None):
    """A labelled heatmap of a 2-D array."""
    import numpy as np

    m = np.asarray(matrix, dtype=float)
    fig, ax = new_figure(max(5, 0.35 * len(col_labels) + 3), max(4, 0.3 * len(row_labels) + 2))
    im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(col_labels)), [c[:40] for c in col_labels], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(row_labels)), [r[:40] for r in row_labels], fontsize=7)
    cb = fig.colorbar(im, ax=ax)
    cb.set_label(cbar_label)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def scatter_map(xy, groups, title: str = "", legend_title: str = ""):
    """A 2-D map of points coloured by group (e.g. a UMAP of documents by cluster)."""
    import numpy as np

    xy = np.asarray(xy)
    groups = np.asarray(groups)
    fig, ax = new_figure(8, 6.5)
    plt = _pyplot()
    uniq = sorted(set(groups.tolist()), key=lambda g: (str(g) == "-1", str(g)))
    cmap = plt.get_cmap("tab20", max(len(uniq), 1))
    for i, g in enumerate(uniq):
        sel = groups == g
        colour = "#bbbbbb" if str(g) in ("-1", "noise") else cmap(i)
        ax.scatter(xy[sel, 0], xy[sel, 1], s=8, alpha=0.75, color=colour, label=str(g), linewidths=0)
    if len(uniq) <= 20:
        ax.legend(title=legend_title, fontsize=7, markerscale=2, loc="best", frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def relevance_bars(dims: list[int], kl: list[float], ard_variance: list[float], relevance: list[float],
                   relevant: list[bool], title: str = ""):
    """Per latent dimension: KL to the prior (top), ARD variance and relevance score (bottom, log
    scale); relevant dimensions in colour, the others grey."""
    import numpy as np

    plt = _pyplot()
    x = np.arange(len(dims))
    colours = ["#1b9e77" if r else "#bbbbbb" for r in relevant]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6.0, 0.25 * len(dims) + 2), 5.5), dpi=110, sharex=True)
    ax1.bar(x, kl, color=colours)
    ax1.set_ylabel("KL (nats)")
    ax2.bar(x - 0.2, np.maximum(ard_variance, 1e-12), width=0.4, color=colours, label="ARD variance")
    ax2.bar(x + 0.2, np.maximum(relevance, 1e-12), width=0.4, color=colours, alpha=0.5, hatch="//",
            label="relevance share")
    ax2.set_yscale("log")
    ax2.set_ylabel("variance / share")
    ax2.legend(fontsize=7, frameon=False)
    step = max(1, len(dims) // 32)
    ax2.set_xticks(x[::step], [str(d) for d in dims][::step], fontsize=7)
    ax2.set_xlabel("latent dimension (coloured: relevant)")
    if title:
        ax1.set_title(title)
    fig.tight_layout()
    return fig


def image_grid(images, row_labels: list[str] | None = None, col_labels: list[str] | None = None,
               title: str = "", cell: float = 0.6):
    """A grid of small images, ``images`` (rows, cols, H, W, C) in [0, 1] (C = 1 or 3), as one
    mosaic (e.g. a latent traversal: one row per dimension, one column per value)."""
    import numpy as np

    imgs = np.clip(np.asarray(images, dtype=float), 0, 1)
    R, K, H, W, C = imgs.shape
    pad = max(1, H // 8)
    mosaic = np.ones((R * (H + pad) - pad, K * (W + pad) - pad, C))
    for r in range(R):
        for k in range(K):
            mosaic[r * (H + pad): r * (H + pad) + H, k * (W + pad): k * (W + pad) + W] = imgs[r, k]
    fig, ax = new_figure(max(3.0, cell * K + 1.2), max(2.0, cell * R + 0.8))
    ax.imshow(mosaic[..., 0] if C == 1 else mosaic, cmap="gray" if C == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([k * (W + pad) + W / 2 - 0.5 for k in range(K)], col_labels or [""] * K, fontsize=7)
    ax.set_yticks([r * (H + pad) + H / 2 - 0.5 for r in range(R)], row_labels or [""] * R, fontsize=7)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def frontier(xs: list[float], ys: list[float], labels: list[str], title: str = "", xlabel: str = "",
             ylabel: str = ""):
    """Labelled points, lower is better on both axes (e.g. SAEs' FVU against mean L0), with
    the Pareto frontier (the points no other point beats on both) joined by a line and
    in colour; points with a NaN are left out."""
    import math

    fig, ax = new_figure(7, 4.5)
    points = sorted((x, y, lab) for x, y, lab in zip(xs, ys, labels) if not (math.isnan(x) or math.isnan(y)))
    best, front = math.inf, []
    for x, y, lab in points:  # by x: on the frontier when lower than every point left of it
        if y < best:
            front.append((x, y, lab))
            best = y
    others = [p for p in points if p not in front]
    if front:
        ax.plot([p[0] for p in front], [p[1] for p in front], color="#1b9e77", lw=1, zorder=1, label="frontier")
        ax.scatter([p[0] for p in front], [p[1] for p in front], color="#1b9e77", s=36, zorder=2)
    if others:
        ax.scatter([p[0] for p in others], [p[1] for p in others], color="#999999", s=36, zorder=2,
                   label="beaten on both")
        ax.legend(fontsize=8, frameon=False)
    for x, y, lab in points:
        ax.annotate(lab if len(lab) <= 40 else "..." + lab[-37:], (x, y), textcoords="offset points",
                    xytext=(5, 5), fontsize=8)
    ax.margins(0.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
