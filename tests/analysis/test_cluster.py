"""Filtered clustering: latents picked for an axis, k-means / HDBSCAN, cluster descriptions, map and report."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from sklearn.metrics import adjusted_rand_score

import saedata
from saedata.analysis.axes import select_latents
from saedata.analysis.cluster import pick_k
from saedata.analysis.scope import documents_frame, resolve_scope
from saedata.analysis.words import matching_forms
from saedata.cli import main
from saedata.demo import NEGATIVE, POSITIVE
from saedata.embed.models import StoreModels
from saedata.errors import ConfigError, NotFoundError
from tests.helpers import copy_demo_store

SENTIMENT_WORDS = {w for s in POSITIVE + NEGATIVE for w in re.findall(r"[a-z]+", s.lower())} - {
    "it", "was", "what", "a", "an", "day", "i", "am", "about", "made", "us", "so", "everyone"}


@pytest.fixture(scope="module")
def db(demo_store) -> str:
    return demo_store["db"]


@pytest.fixture(scope="module")
def by_sentiment(db):
    """The one run with a UMAP map (numba compiles on the first call): axis sentiment vs all latents."""
    return saedata.cluster(db, axis="sentiment", unfiltered=True, eval_field="sentiment", map=True)


@pytest.fixture(scope="module")
def small(demo_store, tmp_path_factory) -> str:
    """A copy of the demo store with a 6-document dataset "tiny" (copied from "a") and an empty one."""
    path = copy_demo_store(demo_store, tmp_path_factory.mktemp("cluster-small"))
    with saedata.Store(path, read_only=False) as store:
        store.con.execute("INSERT INTO datasets (dataset_id, name, source, sae_id, complete) "
                          "VALUES (90, 'tiny', 'tiny.jsonl', 1, true)")
        store.con.execute("INSERT INTO documents SELECT doc_id + 100000, 90, ext_id, text, meta, n_tokens "
                          "FROM documents WHERE dataset_id = 1 ORDER BY doc_id LIMIT 6")
        store.con.execute("INSERT INTO activations SELECT doc_id + 100000, sae_id, latent, value, peak, tokens "
                          "FROM activations WHERE doc_id + 100000 IN "
                          "(SELECT doc_id FROM documents WHERE dataset_id = 90)")
        store.complete_dataset(90)
        state = store.create_dataset("empty", "none.jsonl", 1, {})
        store.complete_dataset(state.dataset_id)
    return str(path)


def test_filtered_clustering_follows_the_axis_not_the_topic(by_sentiment, db):
    """The key property: clustering on the sentiment latents recovers sentiment far better
    than clustering on all latents, which recovers topic instead."""
    comp = {row["clustering"]: row for row in by_sentiment.comparison.iter_rows(named=True)}
    filtered, unfiltered = comp["filtered"], comp["all latents"]
    assert filtered["field"] == "sentiment"
    assert filtered["ari"] > unfiltered["ari"] + 0.3, by_sentiment.comparison
    assert filtered["nmi"] > unfiltered["nmi"] + 0.3
    with saedata.open(db) as store:
        topic = documents_frame(store, resolve_scope(store, ["a", "b"]), fields=["topic"])["topic"].to_list()
    a = by_sentiment.assignments
    assert adjusted_rand_score(topic, a["cluster_all"]) > adjusted_rand_score(topic, a["cluster"]) + 0.3
    assert by_sentiment.ari_unfiltered is not None and by_sentiment.ari_unfiltered < 0.3


def test_axis_picks_sentiment_latents(by_sentiment):
    used = by_sentiment.latents_used
    assert 0 < used.height <= 20
    assert used["why"].str.contains("sentiment").all()
    hits = [bool(SENTIMENT_WORDS & set(re.findall(r"[a-z]+", lab))) for lab in used["label"].to_list()]
    assert sum(hits) >= 0.8 * len(hits), used


def test_clusters_are_described_by_overrepresented_latents(by_sentiment):
    r = by_sentiment
    assert r.method == "kmeans" and 2 <= r.k <= 12 and r.silhouette is not None
    assert r.k_scores.height == 11 and r.k_scores["k"].to_list() == list(range(2, 13))
    sizes = r.clusters["size"].to_list()
    assert sum(sizes) == 320 and sizes == sorted(sizes, reverse=True)
    d = r.descriptions
    assert set(d["cluster"]) == set(r.clusters["cluster"])
    assert (d["lift"] > 1).all() and (d["freq_in"] >= 0.25).all()
    assert r.examples.group_by("cluster").len()["len"].max() <= 3
    a = r.assignments
    assert a.height == 320 and a["x"].null_count() == 0 and a["cluster"].min() >= 0
    # distinct describing latents, none with a weak label; each cluster's length beside it
    from saedata.analysis.words import weak_label

    assert d["latent"].n_unique() == d.height
    assert not any(weak_label(lab) for lab in d["label"].to_list())
    assert r.clusters.columns == ["cluster", "size", "share", "median_tokens", "top_latents"]
    assert (r.clusters["median_tokens"] > 3).all()
    assert r.k_scores["stability"].is_between(-1, 1).all()


def test_report_and_png_are_written_offline(by_sentiment, tmp_path):
    html_path = saedata.write_report(by_sentiment, tmp_path / "clusters.html")
    png_path = html_path.with_suffix(".png")
    assert png_path == tmp_path / "clusters.png" and png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = html_path.read_text()
    assert "data:image/png;base64," in html and "Cluster 0" in html and "<mark>" in html
    assert not re.search(r"(src|href)=[\"']?https?://", html)


def test_kmeans_is_deterministic_for_a_seed(db):
    runs = [saedata.cluster(db, axis="sentiment", k=3, seed=7, map=False) for _ in range(2)]
    assert runs[0].assignments["cluster"].to_list() == runs[1].assignments["cluster"].to_list()
    assert runs[0].k == 3 and runs[0].k_scores.height == 0


def test_hdbscan_labels_noise_and_describes_clusters(db):
    r = saedata.cluster(db, "a", label_pattern="happy|hated|miserable|thrilled", method="hdbscan", min_cluster_size=8,
                map=False)
    labels = set(r.assignments["cluster"].to_list())
    assert labels <= {-1, *range(r.k)} and r.k >= 1
    assert set(r.descriptions["cluster"]) <= set(range(r.k))
    noise = r.clusters.filter(pl.col("cluster") == -1)
    assert noise.height == (1 if -1 in labels else 0)


def test_an_axis_by_example_values_represents_each_value(db):
    with saedata.open(db) as store:
        used = select_latents(store, 1, axis="kitten, storm", top=6)
    why = " ".join(used["why"].to_list())
    assert "'kitten'" in why and "'storm'" in why and used.height <= 6
    labels = " ".join(used["label"].to_list())
    assert "kitten" in labels and "storm" in labels


def test_an_axis_most_documents_lack_is_refused(db, monkeypatch):
    """A weak match is an error naming what was picked, not a clustering of empty rows."""
    from saedata.analysis import axes

    # a string the reader knows no word of has no meaning to match labels by
    with pytest.raises(NotFoundError, match=r"no latent matches --axis 'xyzzyqq'.*the reader knows no word of it "
                                            r"\(it reads x, ##y, ##zzy, ##q, ##q\)"):
        saedata.cluster(db, axis="xyzzyqq", k=2, map=False)
    # were its fragments taken for words, and any peaks taken as evidence, the labels most
    # like them would be picked: their latents leave most documents empty, so it is refused
    monkeypatch.setattr(axes, "_fragments", lambda axis, word_pieces: [])
    monkeypatch.setattr(axes, "CONTEXT_MARGIN", -2.0)
    with pytest.raises(ConfigError, match=r"by label similarity alone, fire in only \d+ of .* a weak match.*"
                                          r"picked: \d+ "):
        saedata.cluster(db, axis="xyzzyqq", k=2, map=False)
    monkeypatch.undo()
    # a narrow axis that labels name is kept, with a warning for the documents it leaves empty
    narrow = saedata.cluster(db, axis="leash", top=3, k=2, map=False)
    assert any("have none of the selected latents" in w for w in narrow.warnings)


def test_select_latents_by_list_pattern_and_axis(db):
    with saedata.open(db) as store:
        listed = select_latents(store, 1, latents=[5, 3, 5])
        assert listed["latent"].to_list() == [5, 3] and (listed["why"] == "listed").all()
        both = select_latents(store, 1, latents=[5], label_pattern="happy")
        assert 5 in both["latent"].to_list() and both["label"].drop_nulls().str.contains("happy").sum() > 0
        with pytest.raises(NotFoundError, match=r"no latent matches --axis 'zzz'.*nearest: \d+ "):
            select_latents(store, 1, axis="zzz", min_score=0.99, embed_texts=StoreModels(store).text_vectors)
        with pytest.raises(NotFoundError, match="SAE 1 has no latent 99999"):
            select_latents(store, 1, latents=[99999])
    assert {"pet", "pets"} <= matching_forms("pets") and "the" not in matching_forms("the stories")


def test_axis_latents_are_matched_by_their_label_and_what_they_fire_on(db, monkeypatch):
    from saedata.analysis import axes

    with saedata.open(db) as store:
        models = StoreModels(store)
        picked = select_latents(store, 1, axis="sentiment", embed_texts=models.text_vectors,
                                word_pieces=models.text_pieces)
        by_similarity = picked.filter(pl.col("why").str.starts_with("label similar"))
        assert by_similarity.height > 0
        # each says how like the axis its label is and how like the axis the text around its peaks is
        assert by_similarity["why"].str.contains(r"\(cos 0\.\d\d; its peaks 0\.\d\d\)").all()
        assert by_similarity["label"].str.contains(
            "(?i)happy|hated|miserable|loved|thrilled|awful|terrible|absolutely").all()
        # when no latent's peaks are far enough above text in general, nothing is picked by label alone
        monkeypatch.setattr(axes, "CONTEXT_MARGIN", 1.5)  # above any similarity
        with pytest.raises(NotFoundError, match=r"nearest: \d+ '[^']+' \(cos 0\.\d\d, its peaks -?0\.\d\d\)"):
            select_latents(store, 1, axis="sentiment", embed_texts=models.text_vectors,
                           word_pieces=models.text_pieces)
    assert "story" in matching_forms("the stories")


def test_choose_k_says_when_no_k_is_clearly_better():
    from saedata.analysis.cluster import choose_k

    # the flat curve: 0.034-0.047 over k = 2..12
    flat = {k: 0.034 + 0.0013 * (k - 2) for k in range(2, 13)}
    k, why = choose_k(flat, {k: 0.9 for k in flat})
    assert why and "no k is clearly better" in why and "0.034-0.047" in why
    # a clear peak at a stable k: no warning
    clear = {2: 0.10, 3: 0.35, 4: 0.20, 5: 0.18}
    assert choose_k(clear, {2: 0.95, 3: 0.92, 4: 0.6, 5: 0.5}) == (3, None)
    # the silhouette's best k is unstable: the stable one is chosen
    assert choose_k({2: 0.30, 3: 0.20, 4: 0.40}, {2: 0.9, 3: 0.85, 4: 0.3})[0] == 2
    k, why = choose_k(clear, {2: 0.2, 3: 0.3, 4: 0.1, 5: 0.1})
    assert k == 3 and "no k is stable" in why


def test_stability_separates_real_clusters_from_noise():
    from saedata.analysis.cluster import stability

    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(c, 0.3, size=(100, 5)) for c in (0, 4, 8)])
    noise = rng.normal(size=(300, 5))
    assert stability(blobs, 3, 0) > 0.95
    assert stability(noise, 6, 0) < 0.8


def test_pick_k_takes_the_first_silhouette_peak():
    assert pick_k({2: 0.19, 3: 0.232, 4: 0.20, 5: 0.21, 12: 0.241}) == 3
    assert pick_k({2: 0.155, 3: 0.175, 4: 0.211, 5: 0.203, 11: 0.276}) == 4
    assert pick_k({2: 0.10, 3: 0.30}) == 3
    # a first peak far below the best is skipped
    assert pick_k({2: 0.10, 3: 0.05, 4: 0.30, 5: 0.29}) == 4
    assert pick_k({2: 0.10, 3: 0.05, 4: 0.20, 5: 0.31}) == 5
    assert pick_k({2: None, 3: None}) == 2


def test_bad_input_is_a_one_line_error(db, small):
    with pytest.raises(ConfigError, match=r"--k 1000 is more than the 320 documents of a, b"):
        saedata.cluster(db, axis="sentiment", k=1000, map=False)
    with pytest.raises(NotFoundError, match=r"no dataset 'nope' .*\(have: a, b"):
        saedata.cluster(db, "nope", axis="sentiment")
    with pytest.raises(NotFoundError, match="no latent label matches --label 'zzzz'"):
        saedata.cluster(db, label_pattern="zzzz")
    with pytest.raises(ConfigError, match="dataset 'empty' has no documents"):
        saedata.cluster(small, "empty", label_pattern="happy")
    with pytest.raises(ConfigError, match=r"--k 10 is more than the 6 documents of tiny"):
        saedata.cluster(small, "tiny", latents=list(range(50)), k=10)
    with pytest.raises(NotFoundError, match="no metadata field 'colour'"):
        saedata.cluster(db, axis="sentiment", eval_field="colour")


def test_too_few_documents_for_a_map_is_a_warning(small):
    r = saedata.cluster(small, "tiny", latents=list(range(200)), k=2, map=True)
    assert any("map skipped: only 6 documents" in w for w in r.warnings)
    assert r.assignments["x"].null_count() == 6 and r.k == 2


def test_cli_cluster(db, tmp_path):
    out = CliRunner().invoke(main, ["cluster", "--db", db, "--axis", "sentiment", "--k", "3", "--compare",
                                    "--eval-field", "sentiment", "--png", str(tmp_path / "map.png")])
    assert out.exit_code == 0, out.stderr
    assert "top_latents" in out.stdout and len(re.findall(r"^│ \d", out.stdout, flags=re.M)) == 3
    assert "on 20 latents" in out.stderr or re.search(r"on \d+ latents:", out.stderr)
    assert "ARI" in out.stderr and (tmp_path / "map.png").exists()
    docs = CliRunner().invoke(main, ["cluster", "--db", db, "--axis", "sentiment", "--k", "3", "--assignments",
                                     "--format", "csv", "-q"])
    assert docs.exit_code == 0 and docs.stderr == ""
    assert pl.read_csv(docs.stdout.encode()).height == 320


@pytest.mark.parametrize("args, message", [
    (["--axis", "sentiment", "--k", "1000"], "--k 1000 is more than the 320 documents"),
    (["--label", "^nothing matches this$"], "no latent label matches --label '^nothing matches this$'"),
    (["--dataset", "nope", "--axis", "sentiment"], "no dataset 'nope'"),
    (["--axis", "sentiment", "--eval-field", "colour"], "no metadata field 'colour'"),
])
def test_cli_cluster_errors_are_one_line(db, args, message):
    out = CliRunner().invoke(main, ["cluster", "--db", db, *args])
    assert out.exit_code == 1 and out.stdout == ""
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_features_rows_have_unit_length():
    from scipy import sparse

    from saedata.analysis.cluster import features
    from saedata.analysis.scope import LatentMatrix

    X = sparse.csr_matrix(np.array([[0.0, 2.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    T = sparse.csr_matrix(np.array([[0.0, 3.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    lm = LatentMatrix(np.arange(3), X, 1, 3, T, np.array([10, 10, 10]))
    cols = np.arange(3)
    for scale in ("tokens", "values", "binary", "tfidf"):
        F = features(lm, cols, scale).toarray()
        assert np.allclose(np.linalg.norm(F, axis=1), [1, 1, 0])
    assert np.allclose(features(lm, cols, "binary").toarray()[1], [2**-0.5, 2**-0.5, 0])
    # tokens: latent 0 fires in one document, latent 1 in two: the rarer one weighs more
    row = features(lm, cols, "tokens").toarray()[1]
    assert row[0] > row[1] > 0
