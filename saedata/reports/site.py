"""A static site of an SAE's latents (``saedata browse``): an index and a page per latent.

    site/
      index.html        every latent: its label (weak ones marked), how often it fires, its
                        label score, its dataset lift; sortable by clicking a column,
                        filtered by label with a search box (``index.html#q=dog&sort=-lift``
                        opens filtered and sorted, so a view can be shared)
      latents/N.html    latent N's page, as ``saedata latent N --report`` writes it
                        (:mod:`saedata.reports.latent`), linked back to the index and to
                        the pages of the latents present with it
      reports/          HTML reports copied in (diff, correlate, cluster), listed on the index
      .saedata-site     the mark of a folder saedata wrote: a later browse may replace it

The pages fetch nothing (one inline script on the index, no fonts or styles from
elsewhere), so the site works from ``file://`` with no network. Every text from the store
(labels, documents, dataset names) is escaped: a store from someone else cannot put
script into it. The site is written into a temporary folder beside ``out`` and renamed
into place, so a crash never leaves half a site.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from saedata.analysis.latent import LatentPage
from saedata.errors import ConfigError, InputError
from saedata.reports.html import Html, Text, render_report
from saedata.reports.latent import write_latent_report

SITE_MARK = ".saedata-site"
"""The file that marks a folder as a site saedata wrote."""


@dataclass(frozen=True)
class Site:
    """A site written by :func:`write_site`."""

    path: Path
    """The site's folder."""
    index: Path
    """Its index.html: the page to open."""
    n_latents: int
    """Latents listed on the index."""
    n_pages: int
    """Latents with a page of their own (``latents/N.html``)."""
    reports: tuple[Path, ...] = ()
    """The reports copied in, at their place in the site."""
    warnings: tuple[str, ...] = ()
    """What the site leaves out and why (an unfinished dataset)."""


