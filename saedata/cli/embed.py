"""Commands that make document codes: train, embed (local or Ray), import, pool."""

from __future__ import annotations

import click

import saedata
from saedata.cli.app import Group, main
from saedata.cli.options import (
    COUNT,
    Real,
    db_option,
    emit,
    example,
    format_option,
    input_options,
    log,
    progress,
    quiet_option,
    reader_options,
    replace_option,
    report_option,
    train_options,
)
from saedata.config import CHAT_TOKENS, DTYPES, EXPORT_FORMATS, POOLINGS


@main.command(epilog=example("saedata train a.jsonl --out sae/ --train-tokens 20000"))
@click.argument("corpus", type=str)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to save the SAE in.")
@train_options
@reader_options
@input_options
@quiet_option
@click.pass_context
def train(ctx, corpus, out, **kw):
    """Train an SAE on the reader's activations of CORPUS and save it to --out.

    CORPUS is a .jsonl, .csv, .parquet or .txt file (or - for stdin). Prints the
    final FVU (fraction of variance unexplained), mean L0 and dead-latent fraction.
    """
    from saedata.cli.options import configs

    result = saedata.train(corpus, out, **configs(kw), **progress(ctx))
    m = result.metrics
    click.echo(f"saved {out}  fvu={m['fvu']:.4f}  l0={m['l0']:.1f}  dead={m['dead_fraction']:.3f}  "
               f"tokens={m['tokens']}  seconds={m['seconds']:.1f}")


@main.command(epilog=example(
    "saedata embed b.jsonl --name b_again --id-field id --store-tokens",
    "saedata embed a.jsonl b.jsonl --sae run.sae --id-field id --engine ray --out shards/ --num-workers 2",
))
@click.argument("corpus", nargs=-1, required=True)
@click.option("--sae", "sae_path", type=str, default=None,
              help="SAE: a directory (saedata, SAELens or sparsify), a Goodfire .pth file, or "
                   "hf://OWNER/REPO[/PATH][@REVISION] from the Hugging Face Hub. Default: the store's SAE, "
                   "else train one.")
@db_option
@click.option("--name", default=None, help="Dataset name [default: the file name without extension].")
@click.option("--pooling", type=click.Choice(POOLINGS), default="max", show_default=True,
              help="How token codes become a document vector.")
@click.option("--chat-tokens", type=click.Choice(CHAT_TOKENS), default="assistant", show_default=True,
              help="Chat transcripts (a text field holding [{role, content}, ...]): pool the assistant "
                   "messages' tokens, or all tokens (template and prompts too).")
@click.option("--sae-dtype", type=click.Choice(DTYPES), default=None,
              help="dtype the SAE computes in [default: the one it was saved in].")
@click.option("--store-tokens", is_flag=True,
              help="Also keep every token's codes (token_activations): every span where a latent fires "
                   "(saedata show DOC --tokens) and `saedata pool` without the corpus; a few times the "
                   "store's size.")
@click.option("-v", "--verbose", is_flag=True, help="List every skipped file (images).")
@replace_option
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process, into --db. ray: a Ray Data actor pool, into Parquet shards in --out.")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Shard folder (--engine ray); query it with --shards, or `saedata import` it.")
@click.option("--num-workers", type=click.IntRange(1, 10_000), default=1, show_default=True,
              help="Ray actors, each with its own reader and SAE (--engine ray).")
@click.option("--gpus-per-worker", type=Real(0, 1024), default=0.0, show_default=True,
              help="GPUs per Ray actor; > 0 runs the reader on CUDA (--engine ray).")
@click.option("--cpus-per-worker", type=Real(0, 4096, min_open=True), default=1.0, show_default=True,
              help="CPU cores per Ray actor, also its torch threads (--engine ray).")
@click.option("--ray-address", default=None, envvar="RAY_ADDRESS",
              help="Ray cluster to join, e.g. ray://head:10001 [default: the running one, else a local Ray].")
@click.option("--part-docs", type=COUNT, default=4096, show_default=True,
              help="Documents per shard part: the unit of work, of resuming, and of the Parquet files (--engine ray).")
