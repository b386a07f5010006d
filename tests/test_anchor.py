"""sccvae.anchor.MeanAnchor and the default model built on it: the cross-validated starting point of an unseen
perturbation's mean change, SCCVAE's held-out blend weight, presets, save/load."""
import json
import numpy as np
import pandas as pd
import pytest
import torch

from sccvae import data as D
from sccvae.anchor import MeanAnchor, blend_weight, inner_folds
from sccvae.model import SCCVAE, MODEL_PRESETS, default_sizes
from conftest import tiny_fold


def _changes(seed=0, P=40, G=60, d=8, informative=True, knockdown=0.3):
    rng = np.random.default_rng(seed)
    L = rng.normal(size=(P, d))
    shared = rng.normal(size=G) * 0.5
    D_ = shared + (L @ rng.normal(size=(d, G)) * 0.4 if informative else 0) + rng.normal(size=(P, G)) * 0.3
    t = rng.choice(G, P, replace=False)
    m = np.abs(rng.normal(size=G)) + 0.5
    if knockdown is not None: D_[np.arange(P), t] = np.log1p(knockdown * np.expm1(m[t])) - m[t]
    return D_, L, t, m, shared


def test_anchor_uses_informative_labels_and_finds_the_knockdown():
    D_, L, t, m, _ = _changes()
    a = MeanAnchor().fit(D_, L, t, m)
    assert np.isfinite(a.ridge_scale_) and a.ridge_scale_ <= 1
    assert a.on_target_model_ == "fraction" and a.on_target_param_ == pytest.approx(0.3, abs=1e-9)
    # out-of-fold predictions beat the perturbed mean on held-out perturbations
    pm_err = np.mean([((np.delete(D_, i, 0).mean(0) - D_[i]) ** 2).mean() for i in range(len(D_))])
    assert ((a.oof_ - D_) ** 2).mean() < 0.8 * pm_err
    Q = a.predict(L[:5], t[:5])
    np.testing.assert_allclose(Q[np.arange(5), t[:5]], np.log1p(0.3 * np.expm1(m[t[:5]])) - m[t[:5]], rtol=1e-12)


def test_anchor_falls_back_to_the_perturbed_mean_on_uninformative_labels():
    D_, L, t, m, shared = _changes(informative=False, knockdown=None)
    a = MeanAnchor().fit(D_, L, t, m)
    assert a.ridge_scale_ >= 10 and a.on_target_model_ == "none"
    pred = a.predict(np.random.default_rng(5).normal(size=(4, L.shape[1])), [-1] * 4)
    assert np.abs(pred - D_.mean(0)).max() < 0.05


def test_anchor_bad_input():
    D_, L, t, m, _ = _changes()
    with pytest.raises(ValueError, match="disagree"):
        MeanAnchor().fit(D_, L[:-1], t, m)
    with pytest.raises(ValueError, match="finite"):
        MeanAnchor().fit(np.where(D_ > 1, np.nan, D_), L, t, m)
    with pytest.raises(RuntimeError, match="not fitted"):
        MeanAnchor().predict(L, t)
    with pytest.raises(ValueError, match="unknown"):
        MeanAnchor(on_target_models=("linear",))
    with pytest.raises(ValueError, match="at least 2"):
        inner_folds(1)


def test_blend_weight_prefers_the_better_predictor():
    rng = np.random.default_rng(0)
    T = rng.normal(size=(50, 30))
    A, S = T + rng.normal(size=T.shape), T + 0.2 * rng.normal(size=T.shape)
    assert blend_weight(A, S, T)[0] >= 0.8
    assert blend_weight(S, A, T)[0] <= 0.2


@pytest.fixture(scope="module")
def default_model():
    adata, unseen = tiny_fold()
    model = SCCVAE(adata, n_latent=8, n_hidden=32, n_label_components=8)       # the default preset
    model.train(max_epochs=2, progress=False, accelerator="cpu")
    model.select_penetrance(unseen)
    return adata, model, unseen


def test_default_preset_options(default_model):
    adata, model, _ = default_model
    d = MODEL_PRESETS["default"]
    assert model.module.likelihood == d["likelihood"] and model.decoding == "counterfactual"
    assert model.module.shift_mode == "shared" and model.module.on_target and model.unseen_shift == "kernel"
    assert model.anchor_mode == "auto" and model.anchor is not None
    assert model.train_config["preset"] == "default" and model.train_config["pack"] == 4
    assert model.anchor_weight == 0.0 and model.fixed_anchor_weight == 0.0       # the default: the anchor's mean
    assert list(model.anchor_curve.columns) == ["cv_mse", "se_vs_best"] and 0.0 in model.anchor_curve.index
    with pytest.raises(ValueError, match="heldout"):
        SCCVAE(adata, n_latent=8, n_hidden=16, n_label_components=8, anchor_weight=1.5)
    with pytest.raises(ValueError, match="heldout"):
        SCCVAE(adata, n_latent=8, n_hidden=16, n_label_components=8, anchor_weight="0.5")
    assert default_sizes(74) == (64, 256) and default_sizes(8563) == (256, 1024) and default_sizes(10 ** 6) == (512, 2048)
    sized = SCCVAE(adata, n_label_components=8)
    assert sized.module.n_latent == default_sizes(adata.n_vars)[0]


