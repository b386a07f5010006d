"""Wall time of `sccvae.evaluate` vs the original code's loop-over-perturbations pattern, at K562 shape, on CPU.

Data (random, realistic sparsity): 8,563 genes, 57 test perturbations with ~300 true cells each (uniform 250-350),
the same number of predicted cells per perturbation (as SCCVAE's shift selection and inference produce), and 10,000
training controls; gene sets "all" and a top-50 list.

Configurations
  ours_parity   sccvae.evaluate(..., metrics="parity") for one method: the paper's six metrics, cells grouped once,
                pseudo-bulks once, the 32-cell block MMD / energy batched over all blocks of all perturbations
  ours_all      sccvae.evaluate(..., metrics="all"): parity + corrected metrics (incl. the PCA space, bandwidth, DE
                genes, E-distances to control, effect-size strata)
  original      the authors' pattern (reference-method section 7/11): one AnnData holding predicted, true and
                reference cells; for every metric, gene set and perturbation, boolean-mask slicing of that AnnData,
                resampling, and a (64, 64, genes) float64 broadcast tensor per MMD block. Timed on
                `--loop-perturbations` perturbations and extrapolated linearly to all of them (the loop's cost is
                linear in the number of perturbations), unless --loop-perturbations is the full count.

The loop here draws its random numbers from the same seeded streams as `sccvae.metrics.score` (one resample per
perturbation shared by the metrics, then the block permutations), so its values must equal ours: the script checks
that on the perturbations it timed (max relative difference printed). `tests/test_metrics.py` imports `loop_parity`
from this file for the same check on tiny data.

    python benchmarks/eval_speed.py                          # K562 shape, 1 thread, loop on 8 perturbations
    python benchmarks/eval_speed.py --threads 2 --loop-perturbations 57
    python benchmarks/eval_speed.py --genes 2000 --controls 3000   # quick
"""
from __future__ import annotations
import argparse, json, sys, time, zlib
from pathlib import Path

import numpy as np
import pandas as pd


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--genes", type=int, default=8563)
    p.add_argument("--perturbations", type=int, default=57)
    p.add_argument("--cells", type=int, default=300, help="mean true (and predicted) cells per perturbation")
    p.add_argument("--controls", type=int, default=10_000)
    p.add_argument("--loop-perturbations", type=int, default=8, help="perturbations timed in the original pattern")
    p.add_argument("--threads", type=int, default=1, help="torch/BLAS CPU threads")
    p.add_argument("--repeats", type=int, default=1, help="timed repeats of each of our configurations (min taken)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------------------
# data
def make_data(genes, n_perts, cells, n_controls, seed=0):
    "Controls, truth and prediction AnnData (log1p-normalised, dense float32) with per-perturbation mean shifts."
    import anndata as ad
    rng = np.random.default_rng(seed)
    mu = np.exp(rng.normal(-1.0, 1.5, genes)).astype(np.float32)            # expected counts per gene
    pool_n = n_controls + 2000

    def lognorm(counts):
        counts = counts.astype(np.float32)
        return np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)

    sf = rng.lognormal(0, 0.3, pool_n).astype(np.float32)[:, None]
    pool = lognorm(rng.poisson(mu[None] * sf))
    var = pd.DataFrame(index=[f"G{i:05d}" for i in range(genes)])
    ctrl = ad.AnnData(pool[:n_controls], var=var)
    counts = rng.integers(int(cells * 5 / 6), int(cells * 7 / 6) + 1, n_perts)
    names = [f"P{i:03d}" for i in range(n_perts)]
    T, Pr, lab = [], [], []
    for i, n in enumerate(counts):
        genes_hit = rng.choice(genes, 100, replace=False)
        shift = np.zeros(genes, np.float32); shift[genes_hit] = rng.normal(0, 0.5, 100)
        noise = np.zeros(genes, np.float32); noise[genes_hit] = rng.normal(0, 0.2, 100)
        T.append(pool[rng.integers(0, pool_n, n)] + shift)
        Pr.append(pool[rng.integers(0, pool_n, n)] + shift + noise)
        lab += [names[i]] * int(n)
    obs = pd.DataFrame({"perturbation": pd.Categorical(lab)}, index=[f"c{i}" for i in range(len(lab))])
    truth = ad.AnnData(np.vstack(T), obs=obs, var=var)
    pred = ad.AnnData(np.vstack(Pr), obs=obs.copy(), var=var)
    top50 = list(var.index[np.argsort(-pool[:n_controls].var(0))[:50]])
    return ctrl, truth, pred, top50


