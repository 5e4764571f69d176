"""saedata browse: a static site of the latents, checked on disk and in a headless browser."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import duckdb
import polars as pl
import pytest
from click.testing import CliRunner

import saedata
from saedata.cli import main
from saedata.errors import ConfigError, InputError, NotFoundError
from saedata.reports import site as site_module
from tests.helpers import copy_demo_store

HOSTILE = "<script>alert(1)</script><img src=x onerror=\"document.body.setAttribute('data-pwned', 1)\">"
"""A label, document text and dataset name a store from someone else might hold."""

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def db(demo_store) -> str:
    return demo_store["db"]


@pytest.fixture(scope="module")
def site(db, tmp_path_factory) -> saedata.reports.site.Site:
    """The whole site of the demo store (every latent that fires has a page), with a report copied in."""
    root = tmp_path_factory.mktemp("site")
    report = root / "diff.html"
    report.write_text("<!DOCTYPE html><title>a diff</title><p>a report</p>", encoding="utf-8")
    return saedata.browse(db, root / "site", reports=[report])


@pytest.fixture(scope="module")
def busy(db) -> int:
    with saedata.open(db) as s:
        return s.sql("SELECT latent FROM activations GROUP BY latent ORDER BY count(*) DESC, latent LIMIT 1").item()


def _links(page: Path) -> list[str]:
    return re.findall(r'href="([^"]*)"|href=\'([^\']*)\'', page.read_text(encoding="utf-8"))


def _resolves(page: Path) -> list[str]:
    """The relative links of ``page`` that lead to no file."""
    hrefs = [a or b for a, b in _links(page)]
    return [h for h in hrefs if not (page.parent / h.split("#")[0]).is_file()]


def test_the_site_has_an_index_of_every_latent_and_a_page_for_each_that_fires(site, db):
    with saedata.open(db) as s:
        firing = set(s.sql("SELECT DISTINCT latent FROM activations")["latent"].to_list())
        d_sae = s.saes()["d_sae"].item()
    assert site.index == site.path / "index.html" and site.index.is_file()
    pages = {int(p.stem) for p in (site.path / "latents").glob("*.html")}
    assert pages == firing and site.n_pages == len(firing) and site.n_latents == d_sae
    index = site.index.read_text(encoding="utf-8")
    listed = [int(n) for n in re.findall(r'<tr data-label="[^"]*"><td class="num" data-v="(\d+)">', index)]
    assert sorted(listed) == list(range(d_sae))
    assert {int(n) for n in re.findall(r'href="latents/(\d+)\.html"', index)} == firing
    assert 'href="reports/diff.html"' in index and (site.path / "reports" / "diff.html").read_text().endswith("report</p>")
    assert "<th data-key=\"lift\"" in index and "<th data-key=\"score\"" not in index  # two datasets; nothing scored
    mark = json.loads((site.path / site_module.SITE_MARK).read_text())
    assert mark["pages"] == len(firing) and mark["datasets"] == ["a", "b"]
    assert not [p for p in site.path.parent.iterdir() if p.name.startswith(".site.")]  # no temporary folder left


def test_a_latent_page_shows_its_label_and_marked_evidence(site, busy, db):
    page = (site.path / "latents" / f"{busy}.html").read_text(encoding="utf-8")
    with saedata.open(db) as s:
        label = s.latents().filter(pl.col("latent") == busy)["label"].item()
    assert html.escape(label) in page and "<mark>" in page and "Strongest documents" in page
    assert "href='../index.html'" in page
    neighbours = re.findall(r'<a href="(\d+)\.html">', page)
    assert neighbours and all((site.path / "latents" / f"{n}.html").is_file() for n in neighbours)


def test_every_link_of_the_site_leads_to_a_file(site):
    assert _resolves(site.index) == []
    for page in sorted((site.path / "latents").glob("*.html")):
        assert _resolves(page) == [], page.name


def test_latents_limits_the_pages_to_the_most_frequent(db, tmp_path):
    result = saedata.browse(db, tmp_path / "site", latents=5)
    with saedata.open(db) as s:
        top = s.sql("SELECT latent FROM activations GROUP BY latent ORDER BY count(*) DESC, latent LIMIT 5")
    assert result.n_pages == 5 and result.n_latents == 3072
    assert {int(p.stem) for p in (tmp_path / "site" / "latents").glob("*.html")} == set(top["latent"].to_list())
    index = result.index.read_text(encoding="utf-8")
    assert index.count('<tr data-label=') == 3072 and len(re.findall(r'href="latents/\d+\.html"', index)) == 5
    assert "3067 more fire but have none" in index
    assert _resolves(result.index) == []


def test_one_dataset_has_no_lift_column(db, tmp_path):
    index = saedata.browse(db, tmp_path / "site", "a", latents=2).index.read_text(encoding="utf-8")
    assert '<th data-key="freq"' in index and '<th data-key="lift"' not in index and "more in" not in index


def test_scores_show_once_labels_are_scored(demo_store, tmp_path):
    db = copy_demo_store(demo_store, tmp_path)
    con = duckdb.connect(str(db))
    con.execute("UPDATE latents SET score = 0.25 + latent / 10000 WHERE latent < 3")
    con.close()
    index = saedata.browse(db, tmp_path / "site", latents=1).index.read_text(encoding="utf-8")
    assert '<th data-key="score"' in index and "not scored yet" not in index
    scores = re.findall(r'<td class="num" data-v="(\d+)">.*?</td>(?:<td[^>]*>.*?</td>){3}<td class="num" data-v="([^"]*)">',
                        index)
    by_latent = {int(lat): v for lat, v in scores}
    assert len(by_latent) == 3072 and by_latent[2] == "0.2502" and by_latent[3] == ""  # unscored: empty, sorted last


def test_a_folder_that_is_not_a_site_is_refused_and_a_site_replaced_whole(db, tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(ConfigError, match="folder is not empty and holds no site saedata wrote"):
        saedata.browse(db, other, latents=1)
    assert [p.name for p in other.iterdir()] == ["todo.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        saedata.browse(db, tmp_path / "file", latents=1)
    with pytest.raises(InputError, match="no such file"):
        saedata.browse(db, tmp_path / "new", reports=[tmp_path / "missing.html"])
    with pytest.raises(NotFoundError):
        saedata.browse(db, tmp_path / "new", sae_id=7)
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    first = saedata.browse(db, empty, latents=3)
    (empty / "latents" / "stale.html").write_text("from before")
    second = saedata.browse(db, empty, latents=2)
    assert first.n_pages == 3 and second.n_pages == 2
    assert sorted(p.name for p in (empty / "latents").iterdir()) == sorted(
        f"{n}.html" for n in re.findall(r'href="latents/(\d+)\.html"', second.index.read_text()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "notes"]  # nothing temporary left


def test_a_crash_leaves_the_old_site_whole(db, tmp_path, monkeypatch):
    out = tmp_path / "site"
    saedata.browse(db, out, latents=2)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    written = []

    def fail_on_the_third(page, path, *args, **kwargs):
        written.append(page.latent)
        if len(written) == 3:
            raise OSError(28, "No space left on device", str(path))
        return original(page, path, *args, **kwargs)

    original = site_module.write_latent_report
    monkeypatch.setattr(site_module, "write_latent_report", fail_on_the_third)
    with pytest.raises(OSError, match="No space left"):
        saedata.browse(db, out, latents=4)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


@pytest.fixture(scope="module")
def hostile(demo_store, busy, tmp_path_factory) -> Path:
    """A site of the demo store after someone else wrote HTML into the busiest latent's
    label, into the text of its strongest document and into a dataset's name."""
    root = tmp_path_factory.mktemp("hostile")
    db = copy_demo_store(demo_store, root)
    with saedata.open(db) as s:
        doc = s.macro("top_docs", 1, busy, n=1)["doc_id"].item()
    con = duckdb.connect(str(db))
    con.execute("UPDATE latents SET label = ? WHERE latent = ?", [HOSTILE, busy])
    con.execute("UPDATE documents SET text = text || ' ' || ? WHERE doc_id = ?", [HOSTILE, doc])
    con.execute("UPDATE datasets SET name = ? WHERE name = 'b'", [HOSTILE])
    con.close()
    saedata.browse(db, root / "site", latents=20)
    return root / "site"


