"""Figures, HTML reports and the end-to-end runs behind ``saedata vae fit`` / ``saedata vae probe``.

    run = fit_on_data("digits/", "digits.vae", prior="ard")      # read, fit, save, report
    run = probe_on_data("digits.vae", "digits/", sae=True)        # an encoder's latents, SAE concepts

Figures: per-dimension relevance bars, a 2-D map of the latent means (PCA of the relevant
dimensions) coloured by label, and for VAEs fitted on images a latent traversal grid.
The report is one self-contained HTML file; each figure is also written as a PNG beside it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from saedata.analysis.probe import sae_concepts
from saedata.config import VAEConfig
from saedata.console import Log, silent
from saedata.errors import ConfigError
from saedata.reports.html import Figure, Table, Text, write_report
from saedata.reports.png import figure_png, image_grid, relevance_bars, scatter_map
from saedata.vae.data import VAEData, load_vae_data
from saedata.vae.io import DiffusersEncoder, load_encoder, save_vae
from saedata.vae.latents import LatentSummary, encode_array, latent_sae, probe_encoder
from saedata.vae.model import VAE
from saedata.vae.train import VAEResult, fit_vae

# -------------------------------------------------------------------- figures


def traversal_images(model: VAE, report: pl.DataFrame, mu: np.ndarray, steps: int = 9, max_dims: int = 10,
                     span: float = 3.0) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Decoded images along each relevant dimension (most relevant first, at most ``max_dims``):
    from the mean latent of ``mu`` (n, L), dimension l set to ``-span .. +span`` x sqrt(s_l^2).

    Returns (images (dims, steps, H, W, C) in input units, dims, offsets in sd units (steps,)).
    """
    if model.image_shape is None:
        raise ConfigError("latent traversals need a VAE fitted on images")
    ranked = report.filter(pl.col("relevant")).sort("relevance", descending=True)["dim"].to_list()[:max_dims]
    offsets = np.linspace(-span, span, steps)
    sd = np.sqrt(report["ard_variance"].to_numpy())
    base = mu.mean(0)
    z = np.repeat(base[None, None, :], max(len(ranked), 1), axis=0).repeat(steps, axis=1)  # (dims, steps, L)
    for i, d in enumerate(ranked):
        z[i, :, d] = base[d] + offsets * sd[d]
    with torch.no_grad():
        flat = model.decode(torch.from_numpy(z.reshape(-1, mu.shape[1]).astype(np.float32)).to(model.device))
    H, W, C = model.image_shape
    imgs = flat.cpu().numpy().reshape(z.shape[0], steps, H, W, C)
    return imgs[: len(ranked)], ranked, offsets


def latent_map(mu: np.ndarray, report: pl.DataFrame) -> tuple[np.ndarray, str]:
    """(n, 2) coordinates of the latent means ``mu`` (n, L): PCA of the relevant dimensions
    (all dimensions when fewer than two are relevant), and a description of the axes."""
    keep = report["relevant"].to_numpy()
    cols = np.flatnonzero(keep) if keep.sum() >= 2 else np.arange(mu.shape[1])
    Z = mu[:, cols].astype(np.float64)
    Z = Z - Z.mean(0)
    if Z.shape[1] < 2:
        return np.column_stack([Z[:, 0], np.zeros(Z.shape[0])]), f"dimension {int(cols[0])}"
    _, _, vt = np.linalg.svd(Z, full_matrices=False)
    xy = Z @ vt[:2].T
    xy *= np.sign(vt[:2].sum(1) + 1e-12)  # a fixed orientation for a given input
    return xy, f"PCA of {len(cols)} {'relevant ' if keep.sum() >= 2 else ''}dimensions"


def vae_figures(encoder: Any, X: Any, report: pl.DataFrame, labels: Any = None, title: str = "") -> dict[str, Any]:
    """Figures of a per-dimension report: ``relevance`` (bars), ``map`` (2-D map of the latent
    means of ``X`` coloured by label) and, for a saedata VAE fitted on images, ``traversal``."""
    figs: dict[str, Any] = {}
    figs["relevance"] = relevance_bars(report["dim"].to_list(), report["kl"].to_list(),
                                            report["ard_variance"].to_list(), report["relevance"].to_list(),
                                            report["relevant"].to_list(), title=title)
    mu, _ = encode_array(encoder, X)
    xy, axes = latent_map(mu, report)
    groups = np.asarray(labels).astype(str) if labels is not None else np.full(mu.shape[0], "all")
    figs["map"] = scatter_map(xy, groups, title=f"latent means: {axes}", legend_title="label")
    if isinstance(encoder, VAE) and encoder.image_shape is not None and bool(report["relevant"].any()):
        imgs, dims, offsets = traversal_images(encoder, report, mu)
        figs["traversal"] = image_grid(imgs, [f"dim {d}" for d in dims], [f"{o:+.1f}" for o in offsets],
                                            title="latent traversal (sd of each dimension)")
    return figs


