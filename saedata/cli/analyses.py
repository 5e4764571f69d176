"""The analysis commands: diff, associate, correlate, cluster, search."""

from __future__ import annotations

import click

import saedata
from saedata.cli.app import main
from saedata.cli.options import (
    CARDINAL,
    COUNT,
    Real,
    configs,
    datasets_option,
    db_option,
    device_option,
    emit,
    example,
    format_option,
    input_options,
    latents_option,
    log,
    new_file,
    presence_option,
    progress,
    quiet_option,
    reader_options,
    replace_option,
    report_option,
    sae_id_option,
    seed_option,
    short_numbers,
    threshold_option,
    top_option,
    train_options,
)
from saedata.config import ReaderConfig


@main.command(epilog=example(
    "saedata diff a b --report diff.html --top 10",
    "saedata diff a --by topic --top 5",
))
@click.argument("a", required=False)
@click.argument("b", required=False)
@db_option
@click.option("--sae", "sae_path", type=str, default=None,
              help="SAE for embedding files: a directory, a Goodfire .pth file or hf://OWNER/REPO[/PATH] "
                   "[default: the store's SAE, else train one on both].")
@sae_id_option
@presence_option
@threshold_option
@top_option(10, "Findings (or latents) to show more common on each side (per group with --by; 0 for all).")
@report_option("Write an offline HTML report (bars, table, example documents) here.")
@click.option("--no-length-control", is_flag=True,
              help="Skip the length-stratified comparison (adj_* columns) and rank by the raw difference.")
@click.option("--paired-on", default=None, help="Pair documents of A and B by this metadata field (McNemar).")
@click.option("--by", default=None,
              help="Split dataset A by this metadata column: each value vs the rest. `--by dataset` compares "
                   "every dataset (or A and B) each against the others.")
@click.option("--no-merge", is_flag=True, help="Keep near-duplicate latents as separate rows.")
@click.option("--by-latent", is_flag=True,
              help="Print the ranked latents instead of the findings (latents grouped by the documents that "
                   "explain them).")
@click.option("--examples", type=CARDINAL, default=3, show_default=True, help="Example documents per side and latent.")
@replace_option
@format_option
@reader_options
@input_options
@train_options
@quiet_option
@click.pass_context
def diff(ctx, a, b, db, sae_path, sae_id, presence, threshold, top, report_path, no_length_control, paired_on, by,
         no_merge, by_latent, examples, replace, fmt, **kw):
    """Diff the concepts of A and B: which latents are more common on one side.

    A and B are two corpus files (embedded into --db first, training an SAE on both
    when the store has none) or two dataset names in --db (a store file or a shard
    folder). With --by COLUMN, A alone is split by a metadata column into one-vs-rest
    diffs; with --by dataset and no A, every dataset is compared with the others.
    Prints findings: the significant latents grouped by the documents that explain
    them (one finding per difference, described by its latents' labels), ranked by
    their lead latent's q-value, then by the size of its difference; --by-latent prints
    the latents themselves. The adj_* columns compare documents of similar length.
    """
    if a is None and by != "dataset":
        raise click.UsageError("give A (and B), or --by dataset to compare every dataset of the store")
    options = dict(by=by, presence=presence, threshold=threshold, length_control=not no_length_control, paired_on=paired_on,
                   merge_duplicates=not no_merge, examples=examples, sae_id=sae_id)
    if a is not None and saedata.are_corpus_files(a, b):
        result = saedata.diff_files(a, b, db, sae_path, **configs(kw), **progress(ctx), replace=replace, **options)
    else:
        result = saedata.diff(db, a, b, **options)
    for w in result.warnings:
        log(ctx)(f"warning: {w}")
    if report_path:
        log(ctx)(f"wrote {saedata.write_report(result, report_path)}")
    no_findings = not by_latent and result.findings.height == 0 and fmt == "table"
    rows = result.rows if by_latent or no_findings else result.finding_rows
    if fmt == "table":
        click.echo(result.summary())
        if no_findings:
            click.echo("no finding: no latent differs at q < 0.05; the latents nearest to it:")
        emit(short_numbers(result.display_table(rows(top, compact=True))), fmt)
    else:
        emit(result.display_table(rows(top)) if fmt == "csv" else rows(top), fmt)


@main.command(epilog=example("saedata associate --target is_question --top 5",
                             "saedata associate --target topic=pets --n-latents 5"))
@click.option("--target", required=True,
              help="Metadata column to predict (binary or numeric), `dataset`, or COLUMN=VALUE (has that value).")
