"""Tests of the installed `sccvae.synthetic` API on the tiny preset (each well under 5 s)."""
import time
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import anndata as ad

from sccvae.synthetic import PRESETS, simulate_screen, signal_ratio

STYLES = [("replogle", "gene", "non-targeting"), ("scperturb", "perturbation", "control"), ("gears", "condition", "ctrl")]


@pytest.fixture(scope="module")
def tiny():
    return simulate_screen("tiny", seed=0)


def test_presets_have_the_documented_sizes():
    assert {"tiny", "small", "demo", "k562"} <= set(PRESETS)
    k = PRESETS["k562"]
    assert k["n_genes"] == 8563 and k["n_perturbations"] == 300 and 9000 <= k["n_control"] <= 11000
    assert PRESETS["tiny"]["n_genes"] == 300 and PRESETS["tiny"]["n_perturbations"] == 12


def test_tiny_is_fast_and_has_raw_counts():
    t0 = time.perf_counter()
    a = simulate_screen("tiny", seed=3)
    assert time.perf_counter() - t0 < 5            # < 2 s on an idle core; generous for shared CI machines
    assert sp.issparse(a.X) and a.X.format == "csr" and a.X.dtype == np.float32
    assert np.all(a.X.data > 0) and np.all(a.X.data == np.round(a.X.data))
    assert a.obs_names.is_unique and a.var_names.is_unique
    assert 1000 < a.n_obs < 2500 and a.n_vars == 300


def test_truth_shapes_and_dag(tiny):
    t = tiny.uns["sccvae_truth"]
    P, G, K = len(t["perturbations"]), tiny.n_vars, t["dag"].shape[0]
    assert t["dag"].shape == (K, K) and np.all(np.tril(t["dag"]) == 0)
    assert t["loadings"].shape == (G, K) and t["shifts"].shape == (P, K)
    assert t["penetrance"].shape == t["is_null"].shape == (P,) and t["is_null"].dtype == bool
    assert t["true_mean"].shape == (P + 1, G) and t["true_effect"].shape == (P, G)
    np.testing.assert_allclose(t["true_effect"], t["true_mean"][1:] - t["true_mean"][0], atol=1e-6)
    assert list(t["true_mean_rows"]) == ["control", *t["perturbations"]]
    assert set(t["modules"]) == set(t["module_names"]) and all(len(v) for v in t["modules"].values())
    assert t["params"]["seed"] == 0 and t["params"]["size"] == "tiny"


def test_targets_are_measured_and_expressed(tiny):
    t = tiny.uns["sccvae_truth"]
    sym = tiny.var["gene_name"].to_numpy()
    assert list(sym[t["target_index"]]) == list(t["perturbations"])
    mean = np.asarray(tiny.X.mean(0)).ravel()
    assert np.all(mean[t["target_index"]] >= np.median(mean))


def test_same_seed_same_screen_other_seed_differs(tiny):
    b = simulate_screen("tiny", seed=0)
    assert (tiny.X != b.X).nnz == 0 and tiny.obs.equals(b.obs)
    np.testing.assert_array_equal(tiny.uns["sccvae_truth"]["true_mean"], b.uns["sccvae_truth"]["true_mean"])
    c = simulate_screen("tiny", seed=1)
    assert not np.array_equal(c.uns["sccvae_truth"]["dag"], tiny.uns["sccvae_truth"]["dag"])


def test_null_perturbations_only_move_their_target(tiny):
    t = tiny.uns["sccvae_truth"]
    P = len(t["perturbations"])
    te = t["true_effect"].copy()
    on = te[np.arange(P), t["target_index"]]
    assert np.all(on < -0.2)                               # on-target knockdown, nulls included
    te[np.arange(P), t["target_index"]] = 0
    off = np.linalg.norm(te, axis=1)
    assert t["is_null"].any() and off[t["is_null"]].max() < 0.1 and off[~t["is_null"]].min() > 0.3


def test_same_module_targets_have_similar_effects():
    t = simulate_screen("tiny", seed=0, n_perturbations=30, frac_null=0.0).uns["sccvae_truth"]
    R = np.corrcoef(t["true_effect"])
    same = t["target_module"][:, None] == t["target_module"][None]
    iu = np.triu_indices(len(R), 1)
    assert R[iu][same[iu]].mean() > R[iu][~same[iu]].mean() + 0.3


@pytest.mark.parametrize("style,key,ctrl", STYLES)
def test_styles(style, key, ctrl):
    a = simulate_screen("tiny", seed=2, style=style)
    assert key in a.obs and ctrl in set(a.obs[key].astype(str))
    perts = set(a.uns["sccvae_truth"]["perturbations"])
    labels = set(a.obs[key].astype(str)) - {ctrl}
    if style == "replogle":
        assert a.var_names.str.match(r"^ENSG\d+$").all() and "gem_group" in a.obs
        assert labels == perts and perts <= set(a.var["gene_name"])
    elif style == "scperturb":
        assert labels == perts and perts <= set(a.var_names)
    else:
        assert labels == {f"{g}+ctrl" for g in perts} and perts <= set(a.var_names) and "gene_name" in a.var
    ref = simulate_screen("tiny", seed=2)                  # the style changes only the layout
    assert (a.X != ref.X).nnz == 0


def test_overrides(tmp_path):
    a = simulate_screen("tiny", seed=0, n_genes=200, n_perturbations=5, cells_per_perturbation=20, n_control=50)
    assert a.shape == (50 + 5 * 20, 200)
    assert a.uns["sccvae_truth"]["params"]["n_genes"] == 200


def test_h5ad_round_trip(tiny, tmp_path):
    path = tmp_path / "tiny.h5ad"
    tiny.write_h5ad(path)
    back = ad.read_h5ad(path)
    t, b = tiny.uns["sccvae_truth"], back.uns["sccvae_truth"]
    for k in ["dag", "loadings", "shifts", "penetrance", "is_null", "true_mean", "true_effect"]:
        np.testing.assert_array_equal(np.asarray(b[k]), np.asarray(t[k]), err_msg=k)
    assert list(b["perturbations"]) == list(t["perturbations"])
    assert {k: list(v) for k, v in b["modules"].items()} == t["modules"]
    assert (back.X != tiny.X).nnz == 0


@pytest.mark.parametrize("kwargs,msg", [
    (dict(size="huge"), "not a preset"), (dict(style="seurat"), "not known"), (dict(n_gene=5), "unknown setting"),
    (dict(n_perturbations=500), "raise n_genes"), (dict(knockdown=(0.9, 0.1)), "low <= high"),
])
def test_bad_settings_say_what_to_change(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        simulate_screen(**{"size": "tiny", **kwargs})


def test_signal_ratio_separates_null_from_effective(tiny):
    sr = signal_ratio(tiny)
    t = tiny.uns["sccvae_truth"]
    assert set(sr.index) == set(t["perturbations"]) and np.all(sr > 0)
    null = pd.Series(t["is_null"], index=t["perturbations"])[sr.index]
    assert sr[~null].median() > sr[null].median() and 1 < sr[~null].median() < 6
    g = simulate_screen("tiny", seed=0, style="gears")
    pd.testing.assert_series_equal(signal_ratio(g), sr)
