"""sccvae.interop and predictions in other tools: cell-eval's file pair and its agreement with sccvae's metrics,
scanpy on predicted + true cells, the scPerturb E-distance, provenance and gene ids through an h5ad round trip."""
import importlib, importlib.util, shlex, subprocess, sys, warnings
import numpy as np
import pandas as pd
import pytest
import anndata as ad

from sccvae import data as D
from sccvae import interop as I
from sccvae.evaluate import evaluate
from sccvae.metrics import edistance
from sccvae.model import SCCVAE
from conftest import tiny_fold

HAVE_CELL_EVAL = importlib.util.find_spec("cell_eval") is not None
needs_cell_eval = pytest.mark.skipif(not HAVE_CELL_EVAL, reason="cell-eval is not installed "
                                     "(pip install 'sccvae[celleval]'; CI installs it with the dev extra)")


@pytest.fixture(scope="module")
def fold():
    "A tiny OOD fold (6 unseen perturbations), a model trained briefly, its predictions, the truth and the training controls."
    adata, unseen = tiny_fold(n_folds=2)
    model = SCCVAE(adata, n_latent=8, n_hidden=32, n_label_components=8)
    model.train(max_epochs=3, pack=4, progress=False, accelerator="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # unseen perturbations: median learned penetrance
        pred = model.predict(unseen, n_cells=64)
    t, s = D.targets(adata).astype(str), adata.obs["split"].astype(str)
    truth = adata[((s == "test") & (t != "control")).to_numpy()].copy()
    control = adata[((s == "train") & (t == "control")).to_numpy()].copy()
    return adata, unseen, pred, truth, control


def _halves(truth, unseen, seed=0):
    "An oracle prediction (half of each perturbation's held-out cells, scored on the other half) and a permuted one."
    rng = np.random.default_rng(seed)
    lab = D.targets(truth).astype(str).to_numpy()
    half = np.zeros(truth.n_obs, bool)
    for p in unseen:
        idx = np.flatnonzero(lab == p)
        half[rng.choice(idx, len(idx) // 2, replace=False)] = True
    oracle, rest = truth[half].copy(), truth[~half].copy()
    perm = oracle.copy()
    perm.obs[D.TARGET_KEY] = pd.Categorical(lab[half]).rename_categories(dict(zip(unseen, np.roll(unseen, 1))))
    return rest, {"oracle": oracle, "permuted": perm}


def _wide(res, method=None):
    df = res.per_perturbation
    if method is not None: df = df[df.method == method]
    return df.pivot_table(index="perturbation", columns="metric", values="value")


def test_imports_without_cell_eval(monkeypatch):
    "The module imports without the optional dependency; calls that need it say how to install it."
    monkeypatch.setitem(sys.modules, "cell_eval", None)       # `import cell_eval` now raises ImportError
    mod = importlib.reload(I)
    with pytest.raises(ImportError, match=r"sccvae\[celleval\]"):
        mod.run_cell_eval(mod.CellEvalFiles(pred=None, real=None))
    monkeypatch.delitem(sys.modules, "cell_eval")
    importlib.reload(I)


@needs_cell_eval
def test_cell_eval_agrees_with_sccvae(fold, tmp_path):
    """cell-eval (Python API and its one-line CLI) on a tiny fold against sccvae's own metrics.

    Match — Pearson Δ: the same formula (Pearson over genes of mean predicted − control mean vs mean true − control
    mean), the same cells and, because both files carry the training controls, the same control mean: equal to float32
    precision. Discrimination: the same L1 distances between predicted and true changes, target gene left out
    (var_names are symbols), normalised differently — cell-eval 1 − closer/N (1 best), sccvae PDS closer/(N − 1)
    (0 best) — so cell-eval = 1 − PDS·(N − 1)/N exactly.
    Differ — DE overlap: cell-eval tests genes with pdex's Wilcoxon rank-sum test, keeps BH-FDR < 0.05, ranks by
    |log2FC| and uses k = the number of truly significant genes; sccvae takes the top 20 by |Welch t| without an FDR
    cut. They agree only in what they reward: an oracle (half of the held-out cells) scores above a permuted one."""
    adata, unseen, pred, truth, control = fold
    files = I.to_cell_eval(pred, truth, control, tmp_path)
    ce, _ = I.run_cell_eval(files, profile="minimal")
    ours = _wide(evaluate(pred, truth, control, gene_sets={"all": None}, metrics=["pearson_delta", "pds"])).loc[ce.index]
    n = len(ours)
    assert n == len(unseen) == 6
    np.testing.assert_allclose(ce["pearson_delta"], ours["pearson_delta"], atol=1e-5)
    np.testing.assert_allclose(ce["discrimination_score_l1"], 1 - ours["pds"] * (n - 1) / n, atol=1e-9)
    # the documented command gives the same numbers as the Python API
    cmd = shlex.split(files.command) + ["--profile", "minimal"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    cli = pd.read_csv(files.outdir / "results.csv").set_index("perturbation").loc[ce.index]
    np.testing.assert_allclose(cli["pearson_delta"], ce["pearson_delta"], atol=1e-6)
    np.testing.assert_allclose(cli["discrimination_score_l1"], ce["discrimination_score_l1"], atol=1e-9)
    # DE overlap: different definitions, the same ordering of a good and a bad prediction
    rest, preds = _halves(truth, unseen)
    mine = evaluate(preds, rest, control, gene_sets={"all": None}, metrics=["de_overlap"], use_bulk=False)
    fs = I.to_cell_eval(preds, rest, control, tmp_path / "halves")
    theirs = {m: I.run_cell_eval(f, profile="minimal")[0]["overlap_at_N"].mean() for m, f in fs.items()}
    ours_de = {m: _wide(mine, m)["de_overlap"].mean() for m in preds}
    assert theirs["oracle"] > theirs["permuted"] + 0.2, theirs
    assert ours_de["oracle"] > ours_de["permuted"], ours_de
    print(f"\nDE overlap, oracle vs permuted: cell-eval overlap_at_N {theirs}; sccvae de_overlap@20 {ours_de}")


@needs_cell_eval
def test_baseline_normalised_score(fold, tmp_path):
    "The score against cell-eval's cell-mean baseline: the baseline scores 0 against itself, the oracle above 0."
    adata, unseen, pred, truth, control = fold
    rest, preds = _halves(truth, unseen)
    files = I.to_cell_eval(preds["oracle"], rest, control, tmp_path)
    s = I.cell_eval_score(files)
    assert list(s.index) == [*I.VCC_METRICS, "avg_score"] and (s.normalised >= 0).all()
    assert s.loc["discrimination_score_l1", "pred"] > s.loc["discrimination_score_l1", "baseline"]
    assert s.normalised["avg_score"] > 0.1, s
    base, _ = I.run_cell_eval(I.CellEvalFiles(tmp_path / "baseline.h5ad", files.real), profile="vcc")
    assert I.normalised_score(base, base).normalised.abs().max() == 0


def test_scanpy_pca_umap(fold):
    "Predicted and true cells load together in scanpy: PCA, neighbours and UMAP run on their concatenation."
    import scanpy as sc
    adata, unseen, pred, truth, control = fold
    both = ad.concat({"pred": pred, "truth": truth}, label="source", index_unique="-", merge="same")
    assert list(both.var_names) == list(adata.var_names) and "gene_name" in both.var
    sc.pp.pca(both, n_comps=10)
    sc.pp.neighbors(both, n_neighbors=10)
    sc.tl.umap(both, random_state=0)
    assert both.obsm["X_umap"].shape == (pred.n_obs + truth.n_obs, 2) and np.isfinite(both.obsm["X_umap"]).all()
    assert set(both.obs["source"]) == {"pred", "truth"}


def test_edistance_matches_scperturb(fold):
    "sccvae's E-distance equals the scPerturb formula (plain scipy; pertpy is not installed: it pulls jax)."
    adata, unseen, pred, truth, control = fold
    # evaluate in gene space (n_pcs ≥ genes: no projection) on all cells (no subsampling): Euclidean, i≠j within groups
    ed = evaluate(pred, truth, control, gene_sets={"all": None}, metrics=["edistance"], n_pcs=adata.n_vars,
                  max_cells=10_000).per_perturbation.set_index("perturbation")["value"]
    p_lab, t_lab = pred.obs[D.TARGET_KEY].astype(str).to_numpy(), D.targets(truth).astype(str).to_numpy()
    ref = pd.Series({p: I.scperturb_edistance(pred.X[p_lab == p], truth.X[t_lab == p], "euclidean") for p in unseen})
    np.testing.assert_allclose(ed[unseen], ref[unseen], rtol=1e-4)       # float32 cells, float64 sums
    # scPerturb's own default, squared Euclidean, against sccvae.metrics.edistance(squared=True)
    X, Y = pred.X[p_lab == unseen[0]], truth.X[t_lab == unseen[0]].toarray()
    np.testing.assert_allclose(I.scperturb_edistance(X, Y), edistance(X, Y, squared=True), rtol=1e-5)
    assert I.scperturb_edistance(X, X[::-1]) < 0.05 * I.scperturb_edistance(X, Y)   # it can tell cells apart


def test_provenance_and_gene_ids_survive_h5ad(fold, tmp_path):
    "uns provenance, Ensembl ids (var_names) and symbols (var) survive write_h5ad/read_h5ad, also in cell-eval's file."
    adata, unseen, pred, truth, control = fold
    pred.write_h5ad(tmp_path / "pred.h5ad")
    back = ad.read_h5ad(tmp_path / "pred.h5ad")
    a, b = pred.uns["sccvae_prediction"], back.uns["sccvae_prediction"]
    assert set(a) == set(b) and a["method"] == "sccvae" and a["version"] == b["version"] != "unknown"
    for k, v in a.items():
        if isinstance(v, np.ndarray): np.testing.assert_array_equal(np.asarray(b[k]).astype(v.dtype), v, err_msg=k)
        else: assert b[k] == v, k
    assert list(back.var_names) == list(adata.var_names) and back.var_names[0].startswith("ENSG")
    assert list(back.var["gene_name"]) == list(adata.var["gene_name"])
    files = I.to_cell_eval(pred, truth, control, tmp_path / "ce")
    ce = ad.read_h5ad(files.pred)
    assert list(ce.var_names) == list(adata.var["gene_name"]) and list(ce.var["gene_id"]) == list(adata.var_names)
    assert ce.uns["sccvae_prediction"]["seed"] == a["seed"] and ce.uns["sccvae_cell_eval"]["control_pert"] == "non-targeting"
    assert not [p for p in files.pred.parent.iterdir() if p.name.startswith(".")]     # no temp file left
