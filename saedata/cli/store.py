"""Commands over the store itself: demo, datasets, latents, latent, browse, show, sql, export, label, index."""

from __future__ import annotations

import sys

import click

import saedata
from saedata.cli.app import main
from saedata.cli.options import (
    CARDINAL,
    SEED,
    Real,
    datasets_option,
    db_option,
    emit,
    example,
    format_option,
    latents_option,
    log,
    new_file,
    progress,
    quiet_option,
    report_option,
    sae_id_option,
    top_option,
)


@main.command(epilog=example("saedata demo a.jsonl b.jsonl -n 200"))
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False), metavar="PATH [PATH_B]")
@click.option("-n", "--n-docs", type=click.IntRange(1, 10_000_000), default=None,
              help="Documents per corpus [default: 600, or 300 each for a pair].")
@click.option("--seed", type=SEED, default=None, help="Seed: same seed -> the same corpus.")
@quiet_option
@click.pass_context
def demo(ctx, paths, n_docs, seed):
    """Write a small JSONL corpus with planted topics, sentiment and questions to PATH,
    or with PATH_B a pair of corpora with planted differences, to diff.

    Each line has id, text and the planted truth (topic, sentiment, is_question), so
    you can check the concepts saedata finds against what was put in. In a pair, the
    second corpus is about pets and science 4x as often and asks questions 3x as often.
    """
    if len(paths) > 2:
        raise click.UsageError("give one PATH, or two for a pair of corpora to diff")
    from saedata.demo import PAIR_DIFFERENCES

    written = saedata.write_demo(*paths, n_docs=n_docs, seed=seed)
    sizes = [sum(1 for _ in open(p, encoding="utf-8")) for p in written]
    if len(written) == 1:
        log(ctx)(f"wrote {sizes[0]} documents to {written[0]}")
    else:
        log(ctx)(f"wrote {sizes[0]} documents to {written[0]} and {sizes[1]} to {written[1]}: {PAIR_DIFFERENCES}")


@main.command(epilog=example("saedata datasets --format csv"))
@db_option
@format_option
@quiet_option
def datasets(db, fmt):
    """List the datasets in the store, with their document counts and state.
    """
    with saedata.open(db) as store:
        emit(store.datasets(), fmt)


@main.command(epilog=example("saedata latents --top 10 --label 'dog|cat'"))
@db_option
@top_option(20, "Rows to show (0 for all).")
@click.option("--sort", type=click.Choice(["freq", "max_act", "score", "llm_detection", "llm_fuzzing", "latent"]),
              default="freq", show_default=True, help="Order of the rows (all but latent largest first).")
@click.option("--label", "pattern", default=None, help="Only latents whose label matches this regex.")
@click.option("--min-score", type=Real(0, 1), default=None,
              help="Only latents whose label scored at least this (saedata label --score; 0.5 is chance).")
@sae_id_option
@format_option
@quiet_option
def latents(db, top, sort, pattern, min_score, sae_id, fmt):
    """List latents with their label, document frequency, max activation and label scores.

    `score` (after `saedata label --score`): how well the label predicts the documents where
    the latent fires, as the AUROC of label-document similarity (0.5 chance, 1 perfect).
    `llm_detection`, `llm_fuzzing` (after `saedata label --llm --score`, and only then): the
    balanced accuracy of an LLM telling, from the label, where the latent fires (0.5 chance, 1 perfect).
    """
    with saedata.open(db) as store:
        table = store.latents(sae_id, label=pattern, sort=sort)
    if min_score is not None:
        import polars as pl

        table = table.filter(pl.col("score") >= min_score)
    # a score no label has yet (saedata label [--llm] --score) leaves its column out of the table;
    # the LLM's, which few stores have, out of every format
    empty = [c for c in ("score", "llm_detection", "llm_fuzzing") if table[c].null_count() == table.height
             and (fmt == "table" or c != "score")]
    table = table.drop(empty)
    emit(table.head(top) if top else table, fmt)


@main.command(epilog=example("saedata show 3 --top 5"))
@click.argument("doc")
@db_option
@click.option("--dataset", default=None, help="Dataset of DOC when DOC is an external id.")
@top_option(20, "Concepts (or tokens, with --tokens) to show (0 for all).")
@click.option("--tokens", is_flag=True,
              help="Token by token instead: each token where latents fire, with its strongest 3 "
                   "(a dataset embedded with --store-tokens).")
@format_option
@quiet_option
def show(doc, db, dataset, top, tokens, fmt):
    """Show a document's active concepts, strongest first.

    DOC is a doc_id, or the corpus's own id (ext_id) with --dataset.
    """
    with saedata.open(db) as store:
        row = store.document(int(doc) if doc.isdigit() and dataset is None else doc, dataset)
        concepts = store.doc_tokens(row["doc_id"]) if tokens else store.doc_concepts(row["doc_id"])
    if tokens and concepts.height == 0:
        raise click.ClickException(f"document {row['doc_id']} has no token codes: its dataset {row['dataset']!r} "
                                   "was embedded without --store-tokens")
    if fmt == "table":
        text = row["text"] if len(row["text"]) <= 300 else row["text"][:300] + "..."
        click.echo(f"doc {row['doc_id']} ({row['dataset']}:{row['ext_id']}, {row['n_tokens']} tokens)")
        click.echo(f"  {text}")
    emit(concepts.head(top) if top else concepts, fmt)


