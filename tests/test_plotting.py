"""sccvae.plotting: every figure of the paper's set is drawn on tiny data and saved as a PNG."""
import os
import numpy as np
import pandas as pd
import pytest
import matplotlib
from matplotlib.figure import Figure

from sccvae import plotting as pl


@pytest.fixture(scope="module")
def fold():
    "A tiny screen split into OOD folds, with two baselines' predictions for fold 0."
    from sccvae.synthetic import simulate_screen
    from sccvae.data import setup_anndata, normalize, ood_manifest, apply_split
    from sccvae.baselines import ControlBaseline, LinearBaseline
    a = simulate_screen("tiny", seed=0)
    setup_anndata(a, perturbation_key="gene", control_group="non-targeting")
    normalize(a)
    man = ood_manifest(a, n_folds=3, seed=0)
    apply_split(a, man, fold=0)
    test = a[a.obs.split == "test"]
    ctrl = a[(a.obs._scc_target == "control") & (a.obs.split == "train")]
    perts = sorted(test.obs._scc_target.astype(str).unique())
    preds = {b.name: b.fit(a).predict(perts, n_cells=50, seed=0) for b in (ControlBaseline(), LinearBaseline(n_components=5))}
    return dict(adata=a, test=test, ctrl=ctrl, perts=perts, preds=preds, manifest=man)


@pytest.fixture(scope="module")
def tidy():
    rng = np.random.default_rng(0)
    rows = []
    for m in ["control", "linear", "SCCVAE (holdout)", "Conditional (holdout)", "Causal (holdout)", "Random (holdout)"]:
        for g in ("all", "top50"):
            for p in range(15):
                for met in ("mse", "mmd_paper", "frac_changed"):
                    v = np.nan if (m == "control" and met == "frac_changed") else rng.gamma(2.0, 0.05)
                    rows.append(dict(method=m, perturbation=f"P{p}", gene_set=g, metric=met, value=v))
    return pd.DataFrame(rows)


def _saved(fig, tmp_path, name):
    assert isinstance(fig, Figure)
    p = pl.save_figure(fig, tmp_path / "figs" / f"{name}.png")
    assert p.exists() and p.stat().st_size > 2000
    assert not [f for f in os.listdir(p.parent) if f.startswith(".")], "a temporary file was left behind"
    return p


def test_backend_is_not_forced():
    "Importing sccvae.plotting does not switch matplotlib's backend (notebooks keep inline display)."
    assert matplotlib.get_backend()


def test_metric_boxplot_fig2a(tidy, tmp_path):
    fig = pl.metric_boxplot(tidy, methods=["control", "linear", "SCCVAE (holdout)"])
    assert len(fig.axes) == 6  # 2 gene sets x 3 metrics
    assert any(t.get_text() == "N/A" for ax in fig.axes for t in ax.texts)  # control has no direction fractions
    _saved(fig, tmp_path, "fig2a")


def test_metric_boxplot_errors(tidy):
    with pytest.raises(ValueError, match="not in the table"): pl.metric_boxplot(tidy, metrics=["nope"])
    with pytest.raises(ValueError, match="methods"): pl.metric_boxplot(tidy, methods=["GEARS"])
    with pytest.raises(ValueError, match="lacks columns"): pl.metric_boxplot(tidy.drop(columns="metric"))


def test_ablation_boxplot_fig3(tidy, tmp_path):
    fig = pl.ablation_boxplot(tidy)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["SCCVAE (holdout)", "Conditional (holdout)", "Causal (holdout)", "Random (holdout)"]
    _saved(fig, tmp_path, "fig3")


def test_cells_umap_fig2b(fold, tmp_path):
    fig = pl.cells_umap(fold["ctrl"], fold["test"], fold["preds"], fold["perts"][:2], method="pca", max_cells=100)
    assert len([a for a in fig.axes if a.get_visible()]) == 2
    _saved(fig, tmp_path, "fig2b")
    with pytest.raises(KeyError, match="perturbation_key"):
        pl.cells_umap(fold["ctrl"], fold["test"], fold["preds"], fold["perts"][:1], perturbation_key="nope")