def check_site_folder(out: str | os.PathLike, reports: Sequence[str | os.PathLike] = ()) -> Path:
    """``out`` as a Path, when a site may be written there: it does not exist, or is an
    empty folder, or holds a site saedata wrote (then it is replaced); and each of
    ``reports`` is a file. ConfigError or InputError naming the problem otherwise."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path}: is a file; give a folder for the site")
    if path.is_dir() and not (path / SITE_MARK).is_file() and any(path.iterdir()):
        raise ConfigError(f"--out {path}: folder is not empty and holds no site saedata wrote; "
                          "give a new or empty folder")
    if not path.resolve().parent.is_dir():
        raise ConfigError(f"--out {path}: folder {path.parent} does not exist")
    for report in reports:
        if not Path(report).is_file():
            raise InputError("no such file (--report copies an HTML report into the site)", path=str(report))
    return path


def write_site(out: str | os.PathLike, overview: pl.DataFrame, pages: Iterable[LatentPage], paged: Collection[int],
               *, sae_id: int, names: Sequence[str], reports: Sequence[str | os.PathLike] = (),
               warnings: Sequence[str] = ()) -> Site:
    """Write the site to the folder ``out``: the index of ``overview`` (one row per latent,
    as :meth:`saedata.analysis.latent.LatentBook.overview` gives them, in the index's
    first order), a page for each of ``pages``, whose latents are ``paged``, and copies
    of ``reports``. A folder there is replaced only when saedata wrote it
    (:func:`check_site_folder`). Returns the :class:`Site`."""
    path = check_site_folder(out, reports)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.resolve().parent))
    try:
        (tmp / "latents").mkdir()
        linked = set(paged)
        n_pages = 0
        for page in pages:
            write_latent_report(page, tmp / "latents" / f"{page.latent}.html", index="../index.html", linked=linked)
            n_pages += 1
        copied = _copy_reports(reports, tmp / "reports")
        title = f"Latents of SAE {sae_id}"
        (tmp / "index.html").write_text(render_report(title, index_blocks(overview, linked, names, copied),
                                                      subtitle=", ".join(names)), encoding="utf-8")
        (tmp / SITE_MARK).write_text(json.dumps({"made_by": "saedata browse", "sae_id": sae_id,
                                                 "datasets": list(names), "latents": overview.height,
                                                 "pages": n_pages}) + "\n", encoding="utf-8")
        _swap(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return Site(path, path / "index.html", overview.height, n_pages, tuple(path / "reports" / c for c in copied),
                tuple(warnings))


def _copy_reports(reports: Sequence[str | os.PathLike], folder: Path) -> list[str]:
    """Copy ``reports`` into ``folder`` (two of one name become 2-name); their new names."""
    names: list[str] = []
    for report in reports:
        name = Path(report).name
        n = 1
        while name in names:
            n += 1
            name = f"{n}-{Path(report).name}"
        folder.mkdir(exist_ok=True)
        shutil.copyfile(report, folder / name)
        names.append(name)
    return names


def _swap(new: Path, path: Path) -> None:
    """Put the folder ``new`` at ``path`` by renames, the old site (if any) moved aside first
    and removed after: at every moment one whole site or the other is on disk."""
    if not path.exists():
        os.replace(new, path)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=new.parent))
    os.replace(path, old / "site")
    try:
        os.replace(new, path)
    except OSError:
        os.replace(old / "site", path)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


# -- the index -------------------------------------------------------------------------

_COLUMNS = {  # key -> (header, what it says, digits)
    "latent": ("latent", "the latent's number; a link to its page", 0),
    "label": ("label", "its label; weak: it names no topic (punctuation, function words)", 0),
    "n_fires": ("docs", "documents where it fires", 0),
    "freq": ("freq", "share of the documents where it fires", 3),
    "score": ("score", "how well the label predicts where it fires (saedata label --score; 0.5 chance, 1 perfect)", 2),
    "lift": ("lift", "how many times as often it fires in one dataset as in the others (counts +1)", 2),
    "more_in": ("more in", "the dataset where it fires most often, relative to the others", 0),
}

_SITE_CSS = """
#q{font-size:1rem;padding:.35rem .5rem;width:24rem;max-width:100%}
#latents th[data-key]{cursor:pointer;user-select:none;white-space:nowrap}
#latents th[aria-sort=descending]::after{content:" \\25BE"} #latents th[aria-sort=ascending]::after{content:" \\25B4"}
.weak{background:#eee;border-radius:3px;color:#666;font-size:.75rem;margin-left:.4rem;padding:0 .3rem}
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var table = document.getElementById("latents"), body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var box = document.getElementById("q"), shown = document.getElementById("shown");
  var state = {q: "", sort: ""};

  function read() {  // #q=dog&sort=-lift: the view a link opens
    var p = new URLSearchParams(location.hash.replace(/^#/, ""));
    state.q = p.get("q") || "";
    state.sort = p.get("sort") || "";
    box.value = state.q;
  }
  function save() {
    var p = new URLSearchParams();
    if (state.q) p.set("q", state.q);
    if (state.sort) p.set("sort", state.sort);
    var h = p.toString();
    try {
      history.replaceState(null, "", h ? "#" + h : location.pathname + location.search);
    } catch (e) { /* a browser that refuses: the address stays as it was */ }
  }
  function filter() {
    var q = state.q.trim().toLowerCase(), n = 0;
    rows.forEach(function (r) {
      var hit = !q || r.getAttribute("data-label").indexOf(q) >= 0;
      r.hidden = !hit;
      if (hit) n++;
    });
    shown.textContent = n + " of " + rows.length + " latents";
  }
  function sort() {
    var key = state.sort.replace(/^-/, ""), down = state.sort.charAt(0) === "-", col = -1;
    heads.forEach(function (h, i) {
      if (h.getAttribute("data-key") === key) col = i;
      h.removeAttribute("aria-sort");
    });
    if (col < 0) return;
    heads[col].setAttribute("aria-sort", down ? "descending" : "ascending");
    var text = heads[col].getAttribute("data-type") === "text";
    var keyed = rows.map(function (r, i) {
      var v = r.cells[col].getAttribute("data-v");
      return {r: r, i: i, v: v === "" ? null : (text ? v : parseFloat(v))};
    });
    keyed.sort(function (a, b) {
      if (a.v === null || b.v === null) return (a.v === null) - (b.v === null) || a.i - b.i;  // empty last
      var c = text ? a.v.localeCompare(b.v) : a.v - b.v;
      return (down ? -c : c) || a.i - b.i;
    });
    keyed.forEach(function (k) { body.appendChild(k.r); });
  }
  heads.forEach(function (h) {
    var key = h.getAttribute("data-key");
    if (!key) return;
    h.addEventListener("click", function () {
      var text = h.getAttribute("data-type") === "text";
      var first = text ? key : "-" + key;  // numbers largest first, text A to Z
      state.sort = state.sort === first ? (text ? "-" + key : key) : first;
      sort();
      save();
    });
  });
  box.addEventListener("input", function () { state.q = box.value; filter(); save(); });
  window.addEventListener("hashchange", function () { read(); filter(); sort(); });
  read();
  filter();
  sort();
})();
"""


def index_blocks(overview: pl.DataFrame, linked: Collection[int], names: Sequence[str],
                 reports: Sequence[str] = ()) -> list:
    """The blocks of the index page: the reports, a search box and the table of latents."""
    columns = [c for c in _COLUMNS if c in overview.columns]
    if overview["score"].null_count() == overview.height:
        columns.remove("score")
    if len(names) < 2:
        columns = [c for c in columns if c not in ("lift", "more_in")]
    n_pages = sum(1 for i in overview["latent"].to_list() if i in linked)
    blocks: list = []
    if reports:
        items = "".join(f'<li><a href="reports/{html.escape(r)}">{html.escape(r)}</a></li>' for r in reports)
        blocks += [Text("Reports", 2), Html(f"<ul>{items}</ul>")]
    dead = int((overview["n_fires"] == 0).sum())
    unpaged = overview.height - n_pages - dead
    about = [f"{overview.height} latents, {n_pages} with a page (click the number)"]
    if unpaged > 0:
        about.append(f"{unpaged} more fire but have none (saedata browse --latents 0 writes them all)")
    if dead:
        about.append(f"{dead} fire in no document")
    scored = "" if "score" in columns else " Labels are not scored yet (saedata label --score)."
    blocks.append(Text("; ".join(about) + f". Click a column to sort; type to filter by label.{scored}"))
    blocks.append(Html('<p><input id="q" type="search" placeholder="filter by label" aria-label="filter by label" '
                       'autocomplete="off"> <span id="shown" class="sub"></span></p>'))
    blocks.append(Html(_table(overview, columns, linked)))
    blocks.append(Html(f"<style>{_SITE_CSS}</style><script>{_SCRIPT}</script>"))
    return blocks


def _table(overview: pl.DataFrame, columns: list[str], linked: Collection[int]) -> str:
    """The index's table: a sort key on each cell (``data-v``), the label on each row (``data-label``)."""
    heads = "".join(
        f'<th data-key="{c}" data-type="{"text" if c in ("label", "more_in") else "number"}" '
        f'title="{html.escape(_COLUMNS[c][1])}">{html.escape(_COLUMNS[c][0])}</th>' for c in columns)
    out = [f'<table id="latents"><thead><tr>{heads}</tr></thead><tbody>']
    for row in overview.select(*columns, *(c for c in ("weak",) if c not in columns)).iter_rows(named=True):
        label = row["label"] or ""
        cells = []
        for c in columns:
            v = row[c]
            if c == "latent":
                number = f'<a href="latents/{v}.html">{v}</a>' if v in linked else str(v)
                cells.append(f'<td class="num" data-v="{v}">{number}</td>')
            elif c == "label":
                weak = '<span class="weak" title="a weak label: it names no topic">weak</span>' if row["weak"] else ""
                cells.append(f'<td data-v="{html.escape(label.lower())}">{html.escape(label)}{weak}</td>')
            elif c == "more_in":
                cells.append(f'<td data-v="{html.escape(v or "")}">{html.escape(v or "")}</td>')
            elif v is None or v != v:
                cells.append('<td class="num" data-v=""></td>')
            else:
                digits = _COLUMNS[c][2]
                cells.append(f'<td class="num" data-v="{v!r}">{v:.{digits}f}</td>')
        out.append(f'<tr data-label="{html.escape(label.lower())}">{"".join(cells)}</tr>')
    out.append("</tbody></table>")
    return "".join(out)
