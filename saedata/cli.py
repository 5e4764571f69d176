"""The ``saedata`` command: thin Click wrappers over the Python API.

Data goes to stdout (``--format table|json|csv``); progress bars and messages go to
stderr. A user mistake prints one line on stderr and exits 1; bad usage exits 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from saedata import __version__
from saedata.config import ACTIVATIONS, POOLINGS
from saedata.errors import SaedataError

FORMATS = ("table", "json", "csv")


class _Group(click.Group):
    """Turns saedata errors into one line on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SaedataError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="saedata")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or messages on stderr.")
@click.pass_context
def main(ctx: click.Context, quiet: bool) -> None:
    """Interpretable embeddings: corpora as sparse SAE concept vectors in DuckDB.

    \b
    saedata embed corpus.jsonl                 # train an SAE on the corpus, embed it into run.duckdb
    saedata latents --top 20                   # the commonest concepts, with labels
    saedata show 17                            # one document's concepts, strongest first
    saedata sql "SELECT label, count(*) FROM concepts GROUP BY ALL ORDER BY 2 DESC LIMIT 5"
    saedata diff a.jsonl b.jsonl               # which concepts are more common in one corpus
    saedata embed 'data/*.jsonl' --engine ray --out shards/   # on Ray, into Parquet shards
    """
    ctx.ensure_object(dict)
    ctx.obj["quiet"] = quiet


# -- shared options ------------------------------------------------------------------


def _quiet_option(f: Callable) -> Callable:
    def set_quiet(ctx: click.Context, _p: click.Parameter, value: bool) -> bool:
        if value:
            ctx.ensure_object(dict)["quiet"] = True
        return value

    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=set_quiet,
                        help="No progress bars or messages on stderr.")(f)


def _db_option(f: Callable) -> Callable:
    return click.option("--db", "--shards", "db", default="run.duckdb", show_default=True, envvar="SAEDATA_DB",
                        type=click.Path(), help="Concept store: a DuckDB file, or (read-only) a folder of "
                                                "Parquet shards from `embed --engine ray`.")(f)


def _format_option(f: Callable) -> Callable:
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                        help="Output format on stdout.")(f)


def _input_options(f: Callable) -> Callable:
    for opt in reversed([
        click.option("--text-field", default="text", show_default=True,
                     help="Field (JSONL/Parquet) or column (CSV) holding the text."),
        click.option("--id-field", default=None,
                     help="Field holding a unique document id [default: the line/row number]."),
        click.option("--input-format", type=click.Choice(["jsonl", "csv", "parquet", "txt", "images"]),
                     default=None,
                     help="Corpus format [default: from the file extension; jsonl for stdin; images for a "
                          "folder]. 'images' with a file reads it as a list of image paths."),
    ]):
        f = opt(f)
    return f


def _reader_options(f: Callable) -> Callable:
    for opt in reversed([
        click.option("--model", default=None,
                     help="Reader: Hugging Face model id or local directory "
                          "[default: the SAE's reader, else all-MiniLM-L6-v2, shipped offline]."),
        click.option("--layer", type=int, default=None,
                     help="Block whose residual-stream output is read; negative counts from the end "
                          "[default: the SAE's layer, else the last]."),
        click.option("--max-tokens", type=int, default=256, show_default=True,
                     help="Truncate documents longer than this many tokens (counted in the output)."),
        click.option("--batch-size", type=int, default=32, show_default=True, help="Documents per forward pass."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                     help="Where the reader and SAE run."),
        click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32",
                     show_default=True, help="Reader weights' dtype."),
    ]):
        f = opt(f)
    return f


def _train_options(f: Callable) -> Callable:
    for opt in reversed([
        click.option("--activation", type=click.Choice(ACTIVATIONS), default="topk", show_default=True,
                     help="SAE activation when training one."),
        click.option("--k", type=int, default=32, show_default=True, help="Active latents per token (TopK family)."),
        click.option("--expansion", type=int, default=8, show_default=True, help="d_sae = expansion x reader width."),
        click.option("--train-tokens", type=int, default=2_000_000, show_default=True,
                     help="Tokens to train the SAE on (the corpus is cycled when shorter)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed: same corpus + seed -> same SAE."),
    ]):
        f = opt(f)
    return f


def _input_cfg(text_field: str, id_field: str | None, input_format: str | None):
    from saedata.config import InputConfig

    return InputConfig(text_field=text_field, id_field=id_field, format=input_format)  # type: ignore[arg-type]


def _reader_cfg(model, layer, max_tokens, batch_size, device, dtype):
    from saedata.config import ReaderConfig

    return ReaderConfig(model=model, layer=layer, max_tokens=max_tokens, batch_size=batch_size,
                        device=device, dtype=dtype)


def _train_cfg(activation: str, k: int, expansion: int, train_tokens: int, seed: int, device: str):
    from saedata.config import TrainConfig

    return TrainConfig(activation=activation, k=k, expansion=expansion, max_tokens=train_tokens,  # type: ignore[arg-type]
                       seed=seed, device=device)


def _quiet(ctx: click.Context) -> bool:
    return bool(ctx.find_root().obj and ctx.find_root().obj.get("quiet")) or bool(
        ctx.obj and ctx.obj.get("quiet")
    )


def _log(ctx: click.Context) -> Callable[[str], None]:
    from saedata.console import silent, stderr_log

    return silent if _quiet(ctx) else stderr_log


