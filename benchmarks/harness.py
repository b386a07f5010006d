"""The yardstick on named screens: `sccvae.experiment.benchmark.benchmark` (k-fold leave-perturbations-out of SCCVAE
configurations and the baselines), printing the Markdown table of mean ± sd over held-out perturbations and writing
CSVs + report.md under --out.

Screens:
  sim        `sccvae.synthetic.simulate_screen(--sim-size)`, one run per --seeds value (then a table pooled over seeds);
             --effect-size sets the simulator's `effect_size` (median |shift| of a perturbation, in sd of the latent
             variables; the preset's default is 3.0)
  tapseq     ../shared/data/schraivogel2020_tapseq_diffex.h5ad (K562 CRISPRi TAP-seq; obs 'target', control
             'non-targeting', 'multiple' and 'unassigned' excluded); 10 perturbations with a measured target
  datlinger  ../shared/data/datlinger2017_cropseq_jurkat.h5ad (Jurkat CROP-seq; obs 'target', control 'control')
  speed      the acceptance check: a simulated 20k-cell × 300-gene screen, 5 folds, the chosen configurations (default
             sccvae_default) + every baseline, folds in --workers single-threaded processes (default 2); prints the
             wall time and the table

    python benchmarks/harness.py --screen speed
    python benchmarks/harness.py --screen tapseq
    python benchmarks/harness.py --screen sim --seeds 0 1 2 --effect-size 1.5
    python benchmarks/harness.py --screen datlinger --configs sccvae_paper,sccvae_gauss --max-epochs 10
    python benchmarks/harness.py --screen sim --embedding-noise 0 0.5 1 2 inf --configs sccvae_anchor
    python benchmarks/harness.py --screen tapseq --peers state --peer-steps 1000   # + Arc's STATE on the same folds

--embedding-noise (sim only): one run per noise level with the labels = the control-PCA label combined with
`sccvae.synthetic.truth_embedding(noise)` (`sccvae.data.combine_labels`; 'inf' = the control-PCA label alone), then a
table of Pearson Δ per method against the noise: how prediction of unseen genes grows with the embedding's quality.

--peers state trains Arc's STATE (`pip install 'sccvae[state]'`) on every fold with the same control-PCA (or
--embedding-noise) gene labels as its perturbation features and scores its predicted cells in the same table
(chapter nbs/57_peers.ipynb).

The shared data are read in place (never copied into the repository); a screen whose file is absent is skipped with a
message (exit code 0).
"""
from __future__ import annotations
import argparse, logging, os, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SCCVAE_SHARED", ROOT.parent / "shared")) / "data"
REAL = {
    "tapseq": dict(file="schraivogel2020_tapseq_diffex.h5ad", key="target", control="non-targeting",
                   exclude=["multiple", "unassigned"]),
    "datlinger": dict(file="datlinger2017_cropseq_jurkat.h5ad", key="target", control="control", exclude=[]),
}
#: the speed screen: 60 perturbations × ~300 cells + 2,000 controls ≈ 20,000 cells, 300 genes
SPEED = dict(n_genes=300, n_perturbations=60, cells_per_perturbation=(270, 330), n_control=2000, n_truth=50)


def _names(s):
    s = (s or "").strip()
    return [] if s.lower() in ("", "none") else [x.strip() for x in s.split(",") if x.strip()]


