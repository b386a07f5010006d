"""sccvae.baselines: prediction format, closed forms and the link to sccvae.evaluate."""
import numpy as np
import pandas as pd
import pytest
import anndata as ad
import torch

from sccvae import data as scd
from sccvae.baselines import ControlBaseline, PerturbedMeanBaseline, LinearBaseline, NearestPerturbationBaseline
from sccvae.metrics import declared_bulk

torch.set_num_threads(1)


def _screen(n_ctrl=200, g=30, n_cells=20, seed=0, labels_dim=4, n_train=8, n_test=3):
    "Registered, log-normalised toy screen whose perturbation means are a linear function of known labels."
    r = np.random.default_rng(seed)
    names = [f"Q{i}" for i in range(n_train + n_test)]
    P = r.normal(size=(len(names), labels_dim)); P -= P[:n_train].mean(0)
    G0, W0 = 0.1 * r.normal(size=(g, 2)), r.normal(size=(2, labels_dim))
    b0 = r.uniform(3, 4, g)
    means = (G0 @ W0 @ P.T).T + b0
    X = [r.normal(b0, 0.05, (n_ctrl, g))] + [r.normal(m, 0.05, (n_cells, g)) for m in means]
    lab = ["ctrl"] * n_ctrl + sum([[n] * n_cells for n in names], [])
    a = ad.AnnData(np.vstack(X).astype(np.float32), obs=pd.DataFrame({"g": lab}, index=[f"c{i}" for i in range(len(lab))]),
                   var=pd.DataFrame(index=[f"gene{j}" for j in range(g)]))
    scd.setup_anndata(a, perturbation_key="g", control_group="ctrl")
    scd.normalize(a)
    a.obs["split"] = np.where(a.obs["g"].isin(names[n_train:]), "test", "train")
    return a, pd.DataFrame(P, index=names), means, names[:n_train], names[n_train:]


@pytest.fixture(scope="module")
def screen():
    return _screen()


def test_predict_format_and_seeding(screen):
    a, labels, means, train, test = screen
    bl = PerturbedMeanBaseline().fit(a)
    p = bl.predict(test, n_cells={t: 5 + i for i, t in enumerate(test)}, seed=3)
    assert p.n_obs == 5 + 6 + 7 and p.var_names.equals(a.var_names) and p.X.dtype == np.float32
    assert p.obs[scd.TARGET_KEY].value_counts().to_dict() == {test[0]: 5, test[1]: 6, test[2]: 7}
    assert (p.obs["g"].astype(str) == p.obs[scd.TARGET_KEY].astype(str)).all()
    np.testing.assert_array_equal(bl.predict(test, n_cells=5, seed=3).X[:5], p.X[:5])   # same seed, same cells
    assert not np.array_equal(bl.predict(test, n_cells=5, seed=4).X, bl.predict(test, n_cells=5, seed=3).X)
    assert bl.predict(test).n_obs == len(test) * 20                                     # default: median training count
    pd.testing.assert_frame_equal(declared_bulk(p), bl.predict_bulk(test).astype(np.float32), check_names=False)


def test_control_and_perturbed_mean(screen):
    a, labels, means, train, test = screen
    ctl = ControlBaseline().fit(a)
    ctrl_mean = np.asarray(a.X[(a.obs.g == "ctrl").to_numpy()], np.float64).mean(0)
    np.testing.assert_allclose(ctl.predict_bulk(test).to_numpy(), np.tile(ctrl_mean, (3, 1)), rtol=1e-6)
    pm = PerturbedMeanBaseline().fit(a)
    tr = a[a.obs.split.eq("train") & a.obs.g.ne("ctrl")]
    per = pd.DataFrame(np.asarray(tr.X, np.float64), index=tr.obs.g.astype(str)).groupby(level=0).mean()
    np.testing.assert_allclose(pm.predict_bulk(["X"]).to_numpy()[0], per.mean(0).to_numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="weight"):
        PerturbedMeanBaseline(weight="x")