@reader_options
@input_options
@train_options
@quiet_option
@click.pass_context
def embed(ctx, corpus, sae_path, db, name, verbose, replace, engine, out, num_workers, gpus_per_worker,
          cpus_per_worker, ray_address, part_docs, **kw):
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
    from saedata.cli.options import configs

    if name is not None and len(corpus) > 1:
        raise click.UsageError("--name names one dataset; give one CORPUS with it")
    cfgs = configs(kw)
    if engine == "ray":
        if out is None:
            raise click.UsageError("--engine ray writes shards: give --out FOLDER")
        result = saedata.embed_ray(
            list(corpus), out, sae_path, names=[name] if name else None, **cfgs, num_workers=num_workers,
            gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, address=ray_address,
            part_docs=part_docs, **progress(ctx),
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
        result = saedata.embed(source, db, sae_path, name=name, **cfgs, **progress(ctx), verbose=verbose,
                               replace=replace)
        if result.already_complete:
            continue
        click.echo(
            f"{result.dataset}: {result.n_docs} documents in {db} (dataset {result.dataset_id}, SAE "
            f"{result.sae_id}); {result.n_new} embedded now, {result.n_activations} activations, "
            f"{result.n_empty} empty skipped, {result.n_truncated} truncated, "
            f"{result.docs_per_second:.1f} docs/s"
        )


@main.command("import", epilog=example("saedata import shards/ --db merged.duckdb"))
@click.argument("shards", type=click.Path(exists=True, file_okay=False))
@db_option
@click.option("--dataset", "datasets", multiple=True, help="Import only this dataset (repeatable) [default: all].")
@quiet_option
@click.pass_context
def import_cmd(ctx, shards, db, datasets):
    """Copy a shard folder (from `embed --engine ray`) into a store file.

    The SAE is reused when the store has the same weights; each shard dataset becomes
    a dataset of the store (doc ids renumbered after the store's own), then latent
    statistics and labels are recomputed over the store. All or nothing: an error
    leaves the store as it was.
    """
    result = saedata.import_shards(shards, db, datasets or None, log=log(ctx))
    click.echo(f"{', '.join(result.datasets)}: {result.n_docs} documents, {result.n_activations} activations "
               f"imported into {db} (SAE {result.sae_id})")


@main.command(epilog=example("saedata pool b_again --pooling mean"))
@click.argument("dataset")
@click.option("--pooling", type=click.Choice(POOLINGS), required=True,
              help="max (the paper's), mean, sum, or count (tokens the latent fired on).")
@db_option
@quiet_option
@click.pass_context
def pool(ctx, dataset, pooling, db):
    """Pool DATASET's documents again from its token codes, without the corpus or reader.

    Needs a dataset embedded with --store-tokens. Its activations are replaced, and its
    statistics and the labels recomputed, in one transaction: an error or a kill
    leaves it as it was. Presence (what diff and correlate count) does not change;
    values (search, cluster --scale values, latent rankings) do.
    """
    r = saedata.repool(db, dataset, pooling, log=log(ctx))
    click.echo(f"{r.dataset}: {r.n_docs} documents pooled with {r.pooling} (was {r.previous}) from "
               f"{r.n_token_codes} token codes: {r.n_activations} activations in {db}")


@main.group(cls=Group, epilog=example("saedata sae export run.sae for-saelens/ --to saelens"))
def sae() -> None:
    """Work with SAE directories: evaluate and compare them, export one for SAELens or sparsify.

    \b
    saedata sae eval run.sae other.sae --corpus heldout.jsonl   # FVU, L0, dead latents, ...
    saedata sae export run.sae for-saelens/ --to saelens    # SAE.load_from_disk("for-saelens")
    saedata sae export run.sae layers.5 --to sparsify       # SparseCoder.load_from_disk("layers.5")
    """


@sae.command("eval", epilog=example("saedata sae eval run.sae --corpus b.jsonl --concept topic --report eval.html"))
@click.argument("saes", nargs=-1, required=True)
@click.option("--corpus", required=True, help="Held-out corpus to read token activations from (not the one the "
                                              "SAEs were trained on).")
@click.option("--tokens", type=COUNT, default=200_000, show_default=True,
              help="Most token activations to read (documents sampled evenly over the corpus).")
@click.option("--concept", "concept", default=None,
              help="Categorical metadata field: each of its values is a concept, and every SAE gets the mean over "
                   "concepts of its best latent's JS distance between documents with and without it.")
@click.option("--db", default=None, type=click.Path(),
              help="A store the SAEs may be registered in: adds the median label score of each SAE found there.")
@format_option
@report_option("Also write an offline HTML report (FVU against mean L0 across the SAEs) to this file.")
@reader_options
@input_options
@quiet_option
@click.pass_context
def sae_eval(ctx, saes, corpus, tokens, concept, db, fmt, report_path, **kw):
    """Evaluate SAEs on the same token activations of a held-out corpus.

    SAES are directories (saedata, SAELens, sparsify), Goodfire .pth files or hf:// paths,
    all reading the same reader, layer and width. One row per SAE: fvu (fraction of
    variance unexplained), l0 (mean active latents per token) with its std, p10 and p90,
    dead (never fired) and dense (fired on > 10% of tokens) latent fractions, afa_ratio and
    eps_lbo (norm matching, quasi-orthogonality bound), coh_max / coh_mean (|cos| between
    decoder atoms); js_sep with --concept (mean over concepts of the best latent's
    Jensen-Shannon distance); label_score with --db. JSON adds each concept's best latent.
    """
    from saedata.cli.options import configs

    result = saedata.eval_saes(list(saes), corpus, tokens=tokens, concept=concept, db=db, **configs(kw),
                               **progress(ctx))
    if fmt == "json":
        click.echo(result.to_json())
    else:
        emit(result.table, fmt)
    if report_path:
        saedata.write_report(result, report_path)
        log(ctx)(f"wrote {report_path}")


@sae.command("export", epilog=example("saedata sae export run.sae for-saelens/ --to saelens"))
@click.argument("sae_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--to", "fmt", type=click.Choice(EXPORT_FORMATS), required=True, help="The library to write for.")
def sae_export(sae_dir, out, fmt):
    """Write the SAE at SAE_DIR to OUT in SAELens's or sparsify's own layout.

    saedata's input scale is folded into the weights, so the library computes the same
    codes from the reader's activations; the reader, layer and hook point are written
    as that library names them. sparsify takes TopK SAEs only; neither takes TopAFA.
    """
    sae = saedata.load_sae(sae_dir)
    cfg = sae.cfg
    path, where = saedata.export_sae(sae, out, to=fmt)
    note = ""
    if fmt == "sparsify" and where != path.name:
        note = (f"; sparsify (and saedata) take the hookpoint from the folder name: call it {where}" if where
                else "; sparsify has no hookpoint name for it")
    click.echo(f"wrote {path} for {fmt}: {cfg.activation} SAE, {cfg.d_in} -> {cfg.d_sae}, reads "
               f"{where or f'layer {cfg.layer} {cfg.hook}'}{note}")
