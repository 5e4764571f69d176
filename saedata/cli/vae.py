"""``saedata vae``: which latent dimensions of a VAE (or of a given encoder) matter."""

from __future__ import annotations

from typing import Any

import click

import saedata
from saedata.cli.app import Group, main
from saedata.cli.options import (
    Real,
    device_option,
    emit,
    example,
    format_option,
    log,
    progress,
    quiet_option,
    seed_option,
)


def _size(_ctx: click.Context, _p: click.Parameter, value: str | None) -> tuple[int, int] | None:
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


def _data_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--label-field", default=None,
                     help="Label column of a table (images: labels are their subfolder names)."),
        click.option("--size", default=None, callback=_size,
                     help="Resize images to WIDTHxHEIGHT (or N for NxN) [default: the first image's size]."),
        click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
                     help="HTML report to write (its folder is made); the figures go beside it as vae_*.png."),
        click.option("-v", "--verbose", is_flag=True, help="List every skipped file."),
    ]):
        f = opt(f)
    return f


def _summary(ctx: click.Context, data: Any, summary: Any, report: Any, files: list, verbose: bool,
             fmt: str) -> None:
    say = log(ctx)
    if verbose:
        for path, why in data.skipped:
            say(f"skipped {path}: {why}")
    emit(report.filter(report["relevant"]).sort("relevance", descending=True), fmt)
    s = summary
    line = (f"relevant dims: {s.n_relevant}/{s.n_dims}  active units: {s.n_active}  KL: {s.kl:.2f} nats  "
            f"rows: {s.n_rows}  skipped files: {len(data.skipped)}")
    if s.recon_mse is not None:
        line += f"  recon MSE: {s.recon_mse:.5f}"
    if s.probe_accuracy is not None:
        line += f"  linear probe: {s.probe_accuracy:.3f} ± {s.probe_std:.3f}"
    click.echo(line, err=fmt != "table")
    for f in files:
        say(f"wrote {f}")


@main.group(cls=Group, epilog=example("saedata vae fit digits/ --out digits.vae --epochs 5"))
def vae() -> None:
    """VAE latent probes: which latent dimensions of a VAE (or of a given encoder) matter.

    \b
    saedata vae fit digits/ --out digits.vae --prior ard --report vae.html
    saedata vae probe digits.vae digits/ --sae
    """


@vae.command("fit", epilog=example("saedata vae fit digits/ --out digits.vae --epochs 5"))
@click.argument("data", type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to save the VAE in.")
@click.option("--prior", type=click.Choice(["ard", "standard"]), default="ard", show_default=True,
              help="ard: per-dimension prior variances estimated from the encoded data (ARD-VAE); standard: N(0, I).")
@click.option("--latent-dim", type=click.IntRange(1, 100_000), default=32, show_default=True, help="Latent dimensions.")
@click.option("--epochs", type=click.IntRange(1, 1_000_000), default=100, show_default=True,
              help="Passes over the training rows.")
@click.option("--beta", type=Real(0, min_open=True), default=1.0, show_default=True, help="Weight of the KL term.")
@click.option("--likelihood", type=click.Choice(["gaussian", "bernoulli"]), default="gaussian", show_default=True,
              help="Reconstruction loss: squared error, or cross-entropy for values in [0, 1].")
@seed_option("Seed: same data + seed -> same VAE.")
@device_option()
@_data_options
@format_option
@quiet_option
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
    run = saedata.vae_fit(data, out, report_path, label_field=label_field, size=size, **progress(ctx), prior=prior,
                          d_latent=latent_dim, epochs=epochs, beta=beta, likelihood=likelihood, seed=seed,
                          device=device)
    _summary(ctx, run.data, run.result.summary, run.result.report, [run.out, *run.files], verbose, fmt)


@vae.command("probe", epilog=example("saedata vae probe digits.vae digits/ --sae"))
@click.argument("encoder", type=click.Path(exists=True, file_okay=False))
@click.argument("data", type=click.Path(exists=True))
@click.option("--sae", "train_sae", is_flag=True,
              help="Train an SAE on the relevant dimensions and list its latents' top rows and classes.")
@click.option("--k", "sae_k", type=click.IntRange(1, 100_000), default=4, show_default=True,
              help="Active SAE latents per row (--sae).")
@device_option("cpu")
@_data_options
@format_option
@quiet_option
@click.pass_context
def vae_probe(ctx, encoder, data, train_sae, sae_k, device, label_field, size, report_path, verbose, fmt):
    """Report which latent dimensions of ENCODER matter on DATA.

    ENCODER is a VAE saved by `saedata vae fit`, or a diffusers AutoencoderKL directory
    (pip install 'saedata[diffusers]'). DATA as for `saedata vae fit`.
    """
    run = saedata.vae_probe(encoder, data, report_path, label_field=label_field, size=size, sae=train_sae,
                            sae_k=sae_k, device=device, log=log(ctx))
    _summary(ctx, run.data, run.summary, run.report, run.files, verbose, fmt)
    if run.concepts is not None:
        click.echo("SAE latents on the relevant dimensions:", err=fmt != "table")
        emit(run.concepts.head(20).with_columns(run.concepts["top_rows"].head(20).list.join(", ")), fmt)
