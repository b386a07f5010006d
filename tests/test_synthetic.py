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


# --- pairs (issue 14) -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def paired():
    "The tiny screen (fewer truth cells, for speed) with and without 8 pairs."
    return simulate_screen("tiny", seed=0, n_truth=300), simulate_screen("tiny", seed=0, n_truth=300, n_pairs=8)


def test_no_pairs_by_default(tiny):
    t = tiny.uns["sccvae_truth"]
    assert not {"pair_names", "pair_index", "pair_effect", "pair_additive"} & set(t)
    assert "n_pairs" not in t["params"] and "pair_cells" not in t["params"]
    assert not tiny.obs["gene"].astype(str).str.contains(r"\+").any()


def test_pairs_keep_the_singles_and_add_their_truth(paired):
    a, q = paired
    n0, ta, tq = a.n_obs, a.uns["sccvae_truth"], q.uns["sccvae_truth"]
    assert (q.X[:n0] != a.X).nnz == 0 and (q.obs["gene"].iloc[:n0].astype(str) == a.obs["gene"].astype(str)).all()
    for k in ["true_mean", "true_effect", "shifts", "penetrance"]:
        np.testing.assert_array_equal(tq[k], ta[k], err_msg=k)
    P, G = len(ta["perturbations"]), a.n_vars
    assert tq["true_effect"].shape == (P, G) and tq["pair_effect"].shape == (8, G) and tq["pair_additive"].shape == (8, G)
    ia, ib = tq["pair_index"].T
    assert np.all(ia < ib) and len(set(zip(ia, ib))) == 8
    pert = ta["perturbations"]
    assert tq["pair_names"] == [f"{pert[i]}+{pert[j]}" for i, j in zip(ia, ib)]
    np.testing.assert_allclose(tq["pair_additive"], ta["true_effect"][ia] + ta["true_effect"][ib], atol=1e-6)
    lab = q.obs["gene"].iloc[n0:].astype(str)
    assert set(lab) == set(tq["pair_names"]) and lab.value_counts().between(60, 100).all()
    assert q.obs["gene_id"].iloc[n0:].str.match(r"^ENSG\d{11}\+ENSG\d{11}$").all()
    assert tq["params"]["n_pairs"] == 8 and q.obs_names.is_unique


def test_pair_cells_knock_down_both_targets(paired):
    a, q = paired
    tq, n0 = q.uns["sccvae_truth"], a.n_obs
    X = q.X.toarray().astype(np.float64); X = np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4)
    ctrl = X[(q.obs["gene"] == "non-targeting").to_numpy()].mean(0)
    lab = q.obs["gene"].astype(str).to_numpy()
    for name, (i, j) in zip(tq["pair_names"], tq["pair_index"]):
        m = X[lab == name].mean(0) - ctrl
        ti, tj = tq["target_index"][i], tq["target_index"][j]
        assert m[ti] < 0 and m[tj] < 0 and tq["pair_effect"][list(tq["pair_names"]).index(name), [ti, tj]].max() < -0.2


def test_pairs_interact_in_gene_space(paired):
    tq = paired[1].uns["sccvae_truth"]
    inter = np.linalg.norm(tq["pair_effect"] - tq["pair_additive"], axis=1)
    both_null = tq["is_null"][tq["pair_index"]].all(1)
    assert np.median(inter[~both_null]) > 0.05           # saturation and the log link bend the added module shifts


@pytest.mark.parametrize("style,key", [("gears", "condition"), ("scperturb", "perturbation")])
def test_pair_labels_are_a_plus_b_in_every_style(style, key):
    q = simulate_screen("tiny", seed=1, style=style, n_pairs=3, n_truth=100)
    names = q.uns["sccvae_truth"]["pair_names"]
    assert set(names) <= set(q.obs[key].cat.categories) and all(n.count("+") == 1 and "ctrl" not in n for n in names)


