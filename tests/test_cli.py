"""The `sccvae` console script: help of every sub-command, a tiny `run --no-papermill`, `report`, `prepare`."""
import os, subprocess, sys
from pathlib import Path
import pandas as pd
import pytest

from sccvae import cli

TINY = ["--n-folds", "3", "--n-label-components", "10", "--n-latent", "16", "--n-hidden", "64", "--max-epochs", "1",
        "--pack", "4", "--train-preset", "fast", "--accelerator", "cpu", "--embedding", "pca", "--n-pred-cells", "32",
        "--max-eval-cells", "64"]


def _sccvae(*args, cwd=None):
    env = dict(os.environ, IN_TEST="1", OMP_NUM_THREADS="1")
    return subprocess.run(["sccvae", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_console_script_help():
    r = _sccvae("--help")
    assert r.returncode == 0, r.stderr
    for cmd in ("run", "report", "demo", "prepare", "fold"): assert cmd in r.stdout


@pytest.mark.parametrize("cmd", ["run", "report", "demo", "prepare", "fold"])
def test_subcommand_help(cmd, capsys):
    with pytest.raises(SystemExit) as e: cli.main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: sccvae " + cmd)
    if cmd == "run": assert "--gpus" in out and "--no-papermill" in out and "--folds" in out
    if cmd == "demo": assert "--quick" in out


def test_options_map_to_run_fold():
    import inspect
    from sccvae.runner import run_fold
    a = cli.build_parser().parse_args(["run", "--data", "/d/K562_x.h5ad", "--min-cells", "200", "--min-score", "0.6"])
    kw = cli.fold_kwargs(a)
    assert kw["name"] == "K562_x" and kw["min_cells"] == 200 and kw["baselines"] and kw["figures"]
    params = set(inspect.signature(run_fold).parameters)
    assert set(kw) <= params, set(kw) - params


def test_every_cli_flag_maps_to_a_run_config_field():
    "The options of run/fold/prepare are RunConfig's fields (or the execution options of `run`, or --kwargs)."
    import argparse
    from dataclasses import fields
    from sccvae.experiment.config import RunConfig, option_reach
    names = {f.name for f in fields(RunConfig)}
    execution = {"folds", "graphs", "gpus", "workers", "no_papermill", "template", "no_report", "dry_run", "emit_slurm", "slurm_sbatch",
                 "nproc_per_node", "nnodes", "rdzv_endpoint",
                 "kwargs", "verbose", "help"}
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for cmd in ("run", "fold", "prepare"):
        for act in sub.choices[cmd]._actions:
            dest = act.dest[3:] if act.dest.startswith("no_") and act.dest[3:] in names else act.dest
            assert dest in names or act.dest in execution, (cmd, act.option_strings)
            if dest in names: assert option_reach(dest)["cli"] in act.option_strings, (cmd, dest)
    assert option_reach("n_latent")["cli"] == "--n-latent" and option_reach("baselines")["cli"] == "--no-baselines"


def test_kwargs_typo_names_the_close_option(tmp_path, capsys):
    assert cli.main(["fold", "--out-dir", str(tmp_path), "--kwargs", '{"max_epoch": 1}']) == 1
    assert "did you mean 'max_epochs'" in capsys.readouterr().err


def test_dry_run_lists_papermill_commands(tmp_path, capsys):
    assert cli.main(["run", "--folds", "0-1", "--graphs", "full,causal", "--gpus", "cpu", "--dry-run",
                     "--out-dir", str(tmp_path)]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if "papermill" in l]
    assert len(lines) == 4 and all("90_run_fold.ipynb" in l and str(tmp_path) in l for l in lines)


def test_unknown_graph_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown graphs"):
        cli.main(["run", "--graphs", "full,dag", "--out-dir", str(tmp_path), "--dry-run"])


def test_run_no_papermill_then_report_and_prepare(tmp_path):
    r = _sccvae("run", "--name", "cli", "--out-dir", str(tmp_path), "--folds", "0", "--graphs", "full", "--gpus", "cpu",
                "--no-papermill", "--no-figures", *TINY)
    assert r.returncode == 0, r.stdout + r.stderr
    run = tmp_path / "cli"
    assert (run / "split_0" / "full" / "DONE.json").exists() and (run / "report.md").exists()
    assert "1 of 1 tasks finished" in r.stdout
    t1 = pd.read_csv(run / "tables" / "parity_all.csv", index_col=0)
    assert "SCCVAE (holdout)" in t1.columns and "control" in t1.columns
    r = _sccvae("report", str(run), "--embedding", "pca")
    assert r.returncode == 0 and "report:" in r.stdout, r.stderr
    r = _sccvae("prepare", "--name", "cli", "--out-dir", str(tmp_path), "--n-folds", "3", "--n-label-components", "10")
    assert r.returncode == 0, r.stderr
    assert "held-out perturbations per fold" in r.stdout and "prepared:" in r.stdout


def test_emit_slurm_array_runs_one_task(tmp_path):
    "`sccvae run --emit-slurm`: prepares once, writes a job array of folds x graphs; its task 0 runs that fold."
    script = tmp_path / "run.sbatch"
    r = _sccvae("run", "--name", "sl", "--out-dir", str(tmp_path), "--folds", "0-1", "--graphs", "full,conditional",
                "--gpus", "cpu", "--no-papermill", "--no-figures", "--emit-slurm", str(script),
                "--slurm-sbatch=--partition=gpu", *TINY)
    assert r.returncode == 0, r.stdout + r.stderr
    text = script.read_text()
    assert "#SBATCH --array=0-3" in text and "#SBATCH --partition=gpu" in text and "sbatch --parsable" in r.stdout
    assert (tmp_path / "sl" / "prepared").is_dir()                                          # prepared here, once
    env = dict(os.environ, IN_TEST="1", OMP_NUM_THREADS="1", SLURM_ARRAY_TASK_ID="0")
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr + (tmp_path / "sl" / "split_0" / "conditional" / "run.log").read_text()
    assert (tmp_path / "sl" / "split_0" / "conditional" / "DONE.json").exists() ^ (tmp_path / "sl" / "split_0" / "full" / "DONE.json").exists()
    bad = subprocess.run(["bash", str(script)], env={k: v for k, v in env.items() if k != "SLURM_ARRAY_TASK_ID"},
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "sbatch" in bad.stderr
