"""sccvae.effects: the CLIPR-style inversion on linear models with a known answer, and its refusals."""
import numpy as np
import pandas as pd
import pytest

from sccvae.effects import direct_effects


def _linear(n=15, seed=0, density=0.3):
    rng = np.random.default_rng(seed)
    B = np.triu(rng.random((n, n)) < density, 1) * rng.normal(0, 0.6, (n, n))
    p = rng.permutation(n); B = B[np.ix_(p, p)]
    g = [f"g{i}" for i in range(n)]
    T = np.diag(rng.uniform(0.3, 2.0, n) * rng.choice([-1, 1], n)) @ np.linalg.inv(np.eye(n) - B)
    return B, pd.DataFrame(T, index=g, columns=g)


def test_exact_inversion_recovers_the_dag():
    B, T = _linear()
    np.testing.assert_allclose(direct_effects(T, lam=0).to_numpy(), B, atol=1e-9)
    np.testing.assert_allclose(direct_effects(T, rank=len(T)).to_numpy(), B, atol=1e-9)


def test_regularised_inversion_ranks_true_edges_first_under_noise():
    B, T = _linear(n=25, seed=1)
    noisy = T + np.random.default_rng(2).normal(0, 0.01, T.shape)
    Bh = np.abs(direct_effects(noisy, lam=1e-3).to_numpy())
    true = np.abs(B) > 0
    off = ~np.eye(len(B), dtype=bool)
    top = np.argsort(-Bh[off])[:true[off].sum()]
    assert true[off][top].mean() > 0.8          # precision at the number of true edges


def test_extra_columns_and_weak_rows():
    B, T = _linear(n=8)
    wide = T.assign(extra=1.0)                   # affected genes that are not perturbed are ignored
    np.testing.assert_allclose(direct_effects(wide, lam=0).to_numpy(), B, atol=1e-9)
    weak = T.copy(); weak.iloc[0, 0] = 0.0
    assert "g0" not in direct_effects(weak, lam=0).index
    with pytest.raises(ValueError, match="square block"):
        direct_effects(pd.DataFrame(np.eye(2), index=["a", "b"], columns=["c", "d"]))
    with pytest.raises(ValueError, match="rank"):
        direct_effects(T, rank=99)


# --- scoring against a known network, and the baselines (issue 14) ----------------------------------------------

from sklearn.metrics import average_precision_score, roc_auc_score
import scipy.sparse as sp

from sccvae import data as scd
from sccvae.effects import control_correlation, edge_scores, observed_total_effects, simulated_gene_dag
from sccvae.synthetic import simulate_screen


def _chain():
    g = ["a", "b", "c", "d"]
    B = pd.DataFrame(0.0, index=g, columns=g)
    B.loc["a", "b"], B.loc["b", "c"], B.loc["c", "d"] = 0.9, 0.9, -0.3
    return B


@pytest.fixture(scope="module")
def net():
    a = simulate_screen("tiny", seed=1, gene_network=5, n_perturbations=30, n_truth=200)
    scd.setup_anndata(a, perturbation_key="gene", control_group="non-targeting")
    return a


def test_edge_scores_known_values_and_missing_pairs():
    B = _chain()
    s = edge_scores(B, B)
    assert (s.auprc, s.auroc, s.sign_accuracy, s.n_edges, s.n_pairs, s.coverage) == (1.0, 1.0, 1.0, 3, 12, 1.0)
    tot = pd.DataFrame(np.linalg.inv(np.eye(4) - B.to_numpy()), index=B.index, columns=B.columns)
    assert edge_scores(tot, B).auprc < 1                          # a→c (0.81) outranks c→d (0.3)
    assert edge_scores(direct_effects(tot, lam=0), B).auprc == 1
    part = edge_scores(B.loc[["a"], ["b"]], B)                    # one pair scored: the rest score 0
    assert part.coverage == pytest.approx(1 / 12) and part.sign_accuracy == pytest.approx(1 / 3)
    nan = B.copy(); nan.loc["b", "c"] = np.nan                    # NaN = no score
    assert edge_scores(nan, B).sign_accuracy == pytest.approx(2 / 3) and edge_scores(nan, B).coverage == pytest.approx(11 / 12)
    flip = -B
    assert edge_scores(flip, B).auprc == 1 and edge_scores(flip, B).sign_accuracy == 0