def test_pairs_survive_h5ad(tmp_path):
    q = simulate_screen("tiny", seed=2, n_pairs=4, n_truth=100)
    q.write_h5ad(tmp_path / "p.h5ad")
    t = ad.read_h5ad(tmp_path / "p.h5ad").uns["sccvae_truth"]
    assert list(t["pair_names"]) == q.uns["sccvae_truth"]["pair_names"]
    np.testing.assert_array_equal(t["pair_effect"], q.uns["sccvae_truth"]["pair_effect"])


@pytest.mark.parametrize("kwargs,msg", [(dict(n_pairs=1000), "distinct pairs"), (dict(n_pairs=-1), "n_pairs"),
                                        (dict(n_pairs=2, pair_cells=(0, 5)), "pair_cells")])
def test_bad_pair_settings(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        simulate_screen("tiny", seed=0, n_truth=10, **kwargs)


# --- gene-level regulatory network (issue 14) ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def networked():
    return simulate_screen("tiny", seed=0, gene_network=5)


def _dense_total(B):
    return np.linalg.inv(np.eye(B.shape[0]) - B.toarray().astype(np.float64))


def test_no_network_by_default(tiny):
    t = tiny.uns["sccvae_truth"]
    assert not {"gene_dag", "regulators", "gene_order", "lograte_effect"} & set(t)
    assert not {"gene_network", "regulator_share", "gene_noise"} & set(t["params"])


def test_network_keeps_the_world_and_zeroes_the_shifts(tiny, networked):
    t, n = tiny.uns["sccvae_truth"], networked.uns["sccvae_truth"]
    for k in ["target_index", "penetrance", "knockdown", "is_null", "loadings", "dag", "baseline"]:
        np.testing.assert_array_equal(n[k], t[k], err_msg=k)
    assert np.all(n["shifts"] == 0) and np.all(n["strength"] == 0) and networked.shape == tiny.shape
    assert float(n["params"]["gene_network"]) == 5 and "network_weight" in n["params"]


def test_gene_dag_is_acyclic_and_regulators_are_the_non_null_targets(networked):
    t = networked.uns["sccvae_truth"]
    B, G = t["gene_dag"], networked.n_vars
    assert sp.isspmatrix_csr(B) and B.shape == (G, G) and B.dtype == np.float32 and B.diagonal().max() == 0
    pos = np.empty(G, int); pos[t["gene_order"]] = np.arange(G)
    r, c = B.nonzero()
    assert np.all(pos[r] < pos[c])
    out = np.diff(B.indptr)
    assert np.array_equal(out > 0, t["regulators"])
    ti, null = t["target_index"], t["is_null"]
    assert np.all(out[ti[~null]] >= 1) and np.all(out[ti[null]] == 0)
    assert t["regulators"].sum() == round(0.1 * G)
    w = np.abs(B.data)
    assert w.min() >= 0.3 - 1e-6 and w.max() <= 0.8 + 1e-6 and 0 < (B.data < 0).mean() < 0.5
    assert 3 < B.nnz / t["regulators"].sum() < 7


def test_propagate_matches_the_dense_inverse(networked):
    from sccvae.synthetic_world import _propagate
    B = networked.uns["sccvae_truth"]["gene_dag"]
    x = np.random.default_rng(0).standard_normal((5, B.shape[0])).astype(np.float32)
    np.testing.assert_allclose(_propagate(x, B), x @ _dense_total(B), rtol=1e-5, atol=1e-5)


def test_knockdown_propagates_to_descendants(networked):
    t = networked.uns["sccvae_truth"]
    B, ti = t["gene_dag"], t["target_index"]
    R = _dense_total(B)
    kd, pi = np.log1p(-t["knockdown"].astype(np.float64)), t["penetrance"].astype(np.float64)
    np.testing.assert_allclose(t["lograte_effect"], kd[:, None] * R[ti], rtol=1e-5, atol=1e-6)
    mean = np.asarray(networked.X.mean(0)).ravel()
    checked = 0
    for i, g in enumerate(ti):
        for j in B[g].indices:
            if abs(R[g, j] - B[g, j]) < 1e-9 and mean[j] > 20:              # direct child, no other path, expressed
                want = B[g, j] * kd[i] * pi[i]
                assert abs(t["true_effect"][i, j] - want) <= 0.1 * abs(want), (i, j)
                checked += 1
    assert checked >= 2
    desc = np.abs(t["lograte_effect"]) > 0                                  # beyond the children too
    assert (desc.sum(1) - 1 > np.diff(B.indptr)[ti]).any()
    te = t["true_effect"].copy(); te[np.arange(len(ti)), ti] = 0            # null targets: only the target moves
    assert np.abs(te[t["is_null"]]).max() < 0.05


def test_network_cells_show_the_knockdown_on_children(networked):
    t = networked.uns["sccvae_truth"]
    X = networked.X.toarray().astype(np.float64); X = np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4)
    lab = networked.obs["gene"].astype(str).to_numpy()
    ctrl = X[lab == "non-targeting"].mean(0)
    obs = np.stack([X[lab == p].mean(0) - ctrl for p in t["perturbations"]])
    strong = np.abs(t["true_effect"]) > 0.3
    strong[np.arange(len(obs)), t["target_index"]] = False                 # off-target (network) effects only
    assert strong.sum() > 10 and np.mean(np.sign(obs[strong]) == np.sign(t["true_effect"][strong])) > 0.9


