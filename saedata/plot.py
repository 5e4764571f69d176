"""Figures and self-contained HTML reports for the analyses.

Reports are single HTML files with their figures embedded (PNG as base64, or inline
SVG) and no external scripts, fonts or styles, so they open offline from disk and can
be mailed around. Figures are matplotlib (Agg backend, no display needed) and can also
be saved as PNG beside the report.

    blocks = [Text("Top latents"), Figure(fig), Table(df)]
    write_report("diff.html", "A vs B", blocks)
"""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl


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


# -- report blocks --------------------------------------------------------------------


@dataclass
class Text:
    """A paragraph (or a heading with ``level`` 2-4)."""

    text: str
    level: int = 0


@dataclass
class Figure:
    """A matplotlib figure, or PNG bytes already rendered."""

    fig: Any
    caption: str = ""


@dataclass
class Table:
    """A polars frame as an HTML table (at most ``max_rows`` rows)."""

    df: pl.DataFrame
    max_rows: int = 100
    caption: str = ""
    float_digits: int = 3


@dataclass
class Html:
    """Raw, trusted HTML produced by saedata itself (never user text)."""

    html: str


@dataclass
class Report:
    title: str
    blocks: list = field(default_factory=list)
    subtitle: str = ""

    def render(self) -> str:
        return render_report(self.title, self.blocks, self.subtitle)

    def write(self, path: str | os.PathLike) -> Path:
        return write_report(path, self.title, self.blocks, self.subtitle)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1100px;