def test_text_from_the_store_is_escaped(hostile, busy):
    index = (hostile / "index.html").read_text(encoding="utf-8")
    page = (hostile / "latents" / f"{busy}.html").read_text(encoding="utf-8")
    escaped = html.escape(HOSTILE)
    for text in (index, page):
        assert "<script>alert(1)</script>" not in text and "<img src=x" not in text
        assert escaped in text
    assert index.count("<script") == 1 and page.count("<script") == 0  # the index's own, and none
    assert page.count(escaped) >= 3  # the label, the document, the dataset


def test_cli_writes_the_site_and_says_where(db, tmp_path):
    out = tmp_path / "site"
    result = CliRunner().invoke(main, ["browse", "--out", str(out), "--db", db, "--latents", "3"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr.strip() == f"wrote 3 latent pages and an index of 3072 latents: open {out / 'index.html'}"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("x")
    for args, code, message in (
        (["--out", str(tmp_path / "mine")], 1, "folder is not empty and holds no site saedata wrote"),
        (["--out", str(tmp_path / "x"), "--sae-id", "9"], 1, "no SAE 9"),
        (["--out", str(tmp_path / "x"), "--report", str(tmp_path / "none.html")], 2, "does not exist"),
        (["--out", str(tmp_path / "x"), "--latents", "-1"], 2, "--latents"),
    ):
        result = CliRunner().invoke(main, ["browse", "--db", db, *args])
        assert result.exit_code == code, (args, result.output)
        assert message in result.stderr and "Traceback" not in result.output
        if code == 1:
            assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


# -- in a browser ----------------------------------------------------------------------

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no `chromium` on PATH for the headless-browser "
                                                             "checks (Debian: apt-get install -y chromium)")


def _open(url: str, profile: Path) -> tuple[str, list[str]]:
    """The DOM of ``url`` after its scripts ran, and the console messages it logged."""
    run = subprocess.run([CHROMIUM, "--headless=new", "--disable-gpu", "--no-sandbox", "--no-first-run",
                          f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--dump-dom", url],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and "</html>" in run.stdout, run.stderr[-2000:]
    return run.stdout, [ln for ln in run.stderr.splitlines() if ":CONSOLE" in ln]


@needs_chromium
def test_in_a_browser_the_index_filters_and_sorts_and_a_page_shows_evidence(hostile, busy, tmp_path):
    # the console is read: a script error on a page of our own shows up
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><script>nosuch();</script></body></html>")
    _, console = _open(broken.as_uri(), tmp_path / "profile")
    assert any("Uncaught ReferenceError" in ln for ln in console), console

    index = (hostile / "index.html").read_text(encoding="utf-8")
    labels = [html.unescape(x) for x in re.findall(r'<tr data-label="([^"]*)"', index)]
    expected = [x for x in labels if "dog" in x]
    assert 0 < len(expected) < len(labels)
    dom, console = _open((hostile / "index.html").as_uri() + "#q=dog&sort=-lift", tmp_path / "profile")
    assert console == []
    rows = re.findall(r'<tr data-label="([^"]*)"( hidden="")?>(.*?)</tr>', dom)
    assert len(rows) == len(labels)
    shown = [(html.unescape(label), cells) for label, hidden, cells in rows if not hidden]
    assert sorted(label for label, _ in shown) == sorted(expected)
    assert f"{len(expected)} of {len(labels)} latents" in dom
    lifts = [float(re.findall(r'data-v="([^"]*)"', cells)[4]) for _, cells in shown]  # latent, label, docs, freq, lift
    assert lifts == sorted(lifts, reverse=True) and lifts[0] > lifts[-1]
    assert 'aria-sort="descending"' in dom and "data-pwned" not in dom.split("<body", 1)[1].split(">", 1)[0]

    dom, console = _open((hostile / "latents" / f"{busy}.html").as_uri(), tmp_path / "profile")
    assert console == []
    assert re.search(r"<div class=\"doc\">[^<]*<mark>[^<]+</mark>", dom)
    assert "data-pwned" not in dom.split("<body", 1)[1].split(">", 1)[0] and "<script" not in dom