@click.option("--dataset", default=None, help="Dataset to use [default: every complete dataset of the SAE].")
@db_option
@click.option("--n-latents", type=COUNT, default=10, show_default=True, help="Most latents the rule keeps.")
@presence_option
@threshold_option
@click.option("--include-weak", is_flag=True,
              help="Also consider latents whose labels are weak (punctuation, function words).")
@click.option("--min-score", type=Real(0, 1), default=None,
              help="Leave out latents whose label scored below this (saedata label --score; 0.5 is chance); "
                   "unscored labels stay in.")
@sae_id_option
@top_option(20, "Rows to show (0 for all).")
@seed_option("Seed of the cross-validation folds.")
@format_option
@quiet_option
@click.pass_context
def associate(ctx, target, dataset, db, n_latents, presence, threshold, include_weak, min_score, sae_id, top, seed,
              fmt):
    """Find the latents that predict a metadata column (--target), with no LLM.

    A binary target (two values, or COLUMN=VALUE) gets an L1 logistic regression, a
    numeric one the Lasso; each picks at most --n-latents latents, refit on those alone
    (the rule returned), and a cross-validated score (AUC or R^2) of that procedure.
    Every latent gets an effect size, a p-value and a q-value; chosen latents come first.
    """
    result = saedata.associate(db, dataset, target, n_latents=n_latents, threshold=threshold, presence=presence,
                               include_weak=include_weak, min_score=min_score, sae_id=sae_id, seed=seed)
    for w in result.warnings:
        log(ctx)(f"warning: {w}")
    table = result.table.head(top) if top else result.table
    if fmt == "table":
        click.echo(result.summary())
        table = short_numbers(table)
    else:
        log(ctx)(result.summary())
    emit(table, fmt)


@main.command(epilog=example(
    "saedata correlate --top 5 --report corr.html",
    "saedata correlate --with topic --top 2",
))
@db_option
@datasets_option
@click.option("--with", "column", default=None,
              help="Associate latents with this metadata column instead of with each other.")
@click.option("--as", "kind", type=click.Choice(["auto", "categorical", "numeric"]), default="auto",
              show_default=True, help="How to treat the --with column (auto: numbers are numeric).")
@click.option("--min-support", type=COUNT, default=5, show_default=True,
              help="Latents and pairs must fire in at least this many documents.")
@threshold_option
@click.option("--label", "pattern", default=None, help="Only latents whose label matches this regex.")
@latents_option("Only these comma-separated latent ids.")
@top_option(20, "Pairs to show (metadata: latents per class, or rows for a numeric column).")
@click.option("--alpha", type=Real(0, 1, min_open=True), default=0.05, show_default=True,
              help="q-value cut for significance.")
@report_option("Write an offline HTML report (heatmap, table, example documents) here.")
@presence_option
@click.option("--no-length-control", is_flag=True,
              help="With --with: rank by plain rho, not rho_adj (numeric), or choose each class's latents by "
                   "plain q, not q_adj (categorical); the adjusted ones compare documents of similar length.")
@sae_id_option
@format_option
@quiet_option
@click.pass_context
def correlate(ctx, db, datasets, column, kind, min_support, threshold, pattern, latent_ids, top, alpha,
              report_path, presence, no_length_control, sae_id, fmt):
    """Find latents that are present together more than chance, or that go with a metadata column.

    Pairs are counted by a sparse matrix product over document presence, scored by
    NPMI (-1..1) and phi, tested (chi-square, or Fisher's exact test for small counts)
    with BH q-values, and ranked by NPMI among significant pairs; `redundant` marks two
    latents with nearly the same documents. With --with COLUMN: per-class frequencies
    and a chi-square test per latent, each class's latents chosen by q_adj (that class
    against the rest within length bins) (categorical), or Spearman's rho and its
    partial rho_adj with document length held fixed (numeric).
    """
    names = list(datasets) or None
    say = log(ctx)
    if top < 1:
        raise click.BadParameter(f"must be at least 1, got {top}", param_hint="--top")
    if column is not None:
        result = saedata.correlate_metadata(db, names, column, kind=kind, min_support=min_support,
                                            threshold=threshold, label_pattern=pattern, latents=latent_ids,
                                            per_class=top, alpha=alpha, presence=presence,
                                            length_control=not no_length_control, sae_id=sae_id)
        q_col = "q_adj" if "q_adj" in result.latents.columns and not no_length_control else "q"
        summary = (f"{result.n_docs} documents ({', '.join(result.datasets)}); {result.latents.height} latents "
                   f"tested against {result.kind} column {column!r}; {int((result.latents[q_col] <= alpha).sum())} "
                   f"with {q_col} <= {alpha}")
        if result.kind == "categorical":
            table, compact = result.classes, result.classes
        else:
            table = result.latents.head(top)
            adj = ["rho_adj", "q_adj"] if "rho_adj" in table.columns else []
            compact = table.select("latent", "label", "n_docs", "freq", "rho", "q", *adj)
    else:
        result = saedata.correlate(db, names, min_support=min_support, threshold=threshold, label_pattern=pattern,
                                   latents=latent_ids, top=top, alpha=alpha, presence=presence, sae_id=sae_id)
        summary = (f"{result.n_docs} documents ({', '.join(result.datasets)}); {result.n_tested} pairs of "
                   f"{result.n_latents} latents fire together in >= {min_support} documents; "
                   f"{result.n_significant} significant at q <= {alpha}")
        table = result.pairs
        compact = table.select("rank", "latent_i", "label_i", "latent_j", "label_j", "n_ij", "npmi", "phi", "q",
                               "redundant")
    for w in result.warnings:
        say(f"warning: {w}")
    say(summary)
    if report_path:
        say(f"wrote {saedata.write_report(result, report_path)}")
    emit(short_numbers(compact, ".1e", tuple(c for c in ("q", "q_adj") if c in compact.columns))
         if fmt == "table" else table, fmt)