def test_embed_2d_umap_is_seeded():
    X = np.random.default_rng(0).normal(size=(80, 12)); X[:40, 0] += 5
    a, b = pl.embed_2d(X, method="umap", seed=1), pl.embed_2d(X, method="umap", seed=1)
    assert a.shape == (80, 2) and np.allclose(a, b)
    assert pl.embed_2d(X[:10], method="umap").shape == (10, 2)  # few points: falls back to PCA


def test_distance_scatter_fig4(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"expression_distance": rng.uniform(0, 1, 30), "split": ["train"] * 20 + ["test"] * 10})
    df["latent_distance"] = 3 * df.expression_distance + rng.normal(0, 0.2, 30)
    fig = pl.distance_scatter(df, annotate=2)
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith("train (n=20, r=") for t in texts) and any("least squares" in t for t in texts)
    _saved(fig, tmp_path, "fig4")
    with pytest.raises(KeyError, match="not in the table"): pl.distance_scatter(df, x="nope")


def test_penetrance_figure_fig5(fold, tmp_path):
    ctrl, test, p = fold["ctrl"], fold["test"], fold["perts"][0]
    truth = test[test.obs._scc_target == p]
    delta = np.asarray(truth.X.mean(0)).ravel() - np.asarray(ctrl.X.mean(0)).ravel()
    cs = np.round(np.arange(-1, 3.01, 0.5), 2)
    curve = pd.DataFrame({"perturbation": p, "c": cs, "error": [float(((c - 1) * delta).var()) for c in cs]})
    C = np.asarray(ctrl.X[:100].toarray() if hasattr(ctrl.X, "toarray") else ctrl.X[:100])
    fig = pl.penetrance_figure(curve, p, control=ctrl, truth=truth, predictions={c: C + c * delta for c in (0.0, 1.0, 2.0)},
                               method="pca")
    assert len(fig.axes) == 2
    assert "chosen c = 1.00" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    _saved(fig, tmp_path, "fig5")
    assert len(pl.penetrance_figure(curve, p).axes) == 1  # the curve alone
    with pytest.raises(ValueError, match="no rows"): pl.penetrance_figure(curve, "nope")


def test_embedding_umap_fig6(fold, tmp_path):
    from sccvae.data import perturbation_labels
    a = fold["adata"]
    emb = perturbation_labels(a, n_components=8)
    mods = a.uns["sccvae_truth"]["modules"]
    split = pd.Series("train", index=emb.index); split[fold["perts"]] = "test"
    fig = pl.embedding_umap(emb, mods, split=split, method="pca", label=True)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "held out (test)" in legend and any(t.startswith("M") for t in legend)
    _saved(fig, tmp_path, "fig6")
    fig = pl.embedding_umap(emb, mods, highlight=True, method="pca")
    present = set(pl.module_of(emb.index, mods)) - {"other"}
    assert len([ax for ax in fig.axes if ax.get_visible()]) == len(present)
    assert pl.module_of(["x"], mods).tolist() == ["other"]


def test_filter_bars(fold, tmp_path):
    from sccvae.data import filter_perturbations
    tab = filter_perturbations(fold["adata"], min_cells=80, min_score=0.6, n_pcs=10)
    fig = pl.filter_bars(tab, min_cells=80)
    assert len(fig.axes) == 2 and "of 12 with" in fig.axes[0].get_title()
    _saved(fig, tmp_path, "filter")
    with pytest.raises(ValueError, match="filter_perturbations"): pl.filter_bars(tab.drop(columns="n_cells"))


def test_training_curves(tmp_path):
    h = pd.DataFrame({"epoch": range(4), "train_loss": [4, 3, 2, 1.5], "val_loss": [4, 3.2, 2.5, 2], "train_kl": [1, 1, 1, 1]})
    fig = pl.training_curves(h)
    assert len([a for a in fig.axes if a.get_visible()]) == 2
    _saved(fig, tmp_path, "training")
    with pytest.raises(KeyError, match="epoch"): pl.training_curves(h.drop(columns="epoch"))


def test_method_colors_are_stable():
    c = pl.method_colors(["control", "SCCVAE (holdout)", "SCCVAE (oracle)", "mystery"])
    assert c["control"] == pl.METHOD_COLORS["control"] and c["SCCVAE (holdout)"] == pl.METHOD_COLORS["SCCVAE"]
    assert len(set(c.values())) == 4


def test_pl_alias():
    import sccvae
    assert sccvae.pl.metric_boxplot is pl.metric_boxplot