def test_linear_recovers_linear_truth(screen):
    a, labels, means, train, test = screen
    lin = LinearBaseline(n_components=2, ridge=1e-8, labels=labels).fit(a)
    np.testing.assert_allclose(lin.predict_bulk(test).to_numpy(), means[len(train):], atol=0.03)
    assert lin.W_.shape == (2, labels.shape[1]) and lin.G_.shape == (a.n_vars, 2)
    with pytest.raises(KeyError, match="no label"):
        lin.predict_bulk(["not_a_gene"])


def test_linear_default_labels_from_controls(screen):
    a, labels, means, train, test = screen
    # the toy's perturbations are not measured genes: default labels (gene PCA) must say so, with the fix
    lin = LinearBaseline(label_components=5)
    with pytest.raises(ValueError, match="labelled training perturbations"):
        lin.fit(a)


def test_nearest_perturbation(screen):
    a, labels, means, train, test = screen
    nn = NearestPerturbationBaseline(labels=labels).fit(a)
    L = labels.to_numpy(); Ln = L / np.linalg.norm(L, axis=1, keepdims=True)
    for q in test:
        sims = Ln[[labels.index.get_loc(t) for t in train]] @ Ln[labels.index.get_loc(q)]
        assert nn.neighbours([q]).iloc[0, 0] == train[int(np.argmax(sims))]
    assert nn.neighbours([train[0]]).iloc[0, 0] != train[0]                 # never its own neighbour
    tr = a[a.obs.g.eq(nn.neighbours([test[0]]).iloc[0, 0])]
    np.testing.assert_allclose(nn.predict_bulk([test[0]]).to_numpy()[0], np.asarray(tr.X, np.float64).mean(0), rtol=1e-6)
    eu = NearestPerturbationBaseline(labels=labels, metric="euclidean", k=2).fit(a)
    assert eu.neighbours(test).shape == (3, 2)


def test_baselines_plug_into_evaluate(screen):
    from sccvae.evaluate import evaluate
    a, labels, means, train, test = screen
    truth = a[a.obs.split == "test"]
    ctrl = a[(a.obs._scc_target == "control") & (a.obs.split == "train")]
    n = truth.obs._scc_target.astype(str).value_counts().to_dict()
    preds = {b.name: b.fit(a).predict(test, n_cells=n) for b in
             [ControlBaseline(), PerturbedMeanBaseline(), LinearBaseline(n_components=2, labels=labels)]}
    res = evaluate(preds, truth, ctrl, gene_sets={"all": None}, device="cpu", de_k=5)
    s = res.summary(fmt=False).set_index(["method", "metric"])["mean"]
    assert s[("linear", "mse")] < s[("perturbed_mean", "mse")] and s[("linear", "mse")] < s[("control", "mse")]
    assert s[("linear", "pearson_delta")] > max(0.7, s[("perturbed_mean", "pearson_delta")])
    assert res.per_perturbation.query("method == 'control' and metric == 'frac_same'").value.isna().all()


def test_errors(screen):
    a, *_ = screen
    with pytest.raises(RuntimeError, match="not fitted"):
        ControlBaseline().predict_bulk(["A"])
    with pytest.raises(KeyError, match="n_cells has no entry"):
        ControlBaseline().fit(a).predict(["A", "B"], n_cells={"A": 3})
    b = a.copy(); b.obs["split"] = np.where(b.obs._scc_target == "control", "test", "train")
    with pytest.raises(ValueError, match="no training control"):
        ControlBaseline().fit(b)


# --- the additive baseline for combinations (issue 14) ----------------------------------------------------------

def _pair_screen():
    "Three measured genes; controls at 2; singles A (-1 on A, +0.5 on C) and B (-2 on B, +0.5 on C); a pair A+B, held out."
    from sccvae.baselines import AdditiveBaseline  # noqa: F401  (import checked here)
    X = np.array([[2, 2, 2]] * 4 + [[1, 2, 2.5]] * 2 + [[2, 0, 2.5]] * 2 + [[0, 0, 2]] * 2, dtype=np.float32)
    a = ad.AnnData(X, obs=pd.DataFrame({"g": ["ctrl"] * 4 + ["A"] * 2 + ["B"] * 2 + ["A+B"] * 2},
                                       index=[f"c{i}" for i in range(10)]), var=pd.DataFrame(index=["A", "B", "C"]))
    scd.setup_anndata(a, perturbation_key="g", control_group="ctrl"); scd.normalize(a)
    a.obs["split"] = np.where(a.obs["g"] == "A+B", "test", "train")
    return a


