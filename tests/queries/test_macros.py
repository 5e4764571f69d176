"""Every macro of queries/*.sql, called from a plain DuckDB session on a small store whose
answers are worked out by hand. A user's `duckdb run.duckdb` has these macros too."""

from __future__ import annotations

import inspect
import math
import re
from importlib import resources

import duckdb
import polars as pl
import pytest

from saedata.label import word_document_frequency
from saedata.store import Store
from saedata.store.store import QUERY_FILES

TEXTS = ["The dog barks loudly.", "New York is big.", "Dogs and cats.", "A cat sleeps.", "Rain in London."]
# (doc_id, latent, value, peak): peak is the character offset of the word where the latent fired
ACTIVATIONS = [(0, 0, 2.0, 4), (0, 1, 1.0, 20), (1, 1, 0.5, 15), (1, 2, 3.0, 5), (2, 0, 1.5, 0), (2, 3, 0.75, 9),
               (3, 0, 1.25, 2), (3, 1, 0.75, 12), (4, 4, 2.5, 0), (4, 1, 0.25, 14)]
# the tokens each of those fired on, of n_tokens [5, 4, 40, 3, 3]: latent 0 fires on 4 of
# the 55 tokens, so once in the 40-token document 2 is less than its share (2.9)
TOKENS = [1, 1, 1, 2, 1, 1, 2, 1, 1, 1]
# token codes (doc_id, token, char_start, char_end, latent, value) of documents 0 and 3 only
TOKEN_CODES = [(0, 1, 4, 7, 0, 2.0), (0, 4, 20, 21, 1, 1.0), (0, 4, 20, 21, 0, 0.5),
               (3, 1, 2, 5, 0, 1.25), (3, 2, 6, 12, 0, 0.5), (3, 3, 12, 13, 1, 0.75)]


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    """Dataset a (documents 0-2) and b (3-4), one SAE of 6 latents, opened read-only by DuckDB alone."""
    path = tmp_path_factory.mktemp("macros") / "run.duckdb"
    with Store(path, read_only=False) as store:
        sae = store.register_sae("toy", {"d_in": 2, "d_sae": 6, "activation": "topk", "reader": "r"}, None, "fp")
        a = store.create_dataset("a", "a.jsonl", sae, {})
        b = store.create_dataset("b", "b.jsonl", sae, {})
        docs = pl.DataFrame({
            "doc_id": [0, 1, 2, 3, 4], "dataset_id": [a.dataset_id] * 3 + [b.dataset_id] * 2,
            "ext_id": ["x0", "x1", "x2", "y0", "y1"], "text": TEXTS,
            "meta": ['{"topic": "pets", "pid": "p1"}', '{"topic": "city", "pid": "p2"}', '{"topic": "pets"}',
                     '{"topic": "pets", "pid": "p1"}', '{"topic": "weather", "pid": "p2"}'],
            "n_tokens": [5, 4, 40, 3, 3]})
        acts = pl.DataFrame(ACTIVATIONS, schema=["doc_id", "latent", "value", "peak"], orient="row").with_columns(
            sae_id=pl.lit(sae), tokens=pl.Series(TOKENS, dtype=pl.Int32))
        tokens = pl.DataFrame(TOKEN_CODES, schema=["doc_id", "token", "char_start", "char_end", "latent", "value"],
                              orient="row").with_columns(sae_id=pl.lit(sae))
        store.append_batch(docs, acts, word_document_frequency(TEXTS), sae, tokens=tokens)
        for d in (a, b):
            store.complete_dataset(d.dataset_id)
        store.refresh_latent_stats(sae)
        store.fold_word_counts(sae)
    connection = duckdb.connect(str(path), read_only=True)
    yield connection
    connection.close()


def rows(con, sql: str, params: list | None = None) -> list[tuple]:
    return con.execute(sql, params).fetchall()


def test_every_macro_is_tested_here():
    here = open(__file__, encoding="utf-8").read().replace(inspect.getsource(test_every_macro_is_tested_here), "")
    macros = set()
    for name in QUERY_FILES:
        text = resources.files("saedata.queries").joinpath(name).read_text(encoding="utf-8")
        macros |= set(re.findall(r"CREATE OR REPLACE MACRO (\w+)", text))
    untested = sorted(m for m in macros if not re.search(rf"\b{m}\(", here))
    assert len(macros) >= 25 and untested == []


