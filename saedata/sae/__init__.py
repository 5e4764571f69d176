"""The SAE engine: model, activations, fast kernels, training, formats and metrics.

Importing this package imports torch; ``import saedata`` alone does not.
"""

from saedata.sae.activations import SparseCodes
from saedata.sae.formats import check_d_in, load_sae, save_sae
from saedata.sae.metrics import afa_score, dead_fraction, fvu, mean_l0
from saedata.sae.model import ForwardOutput, SparseAutoencoder
from saedata.sae.train import SAETrainer, TrainResult

__all__ = [
    "ForwardOutput",
    "SAETrainer",
    "SparseAutoencoder",
    "SparseCodes",
    "TrainResult",
    "afa_score",
    "check_d_in",
    "dead_fraction",
    "fvu",
    "load_sae",
    "mean_l0",
    "save_sae",
]
