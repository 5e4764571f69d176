"""HTML report of one latent (``saedata latent N --report latent.html``)."""

from __future__ import annotations

import html
import os
from collections.abc import Container
from pathlib import Path

from saedata.analysis.latent import LatentPage
from saedata.reports.html import Html, Table, Text, doc_snippet_at, write_report


def write_latent_report(page: LatentPage, path: str | os.PathLike, title: str | None = None, *,
                        index: str | None = None, linked: Container[int] = ()) -> Path:
    """Write the latent's page as an offline HTML file: label, frequency per dataset, value
    quantiles, the strongest documents and documents across its range with the word where
    it peaked marked, and the latents present with it most. In a site of pages
    (``saedata browse``), ``index`` is the address of its index, linked atop the page, and
    the co-occurring latents of ``linked`` link to their pages beside this one
    (``N.html``). Returns the path."""
    fires = int(page.datasets["n_fires"].sum())
    blocks: list = [Html(f"<p class='sub'><a href='{html.escape(index)}'>&larr; all latents</a></p>")] if index else []
    blocks += [Text(f"Label: {page.label or '(none)'} ({page.label_source or 'unlabelled'}"
                    f"{'; weak: it names no topic' if page.weak else ''}{_scores(page)}). Fires in {fires} of "
                    f"{page.n_docs} documents of {', '.join(page.names)}.")]
    blocks += [Text("Frequency per dataset", 2), Table(page.datasets),
               Text("Pooled values where it fires", 2), Table(page.quantiles)]
    for heading, docs in (("Strongest documents", page.top),
                          ("Documents across its range of values (weakest first)", page.samples)):
        blocks.append(Text(heading, 2))
        for row in docs.iter_rows(named=True):
            where = f" at quantile {row['quantile']:.2f}" if "quantile" in row else ""
            blocks.append(Text(f"doc {row['doc_id']} ({row['dataset']}:{row['ext_id']}), value {row['value']:.3g}{where}",
                               4))
            blocks.append(Html(doc_snippet_at(row["text"], row["peak"], width=400, spans=row.get("spans") or None)))
    if page.cooccurs.height:
        pages = {j: f"{j}.html" for j in page.cooccurs["latent"].to_list() if j in linked}
        blocks += [Text("Present together with (NPMI)", 2), Table(page.cooccurs, links={"latent": pages})]
    return write_report(path, title or f"Latent {page.latent}: {page.label or 'unlabelled'}", blocks,
                        subtitle=f"SAE {page.sae_id}")


def _scores(page: LatentPage) -> str:
    """"; score 0.91 (its words: precision 0.80, recall 0.35); LLM detection 0.85, fuzzing 0.70"
    for the scores the label has, else ""."""
    s = page.scores
    out = ""
    if s.get("score") is not None:
        words = ""
        if s.get("detect_precision") is not None and s.get("detect_recall") is not None:
            words = f" (its words: precision {s['detect_precision']:.2f}, recall {s['detect_recall']:.2f})"
        out = f"; score {s['score']:.2f}{words}"
    llm = [f"{name} {s[key]:.2f}" for key, name in (("llm_detection", "detection"), ("llm_fuzzing", "fuzzing"))
           if s.get(key) is not None]
    return out + (f"; LLM {', '.join(llm)}" if llm else "")