def test_words(con):
    assert rows(con, "SELECT word_at('New York is big', 5), word_before('New York is big', 5)") == [("york", "new")]
    assert rows(con, "SELECT word_at('big.', 3), word_at('x', 7), word_before('York', 0)") == [(".", None, None)]


def test_words_read_a_window_not_the_document(con):
    """A peak deep in a long document gives its word; the rest of the text is never copied."""
    text = "lorem ipsum " * 100_000 + "New York, big "
    at = text.index("York") + 2
    assert rows(con, "SELECT word_at(?, ?), word_before(?, ?)", [text, at, text, at]) == [("york", "new")]
    comma = text.index(",")
    assert rows(con, "SELECT word_at(?, ?), word_before(?, ?)", [text, comma, text, comma]) == [(",", "york")]
    assert rows(con, "SELECT length(word_at(?, 100))", ["x" * 300]) == [(128,)]


def test_latents(con):
    assert rows(con, "SELECT length_floor(103), length_floor(20), length_floor(40)") == [(100, 20, 40)]
    stats = {r[0]: r[1:] for r in rows(con, "SELECT * FROM latent_stats(1)")}
    assert stats[0] == (3, 0.6, 2.0) and stats[1] == (4, 0.8, 1.0) and set(stats) == {0, 1, 2, 3, 4}
    freq = {r[0]: r[2:] for r in rows(con, "SELECT * FROM latent_freq('a')")}
    assert freq[0] == (2, 2 / 3, 1.75, 2.0) and freq[1] == (2, 2 / 3, 0.75, 1.0) and 4 not in freq
    assert rows(con, "SELECT doc_id, dataset, value, at_word FROM top_docs(1, 0, n := 2)") == \
        [(0, "a", 2.0, "dog"), (2, "a", 1.5, "dogs")]
    assert rows(con, "SELECT latent, value, at_word FROM doc_concepts(1)") == [(2, 3.0, "york"), (1, 0.5, ".")]
    # the characters around each peak, strongest documents first
    assert rows(con, "SELECT * FROM peak_windows(1, [0, 2], n := 2, width := 6)") == \
        [(0, 0, "he dog"), (0, 2, "Dogs a"), (2, 1, "w York")]
    # where latent 1 peaked in documents 0 and 3 (and 2, where it never fired: no row), and
    # latent 0 in document 2; pairs at the same positions, asked twice, given once
    assert rows(con, "SELECT * FROM latent_evidence(1, [1, 1, 1, 0, 1], [0, 2, 3, 2, 0])") == \
        [(0, 2, 0, "dogs"), (1, 0, 20, "."), (1, 3, 12, ".")]
    assert rows(con, "SELECT * FROM latent_evidence(1, [0], [1])") == []  # latent 0 never fired in document 1
    # the texts of each latent's strongest documents
    assert rows(con, "SELECT latent, doc_id FROM top_texts(1, [0, 2], n := 2)") == [(0, 0), (0, 2), (2, 1)]
    assert rows(con, "SELECT text FROM top_texts(1, [4])") == [(TEXTS[4],)]
    # the documents labels are scored on (the same ones each time), and the latents firing there
    sample = rows(con, "SELECT doc_id, text FROM sample_docs(1, n := 3)")
    assert len({d for d, _ in sample}) == 3 and all(t == TEXTS[d] for d, t in sample)
    assert rows(con, "SELECT doc_id FROM sample_docs(1, n := 3)") == [(d,) for d, _ in sample]
    assert rows(con, "SELECT * FROM doc_latents(1, [0, 3])") == [(0, 0), (0, 1), (3, 0), (3, 1)]
    some = rows(con, "SELECT * FROM text_windows(n := 3, width := 4)")
    assert len({d for d, _ in some}) == 3 and all(w == TEXTS[d][:4] for d, w in some)
    assert rows(con, "SELECT * FROM text_windows(n := 3, width := 4)") == some


