"""sccvae.experiment.peers: STATE's inputs for one fold (cells, TOML, z-scored feature file), the refusal of
perturbations without a feature row (STATE would give them zeros), the clear error when STATE is absent, and — only
where `arc-state` is installed — STATE trained and scored by the harness end to end."""
import subprocess, sys, tomllib
import numpy as np
import pandas as pd
import pytest
import torch
import anndata as ad

from sccvae import data as scd
from sccvae.experiment import peers as P
from sccvae.experiment.benchmark import benchmark
from sccvae.synthetic import simulate_screen

torch.set_num_threads(1)
needs_state = pytest.mark.skipif(not P.state_available(), reason="Arc's STATE is not installed (pip install 'sccvae[state]')")


@pytest.fixture(scope="module")
def fold():
    "The tiny simulated screen, normalised, fold 0 of 3 written to obs['split']; and its held-out perturbations."
    a = simulate_screen("tiny", seed=0)
    scd.setup_anndata(a, perturbation_key="gene", control_group="non-targeting")
    scd.normalize(a)
    man = scd.ood_manifest(a, n_folds=3, seed=0)
    scd.apply_split(a, man, 0, key="split")
    return a, sorted(set(man.perturbation[man.fold == 0]))


def test_module_imports_without_state():
    code = ("import sys; sys.modules['state'] = None; sys.modules['cell_load'] = None\n"
            "import sccvae.experiment.peers as P, sccvae.experiment.benchmark, sccvae.cli\n"
            "assert not P.state_available()\n"
            "try: P.require_state()\n"
            "except ModuleNotFoundError as e: assert \"pip install 'sccvae[state]'\" in str(e); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_benchmark_refuses_a_missing_peer_before_any_work(fold, monkeypatch):
    a, _ = fold
    monkeypatch.setattr(P, "state_available", lambda: False)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'sccvae\[state\]'"):
        benchmark(a, configs=None, baselines=["control"], n_folds=3, peers=["state"])
    with pytest.raises(ValueError, match="unknown peers"):
        benchmark(a, configs=None, baselines=["control"], n_folds=3, peers=["gears"])


def test_features_are_z_scored_and_the_control_is_zero():
    lab = pd.DataFrame({"PC1": [100.0, -50, 10, 7], "PC2": [0.1, 0.3, -0.2, 9]}, index=list("ABCD"))
    f = P.state_features(lab, ["A", "B", "C", scd.CONTROL])
    assert list(f) == ["A", "B", "C", scd.CONTROL]
    Z = torch.stack([f[p] for p in "ABC"])
    assert torch.allclose(Z.mean(0), torch.zeros(2), atol=1e-6) and torch.allclose(Z.std(0, unbiased=False), torch.ones(2), atol=1e-5)
    assert torch.equal(f[scd.CONTROL], torch.zeros(2)) and f["A"].dtype == torch.float32 and f["A"].ndim == 1
    with pytest.raises(ValueError, match=r"2 perturbations have no feature row: \['E', 'F'\].*silently"):
        P.state_features(lab, ["A", "E", "F"])


def test_input_writer(fold, tmp_path):
    a, held = fold
    inp = P.write_state_inputs(a, held, tmp_path, split_key="split", n_cells=15, seed=0)
    cells, feats = ad.read_h5ad(inp.h5ad), torch.load(inp.features)
    toml = tomllib.loads(inp.toml.read_text())
    t = cells.obs["target"].astype(str)
    # the TOML: one dataset, trained on; the held-out perturbations are the test set, nothing is validation
    assert toml["datasets"]["screen"] == str(inp.h5ad.resolve()) and toml["training"] == {"screen": "train"}
    assert toml["fewshot"]["screen.cells"] == {"val": [], "test": held}
    # the cells: training cells (controls included) and at most 15 test cells per held-out perturbation, no val cells
    s = a.obs["split"].astype(str).to_numpy()
    tg = scd.targets(a).astype(str).to_numpy()
    assert set(cells.obs_names) <= set(a.obs_names[(s == "train") | ((s == "test") & np.isin(tg, held))])
    assert (t[t.isin(held)].value_counts() == 15).all() and t[t.isin(held)].nunique() == len(held)
    assert (t == scd.CONTROL).sum() == (tg == scd.CONTROL).sum()
    assert (t != t.shift()).sum() == t.nunique()                       # consecutive rows per perturbation
    assert list(cells.obs.columns) == ["target", "cell_type", "batch"] and cells.obs[["cell_type", "batch"]].nunique().tolist() == [1, 1]
    assert list(cells.var_names) == list(a.var_names) and "log1p" in cells.uns
    Xa = a[cells.obs_names].X
    np.testing.assert_array_equal(cells.X.toarray(), Xa.toarray() if hasattr(Xa, "toarray") else Xa)
    # the features: a row for every perturbation in the file, the default labels (20 control-PCA components) z-scored
    assert set(feats) == set(t) and all(v.shape == (20,) for v in feats.values())
    lab = scd.perturbation_labels(a, n_components=20, seed=0, perturbations=inp.train_perturbations + held)
    L = lab.loc[held[0]].to_numpy(); M = lab.to_numpy()
    np.testing.assert_allclose(feats[held[0]].numpy(), (L - M.mean(0)) / M.std(0), rtol=1e-4, atol=1e-5)


def test_missing_features_are_refused(fold, tmp_path):
    a, held = fold
    lab = scd.perturbation_labels(a, n_components=5, seed=0)
    with pytest.raises(ValueError, match=r"2 perturbations have no feature row: \[" + ", ".join(f"'{p}'" for p in held[:2])):
        P.write_state_inputs(a, held, tmp_path / "a", split_key="split", labels=lab.drop(held[:2]))
    assert not (tmp_path / "a").exists()                              # refused before anything is written
    inp = P.write_state_inputs(a, held, tmp_path / "b", split_key="split", labels=lab)
    some = inp.train_perturbations[:2]
    with pytest.raises(ValueError, match="no feature row"):
        P.write_state_inputs(a, held, tmp_path / "c", split_key="split", labels=lab.drop(some))
    kept = P.write_state_inputs(a, held, tmp_path / "d", split_key="split", labels=lab.drop(some), unlabelled="drop")
    assert kept.dropped == some and not ad.read_h5ad(kept.h5ad).obs["target"].isin(some).any()
    with pytest.raises(ValueError, match="without test cells"):
        P.write_state_inputs(a, held + inp.train_perturbations[:1], tmp_path / "e", split_key="split")


def test_overrides_never_validate_on_test_perturbations(fold, tmp_path):
    a, held = fold
    inp = P.write_state_inputs(a, held, tmp_path, split_key="split")
    ov = dict(o.split("=", 1) for o in P.state_overrides(inp, tmp_path / "run", max_steps=250))
    assert ov["training.max_steps"] == "250" and int(ov["training.val_freq"]) > 250 and int(ov["training.ckpt_every_n_steps"]) > 250
    assert ov["data.kwargs.use_consecutive_loading"] == "true" and ov["data.kwargs.num_workers"] == "0"
    assert ov["use_wandb"] == "false" and ov["model"] == "state_sm" and ov["data.kwargs.embed_key"] == "null"
    assert ov["data.kwargs.perturbation_features_file"] == str(inp.features.resolve())
    with pytest.raises(TypeError, match="unknown STATE options"):
        P.state_overrides(inp, tmp_path, steps=3)


def test_benchmark_refuses_peers_on_combinations(fold):
    a, _ = fold
    if not P.state_available(): pytest.skip("needs STATE to get past the install check")
    with pytest.raises(ValueError, match="combinations"):
        benchmark(a, configs=None, baselines=["control"], pairs=True, peers=["state"])


@needs_state
def test_state_in_the_harness_end_to_end(tmp_path):
    a = simulate_screen("tiny", seed=0)
    scd.setup_anndata(a, perturbation_key="gene", control_group="non-targeting")
    scd.normalize(a)
    res = benchmark(a, configs=None, baselines=["control", "perturbed_mean"], n_folds=3, folds=[0], seed=0,
                    n_eval_cells=30, peers={"state": {"max_steps": 20, "work_dir": tmp_path}})
    assert res.methods == ["control", "perturbed_mean", "state"]
    st = res.per_perturbation[(res.per_perturbation.method == "state") & (res.per_perturbation.metric == "pearson_delta")]
    assert len(st) == 2 * 4 and np.isfinite(st.value).all()           # 4 held-out perturbations, 2 column sets
    assert {"inputs", "train", "predict", "score"} <= set(res.timings[res.timings.method == "state"].stage)
    assert (tmp_path / "fold_0" / "run" / "eval_final.ckpt" / "adata_pred.h5ad").exists()
    assert "state" in res.to_markdown()


def test_cli_benchmark_peers_option(tmp_path, monkeypatch, capsys):
    from sccvae.cli import build_parser, main
    a = build_parser().parse_args(["benchmark", "--peers", "state", "--peer-steps", "50"])
    assert (a.peers, a.peer_steps) == ("state", 50)
    monkeypatch.setattr(P, "state_available", lambda: False)           # as on a machine without arc-state
    rc = main(["benchmark", "--configs", "", "--baselines", "control", "--n-folds", "3", "--peers", "state",
               "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 1 and "ModuleNotFoundError" in err and "pip install 'sccvae[state]'" in err
