"""sccvae.experiment.benchmark (and its menu, sccvae.experiment.benchmark_configs): metric closed forms, the
target-column drop, cell-eval's discrimination score, the refusal of
shift modes that see test cells, and the harness end to end on a tiny simulated screen (and through the CLI)."""
import json
import numpy as np
import pandas as pd
import pytest
import torch

from sccvae import data as scd
from sccvae import metrics as M
from sccvae.baselines import ControlBaseline, PerturbedMeanBaseline, PerturbedMeanOnTargetBaseline
from sccvae.experiment.benchmark import PCSpace, benchmark, discrimination, pearson_delta, sd_ratio, split_half
from sccvae.experiment.benchmark_configs import BENCHMARK_BASELINES, BENCHMARK_CONFIGS, DEFAULT_BASELINES, check_config, resolve_configs
from sccvae.synthetic import simulate_screen

torch.set_num_threads(1)
TINY_CFG = {"sccvae_tiny": {"model": dict(n_latent=8, n_hidden=32),
                            "train": dict(preset="fast", max_epochs=2, accelerator="cpu"), "shift": {"mode": "linear"}}}


def _tiny(seed=0, **kw):
    a = simulate_screen("tiny", seed=seed, **kw)
    scd.setup_anndata(a, perturbation_key="gene", control_group="non-targeting")
    return scd.normalize(a)


@pytest.fixture(scope="module")
def screen():
    return _tiny()


@pytest.fixture(scope="module")
def result(screen):
    return benchmark(screen, configs=TINY_CFG, n_folds=3, seed=0, n_eval_cells=100)


# ---------------------------------------------------------------- metrics
def test_pearson_delta_hand_values_and_drop():
    ref = np.array([1.0, 1, 1, 1])
    pred = np.array([[2.0, 3, 1, 5], [2.0, 3, 1, 5]])
    true = np.array([[1.5, 2, 1, 9], [1.5, 2, 1, 9]])
    r = pearson_delta(pred, true, ref, drop=[-1, 3])
    np.testing.assert_allclose(r[0], np.corrcoef(pred[0] - ref, true[0] - ref)[0, 1], rtol=1e-12)
    np.testing.assert_allclose(r[1], np.corrcoef((pred[0] - ref)[:3], (true[0] - ref)[:3])[0, 1], rtol=1e-12)
    assert not np.isclose(r[0], r[1])
    # reference matters: against the perturbed centroid the shared shift is gone
    shared, own = np.array([1.0, 2, 0.5, 1.5]), np.array([0.1, -0.1, 0.2, -0.2])
    assert pearson_delta(ref + shared, ref + shared + own, ref)[0] == pytest.approx(np.corrcoef(shared, shared + own)[0, 1])
    assert pearson_delta(ref + shared, ref + shared + own, ref)[0] > 0.95                  # the shared shift, for free
    assert np.isnan(pearson_delta(ref + shared, ref + shared + own, ref + shared)[0])      # nothing specific predicted


def test_sd_ratio_and_drop():
    rng = np.random.default_rng(0)
    T = rng.normal(size=(500, 4)) * [1, 2, 3, 4]
    assert sd_ratio(0.5 * T, T) == pytest.approx(0.5, rel=1e-9)
    P = 0.5 * T; P[:, 2] *= 10; P[:, 3] *= 10                  # two genes of four off: median of (0.5, 0.5, 5, 5)
    assert sd_ratio(P, T) == pytest.approx(2.75, rel=1e-9)
    assert sd_ratio(P, T, drop=3) == pytest.approx(0.5, rel=1e-9)  # median of (0.5, 0.5, 5)
    T0 = T.copy(); T0[:, 0] = 1.0                                # a gene without variance in the truth is left out
    assert np.isfinite(sd_ratio(P, T0))


def test_pc_space_drop_is_zeroing_the_column():
    rng = np.random.default_rng(1)
    ctrl = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8))
    sp_ = PCSpace(ctrl, n_pcs=5, seed=0)
    X = rng.normal(size=(50, 8))
    Xz = X.copy(); Xz[:, 3] = sp_.mean[3]
    np.testing.assert_allclose(sp_.project(X, drop=3), sp_.project(Xz), atol=1e-10)
    # E-distance and MMD² are the sccvae.metrics functions in the projected space
    Y = rng.normal(size=(40, 8)) + 1
    assert sp_.edistance(X, Y, 3) == pytest.approx(M.edistance(sp_.project(X, 3), sp_.project(Y, 3)), rel=1e-9)
    assert sp_.mmd2(X, Y) == pytest.approx(M.mmd2_unbiased(sp_.project(X), sp_.project(Y), sp_.sigma), rel=1e-9)
    # the PC axes are orthonormal; more PCs than genes are capped
    np.testing.assert_allclose(sp_.V.T @ sp_.V, np.eye(5), atol=1e-6)
    assert PCSpace(ctrl, n_pcs=30).n_pcs == 8


