"""Options that several commands share, defined once, and how results reach stdout.

Each ``*_option`` returns a Click decorator; the ``*_options`` groups stack several
(the corpus, the reader, SAE training). ``emit`` writes a frame to stdout in the chosen
``--format``; messages go to stderr through ``log(ctx)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from saedata.config import ACTIVATIONS, DTYPES, HOOKS, METHODS, EmbedConfig, InputConfig, ReaderConfig, TrainConfig

FORMATS = ("table", "json", "csv")
DEVICES = ("auto", "cpu", "cuda")

COUNT = click.IntRange(1, 1_000_000_000)
"""A positive count (documents, latents, folds, tokens): bounded, so no value overflows later."""
CARDINAL = click.IntRange(0, 1_000_000_000)
"""A count that may be 0."""
SEED = click.IntRange(0, 2**32 - 1)
"""A seed, in the range every library here accepts."""


class Real(click.FloatRange):
    """A finite number in a range (Click's FloatRange lets NaN through every bound)."""

    name = "float"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        number = super().convert(value, param, ctx)
        if number != number or number in (float("inf"), float("-inf")):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number

Decorator = Callable[[Callable], Callable]


def _stack(*options: Decorator) -> Decorator:
    def apply(f: Callable) -> Callable:
        for opt in reversed(options):
            f = opt(f)
        return f

    return apply


# -- single options ---------------------------------------------------------------------


def quiet_option(f: Callable) -> Callable:
    def set_quiet(ctx: click.Context, _p: click.Parameter, value: bool) -> bool:
        if value:
            ctx.ensure_object(dict)["quiet"] = True
        return value

    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=set_quiet,
                        help="No progress bars or messages on stderr.")(f)


def db_option(f: Callable) -> Callable:
    return click.option("--db", "--shards", "db", default="run.duckdb", show_default=True, envvar="SAEDATA_DB",
                        type=click.Path(), help="Concept store: a DuckDB file, or (read-only) a folder of "
                                                "Parquet shards from `embed --engine ray`.")(f)


def format_option(f: Callable) -> Callable:
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                        help="Output format on stdout.")(f)


def device_option(default: str = "auto", help: str = "Where the reader and SAE run.") -> Decorator:  # noqa: A002
    return click.option("--device", type=click.Choice(DEVICES), default=default, show_default=True, help=help)


def sae_id_option(f: Callable) -> Callable:
    return click.option("--sae-id", type=COUNT, default=None, help="SAE of the store to use when it has several.")(f)


def datasets_option(f: Callable) -> Callable:
    return click.option("--dataset", "datasets", multiple=True,
                        help="Dataset to use (repeatable) [default: every complete dataset of the SAE].")(f)


def top_option(default: int, help: str) -> Decorator:  # noqa: A002
    return click.option("--top", type=click.IntRange(0, 1_000_000_000), default=default, show_default=True,
                        help=help)


def threshold_option(f: Callable) -> Callable:
    return click.option("--threshold", type=Real(min=0), default=0.0, show_default=True,
                        help="Count a latent only where |pooled value| > this.")(f)


def presence_option(f: Callable) -> Callable:
    return click.option("--presence", type=click.Choice(["excess", "any"]), default="excess", show_default=True,
                        help="When a concept counts as present in a document: excess = it fires on more of the "
                             "document's tokens than chance at its rate in the analysed documents (does not grow "
                             "with length); any = it fires on any token.")(f)


def seed_option(help: str = "Seed: same input + seed -> same result.") -> Decorator:  # noqa: A002
    return click.option("--seed", type=SEED, default=0, show_default=True, help=help)


