"""Single-cell causal VAE (SCCVAE): predict responses to unseen genetic perturbations through a learned linear SCM"""

__version__ = "0.1.0"

from .data import setup_anndata, normalize, filter_perturbations, perturbation_labels  # noqa: F401
from .model import SCCVAE  # noqa: F401
from .evaluate import evaluate, EvalResult  # noqa: F401


def __getattr__(name):
    # plotting pulls in matplotlib/umap: import it only when asked for (`sccvae.pl` or `sccvae.plotting`)
    if name in ("pl", "plotting"):
        import importlib
        return importlib.import_module(".plotting", __name__)
    raise AttributeError(f"module 'sccvae' has no attribute {name!r}")
