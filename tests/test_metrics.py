"""sccvae.metrics and sccvae.evaluate: closed forms, parity with the original formulas, tables and files."""
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import anndata as ad
import torch
from scipy import stats

from sccvae import metrics as M
from sccvae.evaluate import evaluate, EvalResult

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("eval_speed", ROOT / "benchmarks" / "eval_speed.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def _toy(seed=0, g=40, n=(70, 45, 90), shifts=(0.0, 1.0, 2.5), n_ctrl=300):
    r = np.random.default_rng(seed)
    var = pd.DataFrame(index=[f"g{j}" for j in range(g)])
    ctrl = ad.AnnData(r.gamma(2.0, 0.5, (n_ctrl, g)).astype(np.float32), var=var)
    X, lab = [], []
    for i, (k, s) in enumerate(zip(n, shifts)):
        x = r.gamma(2.0, 0.5, (k, g)).astype(np.float32); x[:, 5 * i:5 * i + 5] += s; X.append(x); lab += [f"P{i}"] * k
    obs = pd.DataFrame({"pert": pd.Categorical(lab)}, index=[f"c{j}" for j in range(len(lab))])
    return ctrl, ad.AnnData(np.vstack(X), obs=obs, var=var)


# ---------------------------------------------------------------------------------------------- closed forms
def test_mmd2_unbiased_matches_gaussian_closed_form():
    rng = np.random.default_rng(0)
    mu, sigma = np.r_[1.0, 0.5, 0.0], 1.5
    est = [M.mmd2_unbiased(rng.normal(size=(400, 3)), rng.normal(size=(400, 3)) + mu, sigma) for _ in range(6)]
    se = np.std(est, ddof=1) / np.sqrt(len(est))
    assert abs(np.mean(est) - M.gaussian_mmd2(mu, sigma)) < 4 * se


def test_edistance_closed_form_and_reference_variants():
    rng = np.random.default_rng(1)
    est = [M.edistance(rng.normal(size=500), rng.normal(size=500) + 1.0) for _ in range(6)]
    se = np.std(est, ddof=1) / np.sqrt(len(est))
    assert abs(np.mean(est) - M.gaussian_edistance_1d(1.0)) < 4 * se
    x, y = rng.normal(size=300), rng.normal(size=200) + 0.5
    # V-statistic (pertpy >= PR #733) equals scipy's energy_distance squared in 1-D
    assert M.edistance(x, y, unbiased=False) == pytest.approx(stats.energy_distance(x, y) ** 2, rel=1e-6), \
        "vs scipy.stats.energy_distance squared (float64 inputs; agreement to float rounding, any scipy version)"
    # squared distances: V-statistic is exactly 2 |mean difference|^2
    assert M.edistance(x, y, squared=True, unbiased=False) == pytest.approx(2 * (x.mean() - y.mean()) ** 2, rel=1e-6)
    # multivariate: against an explicit all-pairs formula (scPerturb's N^2 - N within-group means)
    X, Y = rng.normal(size=(30, 4)), rng.normal(size=(25, 4)) + 0.3
    d = lambda A, B: np.sqrt(((A[:, None] - B[None]) ** 2).sum(-1))
    ref = 2 * d(X, Y).mean() - d(X, X).sum() / (30 * 29) - d(Y, Y).sum() / (25 * 24)
    assert M.edistance(X, Y) == pytest.approx(ref, rel=1e-6)


def test_paper_energy_expectation_is_mean_difference_plus_bias():
    rng = np.random.default_rng(2)
    m, mu2 = 50, 1.0
    e = [M.paper_energy(rng.normal(size=(320, m)), rng.normal(size=(320, m)) + np.sqrt(mu2 / m), seed=s) for s in range(8)]
    assert abs(np.mean(e) - (2 * mu2 / m + 1 / 8)) < 4 * np.std(e, ddof=1) / np.sqrt(len(e))


def test_paper_mmd_matches_explicit_formula():
    rng = np.random.default_rng(3)
    p, t = rng.gamma(1.0, 1.0, (64, 20)), rng.gamma(1.3, 1.0, (64, 20))
    vals = []
    for i in range(0, 64, 32):
        Z = np.concatenate([p[i:i + 32], t[i:i + 32]])
        D = ((Z[None] - Z[:, None]) ** 2).sum(-1)
        h = D.sum() / (64 * 63)
        K = sum(np.exp(-D / (h * 2.0 ** (k - 2))) for k in range(5))
        vals.append(K[:32, :32].mean() + K[32:, 32:].mean() - 2 * K[:32, 32:].mean())
    assert M.paper_mmd(p.astype(np.float32), t.astype(np.float32)) == pytest.approx(np.mean(vals), rel=1e-5)
    assert np.isnan(M.paper_mmd(p[:20], t[:20]))                         # fewer than 32 cells: no block


def test_discrimination_score():
    T = torch.tensor(np.random.default_rng(4).normal(size=(5, 12)))
    assert M.discrimination_score(T, T).tolist() == [0.0] * 5
    assert M.discrimination_score(torch.zeros(1, 12), torch.zeros(3, 12)).item() == pytest.approx(0.5)
    # excluding the target gene: a prediction right only on its target gene is not discriminated
    P = torch.zeros(1, 12); P[0, 0] = 10.0
    Tt = torch.zeros(3, 12); Tt[0, 0] = 10.0; Tt[0, 3] = 1.0; Tt[1, 1] = 0.1; Tt[2, 2] = 0.2
    assert M.discrimination_score(P, Tt, pred_index=[0]).item() == 0.0
    assert M.discrimination_score(P, Tt, pred_index=[0], exclude=[0]).item() == 1.0


# ---------------------------------------------------------------------------------------------- parity
def test_parity_equals_loop_over_perturbations_reference():
    bench = _bench()
    ctrl, truth = _toy()
    rng = np.random.default_rng(9)
    pred = truth[rng.permutation(truth.n_obs)[:150]].copy()          # unequal counts: exercises the resampling
    pred.X = pred.X + rng.normal(0, 0.1, pred.X.shape).astype(np.float32)
    top = list(truth.var_names[:10])
    res = evaluate({"m": pred}, truth, ctrl, perturbation_key="pert", gene_sets={"all": None, "top": top},
                   metrics="parity", device="cpu", seed=5)
    ours = res.per_perturbation.set_index(["gene_set", "metric", "perturbation"]).value
    comb = bench.combined_adata(pred, truth, ctrl, key="pert")
    ptbs = sorted(truth.obs.pert.unique())
    for g, genes in {"all": None, "top": top}.items():
        loop = bench.loop_parity(comb, ptbs, marker=genes, seed=5)
        for m, vals in loop.items():
            for p, v in vals.items():
                assert ours[(g, m, p)] == pytest.approx(v, rel=1e-5, abs=1e-9), (g, m, p)


def test_control_prediction_directions_are_na_and_declared_bulk_used():
    ctrl, truth = _toy()
    pred = ad.AnnData(np.tile(ctrl.X[:100], (3, 1)), obs=pd.DataFrame({"pert": np.repeat(["P0", "P1", "P2"], 100)},
                      index=[f"x{i}" for i in range(300)]), var=truth.var.copy())
    M.declare_bulk(pred, pd.DataFrame(np.tile(np.asarray(ctrl.X, np.float64).mean(0), (3, 1)),
                                      index=["P0", "P1", "P2"], columns=truth.var_names))
    res = evaluate({"control": pred}, truth, ctrl, perturbation_key="pert", gene_sets={"all": None}, device="cpu")
    df = res.per_perturbation
    assert df.query("metric in ['frac_same', 'frac_changed', 'de_direction', 'pearson_delta', 'de_overlap']").value.isna().all()
    assert res.summary().loc[("all", "Frac Same"), "control"] == "N/A"
    # MSE uses the declared bulk (the control mean), not a resample of the predicted cells
    tm = pd.DataFrame(truth.X, index=truth.obs.pert.astype(str)).groupby(level=0).mean()
    expect = ((tm.to_numpy() - np.asarray(ctrl.X, np.float64).mean(0)) ** 2).mean(1)
    got = df.query("metric == 'mse'").set_index("perturbation").value.loc[tm.index]
    np.testing.assert_allclose(got.to_numpy(), expect, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- evaluate
def test_evaluate_tables_strata_and_csv(tmp_path):
    ctrl, truth = _toy()
    good = truth[np.random.default_rng(0).permutation(truth.n_obs)].copy()
    noisy = good.copy(); noisy.X = noisy.X + np.random.default_rng(1).normal(0, 0.5, noisy.X.shape).astype(np.float32)
    res = evaluate({"good": good, "noisy": noisy}, truth, ctrl, perturbation_key="pert",
                   gene_sets={"all": None, "hvg": M.top_hvg(ctrl, 10)}, device="cpu", de_k=5)
    df = res.per_perturbation
    assert {"method", "perturbation", "gene_set", "metric", "value", "family", "stratum", "edist_to_control"} <= set(df)
    assert set(df.family) == {"parity", "corrected"} and set(df.stratum) == {"low", "mid", "high"}
    assert len(df) == 2 * 3 * 2 * len(M.METRICS)
    tab = res.summary()
    assert list(tab.columns) == ["good", "noisy"] and tab.index.names == ["gene_set", "metric"]
    assert "±" in tab.loc[("all", "MSE"), "noisy"]
    num = res.summary(fmt=False).set_index(["method", "gene_set", "metric"])
    for m in ["mse", "mmd2", "edistance", "mse_de"]:
        assert num.loc[("good", "all", m), "mean"] < num.loc[("noisy", "all", m), "mean"], m
    v = df.query("method == 'noisy' and gene_set == 'all' and metric == 'mse'").value
    assert num.loc[("noisy", "all", "mse"), "sd"] == pytest.approx(v.std(ddof=1))
    assert (df.query("method == 'good' and metric == 'pds'").value == 0).all()
    paths = res.to_csv(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths.values())
    back = pd.read_csv(paths["per_perturbation"])
    assert len(back) == len(df)
    pooled = EvalResult.concat([res, evaluate({"good": good}, truth, ctrl, perturbation_key="pert", device="cpu", fold=1)])
    assert pooled.per_perturbation.stratum.notna().all()


def test_evaluate_is_seeded_and_order_invariant():
    ctrl, truth = _toy()
    pred = truth[np.random.default_rng(2).permutation(truth.n_obs)[:200]].copy()
    kw = dict(perturbation_key="pert", gene_sets={"all": None}, device="cpu")
    a = evaluate({"m": pred}, truth, ctrl, seed=1, **kw).per_perturbation
    b = evaluate({"m": pred}, truth, ctrl, seed=1, **kw).per_perturbation
    pd.testing.assert_frame_equal(a, b)
    shuf = pred[np.random.default_rng(3).permutation(pred.n_obs)].copy()
    c = evaluate({"m": shuf}, truth, ctrl, metrics="corrected", **kw).per_perturbation
    d = evaluate({"m": pred}, truth, ctrl, metrics="corrected", **kw).per_perturbation
    np.testing.assert_allclose(c.value, d.value, rtol=1e-5, atol=1e-9)   # float32 partial sums: summation order


def test_evaluate_errors_name_the_fix():
    ctrl, truth = _toy()
    with pytest.raises(KeyError, match="perturbation_key"):
        evaluate({"m": truth}, truth, ctrl)                       # no canonical column and none given
    with pytest.raises(KeyError, match="lacks"):
        evaluate({"m": truth[:, :5]}, truth, ctrl, perturbation_key="pert")
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate({"m": truth}, truth, ctrl, perturbation_key="pert", metrics=["mmd"])
    with pytest.raises(TypeError, match="AnnData"):
        M.top_hvg(np.zeros((3, 3)))
    with pytest.raises(KeyError, match="not in the data's var_names"):
        evaluate({"m": truth}, truth, ctrl, perturbation_key="pert", gene_sets={"x": ["nope"]})