def test_edge_scores_match_sklearn_on_each_pair_set():
    rng = np.random.default_rng(0)
    g = [f"g{i}" for i in range(30)]
    B = pd.DataFrame(np.triu(rng.random((30, 30)) < 0.1, 1) * rng.normal(0, 1, (30, 30)), index=g, columns=g)
    H = pd.DataFrame(B.to_numpy() + rng.normal(0, 0.5, (30, 30)), index=g, columns=g).iloc[:12]   # rows g0..g11 only
    sub = g[:12]
    for pairs, rows, cols in [("all", g, g), ("block", sub, sub), ("from", sub, g)]:
        e = edge_scores(H, B, pairs=pairs)
        t = B.loc[rows, cols].to_numpy(); h = H.reindex(index=rows, columns=cols).fillna(0).to_numpy()
        off = np.not_equal.outer(np.array(rows), np.array(cols))
        y, s = t[off] != 0, np.abs(h[off])
        assert e.n_pairs == off.sum() and e.n_edges == y.sum() and e.positive_rate == pytest.approx(y.mean())
        assert e.auprc == pytest.approx(average_precision_score(y, s)) and e.auroc == pytest.approx(roc_auc_score(y, s))


def test_edge_scores_refusals():
    B = _chain()
    with pytest.raises(ValueError, match="'all', 'block' or 'from'"): edge_scores(B, B, pairs="rows")
    with pytest.raises(ValueError, match="square"): edge_scores(B, B.iloc[:, :3])
    with pytest.raises(KeyError, match="not in B_true"): edge_scores(B, B, pairs="block", genes=["a", "zz"])
    with pytest.raises(TypeError, match="DataFrames"): edge_scores(B.to_numpy(), B)


def test_simulated_gene_dag(net):
    Bt = simulated_gene_dag(net)
    t = net.uns["sccvae_truth"]
    assert Bt.shape == (net.n_vars, net.n_vars) and list(Bt.index) == list(net.var["gene_name"])
    assert (Bt.to_numpy() != 0).sum() == t["gene_dag"].nnz
    plain = simulate_screen("tiny", seed=0, n_truth=10)
    with pytest.raises(ValueError, match="gene_network"): simulated_gene_dag(plain)


