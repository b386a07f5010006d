"""Shared pytest fixtures: paths to ../shared data (skip cleanly when absent) and tiny synthetic screens."""
from pathlib import Path
import os
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SCCVAE_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data"
REFERENCE = SHARED / "reference"


def shared_file(*parts):
    "Path under ../shared, or skip the test with a reason when it is absent."
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not found: the shared data folder is absent on this machine")
    return p


@pytest.fixture
def tapseq_path():
    return shared_file("data", "schraivogel2020_tapseq_diffex.h5ad")


@pytest.fixture
def datlinger_path():
    return shared_file("data", "datlinger2017_cropseq_jurkat.h5ad")


@pytest.fixture
def reference_dir():
    return shared_file("reference")


def tiny_fold(seed: int = 0, n_folds: int = 4, fold: int = 0):
    """The tiny simulated screen, registered, normalised and split (one OOD fold); also its unseen perturbations."""
    import torch
    from sccvae import data as D
    from sccvae.model import SCCVAE
    from sccvae.synthetic import simulate_screen
    torch.set_num_threads(1)
    adata = simulate_screen("tiny", seed=seed)
    SCCVAE.setup_anndata(adata, perturbation_key="gene", control_group="non-targeting")
    D.apply_split(adata, D.ood_manifest(adata, n_folds=n_folds, seed=0), fold)
    unseen = sorted(set(adata.obs.loc[adata.obs.split == "test", "_scc_target"].astype(str)))
    return adata, unseen