def test_anchored_mean_is_the_blend(default_model):
    adata, model, unseen = default_model
    w = model.anchor_weight = 0.3                                              # any blend; the default is 0
    ctrl = model.anchor.control_mean_
    anc, model.anchor = model.anchor, None
    try: alone = model.predict(unseen, n_cells=40, seed=3, clip=False)       # SCCVAE alone, same draws
    finally: model.anchor = anc
    both = model.predict(unseen, n_cells=40, seed=3, clip=False)
    model.anchor_weight = 0.0
    L = model.labels.loc[unseen].to_numpy(np.float64)
    A = anc.predict(L, D.target_columns(adata, unseen))
    for i, p in enumerate(unseen):
        cur = alone.X[alone.obs.gene == p].mean(0, dtype=np.float64) - ctrl
        got = both.X[both.obs.gene == p].mean(0, dtype=np.float64) - ctrl
        np.testing.assert_allclose(got, (1 - w) * A[i] + w * cur, atol=2e-5)
        # cell-to-cell variation is SCCVAE's: the same cells, recentred
        np.testing.assert_allclose(np.std(both.X[both.obs.gene == p], 0), np.std(alone.X[alone.obs.gene == p], 0), atol=2e-5)
    assert list(both.uns["sccvae_prediction"]["anchored"]) == unseen
    # training perturbations are SCCVAE's own prediction
    seen = model.train_perturbations[:1]
    assert len(model.predict(seen, n_cells=5).uns["sccvae_prediction"]["anchored"]) == 0


def test_heldout_weight(default_model):
    adata, _, unseen = default_model
    m = SCCVAE(adata, n_latent=8, n_hidden=16, n_label_components=8, anchor_weight="heldout")
    m.train(max_epochs=1, progress=False, accelerator="cpu")
    assert m.fixed_anchor_weight is None and m.anchor_weight in m.anchor_curve.index
    c = m.anchor_curve
    best = c.cv_mse.idxmin()
    # the one-standard-error rule: the smallest w within one SE of the best
    ok = (c.cv_mse - c.cv_mse[best]) <= c.se_vs_best
    assert m.anchor_weight == c.index[ok.to_numpy()][0]


def test_default_save_load_roundtrip(default_model, tmp_path):
    adata, model, unseen = default_model
    model.save(tmp_path / "m")
    m2 = SCCVAE.load(tmp_path / "m", adata, accelerator="cpu")
    assert m2.anchor_mode == "auto" and m2.anchor_weight == model.anchor_weight
    a, b = model.predict(unseen, n_cells=6, seed=2), m2.predict(unseen, n_cells=6, seed=2)
    np.testing.assert_allclose(a.X, b.X, atol=1e-6)
    (tmp_path / "m" / "anchor.pt").unlink()
    with pytest.raises(FileNotFoundError, match="anchor.pt"):
        SCCVAE.load(tmp_path / "m", adata, accelerator="cpu")


def test_paper_preset_and_old_folders(default_model, tmp_path):
    adata, _, _ = default_model
    p = SCCVAE(adata, preset="paper", n_label_components=8)
    assert (p.module.n_latent, p.module.likelihood, p.module.shift_mode, p.unseen_shift, p.anchor_mode, p.decoding) == \
        (512, "mse", "softmax", "mlp", "none", "mean")
    # an option the user gives keeps the rest compatible: an MLP shift keeps no anchor
    m = SCCVAE(adata, n_latent=8, n_hidden=16, n_label_components=8, shift_mode="softmax")
    assert m.unseen_shift == "mlp" and m.anchor_mode == "none"
    with pytest.raises(ValueError, match="unseen_shift='kernel'"):
        SCCVAE(adata, n_latent=8, n_hidden=16, n_label_components=8, unseen_shift="mlp", anchor="auto")
    with pytest.raises(ValueError, match="paper"):
        SCCVAE(adata, preset="best")
    # a folder saved before presets existed was built on the paper's defaults and loads as such
    small = SCCVAE(adata, preset="paper", n_latent=8, n_hidden=16, n_label_components=8)
    small.save(tmp_path / "old")
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    for k in ("preset", "anchor", "unseen_shift"): cfg["init_params"].pop(k)
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    old = SCCVAE.load(tmp_path / "old", adata, accelerator="cpu")
    assert old.module.likelihood == "mse" and old.anchor_mode == "none" and old.unseen_shift == "mlp"