def _emit(df: Any, fmt: str) -> None:
    """Write a polars frame to stdout in the chosen format."""
    import polars as pl

    if fmt == "json":
        click.echo(df.write_json())
    elif fmt == "csv":
        click.echo(df.write_csv(), nl=False)
    else:
        with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=60, tbl_hide_dataframe_shape=True,
                       tbl_hide_column_data_types=True, tbl_width_chars=160, float_precision=3):
            click.echo(str(df))


# -- commands ---------------------------------------------------------------------------


@main.command()
@click.argument("corpus", type=str)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to save the SAE in.")
@_train_options
@_reader_options
@_input_options
@_quiet_option
@click.pass_context
def train(ctx, corpus, out, activation, k, expansion, train_tokens, seed, model, layer, max_tokens,
          batch_size, device, dtype, text_field, id_field, input_format):
    """Train an SAE on the reader's activations of CORPUS and save it to --out.

    CORPUS is a .jsonl, .csv, .parquet or .txt file (or - for stdin). Prints the
    final FVU (fraction of variance unexplained), mean L0 and dead-latent fraction.
    """
    from saedata.fit import train as train_sae

    result = train_sae(
        corpus, out,
        input_cfg=_input_cfg(text_field, id_field, input_format),
        reader_cfg=_reader_cfg(model, layer, max_tokens, batch_size, device, dtype),
        train_cfg=_train_cfg(activation, k, expansion, train_tokens, seed, device),
        progress=not _quiet(ctx), log=_log(ctx),
    )
    m = result.metrics
    click.echo(f"saved {out}  fvu={m['fvu']:.4f}  l0={m['l0']:.1f}  dead={m['dead_fraction']:.3f}  "
               f"tokens={m['tokens']}  seconds={m['seconds']:.1f}")


@main.command()
@click.argument("corpus", nargs=-1, required=True)
@click.option("--sae", "sae_path", type=click.Path(exists=True, file_okay=False), default=None,
              help="SAE directory (saedata, SAELens or sparsify). Default: the store's SAE, else train one.")
@_db_option
@click.option("--name", default=None, help="Dataset name [default: the file name without extension].")
@click.option("--pooling", type=click.Choice(POOLINGS), default="max", show_default=True,
              help="How token codes become a document vector.")
@click.option("-v", "--verbose", is_flag=True, help="List every skipped file (images).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process, into --db. ray: a Ray Data actor pool, into Parquet shards in --out.")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Shard folder (--engine ray); query it with --shards, or `saedata import` it.")
@click.option("--num-workers", type=int, default=1, show_default=True,
              help="Ray actors, each with its own reader and SAE (--engine ray).")
@click.option("--gpus-per-worker", type=float, default=0.0, show_default=True,
              help="GPUs per Ray actor; > 0 runs the reader on CUDA (--engine ray).")
@click.option("--cpus-per-worker", type=float, default=1.0, show_default=True,
              help="CPU cores per Ray actor, also its torch threads (--engine ray).")
@click.option("--ray-address", default=None, envvar="RAY_ADDRESS",
              help="Ray cluster to join, e.g. ray://head:10001 [default: the running one, else a local Ray].")
@click.option("--part-docs", type=int, default=4096, show_default=True,
              help="Documents per shard part: the unit of work, of resuming, and of the Parquet files (--engine ray).")
@_reader_options
@_input_options
@_train_options
@_quiet_option
@click.pass_context
def embed(ctx, corpus, sae_path, db, name, pooling, verbose, engine, out, num_workers, gpus_per_worker,
          cpus_per_worker, ray_address, part_docs, model, layer, max_tokens, batch_size, device, dtype,
          text_field, id_field, input_format, activation, k, expansion, train_tokens, seed):
    """Embed CORPUS files into the store as interpretable concept vectors.

    Each file becomes a dataset. Without --sae, the store's SAE is reused, or one is
    trained on the first corpus (saved beside the store as NAME.sae/). Interrupted
    runs resume when rerun with the same arguments. A folder is read as images
    (recursively) with a vision encoder given by --model (ViT, CLIP, SigLIP, DINOv2).

    With --engine ray, CORPUS may be globs or URLs ('data/*.jsonl', 's3://b/*.jsonl'); the documents and
    activations are written as Parquet shards in --out (partitioned by dataset) by a
    pool of Ray actors, locally or on the cluster at --ray-address:

    \b
        saedata embed 'data/*.jsonl' --sae sae/ --engine ray --out shards/ \\
            --num-workers 4 --gpus-per-worker 1
    """
    from saedata.config import EmbedConfig
    from saedata.pipeline import embed as run_embed

    if name is not None and len(corpus) > 1:
        raise click.UsageError("--name names one dataset; give one CORPUS with it")
    if engine == "ray":
        from saedata.distributed import embed_ray

        if out is None:
            raise click.UsageError("--engine ray writes shards: give --out FOLDER")
        result = embed_ray(
            list(corpus), out, sae_path, names=[name] if name else None,
            input_cfg=_input_cfg(text_field, id_field, input_format),
            reader_cfg=_reader_cfg(model, layer, max_tokens, batch_size, device, dtype),
            embed_cfg=EmbedConfig(pooling=pooling),
            train_cfg=_train_cfg(activation, k, expansion, train_tokens, seed, device),
            num_workers=num_workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
            address=ray_address, part_docs=part_docs, progress=not _quiet(ctx), log=_log(ctx),
        )
        click.echo(
            f"{', '.join(result.datasets)}: {result.n_docs} documents in {result.n_parts} "
            f"part{'s' * (result.n_parts != 1)} in {out}/ "
            f"({result.n_new_parts} embedded now), {result.n_activations} activations, "
            f"{result.docs_per_second:.1f} docs/s; query with --shards {out}, or `saedata import {out}`"
        )
        return
    if out is not None:
        raise click.UsageError("--out is where --engine ray writes shards; the local engine writes to --db")
    for source in corpus:
        result = run_embed(
            source, db, sae_path, name=name,
            input_cfg=_input_cfg(text_field, id_field, input_format),
            reader_cfg=_reader_cfg(model, layer, max_tokens, batch_size, device, dtype),
            embed_cfg=EmbedConfig(pooling=pooling),
            train_cfg=_train_cfg(activation, k, expansion, train_tokens, seed, device),
            progress=not _quiet(ctx), log=_log(ctx), verbose=verbose,
        )
        if result.already_complete:
            continue
        click.echo(
            f"{result.dataset}: {result.n_docs} documents in {db} (dataset {result.dataset_id}, SAE "
            f"{result.sae_id}); {result.n_new} embedded now, {result.n_activations} activations, "
            f"{result.n_empty} empty skipped, {result.n_truncated} truncated, "
            f"{result.docs_per_second:.1f} docs/s"
        )