@main.command(epilog=example("saedata sql 'SELECT name, n_docs FROM datasets WHERE n_docs >= $n' -p n 100"))
@click.argument("query")
@click.option("-p", "--param", "params", type=(str, str), multiple=True, metavar="NAME VALUE",
              help="A named parameter for $NAME in the query (repeatable); values are cast where used.")
@db_option
@format_option
@quiet_option
def sql(query, params, db, fmt):
    """Run any SQL QUERY over the concept store (`-` reads the query from stdin).

    Tables: datasets, documents, saes, latents, activations, latent_counts,
    word_counts; view: concepts; macros: latent_freq, latent_stats, top_docs,
    doc_concepts, word_at, word_before, diff, cooccur, score_docs and the analyses'
    own (queries/*.sql). The store opens read-only; pass values with -p, never by
    pasting them into the query. Unlike every other command, the query may read and
    write other files (read_csv, COPY ... TO): it is your SQL. The macros and views it
    calls are saedata's own, never ones stored in the file.
    """
    if query == "-":
        query = sys.stdin.read()
    with saedata.open(db, file_access=True) as store:
        emit(store.sql(query, dict(params) or None), fmt)


@main.command(epilog=example("saedata export activations acts.parquet"))
@click.argument("table")
@click.argument("path", type=click.Path(dir_okay=False), callback=new_file)
@db_option
@quiet_option
@click.pass_context
def export(ctx, table, path, db):
    """Export TABLE (or the concepts view) to a Parquet file at PATH.
    """
    with saedata.open(db) as store:
        out = store.export(table, path)
    log(ctx)(f"wrote {out}")


@main.command(epilog=example("saedata label"))
@db_option
@sae_id_option
@click.option("--llm", is_flag=True,
              help="Label with an LLM via an OpenAI-compatible endpoint (SAEDATA_LLM_BASE_URL, "
                   "SAEDATA_LLM_MODEL, SAEDATA_LLM_API_KEY), from each latent's strongest documents "
                   "(peak marked) beside near misses where it is silent.")
@latents_option("Comma-separated latent ids to label with --llm [default: the 50 most frequent].")
@click.option("--score", is_flag=True,
              help="Then score the labels: offline, every label on 2,000 of the documents (the AUROC of "
                   "label-document embedding similarity, and the label's words as a detector); with --llm, "
                   "the new labels by the LLM (detection and fuzzing, balanced accuracy). Shown by latents "
                   "and latent.")
@click.option("--llm-url", default=None, metavar="URL",
              help="With --llm: the endpoint's API root [default: $SAEDATA_LLM_BASE_URL].")
@click.option("--llm-model", default=None, metavar="NAME",
              help="With --llm: the model [default: $SAEDATA_LLM_MODEL].")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="With --llm: seed of the documents each prompt shows (same seed -> same prompts).")
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True,
              help="With --llm: requests in flight at once.")
@click.option("--dataset", default=None,
              help="Keyword labels against this dataset alone: its documents' evidence and word frequencies "
                   "(label source keywords:DATASET) [default: the whole store's].")
@quiet_option
@click.pass_context
def label(ctx, db, sae_id, llm, latent_ids, score, llm_url, llm_model, seed, concurrency, dataset):
    """(Re)compute latent labels: offline contrastive keywords, or an LLM with --llm.

    With --llm every request (prompt, reply, tokens) is kept in the table llm_calls, and
    the run's calls and tokens are printed at the end. A reply that cannot be used is an
    error of its latent only (the others are labelled); an endpoint that cannot be reached
    or refuses the key or the model stops the run.
    """
    source = click.get_current_context().get_parameter_source
    given = [f"--{name.replace('_', '-')}" for name in ("llm_url", "llm_model", "seed", "concurrency")
             if source(name) != click.core.ParameterSource.DEFAULT]
    if not llm and (given or latent_ids):
        raise click.UsageError(f"{(given or ['--latents'])[0]} goes with --llm")
    if llm and dataset is not None:
        raise click.UsageError("--dataset makes keyword labels; an LLM label reads each latent's own evidence")
    if not llm:
        saedata.relabel(db, sae_id, score=score, dataset=dataset, log=log(ctx))
        return
    run = saedata.llm_label(db, sae_id, latents=latent_ids, score=score, base_url=llm_url, model=llm_model,
                            seed=seed, workers=concurrency, **progress(ctx))
    click.echo(run.summary())


@main.command(epilog=example("saedata index"))
@db_option
@quiet_option
@click.pass_context
def index(ctx, db):
    """Build the by-latent copy of the activations that makes `saedata search --latents` fast on large stores.

    A search by chosen latents reads only their rows from it (a query text is compared
    with every document's codes, so it does not use it). Rebuild it after embedding more
    documents: until then search notices it is stale and scans the activations instead.
    """
    n = saedata.build_index(db)
    log(ctx)(f"indexed {n} activations by latent in {db}")