# ------------------------------------------------------------------------------------------------------------
# the original pattern
def combined_adata(pred, truth, ctrl, key="perturbation"):
    "One AnnData like the authors' inference output: predicted, ground-truth and reference-control rows."
    import anndata as ad
    X = np.vstack([pred.X, truth.X, ctrl.X])
    ptb = np.r_[pred.obs[key].astype(str), truth.obs[key].astype(str), ["nontargeting_ref"] * ctrl.n_obs]
    y = np.r_[["predicted"] * pred.n_obs, ["ground truth"] * truth.n_obs, ["nontargeting_ref"] * ctrl.n_obs]
    mode = np.r_[["hard"] * pred.n_obs, ["ref"] * truth.n_obs, ["nontargeting"] * ctrl.n_obs]
    obs = pd.DataFrame({"ptb": ptb, "y": y, "mode": mode}, index=[f"r{i}" for i in range(len(y))])
    return ad.AnnData(X, obs=obs, var=truth.var.copy())


def _rng(seed, name, stream=0):  # the same streams as sccvae.metrics
    return np.random.default_rng([int(seed), zlib.crc32(str(name).encode()), int(stream)])


def _pred_true(adata, ptb):
    sub = adata[adata.obs["ptb"].isin(["nontargeting_ref", ptb])]
    return sub[sub.obs["y"] == "predicted"], sub[sub.obs["y"] == "ground truth"]


def _draws(ptb, n_pred, n_true, seed):
    rng = _rng(seed, ptb)
    sel = rng.integers(0, n_pred, n_true) if n_pred != n_true else np.arange(n_true)
    nb = n_true // 32
    pp = [rng.permutation(32) for _ in range(nb)]
    pt = [rng.permutation(32) for _ in range(nb)]
    return sel, pp, pt


