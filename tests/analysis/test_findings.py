"""Diff findings (saedata/analysis/findings.py): latents grouped by the documents that
explain them, so that a strong difference cannot hide a weaker one."""

from __future__ import annotations

import random

import polars as pl
import pytest

from saedata.analysis.diff import diff
from saedata.analysis.findings import Sides, group_findings
from saedata.demo import make_corpus, write_jsonl

GERMAN = {
    "subject": ["der Bauer", "meine Nachbarin", "das Kind", "unser Lehrer", "die Verkäuferin", "mein Großvater",
                "der Briefträger", "die Bürgermeisterin"],
    "verb": ["kaufte", "suchte", "vergaß", "reparierte", "verkaufte", "fand", "brauchte", "bemalte"],
    "object": ["ein neues Fahrrad", "den alten Küchentisch", "die kleine Brücke", "einen warmen Wintermantel",
               "das rote Auto", "die Zeitung von gestern", "den verlorenen Schlüssel", "eine Tasse Kaffee"],
}
REMARKS = ["Es war wunderbar.", "Das war schrecklich.", "Wir waren sehr glücklich.", "Niemand wusste warum.",
           "Alle haben gelacht.", "Was für ein Tag!"]


def german_document(rng: random.Random) -> str:
    sentences = [f"{rng.choice(GERMAN['subject'])} {rng.choice(GERMAN['verb'])} {rng.choice(GERMAN['object'])}."
                 for _ in range(rng.randint(2, 3))]
    sentences = [s[0].upper() + s[1:] for s in sentences] + [rng.choice(REMARKS)]
    return " ".join(sentences)


@pytest.fixture(scope="module")
def language_and_theme(tmp_path_factory):
    """A: 200 English documents over eight topics. B: 25% German documents (the strong
    difference) and English ones where cooking is 3x as common (the weaker one)."""
    from saedata.config import InputConfig, ReaderConfig, TrainConfig
    from saedata.embed.local import embed

    root = tmp_path_factory.mktemp("findings")
    rng = random.Random(5)
    a = make_corpus(200, seed=21, id_prefix="a")
    weights = [3.0 if t == "cooking" else 1.0 for t in ("pets", "science", "sports", "cooking", "weather",
                                                         "finance", "travel", "music")]
    b = make_corpus(150, seed=22, topic_weights=weights, id_prefix="b")
    b += [{"id": f"g{i:03d}", "text": german_document(rng), "topic": "german", "sentiment": "neutral",
           "is_question": False, "n_words": 0} for i in range(50)]
    random.Random(6).shuffle(b)
    db = root / "run.duckdb"
    train = TrainConfig(max_tokens=80_000, batch_size=1024, device="cpu", seed=0)
    for name, docs in (("a", a), ("b", b)):
        path = write_jsonl(docs, root / f"{name}.jsonl")
        embed(str(path), db, input_cfg=InputConfig(id_field="id"), reader_cfg=ReaderConfig(device="cpu"),
              train_cfg=train)
    topics = {d["id"]: d["topic"] for d in a + b}
    return {"db": str(db), "topics": topics}


def _finding_topics(result, topics) -> list[str]:
    """The topic of each finding's example documents (when they all share one), by rank."""
    out = []
    for f in result.findings["finding"].to_list():
        ex = result.finding_examples.filter(pl.col("finding") == f)
        seen = {topics[x] for x in ex["ext_id"].to_list()}
        out.append(seen.pop() if len(seen) == 1 else "mixed")
    return out


def test_a_strong_difference_does_not_hide_a_weaker_one(language_and_theme):
    result = diff(language_and_theme["db"], "a", "b")
    top = _finding_topics(result, language_and_theme["topics"])[:5]
    assert "german" in top and "cooking" in top, (top, result.findings.head(8))
    # the German finding gathers many latents, English function words among its "fewer"
    german = result.findings.row(top.index("german"), named=True)
    assert german["more_in"] == "b" and german["n_latents"] >= 5
    # observed: 0.00 in A when the SAE trained at Gao et al.'s rate, 0.03 at twice it (the
    # default for this batch size): its latents fire on 6 of 200 English documents
    assert german["freq_b"] > 0.15 and german["freq_a"] < 0.05
    assert result.findings.height < result.significant().height


def test_every_significant_candidate_is_in_one_finding(language_and_theme):
    result = diff(language_and_theme["db"], "a", "b")
    members = [x for row in result.findings.iter_rows(named=True) for x in row["latents"] + row["fewer"]]
    assert len(members) == len(set(members))  # no latent in two findings
    sig = set(result.significant()["latent"].to_list())
    leads = set(result.findings["lead"].to_list())
    assert leads <= sig
    # findings keep the diff's order: leads appear in table order
    order = {x: i for i, x in enumerate(result.table["latent"].to_list())}
    assert [order[x] for x in result.findings["lead"]] == sorted(order[x] for x in result.findings["lead"])


def _sides(n_a, n_b):
    return Sides(frozenset([1]), frozenset([2]), n_a, n_b)


def _sample(presence: dict[int, list[int]], side_b: set[int]) -> pl.DataFrame:
    rows = [(d, 2 if d in side_b else 1, lat) for lat, docs in presence.items() for d in docs]
    return pl.DataFrame(rows, schema={"doc_id": pl.Int64, "grp": pl.Int64, "latent": pl.Int32}, orient="row")