def load_screen(screen: str, seed: int = 0, sim_size: str = "small", effect_size: float | None = None):
    "A registered, normalised AnnData for `screen`, or None (with a message) when its shared file is absent."
    from sccvae import data as scd
    from sccvae.synthetic import simulate_screen
    if screen in REAL:
        s = REAL[screen]
        path = SHARED / s["file"]
        if not path.exists():
            print(f"skipping --screen {screen}: {path} not found (the shared data folder is absent on this machine)")
            return None
        import anndata as ad
        adata = ad.read_h5ad(path)
        scd.setup_anndata(adata, perturbation_key=s["key"], control_group=s["control"], exclude=s["exclude"] or None)
    else:
        kw = dict(SPEED) if screen == "speed" else {}
        if effect_size is not None: kw["effect_size"] = float(effect_size)
        adata = simulate_screen("tiny" if screen == "speed" else sim_size, seed=seed, **kw)
        scd.setup_anndata(adata, perturbation_key="gene", control_group="non-targeting")
    return scd.normalize(adata)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--screen", required=True, choices=["sim", "tapseq", "datlinger", "speed"])
    p.add_argument("--configs", default="sccvae_default", help="comma-separated names of BENCHMARK_CONFIGS ('' for none)")
    p.add_argument("--baselines", default="all", help="comma-separated names of BENCHMARK_BASELINES, 'all' or ''")
    p.add_argument("--n-folds", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="sim: one screen and run per seed; others: run seeds")
    p.add_argument("--sim-size", default="small", help="simulate_screen preset of --screen sim (default small)")
    p.add_argument("--effect-size", type=float, default=None, help="sim/speed: simulate_screen effect_size (default 3.0)")
    p.add_argument("--n-eval-cells", type=int, default=300)
    p.add_argument("--max-epochs", type=int, default=None, help="override every configuration's epochs")
    p.add_argument("--workers", type=int, default=2,
                   help="folds in parallel single-threaded processes (default 2, one per core of a 2-core machine); 1: in-process")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads when --workers 1 (default 2)")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--out", default=str(ROOT / "runs" / "benchmark"), help="results go to OUT/<screen>[_seedS]")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--peers", default="", help="comma-separated peers trained and scored on the same folds "
                   "(state: Arc's STATE, pip install 'sccvae[state]'; default none)")
    p.add_argument("--peer-steps", type=int, default=None, help="training steps of each peer (STATE's default 1000)")
    p.add_argument("--embedding-noise", type=float, nargs="+", default=None,
                   help="sim: label = control PCA + truth_embedding(noise) per value ('inf': control PCA alone)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import torch
    torch.set_num_threads(a.threads)
    import pandas as pd
    from sccvae.experiment.benchmark import benchmark, BenchmarkResult
    from sccvae.experiment.benchmark_configs import BENCHMARK_BASELINES, BENCHMARK_CONFIGS
    configs = _names(a.configs)
    bad = [c for c in configs if c not in BENCHMARK_CONFIGS]
    if bad: p.error(f"unknown configurations {bad}; use {list(BENCHMARK_CONFIGS)}")
    baselines = list(BENCHMARK_BASELINES) if a.baselines.strip().lower() == "all" else _names(a.baselines)
    a.peers = {x: {} if a.peer_steps is None else {"max_steps": a.peer_steps} for x in _names(a.peers)}
    if a.embedding_noise is not None:
        if a.screen != "sim": p.error("--embedding-noise needs --screen sim (the simulator knows the true shifts)")
        return embedding_sweep(a, configs, baselines)
    results = []
    for seed in a.seeds:
        t0 = time.perf_counter()
        adata = load_screen(a.screen, seed=seed, sim_size=a.sim_size, effect_size=a.effect_size)
        if adata is None: return 0
        t_data = time.perf_counter() - t0
        name = a.screen if len(a.seeds) == 1 else f"{a.screen}_seed{seed}"
        res = benchmark(adata, configs=configs, baselines=baselines, n_folds=a.n_folds, seed=seed,
                        n_eval_cells=a.n_eval_cells, max_epochs=a.max_epochs, accelerator=a.accelerator,
                        workers=a.workers, out_dir=Path(a.out) / name, name=name, peers=a.peers)
        wall = time.perf_counter() - t0
        results.append(res)
        tim = res.timings.groupby("method", sort=False)["seconds"].sum()
        print(f"\n## {name}: {adata.n_obs} cells × {adata.n_vars} genes, {res.settings['n_perturbations']} perturbations, "
              f"{res.settings['n_folds']} folds, {a.workers} worker process(es) × "
              f"{res.settings['torch_threads']} thread(s), {os.cpu_count()} CPU cores\n")
        print(res.to_markdown())
        print(f"\nwall time {wall:.0f} s ({wall / 60:.1f} min): data {t_data:.0f} s; summed over folds: " +
              ", ".join(f"{m} {v:.0f} s" for m, v in tim.items()))
        print(f"results: {Path(a.out) / name}")
    if len(results) > 1:
        df = pd.concat([r.per_perturbation.assign(perturbation=r.settings["name"] + ":" + r.per_perturbation.perturbation)
                        for r in results], ignore_index=True)
        pooled = BenchmarkResult(df, dict(results[0].settings, name=f"{a.screen} pooled over seeds {a.seeds}"))
        print(f"\n## pooled over seeds {a.seeds} (mean ± sd over all held-out perturbations)\n")
        print(pooled.to_markdown())
    return 0


def embedding_sweep(a, configs, baselines) -> int:
    "One benchmark per --embedding-noise level on the simulator; prints Pearson Δ (all / no target) per method and noise."
    import numpy as np, pandas as pd
    from sccvae import data as scd
    from sccvae.experiment.benchmark import benchmark
    from sccvae.synthetic import truth_embedding
    rows = []
    for seed in a.seeds:
        adata = load_screen("sim", seed=seed, sim_size=a.sim_size, effect_size=a.effect_size)
        pca = scd.gene_embedding(adata, n_components=50, seed=seed)
        for noise in a.embedding_noise:
            labels = pca if not np.isfinite(noise) else scd.combine_labels(pca, truth_embedding(adata, noise, seed=seed), seed=seed)
            name = f"sim_seed{seed}_noise{noise:g}"
            res = benchmark(adata, configs=configs, baselines=baselines, n_folds=a.n_folds, seed=seed, labels=labels,
                            n_eval_cells=a.n_eval_cells, max_epochs=a.max_epochs, accelerator=a.accelerator,
                            workers=a.workers, out_dir=Path(a.out) / name, name=name, peers=a.peers)
            st = res.summary(fmt=False)
            st = st[st.metric == "pearson_delta"]
            for _, r in st.iterrows():
                rows.append(dict(seed=seed, noise=noise, method=r["method"], columns=r["column_set"], pearson_delta=r["mean"]))
            print(f"done: {name}", flush=True)
    df = pd.DataFrame(rows)
    out = Path(a.out) / "embedding_sweep.csv"
    out.parent.mkdir(parents=True, exist_ok=True); df.to_csv(out, index=False)
    for cs in ("all", "no_target"):
        tab = df[df["columns"] == cs].pivot_table(index="noise", columns="method", values="pearson_delta", aggfunc="mean")
        tab = tab.sort_index()
        print(f"\n## Pearson Δ ({'all genes' if cs == 'all' else 'target column left out'}) against embedding noise "
              f"(noise inf = control-PCA label alone; mean over seeds {a.seeds})\n")
        print("| noise | " + " | ".join(tab.columns) + " |\n|---|" + "---|" * len(tab.columns))
        for nz, r in tab.iterrows(): print(f"| {nz:g} | " + " | ".join(f"{v:.3g}" for v in r) + " |")
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
