"""sccvae.runner: preparation cache, one fold end to end, skip / resume / force, graphs, the pooled report."""
import json, os, shutil
import numpy as np
import pandas as pd
import pytest

from sccvae import runner

TINY = dict(n_folds=3, n_label_components=10, n_latent=16, n_hidden=64, max_epochs=2, pack=4, train_preset="fast",
            accelerator="cpu", embedding="pca", n_pred_cells=48, max_eval_cells=96, progress=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    "One tiny fold of the full graph (with baselines and figures), shared by the tests below."
    out = tmp_path_factory.mktemp("runs")
    res = runner.run_fold(name="t", split=0, graph="full", out_dir=out, **TINY)
    return out, res


def test_fold_artefacts(run):
    out, r = run
    d = out / "t" / "split_0" / "full"
    assert r.path == d and not r.skipped
    for f in ["DONE.json", "report.md", "model/config.json", "checkpoints/last.pt", "history.csv", "predictions.h5ad",
              "per_perturbation.csv", "summary_all.csv", "shift_curves.csv", "shift_chosen.csv", "latent_distance.csv",
              "embeddings.csv", "figures/metrics.png", "figures/cells.png", "figures/penetrance.png",
              "figures/latent_distance.png", "figures/embeddings.png", "figures/training.png"]:
        assert (d / f).exists(), f
    assert (out / "t" / "split_0" / "baselines" / "DONE.json").exists()
    assert not [p for p in d.rglob(".*") if p.is_file() and p.name.startswith(".") and "tmp" in p.name.lower()]
    methods = set(r.metrics.method)
    assert {"SCCVAE (holdout)", "SCCVAE (oracle)", "SCCVAE (linear)", "SCCVAE (none)"} <= methods
    assert set(runner.BASELINES) <= methods
    assert list(r.shift.columns) == ["holdout", "oracle", "linear", "none"]
    tab = r.summary(gene_set="all", family="parity")
    assert "MSE" in tab.index and "SCCVAE (holdout)" in tab.columns
    ld = pd.read_csv(d / "latent_distance.csv", index_col=0)
    assert set(ld.split) == {"train", "test"} and ld.latent_distance.notna().all()


def test_every_method_is_scored_on_the_same_cells(run):
    out, r = run
    ec = pd.read_csv(out / "t" / "split_0" / "eval_cells_holdout.csv", index_col=0)
    assert set(ec.role) == {"select", "evaluate"}
    n = r.metrics.query("metric == 'mse' and gene_set == 'all'").groupby("method").perturbation.nunique()
    assert n.nunique() == 1  # every method scored on every held-out perturbation


def test_skip_force_and_resume(run):
    out, r = run
    again = runner.run_fold(name="t", split=0, graph="full", out_dir=out, **TINY)
    assert again.skipped and again.metrics.shape == r.metrics.shape
    d = r.path
    shutil.rmtree(d / "model"); (d / "DONE.json").unlink()        # killed after training
    resumed = runner.run_fold(name="t", split=0, graph="full", out_dir=out, figures=False, **TINY)
    assert not resumed.skipped and len(pd.read_csv(d / "history.csv")) == TINY["max_epochs"]
    forced = runner.run_fold(name="t", split=0, graph="full", out_dir=out, figures=False, force=True, **TINY)
    assert not forced.skipped and not (d / "figures").exists()


def test_prepare_is_cached_and_guarded(run):
    out, _ = run
    p = runner.prepare(None, name="t", out_dir=out, n_folds=3, n_label_components=10)
    assert p.n_folds == 3 and len(p.labels) == 12 and p.is_synthetic
    with pytest.raises(ValueError, match="other settings"):
        runner.prepare(None, name="t", out_dir=out, n_folds=4, n_label_components=10)


def test_graphs_and_report(run):
    out, _ = run
    rc = runner.run_fold(name="t", split=1, graph="causal", out_dir=out, figures=False, shift_modes=["holdout"], **TINY)
    assert "true module DAG" in json.loads((rc.path / "DONE.json").read_text())["graph_note"]
    rr = runner.run_fold(name="t", split=1, graph="random", out_dir=out, figures=False, shift_modes=["holdout"], **TINY)
    assert set(rr.metrics.method) >= {"Random (holdout)"}
    p = runner.report(out / "t", embedding="pca")
    text = p.read_text()
    for s in ("Table 1 layout", "Table 2 layout", "Corrected metrics", "SCCVAE by shift-selection mode", "Causal (holdout)"):
        assert s in text, s
    t1 = pd.read_csv(out / "t" / "tables" / "parity_all.csv", index_col=0)
    assert list(t1.index) == ["MSE", "PearsonR", "MMD", "Energy", "Frac Same", "Frac Changed"]
    assert list(t1.columns)[:4] == list(runner.BASELINES)
    long = pd.read_csv(out / "t" / "tables" / "summary_long.csv")
    pooled = pd.read_csv(out / "t" / "tables" / "per_perturbation.csv")
    one = pooled.query("method == 'control' and metric == 'mse' and gene_set == 'all'").value
    row = long.query("method == 'control' and metric == 'mse' and gene_set == 'all'").iloc[0]
    assert np.isclose(row["mean"], one.mean()) and np.isclose(row["sd"], one.std(ddof=1))  # pooled over folds, ddof 1
    for f in ("fig2a_metrics.png", "fig3_ablation_mmd.png", "fig4_latent_distance.png", "fig6_embeddings.png", "fig2b_cells.png"):
        assert (out / "t" / "figures" / f).exists(), f


def test_bad_input_messages(run, tmp_path):
    out, _ = run
    with pytest.raises(ValueError, match="not one of"):
        runner.run_fold(name="t", split=0, graph="dag", out_dir=out, **TINY)
    with pytest.raises(ValueError, match="not a fold"):
        runner.run_fold(name="t", split=9, graph="full", out_dir=out, **TINY)
    with pytest.raises(ValueError, match="holdout"):
        runner.run_fold(name="t", split=0, graph="full", out_dir=out, eval_cells="all", shift_mode="holdout", **TINY)
    from sccvae.synthetic import simulate_screen
    a = simulate_screen("tiny", seed=1); del a.uns["sccvae_truth"]      # a "real" screen: no true DAG
    with pytest.raises(ValueError, match="causal_edges"):
        runner.run_fold(data=a, name="real", split=0, graph="causal", out_dir=tmp_path, **TINY)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        runner.run_fold(data=tmp_path / "missing.h5ad", name="x", out_dir=tmp_path, **TINY)
    with pytest.raises(FileNotFoundError, match="no finished folds"):
        runner.report(tmp_path / "real")


def test_unknown_keywords_and_the_generated_signature():
    import inspect
    from sccvae.experiment import RunConfig
    with pytest.raises(TypeError, match="did you mean 'n_latent'"):
        runner.run_fold(name="t", n_latnt=8)
    params = inspect.signature(runner.run_fold).parameters
    assert list(params) == [f.name for f in __import__("dataclasses").fields(RunConfig)]
    assert params["n_latent"].default == 512 and params["shift_mode"].default == "holdout"


def test_helpers():
    assert runner.parse_folds("0-2,4") == [0, 1, 2, 4]
    with pytest.raises(ValueError): runner.parse_folds("")
    assert runner.method_name("random", "oracle") == "Random (oracle)"
    t = runner.md_table(pd.DataFrame({"x": [0.123456]}, index=["a"]))
    assert t.splitlines()[2] == "| a | 0.1235 |"