def _rows(latents_effects):
    return pl.DataFrame({"latent": [x for x, _ in latents_effects], "diff_b_minus_a": [e for _, e in latents_effects],
                         "merged": [[] for _ in latents_effects]},
                        schema={"latent": pl.Int32, "diff_b_minus_a": pl.Float64, "merged": pl.List(pl.Int32)})


def test_explain_away_by_hand():
    # 100 documents per side; b's documents 100..129 are "german"
    side_b = set(range(100, 200))
    german = list(range(100, 130))
    english_a, english_b = list(range(0, 100)), list(range(130, 200))
    theme = list(range(0, 10)) + list(range(130, 160))  # 10% of a, 30 of b's 70 English documents
    presence = {
        1: german,                              # lead of the language finding
        2: german[:27] + [5],                   # another German latent: explained
        3: english_a + english_b,               # "the": present in every English document, more in a
        4: theme,                               # the theme: not explained by language
        5: theme[:8] + theme[12:38],            # a second theme latent: explained by the theme
        6: english_a[:60] + english_b[:20] + theme[:5],  # broad, more in a: not language alone
    }
    rows = _rows([(1, 0.3), (3, -0.3), (2, 0.27), (4, 0.2), (5, 0.18), (6, -0.35)])
    found, docs = group_findings(rows, _sample(presence, side_b), _sides(100, 100), "diff_b_minus_a",
                                 {1: "und / der", 2: "die / das", 3: "the", 4: "cook / chef", 5: "bake / sauce",
                                  6: "sports"}, frozenset({3}))
    assert found["lead"].to_list() == [1, 4, 6]
    assert found["latents"].to_list() == [[1, 2], [4, 5], [6]]
    assert found["fewer"].to_list() == [[3], [], []]
    assert found["side"].to_list() == ["b", "b", "a"]
    assert found["description"].to_list() == ["und / der (also: die, das)", "cook / chef (also: bake, sauce)", "sports"]
    assert sorted(docs[1].tolist()) == german and sorted(docs[3].tolist()) == english_a[:60]
    # a lead whose label scored low (saedata label --score) describes its finding after the others
    low, _ = group_findings(rows, _sample(presence, side_b), _sides(100, 100), "diff_b_minus_a",
                            {1: "und / der", 2: "die / das", 3: "the", 4: "cook / chef", 5: "bake / sauce",
                             6: "sports"}, frozenset({3}), low=frozenset({1, 4}))
    assert low["lead"].to_list() == [1, 4, 6]  # the statistics do not move
    assert low["description"].to_list() == ["die / das (also: und, der)", "bake / sauce (also: cook, chef)", "sports"]


def test_a_broad_lead_does_not_explain_a_theme():
    # "the" leads (more in a), the theme is a subset of English documents: removing the
    # lead's documents would erase the theme, stratifying by them does not
    side_b = set(range(100, 200))
    english = list(range(0, 100)) + list(range(100, 160))
    theme = list(range(0, 5)) + list(range(100, 130))
    presence = {3: english, 4: theme}
    found, _ = group_findings(_rows([(3, -0.4), (4, 0.25)]), _sample(presence, side_b), _sides(100, 100),
                              "diff_b_minus_a", {3: "the", 4: "cook"}, frozenset({3}))
    assert found["lead"].to_list() == [3, 4]
    assert found["weak"].to_list() == [True, False]


def test_demo_pair_findings_are_the_planted_differences(demo_store):
    import json

    docs = {}
    for name in ("a", "b"):
        with open(demo_store[name], encoding="utf-8") as f:
            docs |= {d["id"]: d for d in map(json.loads, f)}
    result = diff(demo_store["db"], "a", "b")
    found = result.findings.filter(pl.col("more_in") == "b").head(8)
    kinds = set()
    for f in found["finding"].to_list():
        ex = [docs[x] for x in result.finding_examples.filter(pl.col("finding") == f)["ext_id"].to_list()]
        topics = [d["topic"] for d in ex]
        kinds |= {t for t in topics if topics.count(t) * 3 >= 2 * len(ex)}  # two of three examples
        if sum(d["is_question"] for d in ex) * 3 >= 2 * len(ex):
            kinds.add("question")
    # b has pets and science 4x as often and three times the questions: all among the 8
    # first findings more common in b (the default shows 10), with the demo's small SAE
    assert {"pets", "science", "question"} <= kinds, (kinds, found)


def test_findings_per_group_with_by(demo_store):
    result = diff(demo_store["db"], "a", by="topic")
    assert result.findings.columns[0] == "group"
    assert set(result.findings["group"]) <= set(result.table["group"])
    for (group,), found in result.findings.group_by("group"):
        sig = result.significant().filter(pl.col("group") == group)
        assert set(found["lead"]) <= set(sig["latent"])
        assert found["finding"].to_list() == list(range(1, found.height + 1))
        assert set(found["more_in"]) <= {group, "(rest)"}
    # each topic against the rest: its own finding is more common in it, and comes first
    pets = result.findings.filter(pl.col("group") == "pets")
    assert pets["more_in"][0] == "pets" and pets["share_b"][0] > 0.5 > pets["share_a"][0]
    ex = result.finding_examples.filter((pl.col("group") == "pets") & (pl.col("finding") == 1))
    assert ex.height == 3


def test_report_leads_with_findings(demo_store, tmp_path):
    import saedata

    result = diff(demo_store["db"], "a", "b")
    html = saedata.write_report(result, tmp_path / "diff.html").read_text(encoding="utf-8")
    first = result.findings.row(0, named=True)
    assert html.index("Findings") < html.index("Latents") < html.index("Ranked latents")
    assert f"1. More in {first['more_in']}" in html and "its documents:" in html