@main.command(epilog=example(
    "saedata cluster --axis sentiment --k 2 --eval-field sentiment --report clusters.html",
))
@db_option
@datasets_option
@click.option("--axis", default=None,
              help="Cluster along this axis, in words (e.g. sentiment): latents whose label has one of "
                   "its words, or whose label's embedding is close to it.")
@click.option("--label", "pattern", default=None, help="Cluster on latents whose label matches this regex.")
@latents_option("Cluster on these comma-separated latent ids.")
@click.option("--method", type=click.Choice(["kmeans", "hdbscan"]), default="kmeans", show_default=True,
              help="k-means (k given or estimated), or HDBSCAN (finds k, marks noise as -1).")
@click.option("--k", type=click.IntRange(2, 100_000), default=None,
              help="Number of k-means clusters [default: chosen by stability and silhouette].")
@click.option("--max-k", type=click.IntRange(2, 100_000), default=12, show_default=True,
              help="Largest k tried when estimating k.")
@click.option("--min-cluster-size", type=click.IntRange(2, 1_000_000_000), default=10, show_default=True,
              help="HDBSCAN's smallest cluster.")
@click.option("--scale", type=click.Choice(["auto", "tokens", "values", "binary", "tfidf"]), default="auto",
              show_default=True,
              help="Features: tf-idf of the tokens each concept fired on, pooled values, 0/1, or 0/1 weighted by "
                   "rarity (rows at unit length); auto: tokens on all latents, values on an axis.")
@top_option(20, "Most latents an --axis picks.")
@click.option("--compare", is_flag=True, help="Also cluster on all latents and compare (adjusted Rand index).")
@click.option("--eval-field", default=None, help="Score the clusterings against this metadata column (ARI, NMI).")
@report_option("Write an offline HTML report here, and the 2-D map beside it as PNG.")
@click.option("--png", "png_path", type=click.Path(dir_okay=False), default=None, callback=new_file,
              help="Write the 2-D map (UMAP, coloured by cluster) as PNG here.")