def _cell_eval_reference(P, T, exclude):
    "cell-eval's loop (metrics/_anndata.py discrimination_score), written out independently: 1 - argsort rank / N."
    out = []
    for i in range(len(P)):
        keep = np.ones(P.shape[1], bool)
        if exclude[i] >= 0: keep[exclude[i]] = False
        d = np.abs(T[:, keep] - P[i, keep]).sum(1)
        rank = int(np.flatnonzero(np.argsort(d) == i)[0])
        out.append(1 - rank / len(P))
    return np.array(out)


def test_discrimination_equals_cell_eval_definition():
    rng = np.random.default_rng(2)
    T = rng.normal(size=(9, 20))
    P = T + rng.normal(scale=1.5, size=T.shape)                # continuous: no ties
    ex = rng.integers(-1, 20, 9)
    np.testing.assert_allclose(discrimination(P, T, ex), _cell_eval_reference(P, T, ex), rtol=1e-12)
    np.testing.assert_allclose(discrimination(T, T), 1.0)
    # identical predictions for everyone: at most one perturbation can rank first
    same = discrimination(np.tile(T.mean(0), (9, 1)), T)
    assert same.mean() == pytest.approx(1 - 4 / 9, abs=1e-12)  # ranks 0..8 once each: mean 1 − 4/9


def test_split_half_disjoint():
    x = np.arange(21)[:, None]
    a, b = split_half(x, seed=[0, 1])
    assert len(a) == 10 and len(b) == 11 and not set(a.ravel()) & set(b.ravel())
    np.testing.assert_array_equal(split_half(x, seed=[0, 1])[0], a)


# ---------------------------------------------------------------- configurations
@pytest.mark.parametrize("mode", ["oracle", "holdout"])
def test_refuses_shift_modes_that_see_test_cells(mode, screen):
    with pytest.raises(ValueError, match="held-out test cells"):
        check_config({"shift": {"mode": mode}})
    with pytest.raises(ValueError, match="held-out test cells"):
        benchmark(screen, configs={"cheat": {"shift": {"mode": mode}}}, baselines=["control"], n_folds=3)
    assert "split_key" not in screen.uns[scd.REGISTRY_KEY]   # refused before any split was written


def test_named_configs():
    cfgs = resolve_configs(list(BENCHMARK_CONFIGS))
    assert {"sccvae_paper", "sccvae_gauss", "sccvae_gauss_cf", "sccvae_nb", "sccvae_nb_cf"} <= set(cfgs)
    p = cfgs["sccvae_paper"]
    assert p["model"] == {"preset": "paper", "n_latent": 64, "n_hidden": 256} and p["train"] == {"preset": "fast", "max_epochs": 30, "pack": 4}
    assert p["shift"]["mode"] == "linear" and p["predict"] == {}
    assert cfgs["sccvae_nb_cf"]["model"]["likelihood"] == "nb" and cfgs["sccvae_nb_cf"]["model"]["decoding"] == "counterfactual"
    assert cfgs["sccvae_gauss"]["model"]["decoding"] == "sample"
    assert cfgs["sccvae_kernel"]["shift"]["mode"] == "prior"      # no cells of the unseen perturbations
    with pytest.raises(ValueError, match="set by the harness"):
        check_config({"predict": {"n_cells": 5}})


# ---------------------------------------------------------------- baselines
def test_on_target_baseline_sets_the_target_column(screen):
    a = screen
    scd.apply_split(a, scd.ood_manifest(a, n_folds=3, seed=0), 0)
    try:
        ot, pm = PerturbedMeanOnTargetBaseline().fit(a), PerturbedMeanBaseline().fit(a)
        sym = list(scd.gene_symbols(a))
        own = [ot.train_bulk_[i, sym.index(p)] - ot.control_mean_[sym.index(p)] for i, p in enumerate(ot.train_perturbations_)]
        assert ot.on_target_ == pytest.approx(np.mean(own), rel=1e-9) and ot.on_target_ < -0.2   # knockdowns
        test = sorted(set(a.obs.loc[a.obs.split == "test", "_scc_target"].astype(str)))
        d_ot, d_pm = ot.predict_bulk(test).to_numpy(), pm.predict_bulk(test).to_numpy()
        cols = [sym.index(p) for p in test]
        np.testing.assert_allclose(d_ot[np.arange(len(test)), cols] - ot.control_mean_[cols], ot.on_target_, rtol=1e-9)
        mask = np.ones_like(d_ot, bool); mask[np.arange(len(test)), cols] = False
        np.testing.assert_array_equal(d_ot[mask], d_pm[mask])
    finally:
        del a.obs["split"]; r = dict(a.uns[scd.REGISTRY_KEY]); r.pop("split_key", None); r.pop("split_fold", None)
        a.uns[scd.REGISTRY_KEY] = r


