"""sccvae.train: a tiny run learns, validation is deterministic, resume reproduces the uninterrupted run."""
import numpy as np
import pandas as pd
import pytest
import torch

from sccvae import data as D, loader as L
from sccvae.module import SCCVAEModule
from sccvae.train import Trainer, TrainConfig, clip_global_


@pytest.fixture(scope="module")
def tiny_data():
    from sccvae.synthetic import simulate_screen
    torch.set_num_threads(1)
    adata = simulate_screen("tiny", seed=0)
    D.setup_anndata(adata, perturbation_key="gene", control_group="non-targeting")
    D.normalize(adata)
    D.apply_split(adata, D.ood_manifest(adata, n_folds=4, seed=0), 0)
    labels = D.perturbation_labels(adata, n_components=8)
    train = sorted(set(adata.obs.loc[adata.obs.split == "train", "_scc_target"].astype(str)) - {"control"})
    return L.PerturbationData(adata, labels=labels.loc[train], device="cpu")


def _module(data, seed=0):
    return SCCVAEModule(data.n_genes, data.labels.shape[1], len(data.perturbations), n_latent=8, n_hidden=24, seed=seed)


def test_beta_schedule():
    c = TrainConfig(max_epochs=100)
    assert c.beta(0) == 0 and c.beta(99) == 1 and c.beta(50) == pytest.approx(50 / 99)
    assert TrainConfig(max_epochs=10, beta_warmup_epochs=3).beta(5) == 1


def test_training_runs_and_history(tiny_data, tmp_path):
    cfg = TrainConfig(max_epochs=3, pack=2, progress=False)
    tr = Trainer(_module(tiny_data), tiny_data, cfg, checkpoint_dir=tmp_path)
    h = tr.fit()
    assert list(h.epoch) == [0, 1, 2] and np.isfinite(h.filter(like="val_").to_numpy()).all()
    assert {"last.pt", "best.pt", "history.csv", "train_config.json"} <= {p.name for p in tmp_path.iterdir()}
    assert len(pd.read_csv(tmp_path / "history.csv")) == 3
    assert tr.best["epoch"] == int(h.val_score.idxmin())
    # validation sees the same draws every epoch: same weights -> same score
    assert tr.validate(2) == tr.validate(2)


def test_resume_equals_uninterrupted(tiny_data, tmp_path):
    cfg = TrainConfig(max_epochs=4, pack=1, progress=False, seed=3)
    full = Trainer(_module(tiny_data), tiny_data, cfg, checkpoint_dir=tmp_path / "a")
    full.fit()
    part = Trainer(_module(tiny_data), tiny_data, cfg, checkpoint_dir=tmp_path / "b")
    part.fit(max_epochs=2)
    del part
    resumed = Trainer(_module(tiny_data), tiny_data, cfg, checkpoint_dir=tmp_path / "b")
    resumed.fit()
    a, b = full.module.state_dict(), resumed.module.state_dict()
    for k in a: assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    assert resumed.history_frame().train_loss.tolist() == pytest.approx(full.history_frame().train_loss.tolist(), rel=1e-6)
    with pytest.raises(ValueError, match="seed"):
        Trainer(_module(tiny_data), tiny_data, TrainConfig(max_epochs=4, seed=4, progress=False),
                checkpoint_dir=tmp_path / "b").fit()


def test_per_tensor_clipping_option_and_global_clip():
    p = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))]
    p[0].grad, p[1].grad = torch.full((3,), 10.0), torch.full((4,), 0.1)
    clip_global_(p, 1.0)
    total = torch.sqrt(sum((q.grad ** 2).sum() for q in p))
    assert float(total) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="per_tensor"):
        TrainConfig(clip_mode="layer")


def test_bf16_needs_cuda(tiny_data):
    if torch.cuda.is_available(): pytest.skip("CUDA present")
    tr = Trainer(_module(tiny_data), tiny_data, TrainConfig(max_epochs=1, precision="bf16", progress=False))
    with pytest.raises(ValueError, match="CUDA only"):
        tr.fit()


def test_nonfinite_loss_stops(tiny_data):
    mod = _module(tiny_data)
    with torch.no_grad(): mod.decoder[-1].bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite"):
        Trainer(mod, tiny_data, TrainConfig(max_epochs=1, progress=False, check_every=2)).fit()


def test_presets():
    from sccvae.train import TRAIN_PRESETS
    assert TrainConfig.from_preset("paper") == TrainConfig()                 # the default is the paper
    f = TrainConfig.fast()
    assert f == TrainConfig(**TRAIN_PRESETS["fast"])
    assert (f.gamma, f.adam_eps, f.lr, f.lr_schedule, f.standardize_labels, f.init_decoder_bias, f.keep) == \
        (1.0, 1e-8, 1e-3, "cosine", True, True, "last")
    assert TrainConfig.fast(gamma=10.0, max_epochs=5).gamma == 10.0
    assert TrainConfig().lr_factor(0.5) == 1.0 and f.lr_factor(0.5) == pytest.approx(0.5) and f.lr_factor(1.0) == 0.0
    with pytest.raises(ValueError, match="paper"):
        TrainConfig.from_preset("quick")
    with pytest.raises(TypeError, match="unknown"):
        TrainConfig.fast(gama=1.0)
    with pytest.raises(ValueError, match="last"):
        TrainConfig(keep="middle")


def test_fast_preset_training_and_resume(tiny_data, tmp_path):
    cfg = TrainConfig.fast(max_epochs=3, pack=2, progress=False, seed=1)
    full = Trainer(_module(tiny_data), tiny_data, cfg, checkpoint_dir=tmp_path / "a"); h = full.fit()
    mod = full.module
    assert mod.labels_standardized and int(mod.n_steps) == 3 * len(full.sampler)
    lab = tiny_data.labels
    assert torch.allclose(mod.label_mean, lab.mean(0)) and torch.allclose(mod.label_scale, lab.std(0))
    assert h.lr.iloc[0] < cfg.lr and h.lr.is_monotonic_decreasing and full.best["epoch"] == 2   # cosine, keep last
    part = Trainer(_module(tiny_data), tiny_data, cfg, checkpoint_dir=tmp_path / "b"); part.fit(max_epochs=1); del part
    resumed = Trainer(_module(tiny_data), tiny_data, cfg, checkpoint_dir=tmp_path / "b"); resumed.fit()
    a, b = full.module.state_dict(), resumed.module.state_dict()
    for k in a: assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=0), k
    # a trained module is not re-initialised by a new trainer (continued training)
    bias = mod.decoder[-1].bias.detach().clone()
    Trainer(mod, tiny_data, cfg)
    assert torch.equal(mod.decoder[-1].bias.detach(), bias)


def test_paper_preset_leaves_labels_and_bias_alone(tiny_data):
    m = _module(tiny_data)
    b0 = m.decoder[-1].bias.detach().clone()
    Trainer(m, tiny_data, TrainConfig(max_epochs=1, progress=False))
    assert not m.labels_standardized and torch.equal(m.decoder[-1].bias.detach(), b0)