@click.option("--assignments", is_flag=True, help="Print one row per document instead of one per cluster.")
@seed_option("Seed: same input + seed -> same clusters.")
@sae_id_option
@format_option
@quiet_option
@click.pass_context
def cluster(ctx, db, datasets, axis, pattern, latent_ids, method, k, max_k, min_cluster_size, scale, top, compare,
            eval_field, report_path, png_path, assignments, seed, sae_id, fmt):
    """Cluster documents on the latents of one axis, and describe each cluster.

    --axis TEXT picks latents whose label contains a word of TEXT (or its plural or
    singular), plus those whose label, embedded with the default reader, is most
    similar to TEXT (cosine >= 0.3 and 3 SD above the average label); --label and
    --latents name them directly. Without any, all latents are used. The latents
    picked are listed on stderr. Clusters are described by the latents (of all) with
    the highest lift in them.
    """
    say = log(ctx)
    result = saedata.cluster(db, list(datasets) or None, axis=axis, latents=latent_ids, label_pattern=pattern,
                             method=method, k=k, max_k=max_k, seed=seed, min_cluster_size=min_cluster_size,
                             scale=scale, map=bool(report_path or png_path), unfiltered=compare,
                             eval_field=eval_field, top=top, sae_id=sae_id)
    used = result.latents_used
    say(f"clustering {result.n_docs} documents ({', '.join(result.datasets)}) on {used.height} latents:")
    for row in used.head(30).iter_rows(named=True):
        score = f"{row['score']:.2f}" if row["score"] is not None else "   -"
        say(f"  {row['latent']:>6}  {score}  {row['label'] or ''}")
    if used.height > 30:
        say(f"  ... and {used.height - 30} more")
    for w in result.warnings:
        say(f"warning: {w}")
    for row in result.comparison.iter_rows(named=True):
        sil = f"{row['silhouette']:.3f}" if row["silhouette"] is not None else "n/a"
        ev = f"; vs {row['field']}: ARI {row['ari']:.3f}, NMI {row['nmi']:.3f}" if row["field"] else ""
        say(f"{row['clustering']} ({row['n_latents']} latents): {method}, k = {row['k']}, silhouette {sil}{ev}")
    if result.ari_unfiltered is not None:
        say(f"ARI between the filtered clustering and the one on all latents: {result.ari_unfiltered:.3f}")
    if report_path:
        html = saedata.write_report(result, report_path, png=png_path)
        png = png_path or html.with_suffix(".png")
        say(f"wrote {html}" + (f" and {png}" if result.has_map else ""))
    elif png_path:
        png = saedata.write_report(result, png_path)
        if png is not None:
            say(f"wrote {png}")
    emit(result.assignments if assignments else result.clusters, fmt)


@main.command(epilog=example('saedata search "Why did the dog do that?" --top 5 --eval-field is_question'))
@click.argument("query", required=False)
@db_option
@latents_option("Comma-separated latent ids to score by, instead of the latents the query maps to.")
@click.option("--dataset", default=None, help="Search one dataset [default: every dataset of the SAE].")
@top_option(50, "Documents to return.")
@click.option("--eval-field", default=None, help="Metadata field to report precision@top against.")
@click.option("--eval-value", default=None,
              help="Value of --eval-field that counts as relevant [default: true, for boolean fields].")
@click.option("--query-latents", type=COUNT, default=128, show_default=True,
              help="Latents kept from the query's own activations (label matches come on top).")
@click.option("--feedback", type=click.IntRange(0, 10_000), default=20, show_default=True,
              help="Best documents of a first round whose shared latents expand the query (at most 1 per 100 "
                   "documents searched; under 5 scores once).")
@click.option("--include-weak", is_flag=True,
              help="Keep query latents whose labels are weak (punctuation, function words) though the query "
                   "does not contain them.")
@sae_id_option
@device_option(help="Where the query is read.")
@format_option
@quiet_option
@click.pass_context
def search(ctx, query, db, latent_ids, dataset, top, eval_field, eval_value, query_latents, feedback, include_weak,
           sae_id, device, fmt):
    """Find the documents that show a property described by QUERY, best first.

    QUERY is read by the SAE's reader and coded as documents were; documents are scored
    from their stored codes alone, by similarity over latents (weighted by rarity, plus
    latents whose labels share the query's words) and of the codes decoded, then again
    with the best documents' codes added to the query (--feedback). Each result names
    the latents that added most to its score. Phrase QUERY as a topic or an example:
    "text editors", "Why did the dog do that?".
    """
    if not (query and query.strip()) and not latent_ids:
        raise click.UsageError("give a QUERY or --latents")
    result = saedata.search(db, query, latents=latent_ids, dataset=dataset, top=top, eval_field=eval_field,
                            eval_value=eval_value, reader_cfg=ReaderConfig(device=device), sae_id=sae_id,
                            query_latents=query_latents, feedback=feedback, include_weak=include_weak)
    say = log(ctx)
    n = result.query_latents.height
    how = ("by-latent index" if result.used_index else "full scan") if latent_ids else "query vector"
    say(f"{n} latents ({how}), heaviest first:")
    for row in result.query_latents.head(10).iter_rows(named=True):
        say(f"  {row['latent']:>6}  {row['weight']:6.3f}  {row['source']:<11}  {row['label'] or ''}")
    if n > 10:
        say(f"  ... and {n - 10} more")
    if result.feedback_note:
        say(result.feedback_note)
    emit(result.docs, fmt)
    if result.precision is not None:
        click.echo(f"precision@{result.docs.height}: {result.precision:.2f} "
                   f"(base rate {result.base_rate:.2f}, {eval_field} = {result.eval_value})", err=True)