@main.command()
@_db_option
@click.option("--top", type=int, default=20, show_default=True, help="Rows to show (0 for all).")
@click.option("--sort", type=click.Choice(["freq", "max_act", "latent"]), default="freq", show_default=True)
@click.option("--label", "pattern", default=None, help="Only latents whose label matches this regex.")
@click.option("--sae-id", type=int, default=None, help="SAE to list when the store has several.")
@_format_option
@_quiet_option
def latents(db, top, sort, pattern, sae_id, fmt):
    """List latents with their label, document frequency and max activation."""
    from saedata.store import open as open_store

    with open_store(db) as store:
        df = store.latents(sae_id)
    if pattern:
        df = df.filter(df["label"].str.contains(pattern, literal=False).fill_null(False))
    df = df.sort(sort, descending=sort != "latent", nulls_last=True)
    _emit(df.head(top) if top else df, fmt)


@main.command()
@click.argument("doc")
@_db_option
@click.option("--dataset", default=None, help="Dataset of DOC when DOC is an external id.")
@click.option("--top", type=int, default=20, show_default=True, help="Concepts to show (0 for all).")
@_format_option
@_quiet_option
def show(doc, db, dataset, top, fmt):
    """Show a document's active concepts, strongest first.

    DOC is a doc_id, or the corpus's own id (ext_id) with --dataset.
    """
    from saedata.store import open as open_store

    with open_store(db) as store:
        row = store.document(int(doc) if doc.isdigit() and dataset is None else doc, dataset)
        concepts = store.doc_concepts(row["doc_id"])
    if fmt == "table":
        text = row["text"] if len(row["text"]) <= 300 else row["text"][:300] + "..."
        click.echo(f"doc {row['doc_id']} ({row['dataset']}:{row['ext_id']}, {row['n_tokens']} tokens)")
        click.echo(f"  {text}")
    _emit(concepts.head(top) if top else concepts, fmt)


@main.command()
@click.argument("query")
@_db_option
@_format_option
@_quiet_option
def sql(query, db, fmt):
    """Run any SQL QUERY over the concept store.

    Tables: datasets, documents, saes, latents, activations, word_counts; view:
    concepts; macros: latent_freq, latent_stats, top_docs, doc_concepts, word_at,
    word_before, cooccur, cooccur_docs and the analyses' own. The store opens read-only.
    """
    from saedata.store import open as open_store

    with open_store(db) as store:
        _emit(store.sql(query), fmt)


@main.command()
@_db_option
@_format_option
@_quiet_option
def datasets(db, fmt):
    """List the datasets in the store."""
    from saedata.store import open as open_store

    with open_store(db) as store:
        _emit(store.datasets(), fmt)


@main.command("import")
@click.argument("shards", type=click.Path(exists=True, file_okay=False))
@_db_option
@click.option("--dataset", "datasets", multiple=True, help="Import only this dataset (repeatable) [default: all].")
@_quiet_option
@click.pass_context
def import_cmd(ctx, shards, db, datasets):
    """Copy a shard folder (from `embed --engine ray`) into a store file.

    The SAE is reused when the store has the same weights; each shard dataset becomes
    a dataset of the store (doc ids renumbered after the store's own), then latent
    statistics and labels are recomputed over the store. All or nothing: an error
    leaves the store as it was.
    """
    from saedata.shards import import_shards

    result = import_shards(shards, db, datasets or None, log=_log(ctx))
    click.echo(f"{', '.join(result.datasets)}: {result.n_docs} documents, {result.n_activations} activations "
               f"imported into {db} (SAE {result.sae_id})")


@main.command()
@click.argument("table")
@click.argument("path", type=click.Path(dir_okay=False))
@_db_option
@_quiet_option
@click.pass_context
def export(ctx, table, path, db):
    """Export TABLE (or the concepts view) to a Parquet file at PATH."""
    from saedata.store import open as open_store

    with open_store(db) as store:
        out = store.export(table, path)
    _log(ctx)(f"wrote {out}")


@main.command()
@_db_option
@click.option("--sae-id", type=int, default=None, help="SAE to label when the store has several.")
@click.option("--llm", is_flag=True,
              help="Label with an LLM via an OpenAI-compatible endpoint (SAEDATA_LLM_BASE_URL, "
                   "SAEDATA_LLM_MODEL, SAEDATA_LLM_API_KEY).")
@click.option("--latents", "latent_ids", default=None,
              help="Comma-separated latent ids to label with --llm [default: the 50 most frequent].")