def test_presence(con):
    assert rows(con, "SELECT * FROM token_counts(1, [1, 2]) WHERE latent = 0 ORDER BY ALL") == \
        [(0, 1, 5, 1, 1), (0, 1, 40, 1, 1), (0, 2, 3, 2, 1)]
    rates = dict(rows(con, "SELECT * FROM latent_rates(1, [1, 2])"))
    assert rates[0] == pytest.approx(4 / 55) and rates[2] == pytest.approx(2 / 55)
    # firing once in the 40-token document is less than latent 0's share there: not present
    assert rows(con, "SELECT doc_id, latent FROM present_in(1, [1, 2]) WHERE NOT present") == [(2, 0)]
    assert rows(con, "SELECT count(*) FROM present_in(1, [1, 2]) WHERE present") == [(9,)]
    # the same cells from one scan of activations, and by a metadata field
    assert sorted(rows(con, "SELECT * FROM token_presence(1, 0, [1, 2])")) == \
        sorted(rows(con, "SELECT * FROM token_counts(1, [1, 2])"))
    assert sorted(rows(con, "SELECT latent, grp, tokens, n_active FROM token_presence(1, 1.1, [1, 2], "
                            "field := 'topic', levels := ['pets']) WHERE grp = 1")) == [(0, 1, 1, 1), (0, 1, 1, 1), (0, 1, 2, 1)]
    assert sorted(rows(con, "SELECT * FROM paired_tokens(1, 0, 1, 2, 'pid')")) == [
        (0, "p1", 1, 1, 5), (0, "p1", 2, 2, 3), (1, "p1", 1, 1, 5), (1, "p1", 2, 1, 3),
        (1, "p2", 1, 1, 4), (1, "p2", 2, 1, 3), (2, "p2", 1, 2, 4), (4, "p2", 2, 1, 3)]


def test_documents(con):
    assert sorted(rows(con, "SELECT * FROM meta_counts('topic', [1])")) == [("city", 1), ("pets", 2)]
    assert sorted(rows(con, "SELECT * FROM meta_counts('topic', NULL)")) == [("city", 1), ("pets", 3),
                                                                               ("weather", 1)]
    assert sorted(rows(con, "SELECT * FROM meta_counts('topic', NULL, doc_ids := [0, 4])")) == \
        [("pets", 1), ("weather", 1)]
    assert set(rows(con, "SELECT * FROM meta_counts('pid', [1])")) == {(None, 1), ("p1", 1), ("p2", 1)}
    assert rows(con, "SELECT * FROM meta_fields([2])") == [("pid",), ("topic",)]
    # 'dataset' is a field of every document: its dataset's name
    assert sorted(rows(con, "SELECT * FROM meta_counts('dataset', NULL)")) == [("a", 3), ("b", 2)]
    assert rows(con, "SELECT meta_value('dataset', '{\"dataset\": \"x\"}', 'a'), meta_value('k', '{\"k\": 1}', 'a')") \
        == [("a", "1")]
    assert rows(con, "SELECT pos, doc_id, at_word FROM doc_words([1, 0], [5, 4])") == [(0, 1, "york"), (1, 0, "dog")]


def test_labels(con):
    terms = {r[0]: r[1:] for r in rows(con, "SELECT latent, term, contrastive, rk FROM keyword_terms(1)")}
    # each of these latents has one top document, and its peak word is rare in the corpus
    assert terms[2] == ("york", True, 1) and terms[4] == ("rain", True, 1)
    # latent 0 peaks on dog / dogs / cat once each: no word is evidence twice, so no label
    assert 0 not in terms


def test_llm_evidence(con):
    # latent 0's two strongest documents, then the rest drawn with the seed (only document 3 is left)
    assert rows(con, "SELECT latent, kind, rk, doc_id, peak FROM latent_examples(1, [0, 4], n_top := 2, "
                     "n_sample := 5, seed := 3)") == [(0, "top", 1, 0, 4), (0, "top", 2, 2, 0), (0, "sample", 1, 3, 2),
                                                      (4, "top", 1, 4, 0)]
    assert rows(con, "SELECT text FROM latent_examples(1, [4])") == [(TEXTS[4],)]
    # documents where each latent is silent, drawn with the seed
    silent = rows(con, "SELECT latent, doc_id FROM silent_examples(1, [0, 2], n := 5)")
    assert sorted(silent) == [(0, 1), (0, 4), (2, 0), (2, 2), (2, 3), (2, 4)]
    assert rows(con, "SELECT latent, count(*) FROM silent_examples(1, [0, 2], n := 1, seed := 9) GROUP BY ALL "
                     "ORDER BY ALL") == [(0, 1), (2, 1)]
    # near misses by co-firing: latent 1 fires in latent 2's only document (and in 80% of all), so the
    # documents where 1 fires and 2 does not, centred where 1 peaked; likewise latent 0 for latent 3
    near = rows(con, "SELECT latent, kind, doc_id, cues, others, pos FROM near_misses(1, [2, 3])")
    assert sorted(near) == [(2, "co-firing", 0, None, [1], 20), (2, "co-firing", 3, None, [1], 12),
                            (2, "co-firing", 4, None, [1], 14), (3, "co-firing", 0, None, [0], 4),
                            (3, "co-firing", 3, None, [0], 2)]
    assert rows(con, "SELECT weight FROM near_misses(1, [2], n := 1)") == [(pytest.approx(math.log(1 / 0.8)),)]