def test_predictions_get_the_true_cell_count(screen):
    seen = []

    class Spy(ControlBaseline):
        def predict(self, perturbations, n_cells=None, seed=0):
            seen.append(dict(n_cells)); return super().predict(perturbations, n_cells=n_cells, seed=seed)

    res = benchmark(screen, configs=None, baselines={"spy": lambda labels=None, seed=0: Spy(), "ceiling": None},
                    n_folds=3, seed=1, n_eval_cells=20)
    assert len(seen) == 3 and all(set(s.values()) == {20} for s in seen)     # every tiny perturbation has > 20 cells
    assert sorted(p for s in seen for p in s) == sorted(res.per_perturbation.perturbation.unique())
    res2 = benchmark(screen, configs=None, baselines=["control"], n_folds=3, seed=1, n_eval_cells=1000)
    tab = scd.perturbation_table(screen).n_cells
    assert res2.settings["n_perturbations"] == 12 and len(res2.per_perturbation.perturbation.unique()) == 12
    assert tab.drop("control").min() >= 60                                   # so all test cells were used (< 1000)


# ---------------------------------------------------------------- the harness end to end
def test_harness_tables_and_sanity(result, tmp_path):
    df = result.per_perturbation
    assert list(df.columns) == ["fold", "method", "perturbation", "metric", "column_set", "value"]
    assert set(df.method) == set(DEFAULT_BASELINES) | {"sccvae_tiny"}
    assert set(df.metric) == {"pearson_delta", "pearson_delta_pert", "edistance", "mmd2", "sd_ratio", "sd_ratio_expressed", "discrimination"}
    # every perturbation scored exactly once per method, metric and column set, in exactly one fold
    assert (df.groupby(["method", "metric", "column_set", "perturbation"]).size() == 1).all()
    assert df.groupby("perturbation").fold.nunique().eq(1).all() and df.perturbation.nunique() == 12
    s = result.summary(fmt=False).set_index(["method", "metric", "column_set"])
    m = s["mean"]
    assert m["ceiling", "pearson_delta", "all"] > m["control", "pearson_delta", "all"] + 0.3
    assert m["ceiling", "edistance", "all"] < m["control", "edistance", "all"]
    assert m["ceiling", "discrimination", "no_target"] > 0.8
    # on-target baseline: better with the target column, identical without it (the column is really gone)
    assert m["perturbed_mean_on_target", "pearson_delta", "all"] > m["perturbed_mean", "pearson_delta", "all"] + 0.05
    w = df[df.metric == "pearson_delta"].pivot_table(index=["column_set", "perturbation"], columns="method", values="value")
    np.testing.assert_allclose(w.loc["no_target", "perturbed_mean_on_target"], w.loc["no_target", "perturbed_mean"], rtol=1e-6)
    # sd: ddof = 1 over perturbations
    v = df.query("method == 'linear' and metric == 'edistance' and column_set == 'all'").value
    assert s.loc[("linear", "edistance", "all"), "sd"] == pytest.approx(v.std(ddof=1)) and s.loc[("linear", "edistance", "all"), "n"] == 12
    assert ((df[df.metric == "discrimination"].value >= 0) & (df[df.metric == "discrimination"].value <= 1)).all()
    # table and files
    md = result.to_markdown()
    assert md.splitlines()[0].startswith("| metric | columns | control |") and md.count("\n") == 15
    files = result.save(tmp_path)
    assert {"per_perturbation", "summary", "summary_table", "timings", "settings", "manifest", "report"} <= set(files)
    st = json.loads((tmp_path / "settings.json").read_text())
    assert st["seed"] == 0 and st["seeds"]["manifest"] == 0 and "torch" in st["versions"] and "sccvae_tiny" in st["configs"]
    back = pd.read_csv(tmp_path / "per_perturbation.csv")
    assert len(back) == len(df)
    man = scd.load_manifest(tmp_path / "manifest.csv.gz")
    assert man.perturbation[man.fold >= 0].nunique() == 12
    assert set(result.timings.stage) >= {"train", "shift", "predict", "score", "fit+predict"}


@pytest.mark.parametrize("name", ["sccvae_gauss_cf", "sccvae_nb"])
def test_observation_model_configs_run(screen, name):
    res = benchmark(screen, configs=[name], baselines=["control"], n_folds=3, folds=[0], max_epochs=1, n_eval_cells=40,
                    accelerator="cpu")
    v = res.per_perturbation.query("method == @name")
    assert len(v) and v.query("metric == 'sd_ratio'").value.gt(0).all()


