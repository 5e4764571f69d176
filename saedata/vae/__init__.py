"""The VAE probe product: fit a VAE (standard or ARD prior) and report which latent dimensions matter.

    result = fit_vae(X, VAEConfig(d_in=64, d_latent=32, prior="ard"), y=labels)
    result.report          # one row per latent dimension: kl, ard_variance, relevance, active, relevant
    save_vae(result.model, "digits.vae"); probe_encoder(load_encoder("digits.vae"), X, y)

Rooms: :mod:`~saedata.vae.model` (the VAE, read like the paper), :mod:`~saedata.vae.train`
(the loop), :mod:`~saedata.vae.latents` (relevance, active units, probes of any encoder),
:mod:`~saedata.vae.io` (save, load, diffusers encoders), :mod:`~saedata.vae.data` (images
or tables as a matrix), :mod:`~saedata.vae.report` (figures, HTML, the CLI's runs).
Importing this package imports torch.
"""

from saedata.vae.io import DiffusersEncoder, load_encoder, load_vae, save_vae
from saedata.vae.latents import LatentSummary, encode_array, latent_report, latent_sae, probe_encoder
from saedata.vae.model import VAE, VAEOutput, kl_per_dim
from saedata.vae.report import fit_on_data, probe_on_data, vae_figures, write_vae_report
from saedata.vae.train import VAEResult, VAETrainer, fit_vae

__all__ = [
    "VAE",
    "DiffusersEncoder",
    "LatentSummary",
    "VAEOutput",
    "VAEResult",
    "VAETrainer",
    "encode_array",
    "fit_on_data",
    "fit_vae",
    "kl_per_dim",
    "latent_report",
    "latent_sae",
    "load_encoder",
    "load_vae",
    "probe_encoder",
    "probe_on_data",
    "save_vae",
    "vae_figures",
    "write_vae_report",
]