def test_near_misses_by_shared_words(tmp_path):
    """Documents holding the words a latent peaked on where it is silent: "bank" of a river."""
    texts = ["the bank lends money", "the river bank", "a bank loan", "Bank, river"]
    texts += [f"dry land {i}" for i in range(14)]  # "bank" is in under a quarter of the documents
    with Store(tmp_path / "w.duckdb", read_only=False) as store:
        sae = store.register_sae("toy", {"d_in": 2, "d_sae": 2, "activation": "topk"}, None, "fp")
        ds = store.create_dataset("d", "d.jsonl", sae, {})
        docs = pl.DataFrame({"doc_id": range(len(texts)), "dataset_id": ds.dataset_id, "ext_id": [str(i) for i in
                             range(len(texts))], "text": texts, "meta": None, "n_tokens": 3},
                            schema_overrides={"meta": pl.String})
        acts = pl.DataFrame([(0, sae, 0, 2.0, 7), (2, sae, 0, 1.0, 5)], schema=["doc_id", "sae_id", "latent", "value",
                                                                                "peak"], orient="row")
        store.append_batch(docs, acts, word_document_frequency(texts), sae)
        store.refresh_latent_stats(sae)
        got = store.macro("near_misses", sae, [0]).select("kind", "doc_id", "cues", "weight").rows()
    assert sorted(got) == [("words", 1, ["bank"], 2.0), ("words", 3, ["bank"], 2.0)]


def test_diff(con):
    strata = rows(con, "SELECT doc_id, grp, bin FROM doc_strata([1, 2], edges := [5]) ORDER BY doc_id")
    assert strata == [(0, 1, 1), (1, 1, 0), (2, 1, 1), (3, 2, 0), (4, 2, 0)]
    by_topic = rows(con, "SELECT doc_id, grp FROM doc_strata([1], field := 'topic', levels := ['pets']) ORDER BY 1")
    assert by_topic == [(0, 1), (1, None), (2, 1)]
    presence = sorted(rows(con, "SELECT latent, grp, bin, n_active FROM latent_presence(1, 0, [1, 2])"))
    assert presence[:4] == [(0, 1, 0, 2), (0, 2, 0, 1), (1, 1, 0, 2), (1, 2, 0, 2)]
    assert sorted(rows(con, "SELECT latent, grp, bin, n_active FROM counted_presence(1, [1, 2])")) == presence
    assert sorted(rows(con, "SELECT latent, n_active FROM latent_presence(1, 1.1, [1, 2])")) == \
        [(0, 1), (0, 2), (2, 1), (4, 1)]  # |value| > 1.1: latent 0 in two documents of a, one of b
    excess = {r[0]: r[1:] for r in rows(con, "SELECT latent, n_a, n_b FROM diff('a', 'b')")}
    assert excess[0] == (1, 1) and excess[3] == (1, 0)  # document 2's latent 0 is not present beyond chance
    d = {r[0]: r[1:] for r in rows(con, "SELECT latent, n_a, n_b, freq_a, freq_b, diff_b_minus_a, z "
                                        "FROM diff('a', 'b', presence := 'any')")}
    n_a, n_b, f_a, f_b, delta, z = d[0]
    assert (n_a, n_b) == (2, 1) and f_a == pytest.approx(2 / 3) and f_b == pytest.approx(0.5)
    assert delta == pytest.approx(-1 / 6) and z == pytest.approx(-(1 / 6) / math.sqrt(0.6 * 0.4 * (1 / 3 + 1 / 2)))
    assert rows(con, "SELECT latent, doc_id, value FROM latent_docs(1, 0, [0, 2], [1, 2])") == \
        [(0, 0, 2.0), (0, 2, 1.5), (0, 3, 1.25), (2, 1, 3.0)]
    # the first 2 documents of each dataset; by topic: pets is group 1, weather 2
    assert rows(con, "SELECT doc_id, grp FROM doc_sample([1, 2], n := 2) ORDER BY doc_id") == \
        [(0, 1), (1, 1), (3, 2), (4, 2)]
    assert rows(con, "SELECT doc_id, grp FROM doc_sample([1, 2], 'topic', ['pets', 'weather'], 1) ORDER BY doc_id") \
        == [(0, 1), (3, 1)]
    assert sorted(rows(con, "SELECT * FROM doc_pairs(1, 2, 'pid')")) == [("p1", 0, 3, 1, 1), ("p2", 1, 4, 1, 1)]
    assert sorted(rows(con, "SELECT * FROM paired_sides(1, 2, 'pid')")) == \
        [("p1", 0, 1), ("p1", 3, 2), ("p2", 1, 1), ("p2", 4, 2)]
    paired = {r[0]: r[1:] for r in rows(con, "SELECT * FROM paired_presence(1, 0, 1, 2, 'pid')")}
    assert paired == {0: (1, 0, 0), 1: (2, 0, 0), 2: (0, 1, 0), 4: (0, 0, 1)}
    assert rows(con, "SELECT * FROM length_histogram([1, 2])") == [(1, 4, 1), (1, 5, 1), (1, 40, 1), (2, 3, 2)]
    assert rows(con, "SELECT * FROM paired_lengths(1, 2, 'pid')") == [(1, 4, 1), (1, 5, 1), (2, 3, 2)]