def loop_parity(adata, ptbs, marker=None, seed=0):
    """The six parity metrics per perturbation, the way the authors' metrics.py computes them (per metric: slice the
    AnnData for the perturbation, resample, subset genes, compute), with seeded draws. Returns {metric: {ptb: value}}."""
    import torch
    out = {m: {} for m in ("mse", "pearson", "mmd_paper", "energy_paper", "frac_same", "frac_changed")}

    def prepared(ptb):
        p, t = _pred_true(adata, ptb)
        sel, pp, pt = _draws(ptb, p.shape[0], t.shape[0], seed)
        if p.shape[0] != t.shape[0]: p = p[sel]
        if marker is not None: p, t = p[:, marker], t[:, marker]
        return p, t, pp, pt

    for ptb in ptbs:                                                     # MSE
        p, t, _, _ = prepared(ptb)
        out["mse"][ptb] = float(np.mean((np.asarray(p.X, np.float64).mean(0) - np.asarray(t.X, np.float64).mean(0)) ** 2))
    for ptb in ptbs:                                                     # Pearson on raw means
        p, t, _, _ = prepared(ptb)
        a, b = np.asarray(t.X, np.float64).mean(0), np.asarray(p.X, np.float64).mean(0)
        out["pearson"][ptb] = float(np.corrcoef(a, b)[0, 1])
    for ptb in ptbs:                                                     # block MMD
        p, t, _, _ = prepared(ptb)
        vals = []
        for i in range(t.shape[0] // 32):
            src = torch.from_numpy(np.asarray(p[i * 32:(i + 1) * 32].X, np.float64))
            tgt = torch.from_numpy(np.asarray(t[i * 32:(i + 1) * 32].X, np.float64))
            tot = torch.cat([src, tgt])
            n = tot.shape[0]
            L2 = ((tot.unsqueeze(0).expand(n, n, tot.shape[1]) - tot.unsqueeze(1).expand(n, n, tot.shape[1])) ** 2).sum(2)
            bw = L2.sum() / (n * n - n) / 4
            K = sum(torch.exp(-L2 / (bw * 2 ** k)) for k in range(5))
            vals.append(float((K[:32, :32] + K[32:, 32:] - K[:32, 32:] - K[32:, :32]).mean()))
        out["mmd_paper"][ptb] = float(np.mean(vals)) if vals else float("nan")
    for ptb in ptbs:                                                     # block "energy"
        p, t, pp, pt = prepared(ptb)
        vals = []
        for i in range(t.shape[0] // 32):
            a = np.asarray(p[i * 32:(i + 1) * 32].X, np.float64); b = np.asarray(t[i * 32:(i + 1) * 32].X, np.float64)
            vals.append(2 * ((a - b) ** 2).mean() - ((a - a[pp[i]]) ** 2).mean() - ((b - b[pt[i]]) ** 2).mean())
        out["energy_paper"][ptb] = float(np.mean(vals)) if vals else float("nan")
    for which in ("frac_same", "frac_changed"):                           # directions vs the reference mean
        ad_ = adata[:, marker] if marker is not None else adata
        ctrl = np.asarray(ad_[ad_.obs["mode"] == "nontargeting"].X, np.float64).mean(0)
        for ptb in ptbs:
            sub = ad_[ad_.obs["ptb"].isin(["nontargeting_ref", ptb])]
            pm = np.asarray(sub[sub.obs["y"] == "predicted"].X, np.float64).mean(0)
            tm = np.asarray(sub[sub.obs["y"] == "ground truth"].X, np.float64).mean(0)
            d = np.abs(np.sign(pm - ctrl) - np.sign(tm - ctrl))
            out[which][ptb] = float(np.mean(d == (0 if which == "frac_same" else 2)))
    return out


# ------------------------------------------------------------------------------------------------------------
def main(argv=None):
    args = parse(argv)
    import torch
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from sccvae.evaluate import evaluate

    t0 = time.perf_counter()
    ctrl, truth, pred, top50 = make_data(args.genes, args.perturbations, args.cells, args.controls, args.seed)
    t_data = time.perf_counter() - t0
    gene_sets = {"all": None, "top50": top50}
    print(f"data: {truth.n_obs} true + {pred.n_obs} predicted cells in {args.perturbations} perturbations, "
          f"{ctrl.n_obs} controls, {args.genes} genes (made in {t_data:.1f} s); torch threads {args.threads}", flush=True)

    times, res = {}, {}
    for cfg, metrics in (("ours_parity", "parity"), ("ours_all", "all")):
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            r = evaluate({"model": pred}, truth, ctrl, perturbation_key="perturbation", gene_sets=gene_sets,
                           metrics=metrics, device="cpu", seed=args.seed)
            best = min(best, time.perf_counter() - t0)
        times[cfg], res[cfg] = best, r
        print(f"{cfg}: {best:.1f} s", flush=True)

    comb = combined_adata(pred, truth, ctrl)
    ptbs = sorted(truth.obs.perturbation.astype(str).unique())
    nl = min(args.loop_perturbations, len(ptbs))
    t0 = time.perf_counter()
    loop = {g: loop_parity(comb, ptbs[:nl], marker=None if genes is None else list(genes), seed=args.seed)
            for g, genes in gene_sets.items()}
    t_loop = time.perf_counter() - t0
    t_loop_full = t_loop * len(ptbs) / nl
    print(f"original pattern: {t_loop:.1f} s for {nl} perturbations -> {t_loop_full:.1f} s for {len(ptbs)}", flush=True)

    ours = res["ours_parity"].per_perturbation.set_index(["gene_set", "metric", "perturbation"]).value
    per_metric = {}
    for g, mets in loop.items():
        for m, vals in mets.items():
            d = [abs(ours[(g, m, p)] - v) / max(abs(v), 1e-12) for p, v in vals.items()]
            per_metric[m] = max(per_metric.get(m, 0.0), float(np.nanmax(d)))
    max_rel = max(per_metric.values())

    rows = [("sccvae.evaluate, parity metrics", times["ours_parity"], t_loop_full / times["ours_parity"]),
            ("sccvae.evaluate, all metrics (parity + corrected)", times["ours_all"], t_loop_full / times["ours_all"]),
            (f"original pattern, parity metrics ({'measured' if nl == len(ptbs) else f'{nl} measured, extrapolated'})",
             t_loop_full, 1.0)]
    print(f"\n{args.perturbations} perturbations x ~{args.cells} cells, {args.genes} genes, {args.controls} controls, "
          f"gene sets all + top-50, CPU, {args.threads} thread(s)\n")
    print("| configuration | wall time (s) | speed-up vs original |\n|---|---|---|")
    for name, t, s in rows: print(f"| {name} | {t:.1f} | {s:.0f}x |")
    print(f"\nparity values, ours vs original pattern on the {nl} timed perturbations: max relative difference {max_rel:.1e} "
          f"({', '.join(f'{k} {v:.0e}' for k, v in per_metric.items())})")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(vars(args), times=times, loop_seconds=t_loop,
                                                   loop_extrapolated=t_loop_full, max_rel_diff=max_rel, per_metric_rel_diff=per_metric), indent=2))
    return rows, max_rel


if __name__ == "__main__":
    main()
