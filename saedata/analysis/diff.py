"""Dataset diffing: which concepts are more (or less) common in one corpus than in another.

For every latent, the fraction of documents of A and of B where it is present (fires on
more of the document's tokens than chance, :mod:`saedata.analysis.presence`; or with
``presence="any"`` wherever |pooled value| > ``threshold``), their difference and ratio, a two-proportion z-test and
Benjamini-Hochberg q-values, ranked by significance then size of the difference:

    result = saedata.diff("run.duckdb", "model_a", "model_b")
    result.rows(10)                            # the 10 strongest more_in each side: more_in, latent, label, ...
    saedata.write_report(result, "diff.html")  # bars, table and example documents; opens offline

Three designs share that output:

- two datasets (``diff(store, "a", "b")``), with a **length-controlled** comparison on
  top: max-pooled presence grows with document length, so documents are put in length
  bins (quantiles of both sides' token counts) and each latent gets a
  Cochran-Mantel-Haenszel test across the bins, a Mantel-Haenszel difference in
  frequency and a common odds ratio (the ``adj_*`` columns, which then rank the table);
- one dataset split by a metadata column (``by="model"``): each value against the rest;
- paired documents (``paired_on="prompt_id"``: the same prompt answered by two models):
  McNemar's exact test on the pairs where the latent is active on one side only.

The per-latent counting is DuckDB's: two complete datasets at the default threshold
read the per-length-class counts that embedding wrote (``latent_counts``, through the
``counted_presence`` macro of ``queries/diff.sql``), anything else is one aggregate
scan of activations (``latent_presence``, ``paired_presence``); the statistics then run
in numpy on at most (d_sae x groups x bins) counts. Near-duplicate latents (nearly the same
documents active, or the same top documents and similar labels) are merged into the
strongest one (its ``merged`` column) so that the top rows are different findings. Examples and the
duplicate check read the first ``SAMPLE_DOCS`` documents of each dataset (all of them
in smaller datasets).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from scipy import sparse

from saedata.analysis.findings import CANDIDATES, Sides, group_findings
from saedata.analysis.presence import Presence, check_presence, is_present, no_token_counts_warning, scope_rates
from saedata.analysis.scope import DATASET_FIELD, latent_labels, opened, resolve_scope
from saedata.analysis.stats import (
    LENGTH_BINS,
    bh_qvalues,
    cmh_test,
    ks_from_histograms,
    length_edges,
    mcnemar_exact,
    two_proportion_test,
    weighted_median,
)
from saedata.analysis.words import label_words
from saedata.errors import ConfigError, NotFoundError
from saedata.store import DatasetState, Store, length_floor

MERGE_CANDIDATES = 100
"""Top-ranked latents (per group and side) checked for near-duplicates."""
SAMPLE_DOCS = 20_000
"""Documents per dataset (the first, by doc_id) that examples and duplicates are read from."""
TOP_DOCS = 20
"""Top documents per latent compared by the duplicate check."""
DUPLICATE_JACCARD = 0.5
"""Two latents whose top documents overlap this much (Jaccard) and whose labels share a
word are duplicates..."""
DUPLICATE_CORRELATION = 0.9
"""...as are two whose presence across documents correlates this much (phi)..."""
SIMILAR_LABELS = 0.5
"""...and two whose labels share this fraction of their words (Jaccard), when their
presence correlates or their top documents overlap at least this much too."""
EXAMPLE_LATENTS = 20
"""Top latents (per group and side) that get example documents."""
MAX_GROUPS = 100
"""Most values a ``by`` column may have."""
BY_DATASET = DATASET_FIELD
"""``by`` value that compares whole datasets, each against the others (not a metadata column)."""
REST = "(rest)"
"""``more_in`` of a row whose latent is more common in the rest than in its group (``by``)."""
FEW_DOCS = 30
"""Below this many documents on a side, the result carries a warning."""


# -- result ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DiffResult:
    """A ranked diff of two sets of documents.

    ``table``: one row per latent active on either side, most significant first (then
    largest |difference|; ties by latent). Columns: ``group`` (with ``by`` only),
    more_in (the side where the latent is more common: a's or b's name, with ``by``
    the group or "(rest)"), latent, label, n_a and n_b (documents where the latent is
    present), freq_a, freq_b, diff_b_minus_a (= freq_b - freq_a), ratio (freq_b / freq_a, with half a document added to
    each count so it stays finite), p (two-proportion z-test, or McNemar's exact test
    when paired), q (Benjamini-Hochberg); when length-controlled, adj_diff_b_minus_a
    (Mantel-Haenszel difference in frequency across length bins), adj_log_or (log of
    the Mantel-Haenszel common odds ratio), adj_p (Cochran-Mantel-Haenszel test) and
    adj_q; when paired, n_a_only and n_b_only (discordant pairs); and merged (latents
    folded into this row as near-duplicates).

    ``examples``: latent, side, doc_id, ext_id, value, peak (character offset where the
    latent peaked), at_word (the word there), text (plus ``group`` with ``by``): the
    documents of each side where the top latents are strongest.

    With ``by``, side "a" is the rest of the documents and side "b" the group.
    """

    table: pl.DataFrame
    examples: pl.DataFrame
    warnings: list[str]
    a: str
    b: str | None
    by: str | None = None
    paired_on: str | None = None
    threshold: float = 0.0
    length_controlled: bool = False
    n_docs: dict[str, int] = field(default_factory=dict)
    """Documents compared on each side (per group with ``by``)."""
    sae_id: int = 0
    presence: str = "excess"
    """How presence was read: "excess" (fires on more tokens than chance, the default) or
    "any" (fires at all); see :mod:`saedata.analysis.presence`."""
    findings: pl.DataFrame = field(default_factory=pl.DataFrame)
    """One row per finding (:mod:`saedata.analysis.findings`), in rank order (per group
    with ``by``): finding (its rank), more_in, description, lead (the latent that
    started it), n_latents, share_a and share_b (fractions of each side's sampled
    documents that are the finding's documents), the lead's label and statistics
    (freq_a, freq_b, the differences, q-values), latents (the lead and the latents it
    explains, more common on the same side), fewer (latents it explains that its
    documents lack), weak (every member's label is weak)."""
    finding_examples: pl.DataFrame = field(default_factory=pl.DataFrame)
    """finding, doc_id, ext_id, members (of the finding's latents present), value and peak
    (of its lead), at_word, text (plus ``group`` with ``by``): each finding's typical
    documents on its side."""

    @property
    def effect(self) -> str:
        """The column the ranking uses: ``adj_diff_b_minus_a`` when length-controlled, else
        ``diff_b_minus_a``."""
        return ranking_columns(self.length_controlled)[0]

    @property
    def qvalue(self) -> str:
        """The q-value column the ranking uses: ``adj_q`` when length-controlled, else ``q``."""
        return ranking_columns(self.length_controlled)[1]

    def significant(self, q: float = 0.05) -> pl.DataFrame:
        """The rows whose (ranking) q-value is below ``q``."""
        return self.table.filter(pl.col(self.qvalue) < q)

    def title(self) -> str:
        if self.by:
            return f"{self.a} by {self.by}"
        return f"{self.a} vs {self.b}" + (f" (paired on {self.paired_on})" if self.paired_on else "")

    def summary(self) -> str:
        """One line: what was compared and how many latents differ at q < 0.05."""
        sizes = ", ".join(f"{k}: {v}" for k, v in self.n_docs.items())
        how = "paired, McNemar" if self.paired_on else ("length-controlled" if self.length_controlled else
                                                          "not length-controlled")
        n_sig = self.significant().height
        reading = "present beyond chance" if self.presence == "excess" else "fires at all"
        threshold = f", threshold {self.threshold:g}" if self.threshold else ""
        found = f" in {self.findings.height} findings" if self.findings.height else ""
        return (f"{self.title()} ({sizes} documents; SAE {self.sae_id}, presence: {reading}{threshold}, "
                f"{how}): {n_sig} of {self.table.height} latent rows differ at q < 0.05{found}")

    def rows(self, top: int | None = None, compact: bool = False) -> pl.DataFrame:
        """The ``top`` first rows more common on each side (per group with ``by``; all rows
        when None or 0), side a's first, each side in rank order: a two-sided table, so a
        strong difference one way cannot hide the other. ``compact`` keeps the columns a
        reader scans (group, more_in, latent, label, freq_a, freq_b, the differences, the
        paired counts, the ranking q, merged), with ``merged`` as text."""
        table = self.table
        if top:
            group = pl.col("group") if self.by else pl.lit(0)
            table = (table.with_row_index("_i")
                     .with_columns(_group=pl.col("_i").min().over(group),
                                   _side=(pl.col("more_in") != self.a_name).cast(pl.Int8))
                     .filter(pl.int_range(pl.len()).over(group, "_side") < top)
                     .sort("_group", "_side", "_i").drop("_i", "_group", "_side"))
        if not compact:
            return table
        cols = ((["group"] if self.by else []) + ["more_in", "latent", "label", "freq_a", "freq_b", "diff_b_minus_a"]
                + (["n_a_only", "n_b_only"] if self.paired_on else [])
                + (["adj_diff_b_minus_a", "adj_q"] if self.length_controlled else ["q"]) + ["merged"])
        return self.display_table(table.select(cols))

    def finding_rows(self, top: int | None = None, compact: bool = False) -> pl.DataFrame:
        """The findings, in rank order: the ``top`` first more common on each side (per
        group with ``by``; all when None or 0), so a strong difference one way cannot
        hide the other. ``compact`` keeps the columns a reader scans (group, finding,
        more_in, description, n_latents, share_a, share_b, the lead's ranking difference
        and q, lead)."""
        table = self.findings
        if top and table.height:
            group = pl.col("group") if self.by else pl.lit(0)
            table = table.filter(pl.int_range(pl.len()).over(group, "more_in") < top)
        if not compact:
            return table
        cols = ((["group"] if self.by else []) + ["finding", "more_in", "description", "n_latents", "share_a",
                                                  "share_b", self.effect, self.qvalue, "lead"])
        return table.select([c for c in cols if c in table.columns])

    @property
    def a_name(self) -> str:
        """How ``more_in`` names side a: dataset a, or with ``by`` the rest of the documents
        (side b is then the row's group)."""
        return REST if self.by else self.a

    @staticmethod
    def display_table(table: pl.DataFrame) -> pl.DataFrame:
        """``table`` (or a part of it) with its lists of latents (``merged``, ``latents``,
        ``fewer``) as text, for HTML and CSV."""
        lists = [c for c in ("merged", "latents", "fewer") if isinstance(table.schema.get(c), pl.List)]
        return table.with_columns(pl.col(c).list.eval(pl.element().cast(pl.String)).list.join(",") for c in lists)

# -- public API --------------------------------------------------------------------------


def diff(
    store_or_path: Store | str | os.PathLike,
    a: str | None = None,
    b: str | None = None,
    *,
    by: str | None = None,
    presence: Presence = "excess",
    threshold: float = 0.0,
    length_control: bool = True,
    paired_on: str | None = None,
    merge_duplicates: bool = True,
    examples: int = 3,
    sae_id: int | None = None,
    min_docs: int = 5,
    length_bins: int = LENGTH_BINS,
) -> DiffResult:
    """Diff the concepts of dataset ``a`` against dataset ``b`` (or ``a`` split ``by`` a
    metadata column, each value against the rest; or with ``by="dataset"`` every
    dataset of the store, or ``a`` and ``b``, each against the others).

    ``presence``: "excess" (default) counts a latent in a document when it fires on more
    of its tokens than chance at its rate in the compared documents; "any" when it fires
    at all (:mod:`saedata.analysis.presence`). ``threshold``: only pooled values with
    |value| > threshold count.
    ``length_control``: add the length-stratified (CMH) columns and rank by them.
    ``paired_on``: pair documents of a and b by this metadata field and use McNemar's
    exact test. ``merge_duplicates``: fold near-duplicate latents into the strongest.
    ``examples``: example documents per side for each top latent. ``min_docs``: fewer
    documents on a side (or pairs) is an error. Same store, same arguments -> the same
    table, byte for byte.
    """
    with opened(store_or_path) as store:
        return _diff(store, a, b, by, presence, threshold, length_control, paired_on, merge_duplicates,
                     examples, sae_id, min_docs, length_bins)


# -- the diff itself -----------------------------------------------------------------------


def _diff(store: Store, a: str | None, b: str | None, by: str | None, presence: str, threshold: float,
          length_control: bool, paired_on: str | None, merge_duplicates: bool, examples: int, sae_id: int | None,
          min_docs: int, length_bins: int) -> DiffResult:
    check_presence(presence)
    if threshold < 0:
        raise ConfigError(f"--threshold must be >= 0 (got {threshold:g}); activity is |value| > threshold")
    if examples < 0 or min_docs < 1:
        raise ConfigError("examples must be >= 0 and min_docs >= 1")
    if by is not None and paired_on is not None:
        raise ConfigError("--by and --paired-on do not combine: --by splits one dataset, --paired-on pairs two")
    if by == BY_DATASET and a is None:
        scope = resolve_scope(store, None, sae_id)
    else:
        if a is None:
            raise ConfigError("give a dataset (or two) to diff, or --by dataset to compare every dataset")
        if b is None and by is None:
            raise ConfigError(f"give a second dataset to compare {a!r} with, or --by COLUMN to split it")
        if b is not None and a == b:
            raise ConfigError(f"both sides are dataset {a!r}; compare two different datasets, or use --by")
        if paired_on is not None and b is None:
            raise ConfigError("--paired-on pairs the documents of two datasets; give a second dataset")
        scope = resolve_scope(store, [a] + ([b] if b is not None else []), sae_id)
    all_labels = latent_labels(store, scope.sae_id)
    labels = all_labels.select("latent", "label")
    warnings: list[str] = []
    rates = None
    if presence == "excess":
        if store.has_token_counts(scope.dataset_ids, scope.sae_id):
            rates = scope_rates(store, scope.sae_id, scope.dataset_ids, store.sae_info(scope.sae_id)["d_sae"])
        else:
            presence = "any"
            warnings.append(no_token_counts_warning(scope.describe()))
    ctx = _Context(store, list(scope.states), scope.sae_id, float(threshold), labels, examples, merge_duplicates,
                   min_docs, rates, frozenset(all_labels.filter("weak")["latent"].to_list()),
                   frozenset(all_labels.filter("low_score")["latent"].to_list()))
    if by is not None:
        result = _diff_by(ctx, by, length_control, length_bins)
    elif paired_on is not None:
        result = _diff_paired(ctx, paired_on)
    else:
        result = _diff_two(ctx, length_control, length_bins)
    return dataclasses.replace(result, warnings=[*scope.warnings, *warnings, *result.warnings], presence=presence)


@dataclass(frozen=True)
class _Context:
    store: Store
    states: list[DatasetState]
    sae_id: int
    threshold: float
    labels: pl.DataFrame
    examples: int
    merge: bool
    min_docs: int
    rates: np.ndarray | None = None
    """Token rates of the latents over the compared documents when presence is "excess"
    (None: presence is "fires at all")."""
    weak: frozenset[int] = frozenset()
    """Latents whose labels are weak (punctuation, function words)."""
    low: frozenset[int] = frozenset()
    """Latents whose labels scored below LOW_SCORE (described after the others)."""

    @property
    def dataset_ids(self) -> list[int]:
        return [s.dataset_id for s in self.states]

    def present(self, rows: pl.DataFrame, n_tokens: str = "len_floor") -> np.ndarray:
        """bool per row of ``rows`` (latent, tokens, and the document length ``n_tokens``):
        is the latent present there? Always true when presence is "fires at all"."""
        if self.rates is None:
            return np.ones(rows.height, dtype=bool)
        return is_present(rows["tokens"].fill_null(-1).to_numpy(), rows[n_tokens].to_numpy(),
                          rows["latent"].to_numpy(), self.rates)


def _diff_two(ctx: _Context, length_control: bool, length_bins: int) -> DiffResult:
    sa, sb = ctx.states
    for s in ctx.states:
        if s.n_docs < ctx.min_docs:
            raise ConfigError(f"dataset {s.name!r} has {s.n_docs} documents; a diff needs at least "
                              f"{ctx.min_docs} per side")
    warnings = _few_docs_warnings({sa.name: sa.n_docs, sb.name: sb.n_docs})
    hist = _length_histogram(ctx, None, [])
    groups = [sa.dataset_id, sb.dataset_id]
    warnings += _length_warning(_hist_arrays(hist, groups[0]), _hist_arrays(hist, groups[1]), sa.name, sb.name,
                                length_control)
    edges = _edges(hist, length_bins) if length_control else []
    counts, totals, latents = _presence(ctx, None, [], edges, groups, hist)
    if length_control:
        warnings += _overlap_warning(totals[0], totals[1], sa.name, sb.name)
    table = _compare(counts[:, 0], totals[0], counts[:, 1], totals[1], latents, length_control)
    table = _finish(ctx, table, length_control, sa.name, sb.name)
    sides = {sa.dataset_id: sa.name, sb.dataset_id: sb.name}
    ranked = _merge_and_examples(ctx, table, None, [], length_control, {None: sides})
    warnings += _significance_warning(ranked.table, length_control, f"{sa.name} and {sb.name}")
    return DiffResult(ranked.table, ranked.examples, warnings, sa.name, sb.name, threshold=ctx.threshold,
                      length_controlled=length_control, n_docs={sa.name: sa.n_docs, sb.name: sb.n_docs},
                      sae_id=ctx.sae_id, findings=ranked.findings, finding_examples=ranked.finding_examples)


def _diff_by(ctx: _Context, by: str, length_control: bool, length_bins: int) -> DiffResult:
    name = " + ".join(s.name for s in ctx.states)
    warnings: list[str] = []
    if by == BY_DATASET:
        # each dataset against the others: groups are dataset ids (doc_strata without a field)
        field, levels, groups = None, [s.name for s in ctx.states], [s.dataset_id for s in ctx.states]
        sizes = {s.name: s.n_docs for s in ctx.states}
        if len(levels) < 2:
            raise ConfigError(f"--by dataset compares datasets with each other, and there is one ({name})")
        group_name, none_tested = "dataset {!r}".format, "no dataset has"
    else:
        levels_df = ctx.store.macro("meta_counts", by, ctx.dataset_ids).sort("value", nulls_last=True)
        present = levels_df.filter(pl.col("value").is_not_null())
        if present.height == 0:
            raise NotFoundError(f"no metadata field {by!r} in {name} (fields: {_fields(ctx) or 'none'})")
        if present.height == 1:
            raise ConfigError(f"column {by!r} has one value ({present['value'][0]!r}) in {name}; nothing to compare")
        if present.height > MAX_GROUPS:
            raise ConfigError(f"column {by!r} has {present.height} values in {name}; --by compares at most "
                              f"{MAX_GROUPS} (is it an id?)")
        levels = present["value"].to_list()
        sizes = dict(zip(levels, present["n"].to_list()))
        missing = int(levels_df.filter(pl.col("value").is_null())["n"].sum())
        if missing:
            warnings.append(f"{missing} documents of {name} have no {by!r} and are left out")
        field, groups = by, list(range(1, len(levels) + 1))
        group_name, none_tested = (lambda v: f"{by}={v!r}"), f"no value of {by!r} has"
    total = sum(sizes.values())
    tested = [v for v in levels if sizes[v] >= ctx.min_docs and total - sizes[v] >= ctx.min_docs]
    for v in levels:
        if v not in tested:
            warnings.append(f"{group_name(v)} has {sizes[v]} documents (fewer than {ctx.min_docs}): not "
                            "tested on its own, but counted in the rest")
    if not tested:
        raise ConfigError(f"{none_tested} at least {ctx.min_docs} documents (and {ctx.min_docs} in the rest) "
                          "to compare")
    hist = _length_histogram(ctx, field, levels)
    edges = _edges(hist, length_bins) if length_control else []
    counts, totals, latents = _presence(ctx, field, levels, edges, groups, hist)
    all_counts, all_totals = counts.sum(1), totals.sum(0)
    all_lengths = _hist_arrays(hist, None)
    tables = []
    for i, (g, v) in enumerate(zip(groups, levels)):
        if v not in tested:
            continue
        x_b, n_b = counts[:, i], totals[i]
        group_lengths = _hist_arrays(hist, g)
        rest_lengths = (all_lengths[0], all_lengths[1] - _align(group_lengths, all_lengths[0]))
        warnings += _length_warning(rest_lengths, group_lengths, "the rest", f"{by}={v}", length_control)
        if length_control:
            warnings += _overlap_warning(all_totals - n_b, n_b, "the rest", f"{by}={v}")
        t = _compare(all_counts - x_b, all_totals - n_b, x_b, n_b, latents, length_control)
        t = _finish(ctx, t, length_control, REST, str(v))
        tables.append(t.select(pl.lit(str(v)).alias("group"), pl.all()))
    table = pl.concat(tables)
    side_names = {str(v): {g: str(v)} for g, v in zip(groups, levels)}
    ranked = _merge_and_examples(ctx, table, field, levels, length_control, side_names)
    warnings += _significance_warning(ranked.table, length_control, "the datasets" if field is None else
                                      f"the values of {by!r}")
    return DiffResult(ranked.table, ranked.examples, warnings, name, None, by=by, threshold=ctx.threshold,
                      length_controlled=length_control, n_docs={str(v): sizes[v] for v in levels},
                      sae_id=ctx.sae_id, findings=ranked.findings, finding_examples=ranked.finding_examples)


def _diff_paired(ctx: _Context, field_name: str) -> DiffResult:
    sa, sb = ctx.states
    for s in ctx.states:
        if ctx.store.macro("meta_counts", field_name, [s.dataset_id])["value"].drop_nulls().len() == 0:
            raise NotFoundError(f"no metadata field {field_name!r} in {s.name} "
                                f"(fields: {_fields(ctx, [s.dataset_id]) or 'none'})")
    pairs = ctx.store.macro("doc_pairs", sa.dataset_id, sb.dataset_id, field_name)
    n_pairs = pairs.height
    n_repeat = pairs.filter((pl.col("n_a") > 1) | (pl.col("n_b") > 1)).height
    if n_pairs == 0:
        raise ConfigError(f"no document of {sa.name} shares a value of {field_name!r} with one of {sb.name}; "
                          "nothing to pair")
    if n_pairs < ctx.min_docs:
        raise ConfigError(f"only {n_pairs} pairs share a value of {field_name!r}; a paired diff needs at "
                          f"least {ctx.min_docs}")
    warnings = _few_docs_warnings({"pairs": n_pairs})
    if n_repeat:
        warnings.append(f"{n_repeat} values of {field_name!r} repeat within a dataset; the first document "
                        "(by id) of each was paired")
    for s in ctx.states:
        if s.n_docs > n_pairs:
            warnings.append(f"{s.n_docs - n_pairs} of {s.n_docs} documents of {s.name} have no partner and "
                            "are left out")
    hist = ctx.store.macro("paired_lengths", sa.dataset_id, sb.dataset_id, field_name)
    warnings += _length_warning(_hist_arrays(hist, sa.dataset_id), _hist_arrays(hist, sb.dataset_id), sa.name,
                                sb.name, None)
    if ctx.rates is None:
        pres = ctx.store.macro("paired_presence", ctx.sae_id, ctx.threshold, sa.dataset_id, sb.dataset_id,
                               field_name).sort("latent")
    else:
        rows = ctx.store.macro("paired_tokens", ctx.sae_id, ctx.threshold, sa.dataset_id, sb.dataset_id, field_name)
        sides = (rows.filter(pl.Series(ctx.present(rows, "n_tokens")))
                 .group_by("latent", "key").agg(sides=pl.col("side").unique().sum()))
        pres = sides.group_by("latent").agg(
            n_both=(pl.col("sides") == 3).sum(), n_a_only=(pl.col("sides") == 1).sum(),
            n_b_only=(pl.col("sides") == 2).sum()).sort("latent")
    if pres.height == 0:
        raise ConfigError(f"no latent is active above threshold {ctx.threshold:g} in the paired documents")
    both = pres["n_both"].to_numpy().astype(np.int64)
    a_only = pres["n_a_only"].to_numpy().astype(np.int64)
    b_only = pres["n_b_only"].to_numpy().astype(np.int64)
    n_a, n_b = both + a_only, both + b_only
    p = mcnemar_exact(a_only, b_only)
    table = pl.DataFrame({
        "latent": pres["latent"].cast(pl.Int32),
        "n_a": n_a, "n_b": n_b,
        "freq_a": n_a / n_pairs, "freq_b": n_b / n_pairs,
        "diff_b_minus_a": (n_b - n_a) / n_pairs,
        "ratio": _ratio(n_a, n_pairs, n_b, n_pairs),
        "n_a_only": a_only, "n_b_only": b_only,
        "p": p, "q": bh_qvalues(p),
    })
    table = _finish(ctx, table, False, sa.name, sb.name)
    sides = {sa.dataset_id: sa.name, sb.dataset_id: sb.name}
    ranked = _merge_and_examples(ctx, table, None, [], False, {None: sides})
    warnings += _significance_warning(ranked.table, False, f"the pairs of {sa.name} and {sb.name}")
    return DiffResult(ranked.table, ranked.examples, warnings, sa.name, sb.name, paired_on=field_name,
                      threshold=ctx.threshold, n_docs={sa.name: n_pairs, sb.name: n_pairs}, sae_id=ctx.sae_id,
                      findings=ranked.findings, finding_examples=ranked.finding_examples)


# -- pieces ---------------------------------------------------------------------------------


def _length_histogram(ctx: _Context, by: str | None, levels: list[str]) -> pl.DataFrame:
    """(grp, n_tokens, n): documents per group and length."""
    return ctx.store.macro("length_histogram", ctx.dataset_ids, field=by, levels=levels)


def _edges(hist: pl.DataFrame, n_bins: int) -> list[int]:
    """Quantile edges of the pooled lengths, moved down to length_floor class
    boundaries so the per-class ``latent_counts`` bin the same way as the documents."""
    edges = length_edges(*_hist_arrays(hist, None), n_bins)
    return sorted({int(e) for e in length_floor(np.asarray(edges, dtype=np.int64))} - {0})


def _presence(ctx: _Context, by: str | None, levels: list[str], edges: list[int], groups: list[int],
              hist: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Active counts (n_latents, n_groups, n_bins) from the latent_presence macro,
    documents (n_groups, n_bins) from the length histogram ``hist``, and the latents
    (n_latents,) active anywhere."""
    if ctx.rates is not None:
        # presence beyond chance: count (latent, group, length class, tokens) cells, then
        # keep those where the latent fired on enough of the class's tokens
        if by is None and ctx.threshold == 0:
            cells = ctx.store.macro("token_counts", ctx.sae_id, ctx.dataset_ids)
        else:
            cells = ctx.store.macro("token_presence", ctx.sae_id, ctx.threshold, ctx.dataset_ids,
                                    field=by, levels=levels)
        cells = cells.filter(pl.Series(ctx.present(cells)))
        bins = np.searchsorted(np.asarray(edges, dtype=np.int64), cells["len_floor"].to_numpy(), side="right")
        pres = cells.select("latent", "grp", "n_active").with_columns(bin=pl.Series(bins))
    elif by is None and ctx.threshold == 0 and ctx.store.has_latent_counts(ctx.dataset_ids, ctx.sae_id):
        pres = ctx.store.macro("counted_presence", ctx.sae_id, ctx.dataset_ids, edges=edges)
    else:
        pres = ctx.store.macro("latent_presence", ctx.sae_id, ctx.threshold, ctx.dataset_ids,
                               field=by, levels=levels, edges=edges)
    if pres.height == 0:
        raise ConfigError(f"no latent is active above threshold {ctx.threshold:g} in "
                          f"{' or '.join(s.name for s in ctx.states)}")
    n_bins = len(edges) + 1
    latents, l_idx = np.unique(pres["latent"].to_numpy(), return_inverse=True)
    g_idx = _positions(groups, pres["grp"].to_numpy())
    counts = np.zeros((len(latents), len(groups), n_bins), dtype=np.int64)
    np.add.at(counts, (l_idx, g_idx, pres["bin"].to_numpy()), pres["n_active"].to_numpy())
    totals = np.zeros((len(groups), n_bins), dtype=np.int64)
    bins = np.searchsorted(np.asarray(edges, dtype=np.int64), hist["n_tokens"].to_numpy(), side="right")
    np.add.at(totals, (_positions(groups, hist["grp"].to_numpy()), bins), hist["n"].to_numpy())
    return counts, totals, latents.astype(np.int32)


def _positions(groups: list[int], values: np.ndarray) -> np.ndarray:
    """The index in ``groups`` of each of ``values`` (all of which are in ``groups``)."""
    g = np.asarray(groups)
    order = np.argsort(g)
    return order[np.searchsorted(g[order], values)]


def _ratio(x_a: np.ndarray, n_a: float, x_b: np.ndarray, n_b: float) -> np.ndarray:
    return ((x_b + 0.5) / (n_b + 1)) / ((x_a + 0.5) / (n_a + 1))


def _compare(x_a: np.ndarray, n_a: np.ndarray, x_b: np.ndarray, n_b: np.ndarray, latents: np.ndarray,
             length_control: bool) -> pl.DataFrame:
    """The per-latent comparison of side B with side A from stratified counts.

    ``x_a``, ``x_b``: (n_latents, n_bins) active counts; ``n_a``, ``n_b``: (n_bins,)
    documents. Latents active on neither side are dropped.
    """
    keep = (x_a.sum(1) + x_b.sum(1)) > 0
    x_a, x_b, latents = x_a[keep], x_b[keep], latents[keep]
    ta, tb = x_a.sum(1), x_b.sum(1)
    na, nb = float(n_a.sum()), float(n_b.sum())
    p = two_proportion_test(ta, na, tb, nb)
    cols: dict[str, Any] = {
        "latent": latents,
        "n_a": ta, "n_b": tb,
        "freq_a": ta / na, "freq_b": tb / nb,
        "diff_b_minus_a": tb / nb - ta / na,
        "ratio": _ratio(ta, na, tb, nb),
        "p": p, "q": bh_qvalues(p),
    }
    if length_control:
        s = cmh_test(x_a, n_a, x_b, n_b)
        cols |= {"adj_diff_b_minus_a": s.diff, "adj_log_or": s.log_or, "adj_p": s.p, "adj_q": bh_qvalues(s.p)}
    return pl.DataFrame(cols)


def ranking_columns(length_control: bool) -> tuple[str, str]:
    """(difference, q-value) columns that rank a diff: the length-controlled ones when
    ``length_control``."""
    return ("adj_diff_b_minus_a", "adj_q") if length_control else ("diff_b_minus_a", "q")


def _finish(ctx: _Context, table: pl.DataFrame, length_control: bool, a: str, b: str) -> pl.DataFrame:
    """Add labels and ``more_in`` (``a`` or ``b``, the side where the latent is more
    common by the ranking difference) and rank: q-value, then larger |difference|, then latent."""
    effect, q = ranking_columns(length_control)
    table = table.with_columns(pl.col("latent").cast(pl.Int32)).join(ctx.labels, on="latent", how="left")
    table = table.with_columns(more_in=pl.when(pl.col(effect).fill_nan(0.0) > 0).then(pl.lit(b))
                               .when(pl.col(effect).fill_nan(0.0) < 0).then(pl.lit(a)).otherwise(pl.lit("")))
    first = ["more_in", "latent", "label"]
    table = table.select(first + [c for c in table.columns if c not in first])
    return (table.with_columns(_abs=pl.col(effect).abs().fill_nan(0.0))
            .sort([q, "_abs", "latent"], descending=[False, True, False], nulls_last=True)
            .drop("_abs"))


@dataclass(frozen=True)
class _Ranked:
    """The merged table, its examples and its findings (see :func:`_merge_and_examples`)."""

    table: pl.DataFrame
    examples: pl.DataFrame
    findings: pl.DataFrame
    finding_examples: pl.DataFrame


def _merge_and_examples(ctx: _Context, table: pl.DataFrame, by: str | None, levels: list[str],
                        length_control: bool, side_names: dict[Any, dict[int, str]]) -> _Ranked:
    """Fold near-duplicate latents into the strongest (``merged``), pick examples and
    group the significant latents into findings."""
    has_group = "group" in table.columns
    group_col = pl.col("group") if has_group else pl.lit(None, pl.String)
    table = table.with_columns(_grp=group_col, _rank=pl.int_range(pl.len()).over(group_col, "more_in"))
    candidates = table.filter(pl.col("_rank") < CANDIDATES)
    lat_ids = sorted(set(candidates["latent"].to_list()))
    sample = ctx.store.macro("latent_docs", ctx.sae_id, ctx.threshold, lat_ids, ctx.dataset_ids,
                             field=by, levels=levels, n=SAMPLE_DOCS) if lat_ids else _empty_sample()
    sample = _ranked(sample.filter(pl.Series(ctx.present(sample, "n_tokens"))))  # strongest first per latent
    effect, qcol = ranking_columns(length_control)
    merged: dict[tuple[Any, int], list[int]] = {}
    dropped: set[tuple[Any, int]] = set()
    if ctx.merge and sample.height:
        labels = dict(ctx.labels.iter_rows())
        dup = _duplicates(sample, lat_ids, sum(min(s.n_docs, SAMPLE_DOCS) for s in ctx.states), labels)
        for grp, rows in candidates.filter(pl.col("_rank") < MERGE_CANDIDATES).group_by("_grp", maintain_order=True):
            kept: list[tuple[int, float]] = []
            for latent, sign in zip(rows["latent"].to_list(), np.sign(rows[effect].fill_nan(0).to_numpy())):
                key = (grp[0], latent)
                home = next((k for k, s in kept if s == sign and dup(k, latent)), None)
                if home is None:
                    kept.append((latent, sign))
                    merged[key] = []
                else:
                    merged[(grp[0], home)].append(latent)
                    dropped.add(key)
    folded = pl.DataFrame(
        {"_grp": [k[0] for k in merged], "latent": [k[1] for k in merged],
         "merged": [sorted(v) for v in merged.values()]},
        schema={"_grp": pl.String, "latent": pl.Int32, "merged": pl.List(pl.Int32)},
    )
    gone = pl.DataFrame({"_grp": [k[0] for k in dropped], "latent": [k[1] for k in dropped]},
                        schema={"_grp": pl.String, "latent": pl.Int32})
    table = (table.join(gone, on=["_grp", "latent"], how="anti", nulls_equal=True, maintain_order="left")
             .join(folded, on=["_grp", "latent"], how="left", nulls_equal=True, maintain_order="left")
             .with_columns(pl.col("merged").fill_null(pl.lit([], dtype=pl.List(pl.Int32)))))
    table = table.with_columns(_rank=pl.int_range(pl.len()).over(pl.col("_grp"), "more_in"))
    findings, doc_sets = _findings(ctx, table, sample, by, levels, effect, qcol, side_names)
    examples = _examples(ctx, table.filter(pl.col("_rank") < EXAMPLE_LATENTS), sample, side_names, has_group)
    finding_examples = _finding_examples(ctx, findings, doc_sets, sample)
    if not has_group:
        findings = findings.drop("group")
        finding_examples = finding_examples.drop("group")
    return _Ranked(table.drop("_grp", "_rank"), examples, findings, finding_examples)


def _findings(ctx: _Context, table: pl.DataFrame, sample: pl.DataFrame, by: str | None, levels: list[str],
              effect: str, qcol: str, side_names: dict[Any, dict[int, str]]
              ) -> tuple[pl.DataFrame, dict[tuple[Any, int], np.ndarray]]:
    """The findings of each comparison (:mod:`saedata.analysis.findings`), with their
    leads' statistics, and the sample documents of each (group, finding)."""
    sizes = (ctx.store.macro("doc_sample", ctx.dataset_ids, field=by, levels=levels, n=SAMPLE_DOCS)
             .group_by("grp").len())
    size = dict(zip(sizes["grp"].to_list(), sizes["len"].to_list()))
    labels = dict(ctx.labels.iter_rows())
    frames, doc_sets = [], {}
    for grp, names in side_names.items():
        if grp is None:  # two datasets: side a's group first, then b's
            (ga, _), (gb, _) = names.items()
            sides = Sides(frozenset([ga]), frozenset([gb]), size.get(ga, 0), size.get(gb, 0))
        else:  # by: the group against every other group
            ((gb, _),) = names.items()
            rest = frozenset(g for g in size if g is not None and g != gb)
            sides = Sides(rest, frozenset([gb]), sum(size[g] for g in rest), size.get(gb, 0))
        if min(sides.n_a, sides.n_b) == 0:
            continue
        rows = table.filter((pl.col("_grp").eq_missing(grp)) & (pl.col(qcol) < 0.05) & (pl.col("_rank") < CANDIDATES))
        found, docs = group_findings(rows, sample, sides, effect, labels, ctx.weak, ctx.low)
        frames.append(found.with_columns(group=pl.lit(grp, pl.String)))
        doc_sets |= {(grp, k): v for k, v in docs.items()}
    stats = [c for c in ("more_in", "label", "freq_a", "freq_b", "diff_b_minus_a", "adj_diff_b_minus_a", "q",
                         "adj_q", "n_a_only", "n_b_only") if c in table.columns]
    lead = table.select(pl.col("_grp").alias("group"), pl.col("latent").alias("lead"), *stats)
    columns = (["group", "finding", "more_in", "description", "lead", "n_latents", "share_a", "share_b"] + stats[1:]
               + ["latents", "fewer", "weak"])
    if not frames:
        return pl.DataFrame(schema=lead.schema | {"finding": pl.Int32, "description": pl.String,
                                                  "n_latents": pl.UInt32, "share_a": pl.Float64,
                                                  "share_b": pl.Float64, "latents": pl.List(pl.Int32),
                                                  "fewer": pl.List(pl.Int32), "weak": pl.Boolean}
                            ).select(columns), doc_sets
    found = (pl.concat(frames).join(lead, on=["group", "lead"], how="left", nulls_equal=True, maintain_order="left")
             .with_columns(n_latents=pl.col("latents").list.len() + pl.col("fewer").list.len()))
    return found.select(columns), doc_sets


def _finding_examples(ctx: _Context, findings: pl.DataFrame, doc_sets: dict[tuple[Any, int], np.ndarray],
                      sample: pl.DataFrame) -> pl.DataFrame:
    """For each finding, the ``examples`` sample documents of its side where most of its
    members are present (then where its lead is strongest)."""
    schema = {"group": pl.String, "finding": pl.Int32, "doc_id": pl.Int64, "ext_id": pl.String, "members": pl.UInt32,
              "value": pl.Float32, "peak": pl.Int32, "at_word": pl.String, "text": pl.String}
    picks = []
    for row in findings.iter_rows(named=True):
        docs = doc_sets.get((row["group"], row["finding"]))
        if docs is None or ctx.examples == 0:
            continue
        rows = sample.filter(pl.col("doc_id").is_in(docs.tolist()) & pl.col("latent").is_in(row["latents"]))
        lead = rows.filter(pl.col("latent") == row["lead"]).select("doc_id", "value", "peak")
        counts = rows.group_by("doc_id").agg(members=pl.len())
        best = lead.join(counts, on="doc_id").sort(["members", "value", "doc_id"], descending=[True, True, False])
        picks.append(best.head(ctx.examples).with_columns(group=pl.lit(row["group"], pl.String),
                                                          finding=pl.lit(row["finding"], pl.Int32)))
    if not picks:
        return pl.DataFrame(schema=schema)
    frame = pl.concat(picks).with_row_index("i")
    texts = ctx.store.macro("doc_words", frame["doc_id"].to_list(), frame["peak"].to_list()).rename(
        {"pos": "i"}).with_columns(pl.col("i").cast(pl.UInt32))
    return frame.join(texts.drop("doc_id"), on="i", how="left").sort("i").select(list(schema)).cast(schema)  # type: ignore[arg-type]


def _empty_sample() -> pl.DataFrame:
    return pl.DataFrame(schema={"doc_id": pl.Int64, "grp": pl.Int64, "latent": pl.Int32,
                                "value": pl.Float32, "peak": pl.Int32, "tokens": pl.Int32, "n_tokens": pl.Int32})


def _duplicates(sample: pl.DataFrame, latents: list[int], n_docs: int, labels: dict[int, str | None]):
    """A predicate dup(l1, l2) for two latents: their presence across documents correlates
    (phi >= DUPLICATE_CORRELATION); or their top documents overlap (Jaccard >=
    DUPLICATE_JACCARD) and their labels share a word; or their labels mostly share
    their words and either phi or the top-document overlap is >= SIMILAR_LABELS.

    ``sample``: (doc_id, latent, value) where the ``latents`` (sorted) are active among
    ``n_docs`` documents."""
    lat = np.asarray(latents)
    docs, rows = np.unique(sample["doc_id"].to_numpy(), return_inverse=True)
    cols = np.searchsorted(lat, sample["latent"].to_numpy())
    S = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(docs), len(lat)))
    co = (S.T @ S).toarray()  # (n_latents, n_latents) documents where both are active
    n_j = np.diag(co).copy()
    n = float(max(n_docs, 1))
    top = sample.filter(pl.col("_rank") < TOP_DOCS)
    T = sparse.csr_matrix((np.ones(top.height), (np.searchsorted(lat, top["latent"].to_numpy()),
                                                 np.searchsorted(docs, top["doc_id"].to_numpy()))),
                          shape=(len(lat), len(docs)))
    shared = (T @ T.T).toarray()  # top documents in common
    size = np.diag(shared).copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        phi = (n * co - np.outer(n_j, n_j)) / np.sqrt(np.outer(n_j * (n - n_j), n_j * (n - n_j)))
        overlap = shared / (size[:, None] + size[None, :] - shared)
    phi = np.nan_to_num(phi, nan=0.0, posinf=0.0, neginf=0.0)
    overlap = np.nan_to_num(overlap, nan=0.0)
    words = [label_words(labels.get(int(x))) for x in lat]
    index = {int(x): i for i, x in enumerate(lat)}

    def dup(l1: int, l2: int) -> bool:
        i, j = index[l1], index[l2]
        w1, w2 = words[i], words[j]
        same_words = len(w1 & w2) / len(w1 | w2) if w1 and w2 else 0.0
        return bool(phi[i, j] >= DUPLICATE_CORRELATION
                    or (overlap[i, j] >= DUPLICATE_JACCARD and same_words > 0)
                    or (same_words >= SIMILAR_LABELS and max(phi[i, j], overlap[i, j]) >= SIMILAR_LABELS))

    return dup


def _ranked(sample: pl.DataFrame) -> pl.DataFrame:
    """``sample`` (ordered by latent, strongest first, as latent_docs returns it) with each
    row's position within its latent as ``_rank``."""
    return sample.with_columns(_rank=pl.int_range(pl.len()).over("latent"))


def _examples(ctx: _Context, top: pl.DataFrame, sample: pl.DataFrame, side_names: dict[Any, dict[int, str]],
              has_group: bool) -> pl.DataFrame:
    """The strongest sample documents of each side for the top latents, in table order."""
    schema = {"latent": pl.Int32, "side": pl.String, "doc_id": pl.Int64, "ext_id": pl.String,
              "value": pl.Float32, "peak": pl.Int32, "at_word": pl.String, "text": pl.String}
    if has_group:
        schema = {"group": pl.String} | schema
    if ctx.examples == 0 or top.height == 0 or sample.height == 0:
        return pl.DataFrame(schema=schema)
    order = top.select("latent", _grp=pl.col("_grp").cast(pl.String)).with_row_index("_row")
    sample = sample.filter(pl.col("latent").is_in(order["latent"].unique().implode()))
    picks = []
    for grp, sides in side_names.items():
        rows = sample if grp is None else sample.filter(pl.col("latent").is_in(
            order.filter(pl.col("_grp") == grp)["latent"].implode()))
        if grp is None:  # two datasets: each side is one grp value
            split = [(name, rows.filter(pl.col("grp") == g)) for g, name in sides.items()]
        else:  # by: the group's documents against the rest's
            ((g, name),) = sides.items()
            split = [(name, rows.filter(pl.col("grp") == g)),
                     ("rest", rows.filter(pl.col("grp").is_not_null() & (pl.col("grp") != g)))]
        for k, (name, part) in enumerate(split):
            # ``part`` keeps the sample's order: strongest first within each latent
            chosen = part.with_columns(_rank=pl.int_range(pl.len()).over("latent")).filter(
                pl.col("_rank") < ctx.examples)
            picks.append(chosen.with_columns(side=pl.lit(name), _side=pl.lit(k), _grp=pl.lit(grp, pl.String)))
    frame = (pl.concat(picks).join(order, on=["latent", "_grp"], nulls_equal=True)
             .sort("_row", "_side", "_rank").with_row_index("i"))
    if frame.height == 0:
        return pl.DataFrame(schema=schema)
    texts = ctx.store.macro("doc_words", frame["doc_id"].to_list(), frame["peak"].to_list()).rename(
        {"pos": "i"}).with_columns(pl.col("i").cast(pl.UInt32))
    out = frame.join(texts, on="i", how="left").sort("i").rename({"_grp": "group"})
    return out.select(list(schema)).cast(schema)  # type: ignore[arg-type]


# -- warnings -----------------------------------------------------------------------------------


def _few_docs_warnings(sizes: dict[str, int]) -> list[str]:
    return [f"only {n} documents in {name}: with fewer than {FEW_DOCS} per side the p-values are rough"
            for name, n in sizes.items() if n < FEW_DOCS]


def _hist_arrays(hist: pl.DataFrame, grp: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, counts) of one group of a (grp, n_tokens, n) histogram; all groups when None."""
    rows = hist if grp is None else hist.filter(pl.col("grp") == grp)
    pooled = rows.group_by("n_tokens").agg(pl.col("n").sum()).sort("n_tokens")
    return pooled["n_tokens"].to_numpy(), pooled["n"].to_numpy()


def _align(hist: tuple[np.ndarray, np.ndarray], lengths: np.ndarray) -> np.ndarray:
    """The counts of ``hist`` at ``lengths`` (a superset of its lengths)."""
    out = np.zeros(len(lengths), dtype=np.int64)
    out[np.searchsorted(lengths, hist[0])] = hist[1]
    return out


def _length_warning(hist_a: tuple[np.ndarray, np.ndarray], hist_b: tuple[np.ndarray, np.ndarray], name_a: str,
                    name_b: str, length_control: bool | None) -> list[str]:
    """A warning when the two sides' length distributions differ (KS p < 0.01)."""
    (la, ca), (lb, cb) = hist_a, hist_b
    keep_a, keep_b = ca > 0, cb > 0
    la, ca, lb, cb = la[keep_a], ca[keep_a], lb[keep_b], cb[keep_b]
    if len(la) == 0 or len(lb) == 0:
        return []
    _, p = ks_from_histograms(la, ca, lb, cb)
    if p >= 0.01:
        return []
    ma, mb = weighted_median(la, ca), weighted_median(lb, cb)
    longer = name_b if mb > ma else name_a
    msg = (f"document lengths differ: median {ma:g} tokens in {name_a}, {mb:g} in {name_b} (KS p={p:.2g}); "
           f"max-pooled latents fire more often in longer documents, so {longer} looks richer in many concepts")
    if length_control is None:
        msg += "; the paired test does not control for this"
    elif length_control:
        msg += "; the adj_* columns compare documents of similar length"
    else:
        msg += "; rerun with length control (without --no-length-control)"
    return [msg]


def _overlap_warning(n_a: np.ndarray, n_b: np.ndarray, name_a: str, name_b: str) -> list[str]:
    shared = (n_a > 0) & (n_b > 0)
    frac_a = n_a[shared].sum() / max(n_a.sum(), 1)
    frac_b = n_b[shared].sum() / max(n_b.sum(), 1)
    if min(frac_a, frac_b) >= 0.5:
        return []
    return [f"the lengths of {name_a} and {name_b} barely overlap: only {frac_a:.0%} and {frac_b:.0%} of their "
            "documents fall in length bins both sides share, so the adj_* columns rest on few documents"]


def _significance_warning(table: pl.DataFrame, length_control: bool, what: str) -> list[str]:
    q = "adj_q" if length_control else "q"
    if table.height == 0:
        return [f"no latent is active in {what}"]
    best = table[q].drop_nans().min()
    if best is None or best >= 0.05:
        shown = "n/a" if best is None else f"{best:.2g}"
        return [f"no latent differs significantly between {what} (smallest {q} = {shown})"]
    return []


# -- helpers ------------------------------------------------------------------------------------


def _fields(ctx: _Context, dataset_ids: Sequence[int] | None = None) -> str:
    return ", ".join(ctx.store.macro("meta_fields", list(dataset_ids or ctx.dataset_ids))["field"].to_list())