@main.command(epilog=example("saedata latent 42 --top 5 --report latent.html"))
@click.argument("latent", type=click.IntRange(0))
@db_option
@datasets_option
@top_option(10, "Strongest documents to show.")
@click.option("--samples", type=click.IntRange(0, 10_000), default=8, show_default=True,
              help="Documents sampled across the latent's range of values (not only its top).")
@report_option("Also write the page as an offline HTML report to this file.")
@sae_id_option
@format_option
@quiet_option
@click.pass_context
def latent(ctx, latent, db, datasets, top, samples, report_path, sae_id, fmt):
    """Show one latent: its label, how often and how strongly it fires per dataset, the
    documents where it fires most and documents across its range of values (the word where
    it peaked in [brackets]), and the latents present with it most.

    --format json gives every part as one object; csv the strongest documents.
    """
    page = saedata.latent_page(db, latent, list(datasets) or None, sae_id=sae_id, top=max(top, 1),
                               n_samples=samples)
    if report_path:
        log(ctx)(f"wrote {saedata.write_report(page, report_path)}")
    if fmt == "json":
        import json

        parts = {k: getattr(page, k).to_dicts() for k in ("datasets", "quantiles", "top", "samples", "cooccurs")}
        click.echo(json.dumps({"sae_id": page.sae_id, "latent": page.latent, "label": page.label,
                               "label_source": page.label_source, "weak": page.weak, "scores": page.scores,
                               "n_docs": page.n_docs,
                               "datasets_read": list(page.names), **parts}, ensure_ascii=False))
        return
    if fmt == "csv":
        emit(page.top.drop("text", "spans"), fmt)
        return
    fires = int(page.datasets["n_fires"].sum())
    scores = "".join(f", {name} {page.scores[key]:.2f}" for key, name in
                     (("score", "score"), ("llm_detection", "detection"), ("llm_fuzzing", "fuzzing"))
                     if page.scores.get(key) is not None)
    click.echo(f"latent {page.latent} of SAE {page.sae_id}: {page.label or '(no label)'} "
               f"({page.label_source or 'unlabelled'}{', weak: names no topic' if page.weak else ''}{scores}); "
               f"fires in {fires} of {page.n_docs} documents")
    emit(page.datasets, fmt)
    q = page.quantiles.drop_nulls()
    if q.height:
        click.echo("pooled values where it fires: " + ", ".join(
            f"{'max' if p == 1 else f'p{round(p * 100)}'} {v:.3g}" for p, v in q.iter_rows()))
    for heading, docs in (("strongest documents", page.top.head(top)),
                          ("across its range of values, weakest first", page.samples)):
        if docs.height:
            click.echo(f"\n{heading}:")
            emit(docs.drop("text", "peak", "spans"), fmt)
    if page.cooccurs.height:
        click.echo("\npresent together with (NPMI):")
        emit(page.cooccurs, fmt)


@main.command(epilog=example("saedata browse --out site/ --report diff.html"))
@click.option("--out", "out", type=click.Path(file_okay=False), required=True,
              help="Folder to write the site to: new, empty, or a site written before (replaced whole).")
@db_option
@datasets_option
@sae_id_option
@click.option("--latents", "n_latents", type=CARDINAL, default=0, show_default=True,
              help="Write pages for only the N most frequent latents (0: every latent that fires); the index "
                   "lists every latent either way.")
@click.option("--report", "reports", type=click.Path(exists=True, dir_okay=False), multiple=True,
              help="An HTML report (saedata diff / correlate / cluster --report) to copy into the site and "
                   "list on its index (repeatable).")
@quiet_option
@click.pass_context
def browse(ctx, out, db, datasets, sae_id, n_latents, reports):
    """Write a static HTML site of the store's latents to browse offline: index.html
    lists every latent with its label, how often it fires, its label score and dataset
    lift (how many times as often it fires in one dataset as in the others), sortable
    by clicking a column and filtered by typing in a search box (index.html#q=dog opens
    filtered); latents/N.html is latent N's page, as `saedata latent N --report` writes
    it, linked to the latents present with it.

    Every latent that fires gets a page (the demo store's 3,072 take about 12 s); the site is written beside --out and renamed into place, and a non-empty
    --out that is not a saedata site is refused.
    """
    site = saedata.browse(db, out, list(datasets) or None, sae_id=sae_id, latents=n_latents or None,
                          reports=list(reports), progress=progress(ctx)["progress"])
    for w in site.warnings:
        log(ctx)(f"warning: {w}")
    log(ctx)(f"wrote {site.n_pages} latent page{'s' * (site.n_pages != 1)} and an index of {site.n_latents} latents"
               f"{f' with {len(site.reports)} report' + 's' * (len(site.reports) > 1) if site.reports else ''}"
               f": open {site.index}")