def new_file(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A file to write, checked before any work: its folder exists, and it is not a folder."""
    if value is None:
        return None
    from pathlib import Path

    path = Path(value)
    if path.is_dir():
        raise click.BadParameter(f"{value} is a folder; give a file name", param=param)
    if not path.resolve().parent.is_dir():
        raise click.BadParameter(f"folder {path.parent} does not exist", param=param)
    return value


def report_option(help: str) -> Decorator:  # noqa: A002
    return click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None, callback=new_file,
                        help=help)


def replace_option(f: Callable) -> Callable:
    return click.option("--replace", is_flag=True,
                        help="Embed a corpus again when its file changed since its dataset was embedded "
                             "(or the name holds another file's dataset): the old rows are removed.")(f)


def _latent_ids(_ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}", param=param) from None


def latents_option(help: str) -> Decorator:  # noqa: A002
    return click.option("--latents", "latent_ids", default=None, callback=_latent_ids, help=help)


# -- groups of options -------------------------------------------------------------------

input_options = _stack(
    click.option("--text-field", default="text", show_default=True,
                 help="Field (JSONL/Parquet) or column (CSV) holding the text, or a chat transcript: "
                      "a list of {role, content} messages."),
    click.option("--id-field", default=None,
                 help="Field holding a unique document id [default: the line/row number]."),
    click.option("--input-format", type=click.Choice(["jsonl", "csv", "parquet", "txt", "images"]), default=None,
                 help="Corpus format [default: from the file extension; jsonl for stdin; images for a "
                      "folder]. 'images' with a file reads it as a list of image paths."),
)

reader_options = _stack(
    click.option("--model", default=None,
                 help="Reader: Hugging Face model id or local directory "
                      "[default: the SAE's reader, else all-MiniLM-L6-v2, shipped offline]."),
    click.option("--layer", type=click.IntRange(-1000, 1000), default=None,
                 help="Block read; negative counts from the end [default: the SAE's layer, else the last]."),
    click.option("--hook", type=click.Choice(HOOKS), default=None,
                 help="Hook point read in that block, as TransformerLens names it: resid_post (the block's "
                      "output), resid_pre (its input), attn_out / mlp_out (what attention / the MLP adds to the "
                      "residual stream), z (attention heads before the output projection), mlp_post (MLP "
                      "hidden units) [default: the SAE's, else resid_post]."),
    click.option("--head", type=click.IntRange(0, None), default=None,
                 help="With --hook z: read one attention head [default: the SAE's, else every head]."),
    click.option("--max-tokens", type=click.IntRange(2, 1_000_000), default=256, show_default=True,
                 help="Truncate documents longer than this many tokens (counted in the output)."),
    click.option("--batch-size", type=COUNT, default=32, show_default=True, help="Documents per forward pass."),
    device_option(),
    click.option("--dtype", type=click.Choice(DTYPES), default="float32",
                 show_default=True, help="Reader weights' dtype."),
)

train_options = _stack(
    click.option("--activation", type=click.Choice(ACTIVATIONS), default="topk", show_default=True,
                 help="SAE activation when training one (snmf: made by --method snmf)."),
    click.option("--k", type=COUNT, default=32, show_default=True, help="Active latents per token (TopK family)."),
    click.option("--expansion", type=click.IntRange(1, 1024), default=8, show_default=True,
                 help="d_sae = expansion x reader width."),
    click.option("--train-passes", type=click.FloatRange(0, 25, min_open=True), default=1.5, show_default=True,
                 help="Passes over the corpus's tokens to train the SAE on (at least 500,000 tokens: a small "
                      "corpus is cycled, at most 25 times)."),
    click.option("--train-tokens", type=COUNT, default=2_000_000, show_default=True,
                 help="Most tokens to train the SAE on."),
    click.option("--stop-tolerance", type=click.FloatRange(0, 1, max_open=True), default=0.01, show_default=True,
                 help="Stop training once the FVU of held-out tokens improved by less than this fraction over "
                      "the last 10%% of the budget (0: train the whole budget)."),
    click.option("--method", type=click.Choice(METHODS), default="sae", show_default=True,
                 help="What learns the dictionary: sae (gradient descent), snmf (semi-NMF of MLP activations: "
                      "--hook mlp_post by default, features over few neurons, non-negative codes), gsae (TopK SAE "
                      "whose training picks latents by the next-token loss's gradient too; causal readers only), vsae "
                      "(variational TopK SAE: a Gaussian posterior and a KL term while training), gba (ReLU SAE "
                      "whose biases are adapted towards per-group firing targets adding up to --k)."),
    click.option("--snmf-sparsity", type=Real(0, 1, min_open=True), default=0.1, show_default=True,
                 help="--method snmf: share of the neurons each feature may combine (1: dense features)."),
    click.option("--snmf-iters", type=COUNT, default=200, show_default=True,
                 help="--method snmf: iterations of the factorisation."),
    click.option("--gsae-beta", type=Real(0), default=1.0, show_default=True,
                 help="--method gsae: weight of the gradient term in the training selection (0: plain TopK)."),
    click.option("--vsae-kl", type=Real(0), default=0.5, show_default=True,
                 help="--method vsae: weight of the KL term (0.5: the negative ELBO)."),
    click.option("--gba-groups", type=COUNT, default=10, show_default=True,
                 help="--method gba: groups of latents with geometrically spaced target frequencies."),
    click.option("--chat-sequential", is_flag=True,
                 help="Train on whole chat transcripts in corpus order, as their chat template renders them, "
                      "special tokens included, instead of shuffled tokens (FAST)."),
    seed_option("Seed: same corpus + seed -> same SAE."),
)


def configs(kw: dict[str, Any]) -> dict[str, Any]:
    """The input, reader and train configs from the options of ``input_options``,
    ``reader_options`` and ``train_options`` (popped from ``kw``), as keyword arguments."""
    input_cfg = InputConfig(text_field=kw.pop("text_field"), id_field=kw.pop("id_field"),
                            format=kw.pop("input_format"))
    device = kw.pop("device")
    reader_cfg = ReaderConfig(model=kw.pop("model"), layer=kw.pop("layer"), hook=kw.pop("hook"), head=kw.pop("head"),
                              max_tokens=kw.pop("max_tokens"),
                              batch_size=kw.pop("batch_size"), device=device, dtype=kw.pop("dtype"))
    out: dict[str, Any] = {"input_cfg": input_cfg, "reader_cfg": reader_cfg}
    if "activation" in kw:
        out["train_cfg"] = TrainConfig(activation=kw.pop("activation"), k=kw.pop("k"), expansion=kw.pop("expansion"),
                                       max_tokens=kw.pop("train_tokens"), passes=kw.pop("train_passes"),
                                       stop_tolerance=kw.pop("stop_tolerance"), method=kw.pop("method"),
                                       snmf_sparsity=kw.pop("snmf_sparsity"), snmf_iters=kw.pop("snmf_iters"),
                                       gsae_beta=kw.pop("gsae_beta"), vsae_kl=kw.pop("vsae_kl"),
                                       gba_groups=kw.pop("gba_groups"), chat_sequential=kw.pop("chat_sequential"),
                                       seed=kw.pop("seed"), device=device)
    if "pooling" in kw:
        out["embed_cfg"] = EmbedConfig(pooling=kw.pop("pooling"), sae_dtype=kw.pop("sae_dtype", None),
                                       chat_tokens=kw.pop("chat_tokens", "assistant"),
                                       store_tokens=kw.pop("store_tokens", False))
    return out


# -- messages and output -------------------------------------------------------------------


def quiet(ctx: click.Context) -> bool:
    root = ctx.find_root().obj or {}
    return bool(root.get("quiet")) or bool(ctx.obj and ctx.obj.get("quiet"))


def log(ctx: click.Context) -> Callable[[str], None]:
    """The message function for this command: stderr, or nothing with --quiet."""
    from saedata.console import silent, stderr_log

    return silent if quiet(ctx) else stderr_log


def progress(ctx: click.Context) -> dict[str, Any]:
    """``progress`` and ``log`` keyword arguments for a library call."""
    return {"progress": not quiet(ctx), "log": log(ctx)}


def emit(df: Any, fmt: str) -> None:
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


def short_numbers(df: Any, digits: str = ".2g", cols: tuple[str, ...] = ("p", "q", "adj_p", "adj_q")) -> Any:
    """p- and q-value columns (those of ``cols`` present) as short text (3.2e-09), for the table format."""
    import polars as pl

    present = [c for c in df.columns if c in cols]
    return df.with_columns(pl.col(c).map_elements(lambda v, d=digits: f"{v:{d}}", return_dtype=pl.String)
                           for c in present)


def example(*lines: str) -> str:
    """The epilog that ends a command's --help: ``Example:`` and command lines a test runs."""
    return "Example:\n\n\b\n" + "\n".join(f"  {line}" for line in lines)
