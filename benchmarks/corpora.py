"""Real categorised corpora built offline, for benchmarks (never for tests).

``debian``: Debian package descriptions labelled by archive section, from the package
lists apt already has (``apt-get update`` once, then ``apt-cache dumpavail``). Nobody
here wrote them; a section is a topic a reader can check ("games", "hamradio", "tex").
Long descriptions live in apt's English translation lists, which a default apt set-up
may not fetch: ``apt-get update -o Acquire::Languages=en`` fetches them.

    python benchmarks/corpora.py debian out.jsonl --per-section 200
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

# Sections whose packages share a subject (not a packaging role such as libs, libdevel,
# doc, oldlibs, metapackages, debug, or a language ecosystem such as perl or rust).
SECTIONS = (
    "admin", "comm", "database", "editors", "electronics", "fonts", "games", "gnome",
    "graphics", "hamradio", "httpd", "kde", "kernel", "localization", "mail", "math",
    "net", "science", "sound", "tex", "text", "vcs", "video", "web", "x11",
)

_FIELD = re.compile(r"^([A-Za-z0-9-]+): ?(.*)$")


def _records(dump: str):
    """Package records of ``apt-cache dumpavail`` output as dicts (Description joined)."""
    for block in dump.split("\n\n"):
        rec: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            m = _FIELD.match(line)
            if m and not line.startswith(" "):
                key = m.group(1)
                rec[key] = m.group(2)
            elif key and line.startswith(" "):
                rec[key] += "\n" + line[1:]
        if rec:
            yield rec


def translations(lang: str = "en") -> dict[str, str]:
    """Description-md5 -> the description in ``lang`` from apt's Translation lists."""
    out: dict[str, str] = {}
    for path in sorted(Path("/var/lib/apt/lists").glob(f"*_i18n_Translation-{lang}*")):
        text = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", str(path)], capture_output=True,
                              text=True, check=True).stdout
        for rec in _records(text):
            if "Description-md5" in rec and f"Description-{lang}" in rec:
                out[rec["Description-md5"]] = rec[f"Description-{lang}"]
    if not out:
        raise SystemExit(f"no long descriptions: run `apt-get update -o Acquire::Languages={lang}` first")
    return out


def description_text(raw: str) -> str:
    """A Debian Description field as plain text: synopsis line, then the long
    description with ' .' paragraph markers turned into blank lines."""
    first, _, rest = raw.partition("\n")
    lines = ["" if ln.strip() == "." else ln.strip() for ln in rest.splitlines()]
    body = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return (first.strip().rstrip(".") + ".\n" + body).strip()


def debian(out: Path, per_section: int = 200, seed: int = 0, sections=SECTIONS,
           min_chars: int = 120) -> Path:
    """Write up to ``per_section`` distinct descriptions of each section to ``out``
    (JSONL: id, text, section, package), sampled with ``seed``."""
    dump = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    long = translations()
    by_section: dict[str, dict[str, tuple[str, str]]] = defaultdict(dict)
    for rec in _records(dump):
        section = rec.get("Section", "").split("/")[-1]
        raw = long.get(rec.get("Description-md5", ""))
        if section not in sections or not raw:
            continue
        text = description_text(raw)
        # Packages built from one source often share a long description: keep one.
        key = text.partition("\n")[2] or text
        if len(text) >= min_chars and key not in by_section[section]:
            by_section[section][key] = (rec["Package"], text)
    rng = random.Random(seed)
    rows = []
    for section in sorted(by_section):
        items = sorted(by_section[section].values())
        rng.shuffle(items)
        rows += [{"id": pkg, "text": text, "section": section} for pkg, text in items[:per_section]]
    rng.shuffle(rows)
    seen: set[str] = set()
    with out.open("w", encoding="utf-8") as f:
        for row in rows:
            if row["id"] not in seen:
                seen.add(row["id"])
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


def debian_pair(out_a: Path, out_b: Path, n_docs: int = 1000, lang: str = "de", lang_share: float = 0.22,
                theme: str = "games", theme_share: float = 0.15, seed: int = 0) -> tuple[Path, Path]:
    """Two corpora of Debian package descriptions with two known differences: A is
    English, spread evenly over SECTIONS; in B, ``lang_share`` of the documents are the
    ``lang`` translations of other packages' descriptions (the strong difference) and
    ``theme_share`` are from section ``theme`` (the weaker one: A has 1/len(SECTIONS)).
    JSONL: id, text, section, lang. Needs `apt-get update -o Acquire::Languages=en,LANG`."""
    dump = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    english, other = translations("en"), translations(lang)
    pool: dict[str, list[tuple[str, str, str]]] = defaultdict(list)  # section -> (package, md5, English text)
    seen: set[str] = set()
    for rec in _records(dump):
        section = rec.get("Section", "").split("/")[-1]
        md5 = rec.get("Description-md5", "")
        if section in SECTIONS and md5 in english and md5 not in seen and len(english[md5]) >= 120:
            seen.add(md5)
            pool[section].append((rec["Package"], md5, description_text(english[md5])))
    rng = random.Random(seed)
    for items in pool.values():
        items.sort()
        rng.shuffle(items)
    used: set[str] = set()

    def take(section: str, n: int, need_lang: bool = False) -> list[tuple[str, str, str]]:
        got = [x for x in pool[section] if x[1] not in used and (not need_lang or x[1] in other)][:n]
        used.update(x[1] for x in got)
        return got

    per = n_docs // len(SECTIONS)
    a = [{"id": p, "text": t, "section": s, "lang": "en"} for s in SECTIONS for p, _, t in take(s, per)]
    n_lang, n_theme = round(n_docs * lang_share), round(n_docs * theme_share)
    others = [s for s in SECTIONS if s != theme]
    rest = (n_docs - n_lang - n_theme) // len(others)
    b = [{"id": p, "text": t, "section": s, "lang": "en"} for s in others for p, _, t in take(s, rest)]
    b += [{"id": p, "text": t, "section": theme, "lang": "en"} for p, _, t in take(theme, n_theme)]
    translated = [(s, x) for s in others for x in take(s, -(-n_lang // len(others)), need_lang=True)][:n_lang]
    b += [{"id": p, "text": description_text(other[md5]), "section": s, "lang": lang} for s, (p, md5, _) in translated]
    for docs, path in ((a, out_a), (b, out_b)):
        rng.shuffle(docs)
        with path.open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    return out_a, out_b


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", choices=["debian"])
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-section", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    path = debian(args.out, args.per_section, args.seed)
    counts: dict[str, int] = defaultdict(int)
    for line in path.open(encoding="utf-8"):
        counts[json.loads(line)["section"]] += 1
    print(f"{path}: {sum(counts.values())} documents in {len(counts)} sections", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
