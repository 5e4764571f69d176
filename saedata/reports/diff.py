"""The HTML report of a dataset diff: warnings, diverging bars, the ranked table, examples.

One self-contained file (figures embedded as PNG, no scripts or remote resources), made
from the blocks of :mod:`saedata.reports.html`.
"""

from __future__ import annotations

import html

import polars as pl

from saedata.analysis.diff import DiffResult
from saedata.reports.html import Figure, Html, Report, Table, Text, doc_snippet_at
from saedata.reports.png import diverging_bars

TABLE_ROWS = 50
"""Rows of the ranked table shown per group."""


def latent_name(latent: int, label: str | None, merged: list[int] | None = None) -> str:
    """How a latent is named in charts and headings: ``123 dog / puppy (+2 merged)``."""
    name = f"{latent} {label or '(no label)'}"
    return name + (f" (+{len(merged)} merged)" if merged else "")


def diff_report(result: DiffResult, top: int = 20) -> Report:
    """The report's blocks for ``result``: ``top`` latents in the chart (per group)."""
    blocks: list = []
    if result.warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in result.warnings)
        blocks.append(Html(f"<div class='warn'><b>Warnings</b><ul>{items}</ul></div>"))
    blocks.append(Text(result.summary()))
    blocks.append(Text(_how_to_read(result)))
    groups = result.table["group"].unique(maintain_order=True).to_list() if result.by else [None]
    n_examples = 10 if len(groups) == 1 else 5
    for group in groups:
        sub = result.table if group is None else result.table.filter(pl.col("group") == group)
        a, b = ("the rest", f"{result.by}={group}") if result.by else (result.a, result.b or "")
        if group is not None:
            blocks.append(Text(f"{result.by} = {group} vs the rest", level=2))
        blocks += _finding_blocks(result, group, max(top // 2, 3) if group is None else max(top // 4, 3))
        blocks.append(Text("Latents", level=3 if group is not None else 2))
        per_side = max(top // 2, 3) if group is None else max(top // 4, 3)
        head = _two_sided(result, group, per_side)
        if head.height:
            names = [latent_name(r["latent"], r["label"], r["merged"]) for r in head.iter_rows(named=True)]
            fig = diverging_bars(names, head[result.effect].fill_nan(0.0).to_list(),
                                 title=f"Top latents, {a} vs {b}",
                                 xlabel=("length-controlled " if result.length_controlled else "")
                                 + f"difference in fraction of documents ({b} - {a})",
                                 left_name=a, right_name=b)
            blocks.append(Figure(fig, caption=f"The {per_side} most significant latents more common on each side; "
                                              "bars are the difference in the fraction of documents where the "
                                              "latent is present."))
        blocks.append(Table(result.display_table(sub), max_rows=TABLE_ROWS,
                            caption=f"Ranked latents ({sub.height} rows; first {min(TABLE_ROWS, sub.height)} shown)"))
        blocks.append(Text("Example documents", level=3))
        blocks += _example_blocks(result, _two_sided(result, group, n_examples // 2), group)
    return Report(f"saedata diff: {result.title()}", blocks,
                  subtitle="Which concepts (SAE latents) are more common on one side than the other.")


def _finding_blocks(result: DiffResult, group: str | None, per_side: int) -> list:
    """The findings of one comparison: a table, then each finding with its latents and
    typical documents."""
    found = result.finding_rows(per_side)
    ex = result.finding_examples
    if group is not None:
        found = found.filter(pl.col("group") == group)
        ex = ex.filter(pl.col("group") == group)
    level = 3 if group is not None else 2
    if found.height == 0:
        return [Text("Findings", level=level), Text("No latent differs significantly, so there is no finding.")]
    blocks: list = [Text("Findings", level=level),
                    Text("A finding is one difference: a lead latent and the significant latents whose difference "
                         "its documents explain (comparing documents inside and outside them, less than half of "
                         "their difference is left). Its documents are those where enough of its latents are present; "
                         "share_a and share_b are the fractions of each side's documents that are its documents. "
                         "Ranked by the lead's q-value."),
                    Table(result.display_table(result.finding_rows(per_side, compact=True).filter(
                        pl.col("finding").is_in(found["finding"].implode()) & (
                            pl.col("group") == group if group is not None else pl.lit(True)))),
                          caption=f"The {per_side} first findings more common on each side, of "
                                  f"{_count(result.findings, group)}")]
    labels = dict(zip(result.table["latent"].to_list(), result.table["label"].to_list()))
    q = result.qvalue
    for row in found.iter_rows(named=True):
        parts = [f"<h4>{row['finding']}. More in {html.escape(str(row['more_in']))}: "
                 f"{html.escape(row['description'])}</h4>",
                 f"<p class='sub'>its documents: {row['share_a']:.1%} of side a, {row['share_b']:.1%} of side b. "
                 f"Lead latent {html.escape(latent_name(row['lead'], row['label']))}: present in "
                 f"{row['freq_a']:.1%} of side a, {row['freq_b']:.1%} of side b; q = {row[q]:.2g}. "
                 f"{_members(row['latents'], labels, 'more common in its documents')}"
                 + (f"; {_members(row['fewer'], labels, 'its documents lack')}" if row["fewer"] else "")
                 + "</p>"]
        for d in ex.filter(pl.col("finding") == row["finding"]).iter_rows(named=True):
            parts.append(doc_snippet_at(d["text"] or "", d["peak"]))
        blocks.append(Html("".join(parts)))
    return blocks


def _count(findings: pl.DataFrame, group: str | None) -> int:
    return findings.height if group is None else findings.filter(pl.col("group") == group).height


def _members(latents: list[int], labels: dict[int, str | None], where: str, shown: int = 8) -> str:
    """``3 latents more common in its documents: 12 dog / puppy, 40 cat, 7 (no label)``,
    the first ``shown`` named."""
    names = ", ".join(html.escape(latent_name(x, labels.get(x))) for x in latents[:shown])
    more = f", and {len(latents) - shown} more" if len(latents) > shown else ""
    return f"{len(latents)} latent{'s' if len(latents) != 1 else ''} {where}: {names}{more}"


def _two_sided(result: DiffResult, group: str | None, per_side: int) -> pl.DataFrame:
    """The first ``per_side`` rows more common on each side (:meth:`DiffResult.rows`), of
    one group with ``by``."""
    rows = result.rows(per_side)
    return rows if group is None else rows.filter(pl.col("group") == group)


def _how_to_read(result: DiffResult) -> str:
    if result.presence == "excess":
        present = ("present (it fires on more of the document's tokens than its rate over all compared documents "
                   "predicts for a document of that length)")
    else:
        present = f"active (|pooled value| > {result.threshold:g})"
    text = (f"more_in names the side where a latent is more common; freq_a and freq_b are the fractions of "
            f"documents where it is {present}; diff_b_minus_a = freq_b - freq_a; q is the Benjamini-Hochberg "
            "q-value of ")
    if result.paired_on:
        text += f"McNemar's exact test over documents paired on {result.paired_on!r}."
    else:
        text += "a two-proportion z-test."
    if result.length_controlled:
        text += (" adj_diff_b_minus_a, adj_log_or and adj_q compare documents of similar length only (Cochran-Mantel-"
                 "Haenszel over length bins) and rank the table.")
    if result.by:
        text += f" Each value of {result.by!r} is side b; all other documents are side a."
    return text + " merged lists near-duplicate latents folded into a row."


def _example_blocks(result: DiffResult, head: pl.DataFrame, group: str | None) -> list:
    blocks = []
    ex = result.examples
    if group is not None and "group" in ex.columns:
        ex = ex.filter(pl.col("group") == group)
    for row in head.iter_rows(named=True):
        q = row["adj_q"] if result.length_controlled else row["q"]
        parts = [f"<h4>{html.escape(latent_name(row['latent'], row['label'], row['merged']))}</h4>",
                 f"<p class='sub'>active in {row['freq_a']:.1%} of side a, {row['freq_b']:.1%} of side b; "
                 f"q = {q:.2g}</p>"]
        docs = ex.filter(pl.col("latent") == row["latent"])
        for side in docs["side"].unique(maintain_order=True).to_list():
            parts.append(f"<p><b>{html.escape(str(side))}</b></p>")
            for d in docs.filter(pl.col("side") == side).iter_rows(named=True):
                parts.append(doc_snippet_at(d["text"] or "", d["peak"]))
        if docs.height == 0:
            parts.append("<p class='sub'>No example in the sampled documents.</p>")
        blocks.append(Html("".join(parts)))
    return blocks
