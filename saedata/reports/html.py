"""Self-contained HTML reports: blocks of text, figures, tables and document excerpts.

Reports are single HTML files with their figures embedded (PNG as base64) and no
external scripts, fonts or styles, so they open offline from disk and can be mailed
around. Figures come from :mod:`saedata.reports.png`.

    blocks = [Text("Top latents"), Figure(fig), Table(df)]
    write_report("diff.html", "A vs B", blocks)
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from saedata.corpus.formats import IMAGE_EXTENSIONS
from saedata.corpus.images import thumbnail_png
from saedata.reports.png import figure_png

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
    links: dict[str, dict[Any, str]] = field(default_factory=dict)
    """Per column, the cell values that link somewhere: {column: {value: href}}."""


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


def table_html(df: pl.DataFrame, max_rows: int = 100, float_digits: int = 3,
               links: dict[str, dict[Any, str]] | None = None) -> str:
    """An escaped HTML table of (the head of) ``df``; ``links``: per column, the cell
    values that link somewhere ({column: {value: href}})."""
    head = df.head(max_rows)
    cols = head.columns
    hrefs = [(links or {}).get(c, {}) for c in cols]
    out = ["<table><thead><tr>", *(f"<th>{html.escape(c)}</th>" for c in cols), "</tr></thead><tbody>"]
    for row in head.iter_rows():
        out.append("<tr>")
        for v, href in zip(row, hrefs):
            if isinstance(v, float):
                cell = "" if v != v else f"{v:.{float_digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{float_digits}f}"
                cls = ' class="num"'
            elif isinstance(v, int) and not isinstance(v, bool):
                cell, cls = str(v), ' class="num"'
            else:
                cell, cls = html.escape("" if v is None else str(v)), ""
            if href and v in href:
                cell = f'<a href="{html.escape(href[v])}">{cell}</a>'
            out.append(f"<td{cls}>{cell}</td>")
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
        return cap + table_html(block.df, block.max_rows, block.float_digits, block.links)
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


def doc_snippet_at(text: str, pos: int | None, width: int = 300, spans: list | None = None) -> str:
    """Escaped HTML of a document excerpt around character ``pos`` (0-based), with the
    word there marked (or the character itself when it is punctuation), or with
    ``spans`` ([start, end) character spans, e.g. every token where a latent fires) each
    of those in the excerpt marked; the start of the document when ``pos`` is None or out
    of range."""
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
    out, at = ["..." if lo else ""], lo
    for s, e in sorted((max(s, lo), min(e, hi)) for s, e in (spans or [(start, end)]) if s < hi and e > lo and e > s):
        if s >= at:
            out += [html.escape(text[at:s]), f"<mark>{html.escape(text[s:e])}</mark>"]
            at = e
    out += [html.escape(text[at:hi]), "..." if hi < len(text) else ""]
    return f"<div class='doc'>{''.join(out)}</div>"