@_quiet_option
@click.pass_context
def label(ctx, db, sae_id, llm, latent_ids):
    """(Re)compute latent labels: offline contrastive keywords, or an LLM with --llm."""
    from saedata.label import label_latents, llm_labels
    from saedata.store import Store

    with Store(db, read_only=False) as store:
        sae_id = store.resolve_sae(sae_id)
        if not llm:
            n = label_latents(store, sae_id)
            _log(ctx)(f"labelled {n} latents with keywords")
            return
        if latent_ids:
            ids = [int(x) for x in latent_ids.split(",") if x.strip()]
        else:
            ids = store.sql("SELECT latent FROM latents WHERE sae_id = ? AND freq > 0 ORDER BY freq DESC LIMIT 50",
                            [sae_id])["latent"].to_list()
        labels = llm_labels(store, sae_id, ids)
        store.set_labels(sae_id, labels)
        _log(ctx)(f"labelled {labels.height} latents with {labels['label_source'][0] if labels.height else 'the LLM'}")


@main.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("-n", "--n-docs", type=int, default=600, show_default=True, help="Documents to write.")
@click.option("--seed", type=int, default=0, show_default=True)
@_quiet_option
@click.pass_context
def demo(ctx, path, n_docs, seed):
    """Write a small JSONL corpus with planted topics, sentiment and questions to PATH.

    Each line has id, text and the planted truth (topic, sentiment, is_question), so
    you can check the concepts saedata finds against what was put in.
    """
    from saedata.demo import make_corpus, write_jsonl

    write_jsonl(make_corpus(n_docs, seed=seed), path)
    _log(ctx)(f"wrote {n_docs} documents to {path}")


@main.command()
@click.argument("query", required=False)
@_db_option
@click.option("--latents", "latent_ids", default=None,
              help="Comma-separated latent ids to score by, instead of the latents the query maps to.")
@click.option("--dataset", default=None, help="Search one dataset [default: every dataset of the SAE].")
@click.option("--top", type=int, default=50, show_default=True, help="Documents to return.")
@click.option("--eval-field", default=None, help="Metadata field to report precision@top against.")
@click.option("--eval-value", default=None,
              help="Value of --eval-field that counts as relevant [default: true, for boolean fields].")
@click.option("--query-latents", type=int, default=128, show_default=True,
              help="Latents kept from the query's own activations (label matches come on top).")
@click.option("--sae-id", type=int, default=None, help="SAE to search with when the store has several.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where the query is read.")
@_format_option
@_quiet_option
@click.pass_context
def search(ctx, query, db, latent_ids, dataset, top, eval_field, eval_value, query_latents, sae_id, device, fmt):
    """Find the documents that show a property described by QUERY, best first.

    QUERY is read by the SAE's reader and mapped to latents (weighted by rarity, plus
    latents whose labels share its words); documents are scored from the stored
    activations alone. Phrase it as an example: "Why did the dog do that?".
    """
    from saedata.analysis.retrieve import search as run_search
    from saedata.config import ReaderConfig

    ids = None
    if latent_ids:
        try:
            ids = [int(x) for x in latent_ids.split(",") if x.strip()]
        except ValueError:
            raise click.BadParameter(f"expected comma-separated integers, got {latent_ids!r}",
                                     param_hint="--latents") from None
    if not (query and query.strip()) and not ids:
        raise click.UsageError("give a QUERY or --latents")
    result = run_search(db, query, latents=ids, dataset=dataset, top=top, eval_field=eval_field,
                        eval_value=eval_value, reader_cfg=ReaderConfig(device=device), sae_id=sae_id,
                        query_latents=query_latents)
    log = _log(ctx)
    n = result.query_latents.height
    log(f"{n} latents ({'by-latent index' if result.used_index else 'full scan'}), heaviest first:")
    for row in result.query_latents.head(10).iter_rows(named=True):
        log(f"  {row['latent']:>6}  {row['weight']:6.3f}  {row['source']:<11}  {row['label'] or ''}")
    if n > 10:
        log(f"  ... and {n - 10} more")
    _emit(result.docs, fmt)
    if result.precision is not None:
        click.echo(f"precision@{result.docs.height}: {result.precision:.2f} "
                   f"(base rate {result.base_rate:.2f}, {eval_field} = {result.eval_value})", err=True)


@main.command()
@_db_option
@_quiet_option
@click.pass_context
def index(ctx, db):
    """Build the by-latent copy of the activations that makes `saedata search` fast on large stores.

    Rebuild it after embedding more documents: until then search notices it is stale
    and scans the activations instead.
    """
    from saedata.store import Store

    with Store(db, read_only=False) as store:
        n = store.build_latent_index()
    _log(ctx)(f"indexed {n} activations by latent in {db}")


# -- vae ---------------------------------------------------------------------------------


def _size_option(f: Callable) -> Callable:
    def parse(_ctx: click.Context, _p: click.Parameter, value: str | None) -> tuple[int, int] | None:
        if value is None:
            return None
        try:
            w, _, h = value.lower().partition("x")
            size = (int(w), int(h or w))
        except ValueError:
            raise click.BadParameter(f"expected WIDTHxHEIGHT or one number, got {value!r}") from None
        if min(size) <= 0:
            raise click.BadParameter(f"sizes must be positive, got {value!r}")
        return size

    return click.option("--size", default=None, callback=parse,
                        help="Resize images to WIDTHxHEIGHT (or N for NxN) [default: the first image's size].")(f)


def _vae_data_options(f: Callable) -> Callable:
    for opt in reversed([
        click.option("--label-field", default=None,
                     help="Label column of a table (images: labels are their subfolder names)."),
        _size_option,
        click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
                     help="HTML report to write; the figures go beside it as vae_*.png."),
        click.option("-v", "--verbose", is_flag=True, help="List every skipped file."),
    ]):
        f = opt(f)
    return f