def test_cli_benchmark(tmp_path, capsys):
    from sccvae import cli
    out = tmp_path / "bench"
    assert cli.main(["benchmark", "--configs", "sccvae_paper", "--max-epochs", "1", "--baselines", "control,ceiling",
                     "--n-folds", "2", "--n-eval-cells", "40", "--accelerator", "cpu", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| metric | columns | control | ceiling | sccvae_paper |" in text and str(out) in text
    assert (out / "report.md").read_text().startswith("# Benchmark: synthetic")
    assert json.loads((out / "settings.json").read_text())["max_epochs_override"] == 1
    with pytest.raises(SystemExit, match="unknown configuration"):
        cli.main(["benchmark", "--configs", "sccvae_papr", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="unknown baselines"):
        cli.main(["benchmark", "--baselines", "ctrl", "--out", str(tmp_path / "x")])


def test_cli_benchmark_pairs(tmp_path, capsys):
    "`sccvae benchmark --pairs`: a simulated screen with pairs, the pair baselines, the table by seen-singles class."
    from sccvae import cli
    out = tmp_path / "pairs"
    assert cli.main(["benchmark", "--pairs", "--n-pairs", "16", "--configs", "", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| metric | columns | control | perturbed_mean | additive | ceiling |" in text and "| metric | pairs |" in text
    assert "by seen-singles class" in (out / "report.md").read_text()
    assert json.loads((out / "settings.json").read_text())["pair_unseen_genes"]


def test_reproducible_and_parallel_folds_give_the_same_scores(screen):
    kw = dict(configs=None, baselines=["perturbed_mean", "nearest_3", "ceiling"], n_folds=2, n_eval_cells=40)
    one, two = benchmark(screen, seed=4, workers=1, **kw), benchmark(screen, seed=4, workers=2, **kw)
    pd.testing.assert_frame_equal(one.per_perturbation, two.per_perturbation, rtol=1e-6)
    assert two.settings["workers"] == 2 and two.settings["torch_threads"] == 1
    assert "benchmark_split" not in screen.obs
    other = benchmark(screen, seed=5, workers=1, **kw)                      # another seed: other folds and cells
    assert not np.allclose(one.per_perturbation.value, other.per_perturbation.value, equal_nan=True)


def test_old_import_path_reexports_every_name():
    "sccvae.benchmark moved to sccvae.experiment; the old module re-exports the very same objects (no logic of its own)."
    import sccvae.benchmark as old
    from sccvae.experiment import benchmark as new, benchmark_configs as menu
    for n in old.__all__:
        assert getattr(old, n) is getattr(new, n, getattr(menu, n, None)), n
    assert old.benchmark is benchmark and old.BENCHMARK_CONFIGS is BENCHMARK_CONFIGS


# ---------------------------------------------------------------- held-out combinations
def test_harness_pairs_mode(tmp_path):
    "pairs=True: one split of singles and pairs, the pair baselines, a table by seen-singles class in report.md."
    from sccvae.experiment.benchmark import PAIR_BASELINES, held_out
    from sccvae.synthetic import simulate_screen
    a = simulate_screen("tiny", seed=1, n_pairs=16, pair_cells=(24, 32))
    scd.setup_anndata(a, perturbation_key="gene", control_group="non-targeting"); scd.normalize(a)
    tiny = {"sccvae_tiny": {"model": dict(n_latent=6, n_hidden=16), "train": dict(preset="fast", max_epochs=1, accelerator="cpu"),
                            "shift": {"mode": "prior"}}}
    res = benchmark(a, configs=tiny, pairs=True, seed=0, out_dir=tmp_path)
    assert res.methods == list(PAIR_BASELINES) + ["sccvae_tiny"]
    held = held_out(res.manifest, "pairs")
    df = res.per_perturbation
    assert sorted(df.perturbation.unique()) == held and (df.groupby(["method", "metric", "column_set", "perturbation"]).size() == 1).all()
    nu = res.settings["pair_unseen_genes"]
    assert {p for p in held if "+" in p} <= set(nu) and all(nu[p] > 0 for p in held if "+" in p and p.split("+")[0] in held)
    tab = res.pair_summary()
    assert set(tab.columns) == set(res.methods) and tab.notna().all().all()
    assert "by seen-singles class" in (tmp_path / "report.md").read_text()
    assert "benchmark_split" not in a.obs                                 # the harness cleans its split up
    with pytest.raises(ValueError, match="cannot predict combinations"):
        benchmark(a, configs=(), baselines=["nearest_1"], pairs=True)
