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
    return click.option("--db", default="run.duckdb", show_default=True, envvar="SAEDATA_DB",
                        type=click.Path(dir_okay=False), help="Concept store (DuckDB file).")(f)


def _format_option(f: Callable) -> Callable:
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                        help="Output format on stdout.")(f)


def _input_options(f: Callable) -> Callable:
    for opt in reversed([
        click.option("--text-field", default="text", show_default=True,
                     help="Field (JSONL/Parquet) or column (CSV) holding the text."),
        click.option("--id-field", default=None,
                     help="Field holding a unique document id [default: the line/row number]."),
        click.option("--input-format", type=click.Choice(["jsonl", "csv", "parquet", "txt"]), default=None,
                     help="Corpus format [default: from the file extension; jsonl for stdin]."),
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
@_reader_options
@_input_options
@_train_options
@_quiet_option
@click.pass_context
def embed(ctx, corpus, sae_path, db, name, pooling, model, layer, max_tokens, batch_size, device, dtype,
          text_field, id_field, input_format, activation, k, expansion, train_tokens, seed):
    """Embed CORPUS files into the store as interpretable concept vectors.

    Each file becomes a dataset. Without --sae, the store's SAE is reused, or one is
    trained on the first corpus (saved beside the store as NAME.sae/). Interrupted
    runs resume when rerun with the same arguments.
    """
    from saedata.config import EmbedConfig
    from saedata.pipeline import embed as run_embed

    if name is not None and len(corpus) > 1:
        raise click.UsageError("--name names one dataset; give one CORPUS with it")
    for source in corpus:
        result = run_embed(
            source, db, sae_path, name=name,
            input_cfg=_input_cfg(text_field, id_field, input_format),
            reader_cfg=_reader_cfg(model, layer, max_tokens, batch_size, device, dtype),
            embed_cfg=EmbedConfig(pooling=pooling),
            train_cfg=_train_cfg(activation, k, expansion, train_tokens, seed, device),
            progress=not _quiet(ctx), log=_log(ctx),
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

    Tables: datasets, documents, saes, latents, activations; view: concepts; macros:
    latent_freq, latent_stats, top_docs, doc_concepts. The store opens read-only.
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