_CAPTIONS = {
    "relevance": "KL to the prior per dimension (top); ARD variance s^2 and relevance share w s^2 (bottom); "
                 "coloured bars are the relevant dimensions.",
    "map": "Latent means of every row, PCA of the relevant dimensions, coloured by label.",
    "traversal": "Each row varies one relevant dimension from -3 to +3 of its sd, the others held at the mean.",
}


def write_vae_report(path: str | os.PathLike, title: str, report: pl.DataFrame, summary: LatentSummary,
                     figures: dict[str, Any], png_dir: str | os.PathLike | None = None,
                     notes: list[str] | None = None, tables: dict[str, pl.DataFrame] | None = None) -> list[Path]:
    """Write the HTML report to ``path`` and each figure as ``png_dir/vae_<name>.png``
    (default: beside the report). Returns the files written, report first."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    png_dir = Path(png_dir) if png_dir is not None else out.parent
    png_dir.mkdir(parents=True, exist_ok=True)
    pngs = {name: figure_png(fig) for name, fig in figures.items()}
    s = summary
    head = (f"{s.n_relevant} of {s.n_dims} dimensions relevant, {s.n_active} active; KL {s.kl:.2f} nats per row"
            + (f"; held-out reconstruction MSE {s.recon_mse:.5f}" if s.recon_mse is not None else "")
            + (f"; linear probe of the relevant dimensions {s.probe_accuracy:.3f} ± {s.probe_std:.3f}"
               if s.probe_accuracy is not None else "") + ".")
    blocks: list[Any] = [Text("Summary", 2), Text(head)]
    blocks += [Text(n) for n in notes or []]
    for name, png in pngs.items():
        blocks.append(Figure(png, _CAPTIONS.get(name, name)))
    blocks += [Text("Latent dimensions", 2), Table(report.sort("relevance", descending=True))]
    for name, df in (tables or {}).items():
        blocks += [Text(name, 2), Table(df)]
    written = [write_report(out, title, blocks, subtitle="saedata vae")]
    for name, png in pngs.items():
        f = png_dir / f"vae_{name}.png"
        f.write_bytes(png)
        written.append(f)
    return written


# ------------------------------------------------------------------ end to end


@dataclass(frozen=True)
class FitRun:
    """What :func:`fit_on_data` read, learned and wrote."""

    data: VAEData
    result: VAEResult
    out: Path
    """The saved VAE directory."""
    files: list[Path]
    """The HTML report, then the PNG figures."""


@dataclass(frozen=True)
class ProbeRun:
    """What :func:`probe_on_data` read, measured and wrote."""

    data: VAEData
    report: pl.DataFrame
    summary: LatentSummary
    concepts: pl.DataFrame | None
    """SAE latents on the relevant dimensions (:func:`saedata.analysis.probe.sae_concepts`), with --sae."""
    files: list[Path]


def _describe(data: VAEData, log: Log) -> None:
    kind = (f"{data.X.shape[0]} images {data.image_shape[1]}x{data.image_shape[0]}x{data.image_shape[2]}"
            if data.image_shape else f"{data.X.shape[0]} rows x {data.X.shape[1]} features")
    labels = f", {len(np.unique(data.labels))} labels" if data.labels is not None else ""
    log(f"read {kind}{labels} from {data.source}" + (f"; skipped {len(data.skipped)} files" if data.skipped else ""))


def fit_on_data(
    data_path: str | os.PathLike,
    out: str | os.PathLike,
    report_path: str | os.PathLike | None = None,
    label_field: str | None = None,
    size: tuple[int, int] | None = None,
    progress: bool = False,
    log: Log = silent,
    **cfg: Any,
) -> FitRun:
    """Read ``data_path`` (images or a table), fit a VAE (``cfg``: any :class:`VAEConfig` field but
    d_in and image_shape), save it to ``out`` and write the report (default ``out/report.html``).

    Nothing is written until the VAE is trained; the VAE directory appears all at once.
    """
    if Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    data = load_vae_data(data_path, label_field=label_field, size=size)
    _describe(data, log)
    vcfg = VAEConfig(d_in=data.X.shape[1], image_shape=data.image_shape, **cfg)
    log(f"fitting a VAE with the {vcfg.prior} prior ({vcfg.d_in} -> {vcfg.d_latent} dimensions, "
        f"{vcfg.epochs} epochs)")
    result = fit_vae(data.X, vcfg, y=data.labels, progress=progress, log=log)
    out = save_vae(result.model, out)
    report_path = Path(report_path) if report_path is not None else out / "report.html"
    figures = vae_figures(result.model, data.X, result.report, data.labels,
                          title=f"{vcfg.prior} prior, {vcfg.d_latent} dimensions")
    files = write_vae_report(report_path, f"VAE latents of {Path(data.source).name}", result.report,
                             result.summary, figures, notes=_notes(data, vcfg))
    return FitRun(data=data, result=result, out=out, files=files)


def _notes(data: VAEData, cfg: VAEConfig | None) -> list[str]:
    notes = []
    if cfg is not None:
        notes.append(f"{cfg.prior} prior, {cfg.likelihood} likelihood, beta {cfg.beta}, {cfg.epochs} epochs, "
                     f"{cfg.holdout:.0%} of rows held out, seed {cfg.seed}.")
    if data.skipped:
        notes.append(f"{len(data.skipped)} files skipped: " + "; ".join(
            f"{Path(p).name} ({why})" for p, why in data.skipped[:10]) + (" ..." if len(data.skipped) > 10 else ""))
    return notes


def probe_on_data(
    encoder_path: str | os.PathLike,
    data_path: str | os.PathLike,
    report_path: str | os.PathLike | None = None,
    label_field: str | None = None,
    size: tuple[int, int] | None = None,
    sae: bool = False,
    sae_k: int = 4,
    sae_expansion: int = 4,
    device: str = "cpu",
    seed: int = 0,
    log: Log = silent,
) -> ProbeRun:
    """The per-dimension report of a saved encoder's latents of ``data_path``; with ``sae`` an
    SAE trained on the relevant dimensions' means and its latents' top rows and classes.
    Writes the report only when ``report_path`` is given."""
    encoder = load_encoder(encoder_path, device=device)
    channels = None
    if isinstance(encoder, VAE) and encoder.image_shape is not None:
        h, w, channels = encoder.image_shape
        size = size or (w, h)
    data = load_vae_data(data_path, label_field=label_field, size=size, channels=channels)
    _describe(data, log)
    if isinstance(encoder, DiffusersEncoder):
        if data.image_shape is None:
            raise ConfigError(f"{encoder_path} is an image autoencoder; give a folder of images, not a table")
        encoder.image_shape = data.image_shape
    report, summary = probe_encoder(encoder, data.X, data.labels, seed=seed, log=log)
    concepts = None
    tables: dict[str, pl.DataFrame] = {}
    if sae:
        keep = report["relevant"].to_numpy()
        if not keep.any():
            raise ConfigError("no relevant dimensions to train an SAE on")
        mu, _ = encode_array(encoder, data.X)
        log(f"training a TopK SAE ({int(keep.sum())} -> {sae_expansion * int(keep.sum())}, k={sae_k}) "
            "on the relevant dimensions' means")
        trained = latent_sae(mu[:, keep], expansion=sae_expansion, k=sae_k, seed=seed)
        with torch.no_grad():
            codes = trained.sae.encode(torch.from_numpy(mu[:, keep])).numpy()
        concepts = sae_concepts(codes, data.labels, data.ids)
        tables["SAE latents on the relevant dimensions"] = concepts.with_columns(
            pl.col("top_rows").list.join(", "))
    files: list[Path] = []
    if report_path is not None:
        figures = vae_figures(encoder, data.X, report, data.labels, title=f"latents of {Path(encoder_path).name}")
        files = write_vae_report(report_path, f"Latents of {Path(encoder_path).name} on {Path(data.source).name}",
                                 report, summary, figures, notes=_notes(data, None), tables=tables)
    return ProbeRun(data=data, report=report, summary=summary, concepts=concepts, files=files)
