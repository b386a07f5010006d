"""Data-parallel training through torch.distributed (gloo, 2 CPU processes) computes the single-process run with the
same global batch: the same loss at every step (float32 sums in another order: 1e-4 relative) and the same weights."""
import os, sys, tempfile
from pathlib import Path
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

N_STEPS = 50


def _setup(likelihood):
    from sccvae import data as D, loader as L
    from sccvae.module import SCCVAEModule
    from sccvae.synthetic import simulate_screen
    torch.set_num_threads(1)
    adata = simulate_screen("tiny", seed=0)
    D.setup_anndata(adata, perturbation_key="gene", control_group="non-targeting")
    D.apply_split(adata, D.ood_manifest(adata, n_folds=4, seed=0), 0)
    labels = D.perturbation_labels(adata, n_components=10)
    perts = sorted(set(adata.obs.loc[adata.obs.split == "train", "_scc_target"].astype(str)) - {"control"})
    data = L.PerturbationData(adata, labels=labels.loc[perts], device="cpu")
    module = SCCVAEModule(data.n_genes, labels.shape[1], len(perts), n_latent=8, n_hidden=32, seed=0,
                          likelihood=likelihood)
    return data, module


def _train(likelihood, max_epochs):
    from sccvae.train import Trainer, TrainConfig
    data, module = _setup(likelihood)
    cfg = TrainConfig.fast(max_epochs=max_epochs, batch_size=16, pack=4, progress=False, seed=3)
    tr = Trainer(module, data, cfg)
    tr.step_losses = []
    hist = tr.fit()
    return tr, hist


def _worker(rank, world, init_file, out, likelihood, max_epochs):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        tr, hist = _train(likelihood, max_epochs)
        assert tr.world == world and tr.rank == rank
        torch.save(dict(steps=tr.step_losses, hist=hist.drop(columns="seconds").to_dict("list"),
                        params={k: v.detach().clone() for k, v in tr.module.state_dict().items()}),
                   Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("likelihood", ["gaussian", "mse"])
def test_two_processes_match_one(likelihood, tmp_path):
    one, hist1 = _train(likelihood, max_epochs=4)
    assert len(one.step_losses) >= N_STEPS, len(one.step_losses)
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), likelihood, 4), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    s1, s2 = np.array(one.step_losses), np.array(r0["steps"])
    assert len(s2) == len(s1)
    rel = np.abs(s2 - s1) / np.abs(s1)
    assert rel[:N_STEPS].max() < 1e-4, rel[:N_STEPS].max()
    np.testing.assert_array_equal(r0["steps"], r1["steps"])        # every rank sees the whole step's loss
    for k in ("train_loss", "val_score"):
        np.testing.assert_allclose(r0["hist"][k], hist1[k].to_numpy(), rtol=1e-4)
    for k, v in one.module.state_dict().items():                   # the ranks hold one model, the single run's
        assert torch.equal(r0["params"][k], r1["params"][k]), k
        if v.is_floating_point():
            torch.testing.assert_close(r0["params"][k], v, rtol=1e-3, atol=1e-4)


def test_share_splits_by_perturbation():
    "Each step's chunks go to ranks whole by perturbation; together the ranks cover the step once."
    from sccvae.train import Trainer, TrainConfig
    from sccvae.parallel import share_step
    data, module = _setup("gaussian")
    tr = Trainer(module, data, TrainConfig.fast(batch_size=8, pack=6, progress=False))
    for step in list(tr.sampler.steps())[:20]:
        parts = []
        for r in range(3):
            idx, sh = share_step(step, data.codes, r, 3)
            parts.append((idx.numpy(), sh))
        allidx = np.concatenate([p[0] for p in parts])
        np.testing.assert_array_equal(np.sort(allidx), np.sort(np.concatenate(step)))
        n = sum(len(ch) for ch in step)
        for idx, sh in parts:
            assert sh.n_global == n
            np.testing.assert_array_equal(np.concatenate(step)[sh.rows.numpy()], idx)   # rows locate the cells
        codes = [set(data.codes[p[0]].tolist()) for p in parts]
        assert all(not (codes[a] & codes[b]) for a in range(3) for b in range(a + 1, 3))
        assert abs(sum(sh.weights[0] for _, sh in parts) - 1) < 1e-12 and abs(sum(sh.weights[1] for _, sh in parts) - 1) < 1e-12


def test_fold_under_torchrun_matches_one_process(tmp_path):
    "`sccvae fold --nproc-per-node 2` (torchrun, gloo): rank 0 finishes the fold; its training history is one process's."
    import json, subprocess
    import pandas as pd
    from sccvae.experiment.fold import run_fold
    kw = dict(split=0, graph="full", n_folds=3, n_label_components=10, n_latent=16, n_hidden=64, max_epochs=3, pack=4,
              train_preset="fast", accelerator="cpu", embedding="pca", n_pred_cells=48, max_eval_cells=96,
              progress=False, figures=False, baselines=False, default_model=False)
    one = run_fold(name="one", out_dir=str(tmp_path), **kw)
    env = dict(os.environ, IN_TEST="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", "from sccvae.cli import main; raise SystemExit(main())", "fold", "--nproc-per-node", "2",
           "--kwargs", json.dumps(dict(kw, name="two", out_dir=str(tmp_path)))]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    h1 = pd.read_csv(one.path / "history.csv")
    h2 = pd.read_csv(tmp_path / "two" / "split_0" / "full" / "history.csv")
    for k in ("train_loss", "val_score"):
        np.testing.assert_allclose(h2[k], h1[k], rtol=1e-4)
    assert (tmp_path / "two" / "split_0" / "full" / "DONE.json").exists()