def test_correlate(con):
    assert rows(con, "SELECT * FROM cooccur(1, [1, 2], min_support := 2)") == [(0, 1, 2, 3, 4, 5)]
    pairs = "SELECT latent_i, latent_j, doc_id, word_i, word_j FROM cooccur_docs(1, [1, 2], [0], [1], n := 1)"
    assert rows(con, pairs) == [(0, 1, 0, "dog", ".")]
    assert sorted(rows(con, "SELECT * FROM supported_latents(1, [1, 2], min_support := 2)")) == [(0, 3), (1, 4)]
    assert rows(con, "SELECT * FROM supported_latents(1, [1], min_support := 2, keep_latents := [1])") == [(1, 2)]


def test_retrieve(con):
    ((doc, score, n_matched),) = rows(con, "SELECT * FROM score_docs(1, [2], [1.0], n := 5)")
    assert (doc, n_matched) == (1, 1) and score == pytest.approx(1.0 / math.log(5))  # 3.0 / max_act 3.0, 4 tokens
    assert rows(con, "SELECT doc_id, latent, value, word FROM search_matches(1, [0, 1], [0, 2])") == \
        [(0, 0, 2.0, "dog"), (1, 2, 3.0, "york")]
    assert rows(con, "SELECT rows FROM expected_rows(1, [0, 1])") == [(pytest.approx(7.0),)]


def test_token_macros(con):
    # doc_tokens: the tokens of a document where latents fire, in text order, the k strongest each
    assert rows(con, "SELECT token, piece, n_latents, top_latents FROM doc_tokens(0, k := 1)") == [
        (1, "dog", 1, "0 (2.0)"), (4, ".", 2, "1 (1.0)")]
    assert rows(con, "SELECT top_latents FROM doc_tokens(0) WHERE token = 4") == [("1 (1.0); 0 (0.5)",)]
    assert rows(con, "SELECT * FROM doc_tokens(1)") == []  # no token codes kept
    # latent_spans: where one latent fires in some documents
    assert rows(con, "SELECT * FROM latent_spans(1, [0, 0], [0, 3])") == [
        (0, 0, 1, 4, 7, 2.0), (0, 0, 4, 20, 21, 0.5), (0, 3, 1, 2, 5, 1.25), (0, 3, 2, 6, 12, 0.5)]
    assert rows(con, "SELECT latent, doc_id, token FROM latent_spans(1, [1, 0], [3, 1])") == [(1, 3, 3)]
    # dataset_token_codes: one dataset's codes in a doc_id range; token_coverage: who lacks them
    assert rows(con, "SELECT doc_id, token, latent FROM dataset_token_codes(2, 0, 10)") == [
        (3, 1, 0), (3, 2, 0), (3, 3, 1)]
    assert rows(con, "SELECT count(*) FROM dataset_token_codes(1, 1, 10)") == [(0,)]
    assert rows(con, "SELECT * FROM token_coverage(1)") == [(3, 2)]
    assert rows(con, "SELECT * FROM token_coverage(2)") == [(2, 1)]
