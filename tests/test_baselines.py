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