color:#1d1d1f;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
h3{font-size:1.05rem} .sub{color:#666;margin-top:0}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0 1rem;width:100%}
th,td{border-bottom:1px solid #eee;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f6f6;position:sticky;top:0} td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1rem 0} figcaption{color:#666;font-size:.85rem} img{max-width:100%}
.warn{background:#fff4e5;border-left:4px solid #f0a030;padding:.5rem .75rem}
.doc{background:#fafafa;border-left:3px solid #ccc;padding:.25rem .5rem;margin:.25rem 0;font-size:.85rem}
mark{background:#ffe08a}
"""


def table_html(df: pl.DataFrame, max_rows: int = 100, float_digits: int = 3) -> str:
    """An escaped HTML table of (the head of) ``df``."""
    head = df.head(max_rows)
    cols = head.columns
    out = ["<table><thead><tr>", *(f"<th>{html.escape(c)}</th>" for c in cols), "</tr></thead><tbody>"]
    for row in head.iter_rows():
        out.append("<tr>")
        for v in row:
            if isinstance(v, float):
                cell = "" if v != v else f"{v:.{float_digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{float_digits}f}"
                out.append(f'<td class="num">{cell}</td>')
            elif isinstance(v, int) and not isinstance(v, bool):
                out.append(f'<td class="num">{v}</td>')
            else:
                out.append(f"<td>{html.escape('' if v is None else str(v))}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    if df.height > max_rows:
        out.append(f"<p class='sub'>{df.height - max_rows} more rows not shown.</p>")
    return "".join(out)


def _block_html(block: Any) -> str:
    if isinstance(block, Text):
        if block.level:
            return f"<h{block.level}>{html.escape(block.text)}</h{block.level}>"
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, Figure):
        png = block.fig if isinstance(block.fig, bytes | bytearray) else figure_png(block.fig)
        data = base64.b64encode(png).decode()
        cap = f"<figcaption>{html.escape(block.caption)}</figcaption>" if block.caption else ""
        return f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">{cap}</figure>'
    if isinstance(block, Table):
        cap = f"<p class='sub'>{html.escape(block.caption)}</p>" if block.caption else ""
        return cap + table_html(block.df, block.max_rows, block.float_digits)
    if isinstance(block, Html):
        return block.html
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_report(title: str, blocks: list, subtitle: str = "") -> str:
    """A complete, self-contained HTML page."""
    sub = f"<p class='sub'>{html.escape(subtitle)}</p>" if subtitle else ""
    body = "\n".join(_block_html(b) for b in blocks)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{sub}\n{body}\n"
        "<p class='sub'>Made by saedata; this file needs no network.</p></body></html>"
    )


def write_report(path: str | os.PathLike, title: str, blocks: list, subtitle: str = "") -> Path:
    """Render and write a report; returns the path."""
    out = Path(path)
    out.write_text(render_report(title, blocks, subtitle), encoding="utf-8")
    return out


def doc_snippet(text: str, word: str | None = None, width: int = 300) -> str:
    """Escaped HTML of a document excerpt, with ``word`` highlighted where it first occurs.

    An image document (its text is the path of an image file) shows as a thumbnail.
    """
    from saedata.images import IMAGE_EXTENSIONS, thumbnail_png

    if text.lower().endswith(IMAGE_EXTENSIONS) and "\n" not in text and os.path.isfile(text):
        png = thumbnail_png(text)
        if png is not None:
            data = base64.b64encode(png).decode()
            return (f"<div class='doc'><img alt='{html.escape(os.path.basename(text))}' "
                    f"src='data:image/png;base64,{data}' style='image-rendering:pixelated'> "
                    f"{html.escape(os.path.basename(text))}</div>")
    if word:
        i = text.lower().find(word.lower())
        if i >= 0:
            start = max(0, i - width // 2)
            excerpt = text[start : start + width]
            j = i - start
            pre = ("..." if start else "") + html.escape(excerpt[:j])
            hit = html.escape(excerpt[j : j + len(word)])
            post = html.escape(excerpt[j + len(word) :]) + ("..." if start + width < len(text) else "")
            return f"<div class='doc'>{pre}<mark>{hit}</mark>{post}</div>"
    short = text if len(text) <= width else text[:width] + "..."
    return f"<div class='doc'>{html.escape(short)}</div>"


# -- shared charts ----------------------------------------------------------------------


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


def highlight_words(text: str, words: list[str], width: int = 400) -> str:
    """Escaped HTML of a document excerpt with every whole-word occurrence of ``words`` marked.

    The excerpt (at most ``width`` characters) starts a little before the first hit.
    """
    import re

    wanted = [w for w in dict.fromkeys(w.lower() for w in words if w) if w.strip()]
    if not wanted:
        return doc_snippet(text, None, width)
    pattern = re.compile(r"(?<!\w)(" + "|".join(re.escape(w) for w in wanted) + r")(?!\w)", re.IGNORECASE)
    first = pattern.search(text)
    start = max(0, first.start() - width // 4) if first else 0
    excerpt = text[start : start + width]
    out, pos = [], 0
    for m in pattern.finditer(excerpt):
        out.append(html.escape(excerpt[pos : m.start()]))
        out.append(f"<mark>{html.escape(m.group(0))}</mark>")
        pos = m.end()
    out.append(html.escape(excerpt[pos:]))
    pre = "..." if start else ""
    post = "..." if start + width < len(text) else ""
    return f"<div class='doc'>{pre}{''.join(out)}{post}</div>"


# -- VAE latent probes ------------------------------------------------------------------


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


def doc_snippet_at(text: str, pos: int | None, width: int = 300) -> str:
    """Escaped HTML of a document excerpt around character ``pos`` (0-based), with the
    word there marked (or the character itself when it is punctuation); the start of
    the document when ``pos`` is None or out of range."""
    import re

    if pos is None or not 0 <= pos < len(text):
        return doc_snippet(text, None, width)
    if re.match(r"\w", text[pos]):
        start = pos - len(re.search(r"\w*$", text[: pos + 1]).group(0)) + 1
        end = pos + 1 + len(re.match(r"\w*", text[pos + 1 :]).group(0))
    else:
        start, end = pos, pos + 1
    lo = max(0, start - width // 2)
    hi = min(len(text), max(end, lo + width))
    pre = ("..." if lo else "") + html.escape(text[lo:start])
    post = html.escape(text[end:hi]) + ("..." if hi < len(text) else "")
    return f"<div class='doc'>{pre}<mark>{html.escape(text[start:end])}</mark>{post}</div>"