def test_network_pairs_carry_both_knockdowns():
    q = simulate_screen("tiny", seed=0, gene_network=5, n_pairs=6, n_truth=300)
    t = q.uns["sccvae_truth"]
    lr = t["lograte_effect"]
    for k, (i, j) in enumerate(t["pair_index"]):
        both = lr[i] + lr[j]
        moved = np.abs(both) > 0.5
        assert np.all(np.sign(t["pair_effect"][k][moved]) == np.sign(both[moved]))


def test_network_survives_h5ad(networked, tmp_path):
    networked.write_h5ad(tmp_path / "n.h5ad")
    b = ad.read_h5ad(tmp_path / "n.h5ad").uns["sccvae_truth"]
    t = networked.uns["sccvae_truth"]
    assert sp.issparse(b["gene_dag"]) and (sp.csr_matrix(b["gene_dag"]) != t["gene_dag"]).nnz == 0
    for k in ["regulators", "gene_order", "lograte_effect", "true_effect"]:
        np.testing.assert_array_equal(np.asarray(b[k]), np.asarray(t[k]), err_msg=k)


@pytest.mark.parametrize("kwargs,msg", [(dict(gene_network=-1), "gene_network"), (dict(regulator_share=2.0), "regulator_share"),
                                        (dict(network_negative=-0.1), "network_negative"),
                                        (dict(network_weight=(-0.5, 0.5)), "network_weight"), (dict(gene_noise=-1), "gene_noise")])
def test_bad_network_settings(kwargs, msg):
    kw = {"gene_network": 3, **kwargs}
    with pytest.raises(ValueError, match=msg):
        simulate_screen("tiny", seed=0, n_truth=10, **kw)


def test_pair_related_draws_same_module_shifting_pairs():
    "pair_related=r: round(r·Q) pairs of two shifting targets of one module; r=0 is the random draw, unchanged."
    a = simulate_screen("tiny", seed=3, n_pairs=10, pair_related=0.4)
    t = a.uns["sccvae_truth"]
    rel, pidx, mods = np.asarray(t["pair_related"]), np.asarray(t["pair_index"]), np.asarray(t["target_module"])
    assert rel.sum() == 4 and (mods[pidx[rel, 0]] == mods[pidx[rel, 1]]).all() and not np.asarray(t["is_null"])[pidx[rel]].any()
    b0, b1 = simulate_screen("tiny", seed=3, n_pairs=10), simulate_screen("tiny", seed=3, n_pairs=10, pair_related=0.0)
    assert (b0.X != b1.X).nnz == 0 and "pair_related" not in b0.uns["sccvae_truth"]
    with pytest.raises(ValueError, match="pair_related"):
        simulate_screen("tiny", n_pairs=4, pair_related=-0.1)