def _vae_summary(ctx: click.Context, data: Any, summary: Any, report: Any, files: list, verbose: bool,
                 fmt: str) -> None:
    log = _log(ctx)
    if verbose:
        for path, why in data.skipped:
            log(f"skipped {path}: {why}")
    _emit(report.filter(report["relevant"]).sort("relevance", descending=True), fmt)
    s = summary
    line = (f"relevant dims: {s.n_relevant}/{s.n_dims}  active units: {s.n_active}  KL: {s.kl:.2f} nats  "
            f"rows: {s.n_rows}  skipped files: {len(data.skipped)}")
    if s.recon_mse is not None:
        line += f"  recon MSE: {s.recon_mse:.5f}"
    if s.probe_accuracy is not None:
        line += f"  linear probe: {s.probe_accuracy:.3f} ± {s.probe_std:.3f}"
    click.echo(line, err=fmt != "table")
    for f in files:
        log(f"wrote {f}")


@main.group(cls=_Group)
def vae() -> None:
    """VAE latent probes: which latent dimensions of a VAE (or of a given encoder) matter.

    \b
    saedata vae fit digits/ --out digits.vae --prior ard --report vae.html
    saedata vae probe digits.vae digits/ --sae
    """


@vae.command("fit")
@click.argument("data", type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to save the VAE in.")
@click.option("--prior", type=click.Choice(["ard", "standard"]), default="ard", show_default=True,
              help="ard: per-dimension prior variances estimated from the encoded data (ARD-VAE); standard: N(0, I).")
@click.option("--latent-dim", type=int, default=32, show_default=True, help="Latent dimensions.")
@click.option("--epochs", type=int, default=100, show_default=True, help="Passes over the training rows.")
@click.option("--beta", type=float, default=1.0, show_default=True, help="Weight of the KL term.")
@click.option("--likelihood", type=click.Choice(["gaussian", "bernoulli"]), default="gaussian", show_default=True,
              help="Reconstruction loss: squared error, or cross-entropy for values in [0, 1].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed: same data + seed -> same VAE.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@_vae_data_options
@_format_option
@_quiet_option
@click.pass_context
def vae_fit(ctx, data, out, prior, latent_dim, epochs, beta, likelihood, seed, device, label_field, size,
            report_path, verbose, fmt):
    """Fit a VAE on DATA and report which latent dimensions are relevant.

    DATA is a folder of images (PNG, JPEG, ...; in class subfolders to give labels) or an
    embedding table (.parquet, .csv, .npy). Prints the relevant dimensions (per-dimension
    KL, ARD variance, relevance) and a summary: relevant and active counts, held-out
    reconstruction MSE, linear-probe accuracy of the relevant dimensions (with labels).
    The report (default OUT/report.html) holds the figures.
    """
    from saedata.analysis.vae_report import fit_on_data

    run = fit_on_data(data, out, report_path, label_field=label_field, size=size, progress=not _quiet(ctx),
                      log=_log(ctx), prior=prior, d_latent=latent_dim, epochs=epochs, beta=beta,
                      likelihood=likelihood, seed=seed, device=device)
    _vae_summary(ctx, run.data, run.result.summary, run.result.report, [run.out, *run.files], verbose, fmt)


@vae.command("probe")
@click.argument("encoder", type=click.Path(exists=True, file_okay=False))
@click.argument("data", type=click.Path(exists=True))
@click.option("--sae", "train_sae", is_flag=True,
              help="Train an SAE on the relevant dimensions and list its latents' top rows and classes.")
@click.option("--k", "sae_k", type=int, default=4, show_default=True, help="Active SAE latents per row (--sae).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
@_vae_data_options
@_format_option
@_quiet_option
@click.pass_context
def vae_probe(ctx, encoder, data, train_sae, sae_k, device, label_field, size, report_path, verbose, fmt):
    """Report which latent dimensions of ENCODER matter on DATA.

    ENCODER is a VAE saved by `saedata vae fit`, or a diffusers AutoencoderKL directory
    (pip install 'saedata[diffusers]'). DATA as for `saedata vae fit`.
    """
    from saedata.analysis.vae_report import probe_on_data

    run = probe_on_data(encoder, data, report_path, label_field=label_field, size=size, sae=train_sae,
                        sae_k=sae_k, device=device, log=_log(ctx))
    _vae_summary(ctx, run.data, run.summary, run.report, run.files, verbose, fmt)
    if run.concepts is not None:
        click.echo("SAE latents on the relevant dimensions:", err=fmt != "table")
        _emit(run.concepts.head(20).with_columns(run.concepts["top_rows"].head(20).list.join(", ")), fmt)


@main.command()
@click.argument("a", required=False)
@click.argument("b", required=False)
@_db_option
@click.option("--sae", "sae_path", type=click.Path(exists=True, file_okay=False), default=None,
              help="SAE directory for embedding files [default: the store's SAE, else train one on both].")
@click.option("--sae-id", type=int, default=None, help="SAE of the store to use when it has several.")
@click.option("--threshold", type=float, default=0.0, show_default=True,
              help="A latent is active in a document when |pooled value| > this.")
@click.option("--top", type=int, default=20, show_default=True, help="Rows to show (0 for all).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Write an offline HTML report (bars, table, example documents) here.")
@click.option("--no-length-control", is_flag=True,
              help="Skip the length-stratified comparison (adj_* columns) and rank by the raw difference.")
@click.option("--paired-on", default=None, help="Pair documents of A and B by this metadata field (McNemar).")
@click.option("--by", default=None,
              help="Split dataset A by this metadata column: each value vs the rest. `--by dataset` compares "
                   "every dataset (or A and B) each against the others.")
@click.option("--no-merge", is_flag=True, help="Keep near-duplicate latents as separate rows.")
@click.option("--examples", type=int, default=3, show_default=True, help="Example documents per side and latent.")
@_format_option
@_reader_options
@_input_options
@_train_options
@_quiet_option
@click.pass_context
def diff(ctx, a, b, db, sae_path, sae_id, threshold, top, report_path, no_length_control, paired_on, by,
         no_merge, examples, fmt, model, layer, max_tokens, batch_size, device, dtype, text_field, id_field,
         input_format, activation, k, expansion, train_tokens, seed):
    """Diff the concepts of A and B: which latents are more common on one side.

    A and B are two corpus files (embedded into --db first, training an SAE on both
    when the store has none) or two dataset names in --db (a store file or a shard
    folder). With --by COLUMN, A alone is split by a metadata column into one-vs-rest
    diffs; with --by dataset and no A, every dataset is compared with the others.
    Ranked by q-value, then by the size of the difference; the adj_* columns compare
    documents of similar length.
    """
    if a is None and by != "dataset":
        raise click.UsageError("give A (and B), or --by dataset to compare every dataset of the store")
    from saedata.analysis.diff import are_files, diff_files
    from saedata.analysis.diff import diff as run_diff
    from saedata.analysis.diff_report import display_table

    options = dict(by=by, threshold=threshold, length_control=not no_length_control, paired_on=paired_on,
                   merge_duplicates=not no_merge, examples=examples, sae_id=sae_id)
    if a is not None and are_files(a, b):
        from saedata.config import EmbedConfig

        result = diff_files(
            a, b, db, sae_path, input_cfg=_input_cfg(text_field, id_field, input_format),
            reader_cfg=_reader_cfg(model, layer, max_tokens, batch_size, device, dtype), embed_cfg=EmbedConfig(),
            train_cfg=_train_cfg(activation, k, expansion, train_tokens, seed, device),
            progress=not _quiet(ctx), log=_log(ctx), **options,
        )
    else:
        result = run_diff(db, a, b, **options)
    for w in result.warnings:
        _log(ctx)(f"warning: {w}")
    if report_path:
        _log(ctx)(f"wrote {result.write_report(report_path)}")
    table = result.table.head(top) if top else result.table
    if fmt == "table":
        click.echo(result.summary())
        adjusted = ["adj_diff", "adj_q"] if result.length_controlled else []
        paired = ["n_a_only", "n_b_only"] if result.paired_on else []
        cols = (["group"] if result.by else []) + ["latent", "label", "freq_a", "freq_b", "diff", *paired, "q",
                                                    *adjusted, "merged"]
        table = _readable_q(display_table(table.select(cols)))
    elif fmt == "csv":
        table = display_table(table)
    _emit(table, fmt)


@main.command()
@click.option("--target", required=True, help="Metadata column to predict (binary or numeric).")
@click.option("--dataset", default=None, help="Dataset to use [default: every dataset of the SAE].")
@_db_option
@click.option("--n-latents", type=int, default=10, show_default=True, help="Latents the sparse model keeps.")
@click.option("--threshold", type=float, default=0.0, show_default=True,
              help="A latent is present in a document when |pooled value| > this.")
@click.option("--sae-id", type=int, default=None, help="SAE of the store to use when it has several.")
@click.option("--top", type=int, default=20, show_default=True, help="Rows to show (0 for all).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the cross-validation folds.")
@_format_option
@_quiet_option
@click.pass_context
def associate(ctx, target, dataset, db, n_latents, threshold, sae_id, top, seed, fmt):
    """Find the latents that predict a metadata column (--target), with no LLM.

    A binary target (two values) gets an L1 logistic regression, a numeric one the
    Lasso, each keeping about --n-latents latents, and a cross-validated score (AUC or
    R^2). Every latent gets an effect size, a p-value and a q-value; chosen latents
    come first.
    """
    from saedata.analysis.associate import associate as run_associate

    result = run_associate(db, dataset, target, n_latents=n_latents, threshold=threshold, sae_id=sae_id,
                           seed=seed)
    for w in result.warnings:
        _log(ctx)(f"warning: {w}")
    table = result.table.head(top) if top else result.table
    if fmt == "table":
        click.echo(result.summary())
        table = _readable_q(table)
    else:
        _log(ctx)(result.summary())
    _emit(table, fmt)


def _readable_q(df: Any) -> Any:
    """p- and q-value columns as short text (3.2e-09), for the table format."""
    import polars as pl

    cols = [c for c in df.columns if c in ("p", "q", "adj_p", "adj_q")]
    return df.with_columns(pl.col(c).map_elements(lambda v: f"{v:.2g}", return_dtype=pl.String) for c in cols)


def _sci(df: Any, *cols: str) -> Any:
    """Columns of small numbers (p- and q-values) as text in scientific notation, for table output."""
    import polars as pl

    return df.with_columns(pl.col(c).map_elements(lambda v: f"{v:.1e}", return_dtype=pl.String) for c in cols)


def _latent_list(value: str | None, option: str) -> list[int] | None:
    """Parse a comma-separated list of latent ids (None when not given)."""
    if not value:
        return None
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}", param_hint=option) from None


@main.command()
@_db_option
@click.option("--dataset", "datasets_", multiple=True, help="Dataset to use (repeatable) [default: every dataset "
              "of the SAE].")
@click.option("--with", "column", default=None,
              help="Associate latents with this metadata column instead of with each other.")
@click.option("--as", "kind", type=click.Choice(["auto", "categorical", "numeric"]), default="auto",
              show_default=True, help="How to treat the --with column (auto: numbers are numeric).")
@click.option("--min-support", type=int, default=5, show_default=True,
              help="Latents and pairs must fire in at least this many documents.")
@click.option("--threshold", type=float, default=0.0, show_default=True,
              help="A latent fires in a document when |pooled value| > this.")
@click.option("--label", "pattern", default=None, help="Only latents whose label matches this regex.")
@click.option("--latents", "latent_ids", default=None, help="Only these comma-separated latent ids.")
@click.option("--top", type=int, default=20, show_default=True,
              help="Pairs to show (metadata: latents per class, or rows for a numeric column).")
@click.option("--alpha", type=float, default=0.05, show_default=True, help="q-value cut for significance.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Write an offline HTML report (heatmap, table, example documents) here.")
@click.option("--sae-id", type=int, default=None, help="SAE of the store to use when it has several.")
@_format_option
@_quiet_option
@click.pass_context
def correlate(ctx, db, datasets_, column, kind, min_support, threshold, pattern, latent_ids, top, alpha,
              report_path, sae_id, fmt):
    """Find latents that fire together more than chance, or that go with a metadata column.

    Pairs are counted in DuckDB, scored by NPMI (-1..1) and phi, tested (chi-square,
    or Fisher's exact test for small counts) with BH q-values, and ranked by NPMI
    among significant pairs; `redundant` marks two latents with nearly the same
    documents. With --with COLUMN: per-class frequencies and a chi-square test per
    latent (categorical), or Spearman's rho (numeric).
    """
    from saedata.analysis import correlate as corr

    names = list(datasets_) or None
    ids = _latent_list(latent_ids, "--latents")
    log = _log(ctx)
    if top < 1:
        raise click.BadParameter(f"must be at least 1, got {top}", param_hint="--top")
    if column is not None:
        result = corr.correlate_metadata(db, names, column, kind=kind, min_support=min_support,
                                         threshold=threshold, label_pattern=pattern, latents=ids, per_class=top,
                                         alpha=alpha, sae_id=sae_id)
        for w in result.warnings:
            log(f"warning: {w}")
        log(f"{result.n_docs} documents ({', '.join(result.datasets)}); {result.latents.height} latents tested "
            f"against {result.kind} column {column!r}; {int((result.latents['q'] <= alpha).sum())} with "
            f"q <= {alpha}")
        if report_path:
            log(f"wrote {corr.write_metadata_report(result, report_path)}")
        if result.kind == "categorical":
            _emit(_sci(result.classes, "q") if fmt == "table" else result.classes, fmt)
        else:
            table = result.latents.head(top)
            _emit(_sci(table.select("latent", "label", "n_docs", "freq", "rho", "q"), "q") if fmt == "table"
                  else table, fmt)
        return
    result = corr.correlate(db, names, min_support=min_support, threshold=threshold, label_pattern=pattern,
                            latents=ids, top=top, alpha=alpha, sae_id=sae_id)
    for w in result.warnings:
        log(f"warning: {w}")
    log(f"{result.n_docs} documents ({', '.join(result.datasets)}); {result.n_tested} pairs of "
        f"{result.n_latents} latents fire together in >= {min_support} documents; {result.n_significant} "
        f"significant at q <= {alpha}")
    if report_path:
        log(f"wrote {corr.write_correlate_report(result, report_path)}")
    pairs = result.pairs
    if fmt == "table":
        pairs = _sci(pairs.select("rank", "latent_i", "label_i", "latent_j", "label_j", "n_ij", "npmi", "phi", "q",
                                  "redundant"), "q")
    _emit(pairs, fmt)


@main.command()
@_db_option
@click.option("--dataset", "datasets_", multiple=True, help="Dataset to use (repeatable) [default: every dataset "
              "of the SAE].")
@click.option("--axis", default=None,
              help="Cluster along this axis, in words (e.g. sentiment): latents whose label has one of "
                   "its words, or whose label's embedding is close to it.")
@click.option("--label", "pattern", default=None, help="Cluster on latents whose label matches this regex.")
@click.option("--latents", "latent_ids", default=None, help="Cluster on these comma-separated latent ids.")
@click.option("--method", type=click.Choice(["kmeans", "hdbscan"]), default="kmeans", show_default=True)
@click.option("--k", type=int, default=None, help="Number of k-means clusters [default: estimated by silhouette].")
@click.option("--max-k", type=int, default=12, show_default=True, help="Largest k tried when estimating k.")
@click.option("--min-cluster-size", type=int, default=10, show_default=True, help="HDBSCAN's smallest cluster.")
@click.option("--scale", type=click.Choice(["values", "binary", "tfidf"]), default="values", show_default=True,
              help="Features: pooled values, 0/1, or 0/1 weighted by rarity (rows at unit length).")
@click.option("--top", type=int, default=20, show_default=True, help="Most latents an --axis picks.")
@click.option("--compare", is_flag=True, help="Also cluster on all latents and compare (adjusted Rand index).")
@click.option("--eval-field", default=None, help="Score the clusterings against this metadata column (ARI, NMI).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Write an offline HTML report here, and the 2-D map beside it as PNG.")
@click.option("--png", "png_path", type=click.Path(dir_okay=False), default=None,
              help="Write the 2-D map (UMAP, coloured by cluster) as PNG here.")
@click.option("--assignments", is_flag=True, help="Print one row per document instead of one per cluster.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed: same input + seed -> same clusters.")
@click.option("--sae-id", type=int, default=None, help="SAE of the store to use when it has several.")
@_format_option
@_quiet_option
@click.pass_context
def cluster(ctx, db, datasets_, axis, pattern, latent_ids, method, k, max_k, min_cluster_size, scale, top, compare,
            eval_field, report_path, png_path, assignments, seed, sae_id, fmt):
    """Cluster documents on the latents of one axis, and describe each cluster.

    --axis TEXT picks latents whose label contains a word of TEXT (or its plural or
    singular), plus those whose label, embedded with the default reader, is most
    similar to TEXT (cosine >= 0.3 and 3 SD above the average label); --label and
    --latents name them directly. Without any, all latents are used. The latents
    picked are listed on stderr. Clusters are described by the latents (of all) with
    the highest lift in them.
    """
    from saedata.analysis.cluster import cluster as run_cluster
    from saedata.analysis.cluster import cluster_map, write_cluster_report

    log = _log(ctx)
    result = run_cluster(db, list(datasets_) or None, axis=axis, latents=_latent_list(latent_ids, "--latents"),
                         label_pattern=pattern, method=method, k=k, max_k=max_k, seed=seed,
                         min_cluster_size=min_cluster_size, scale=scale, map=bool(report_path or png_path),
                         unfiltered=compare, eval_field=eval_field, top=top, sae_id=sae_id)
    used = result.latents_used
    log(f"clustering {result.n_docs} documents ({', '.join(result.datasets)}) on {used.height} latents:")
    for row in used.head(30).iter_rows(named=True):
        score = f"{row['score']:.2f}" if row["score"] is not None else "   -"
        log(f"  {row['latent']:>6}  {score}  {row['label'] or ''}")
    if used.height > 30:
        log(f"  ... and {used.height - 30} more")
    for w in result.warnings:
        log(f"warning: {w}")
    for row in result.comparison.iter_rows(named=True):
        sil = f"{row['silhouette']:.3f}" if row["silhouette"] is not None else "n/a"
        ev = f"; vs {row['field']}: ARI {row['ari']:.3f}, NMI {row['nmi']:.3f}" if row["field"] else ""
        log(f"{row['clustering']} ({row['n_latents']} latents): {method}, k = {row['k']}, silhouette {sil}{ev}")
    if result.ari_unfiltered is not None:
        log(f"ARI between the filtered clustering and the one on all latents: {result.ari_unfiltered:.3f}")
    if report_path:
        html_path, png_written = write_cluster_report(result, report_path, png=png_path)
        log(f"wrote {html_path}" + (f" and {png_written}" if png_written else ""))
    elif png_path:
        fig = cluster_map(result)
        if fig is not None:
            from saedata.plot import save_png

            log(f"wrote {save_png(fig, png_path)}")
    _emit(result.assignments if assignments else result.clusters, fmt)


@main.group(cls=_Group)
def probe() -> None:
    """Probe a stored dataset's SAE codes against the reader's dense embedding.

    \b
    saedata probe codes --dataset photos --label-field folder   # linear probe + concept purity
    saedata probe ood --in photos --out other_photos            # out-of-distribution AUROC
    """


@probe.command("codes")
@click.option("--dataset", required=True, help="Dataset to probe.")
@click.option("--label-field", required=True, help="Metadata column with the class (e.g. folder for images).")
@_db_option
@click.option("--cv", type=int, default=5, show_default=True, help="Cross-validation folds.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
@_format_option
@_quiet_option
@click.pass_context
def probe_codes(ctx, dataset, label_field, db, cv, device, fmt):
    """Linear-probe accuracy and concept purity of SAE codes vs the dense embedding.

    The dense embedding is the mean reader activation of each document at the SAE's
    layer (the reader runs once over the dataset); codes are the stored activations.
    """
    import polars as pl

    from saedata.analysis.probe_store import probe_dataset

    r = probe_dataset(db, dataset, label_field, cv=cv, device=device)
    _log(ctx)(f"{r.dataset}: {r.n_docs} documents, {r.n_classes} classes of {r.label_field!r}")
    _emit(pl.DataFrame({
        "features": ["sae codes", "dense embedding"],
        "probe_accuracy": [r.codes_accuracy, r.dense_accuracy],
        "accuracy_std": [r.codes_accuracy_std, r.dense_accuracy_std],
        "median_best_auroc": r.summary["median_best_auroc"].to_list(),
        "mean_class_auroc": r.summary["mean_class_auroc"].to_list(),
        "median_entropy": r.summary["median_entropy"].to_list(),
    }), fmt)


@probe.command("ood")
@click.option("--in", "in_dataset", required=True, help="In-distribution dataset (the SAE's own data).")
@click.option("--out", "out_dataset", required=True, help="Dataset to tell apart from it.")
@_db_option
@click.option("--holdout", type=float, default=0.3, show_default=True,
              help="Share of the in-dataset held out as in-distribution test rows.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
@_format_option
@_quiet_option
def probe_ood_cmd(in_dataset, out_dataset, db, holdout, device, fmt):
    """Out-of-distribution detection from SAE codes and reconstruction error (AUROC)."""
    import polars as pl

    from saedata.analysis.probe_store import probe_ood

    r = probe_ood(db, in_dataset, out_dataset, holdout=holdout, device=device)
    _emit(pl.DataFrame({"score": ["codes + reconstruction", "reconstruction error", "code distance"],
                        "auroc": [r.auroc, r.auroc_recon_only, r.auroc_codes_only],
                        "n_test_in": [r.n_test_in] * 3, "n_test_out": [r.n_test_out] * 3}), fmt)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