def test_observed_total_effects_are_mean_changes(net):
    T = observed_total_effects(net)
    X = np.asarray(net.X.toarray(), np.float64)
    lab = scd.targets(net).astype(str).to_numpy()
    assert list(T.index) == sorted(net.uns["sccvae_truth"]["perturbations"]) and list(T.columns) == list(net.var["gene_name"])
    for p in T.index[:3]:
        np.testing.assert_allclose(T.loc[p].to_numpy(), X[lab == p].mean(0) - X[lab == "control"].mean(0), rtol=1e-6, atol=1e-6)
    half = np.where(np.arange(net.n_obs) % 2 == 0, "train", "val")
    net.obs["half"] = pd.Categorical(half)
    Th = observed_total_effects(net, split="train", split_key="half")
    keep = half == "train"
    p = T.index[0]
    np.testing.assert_allclose(Th.loc[p].to_numpy(), X[keep & (lab == p)].mean(0) - X[keep & (lab == "control")].mean(0),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(KeyError, match="no column"): observed_total_effects(net, split="train", split_key="nope")
    dense = net.copy(); dense.X = net.X.toarray()
    np.testing.assert_allclose(observed_total_effects(dense).to_numpy(), T.to_numpy(), rtol=1e-6, atol=1e-6)
    raw = simulate_screen("tiny", seed=0, n_truth=10)
    scd.setup_anndata(raw, perturbation_key="gene", control_group="non-targeting", normalize=False)
    with pytest.raises(ValueError, match="not log-normalised"): observed_total_effects(raw)


def test_observed_total_effects_skip_pairs():
    q = simulate_screen("tiny", seed=0, n_pairs=3, n_truth=10)
    scd.setup_anndata(q, perturbation_key="gene", control_group="non-targeting")
    T = observed_total_effects(q)
    assert not any("+" in p for p in T.index) and len(T) == len(q.uns["sccvae_truth"]["perturbations"])


def test_control_correlation_matches_numpy_sparse_and_dense(net):
    genes = list(net.var["gene_name"][:50])
    C = control_correlation(net, genes=genes, signed=True, chunk=16)
    lab = scd.targets(net).astype(str).to_numpy()
    Xc = np.asarray(net.X[lab == "control"].toarray(), np.float64)[:, :50]
    live = Xc.std(0) > 0
    np.testing.assert_allclose(C.to_numpy()[np.ix_(live, live)], np.corrcoef(Xc[:, live].T), rtol=1e-6, atol=1e-6)

    dense = net.copy(); dense.X = net.X.toarray()
    np.testing.assert_allclose(control_correlation(dense, genes=genes, signed=True).to_numpy(), C.to_numpy(), atol=1e-9)
    A = control_correlation(net, genes=genes)
    np.testing.assert_allclose(A.to_numpy(), np.abs(C.to_numpy())) ; assert list(A.index) == genes
    with pytest.raises(KeyError, match="not in adata"): control_correlation(net, genes=["nope"])


def test_constant_gene_has_zero_correlation():
    a = simulate_screen("tiny", seed=0, n_truth=10)
    scd.setup_anndata(a, perturbation_key="gene", control_group="non-targeting")
    X = a.X.tolil(); X[:, 0] = 0; a.X = X.tocsr()
    C = control_correlation(a, genes=list(a.var["gene_name"][:5]))
    assert np.all(C.to_numpy()[0] == 0) and C.iloc[1, 1] == 1


def test_observed_inversion_finds_edges_of_a_simulated_network(net):
    T = observed_total_effects(net)
    Bt = simulated_gene_dag(net)
    e = edge_scores(direct_effects(T), Bt, pairs="block")
    assert e.n_edges >= 2 and e.auprc > 3 * e.positive_rate


def test_observed_rows_in_total_and_direct_effects(net):
    "observed=True: rows of training perturbations are their observed train-split changes, the others the model's; model.direct_effects inverts that."
    import warnings
    from sccvae.model import SCCVAE
    from sccvae.effects import total_effects, direct_effects, observed_total_effects
    a = net.copy()
    scd.apply_split(a, scd.ood_manifest(a, n_folds=3, seed=0), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = SCCVAE(a, n_latent=6, n_hidden=16, n_label_components=6, seed=0)
        m.train(max_epochs=1, progress=False, accelerator="cpu")
    T, Th = total_effects(m, n_cells=16), total_effects(m, n_cells=16, observed=True)
    To = observed_total_effects(a, split="train")
    seen = list(m.train_perturbations)
    np.testing.assert_allclose(Th.loc[seen].to_numpy(), To.loc[seen, list(Th.columns)].to_numpy(), rtol=1e-12)
    others = [g for g in T.index if g not in seen]
    np.testing.assert_array_equal(Th.loc[others].to_numpy(), T.loc[others].to_numpy())
    pd.testing.assert_frame_equal(m.direct_effects(n_cells=16), direct_effects(Th, lam=1e-2))
    pd.testing.assert_frame_equal(m.direct_effects(n_cells=16, observed=False), direct_effects(T, lam=1e-2))