def test_additive_sums_single_changes():
    from sccvae.baselines import AdditiveBaseline
    a = _pair_screen()
    add = AdditiveBaseline(fallback="mean").fit(a)
    assert set(add.single_delta_) == {"A", "B"}
    np.testing.assert_allclose(add.predict_bulk(["A+B", "A", "B+A"]).to_numpy() - 2, [[-1, -2, 1], [-1, 0, 0.5], [-1, -2, 1]], atol=1e-6)
    np.testing.assert_allclose(add.predict_bulk(["A+C"]).to_numpy() - 2, [[-1.5, -1, 1]], atol=1e-6)   # C unseen: the mean
    ctl = AdditiveBaseline(fallback="control").fit(a)
    np.testing.assert_allclose(ctl.predict_bulk(["A+C"]).to_numpy() - 2, [[-1, 0, 0.5]], atol=1e-6)
    # training pairs are not singles: with the pair in training the singles' changes are the same
    a.obs["split"] = "train"
    np.testing.assert_allclose(AdditiveBaseline(fallback="mean").fit(a).predict_bulk(["A+B"]).to_numpy() - 2, [[-1, -2, 1]], atol=1e-6)


def test_additive_predicts_cells_and_refuses_unknown_genes():
    from sccvae.baselines import AdditiveBaseline, ControlBaseline
    a = _pair_screen()
    add = AdditiveBaseline(fallback=ControlBaseline()).fit(a)
    p = add.predict(["A+B"], n_cells=4, seed=0)
    assert p.n_obs == 4 and list(p.obs[scd.TARGET_KEY].astype(str)) == ["A+B"] * 4
    pd.testing.assert_frame_equal(declared_bulk(p), add.predict_bulk(["A+B"]).astype(np.float32), check_names=False)
    np.testing.assert_allclose(np.asarray(p.X).mean(0), [1, 0, 3], atol=1e-6)
    np.testing.assert_allclose(add.predict_bulk(["C"]).to_numpy(), [[2, 2, 2]], atol=1e-6)   # fallback: no change
    with pytest.raises(ValueError, match="measured genes"):
        add.predict_bulk(["A+NOPE"])
    with pytest.raises(ValueError, match="fallback"):
        AdditiveBaseline(fallback="nope")


def test_additive_default_anchor_fallback_on_a_simulated_pair_screen():
    from sccvae.baselines import AdditiveBaseline, AnchorBaseline
    from sccvae.synthetic import simulate_screen
    s = simulate_screen("tiny", seed=0, n_pairs=6, n_truth=100)
    scd.setup_anndata(s, perturbation_key="gene", control_group="non-targeting"); scd.normalize(s)
    t = s.uns["sccvae_truth"]; held = set(t["perturbations"][:3])
    tgt = s.obs[scd.TARGET_KEY].astype(str)
    s.obs["split"] = np.where(tgt.str.contains(r"\+", regex=True) | tgt.isin(held), "test", "train")
    add = AdditiveBaseline().fit(s)
    assert isinstance(add.fallback_, AnchorBaseline) and not held & set(add.single_delta_)
    pairs = list(t["pair_names"])
    d = add.predict_bulk(pairs).to_numpy() - add.control_mean_
    for r, q in enumerate(pairs):
        x, y = q.split("+")
        exp = sum(add.single_delta_[g] if g in add.single_delta_ else add.fallback_._delta([g])[0] for g in (x, y))
        np.testing.assert_allclose(d[r], exp, atol=1e-6)


def test_additive_default_falls_back_to_the_mean_when_no_anchor(screen, caplog):
    from sccvae.baselines import AdditiveBaseline
    a, labels, means, train, test = screen            # perturbations are not measured genes: no labels, no anchor
    add = AdditiveBaseline().fit(a)
    assert add.fallback_ == "mean" and "anchor fallback" in caplog.text
    np.testing.assert_allclose(add.predict_bulk([f"{train[0]}+{train[1]}"]).to_numpy()[0] - add.control_mean_,
                               add.single_delta_[train[0]] + add.single_delta_[train[1]], atol=1e-9)
