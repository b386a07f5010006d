#!/usr/bin/env python
"""Held-out perturbation pairs on the simulator (issue 14): SCCVAE's default model (trained on singles and the
training pairs; held-out pairs centred on the pair rule fitted on those, `interaction="auto"`) and its variants
(`interaction="fit"`: with the model's own interaction; 0: additive of the best singles; 1: the model's interaction in
full) against the additive baseline (SALT: control + Δ_A + Δ_B) and the perturbed mean, by seen-singles class, plus
how well predicted genetic interactions match the simulator's true ones. Prints Markdown tables; writes CSVs under --out.

    python benchmarks/combinations.py --size small --seeds 0 1 2 --n-pairs 60 --out runs/combinations_random
    python benchmarks/combinations.py --size small --seeds 0 1 2 --n-pairs 60 --pair-related 0.5 --out runs/combinations_related

Protocol (per seed): `simulate_screen(size, n_pairs=..., pair_related=...)` draws pairs of the screen's perturbations
whose cells carry both shifts through the latent SCM and the saturating module→gene map, so the truth is
non-additive (`pair_related`: a share of pairs of two shifting targets of one module, whose interactions are strong).
`sccvae.data.combination_manifest` holds out a seeded share of the singles (`--holdout-frac`), every pair with a
held-out gene and a share (`--holdout-pairs`) of the pairs of training genes; the model and the baselines train on
the rest (15 % of each group's cells validate). Each held-out pair is 'both seen', 'one unseen' or 'both unseen'.
Scores (the harness's `score_cells`, same reference for every method): Pearson Δ against the control mean and the
E-distance in 30 PCs of the training controls, on the held-out pair cells. Interactions: the predicted deviation from
additive (prediction − the additive guess from the best singles' changes) against the true deviation
(`pair_effect − pair_additive` of the simulator, noise free); 'chance' = the same correlation with the true
interaction of a random other pair. `additive × kappa` is a model-free yardstick for the interaction: the additive
guess scaled by κ fitted on the trained pairs, for every class.
"""
from __future__ import annotations
import argparse, os, sys, time, warnings
from pathlib import Path

import numpy as np
import pandas as pd


def run_seed(size, seed, n_pairs, holdout_frac, holdout_pairs, n_cells, max_epochs, pair_related=0.0, quiet=True):
    import torch
    import sccvae
    from sccvae import data as scd
    from sccvae.synthetic import simulate_screen
    from sccvae.baselines import AdditiveBaseline, PerturbedMeanBaseline
    from sccvae.combinations import pair_classes
    from sccvae.experiment.benchmark import FoldReference, score_cells

    a = simulate_screen(size, seed=seed, n_pairs=n_pairs, pair_related=pair_related)
    truth = a.uns["sccvae_truth"]
    sccvae.SCCVAE.setup_anndata(a, perturbation_key="gene", control_group="non-targeting")
    man = scd.combination_manifest(a, holdout_singles=holdout_frac, holdout_pairs=holdout_pairs, seed=seed)
    scd.apply_split(a, man, "pairs")
    t = scd.targets(a).astype(str).to_numpy()
    test_t = set(t[(a.obs["split"] == "test").to_numpy()])
    singles = sorted({p for p in t if p != scd.CONTROL and "+" not in p and p != "nan"})
    held = {p for p in singles if p in test_t}
    pairs = sorted(p for p in test_t if "+" in p)                 # the held-out pairs are scored
    n_train_pairs = len({p for p in t if "+" in p} - test_t)
    rng = np.random.default_rng([seed, 15])
    seen = [p for p in singles if p not in held]

    t0 = time.perf_counter()
    model = sccvae.SCCVAE(a, seed=seed)
    model.train(progress=False, **({"max_epochs": max_epochs} if max_epochs else {}))
    model.select_penetrance(sorted(held))           # prior mode: no test cells used
    secs = time.perf_counter() - t0

    test = a[(a.obs["split"] == "test").to_numpy()]
    tt = scd.targets(test).astype(str).to_numpy()
    truth_cells = {p: np.asarray(test.X[np.flatnonzero(tt == p)].toarray() if hasattr(test.X, "toarray") else test.X[tt == p])
                   for p in pairs}
    ncell = {p: min(n_cells, len(v)) for p, v in truth_cells.items()}
    ref = FoldReference.from_adata(a, split_key="split", seed=seed)

    def cells_of(pred):
        g = pred.obs[scd.TARGET_KEY].astype(str).to_numpy()
        X = np.asarray(pred.X)
        return {p: X[np.flatnonzero(g == p)][:ncell[p]] for p in pairs}

    fit = model.fit_interaction() if len(model.trained_combinations()) >= 2 else dict(weight=0.0, pairs=0, r=np.nan)
    print(f"seed {seed}: pair rule kappa {fit.get('kappa_additive', 1.0):.3f} alone; with the model's interaction kappa "
          f"{fit.get('kappa', 1.0):.3f}, weight {fit['weight']:.3f} on {fit['pairs']} trained pairs (r {fit['r']:.3f})",
          file=sys.stderr)
    pred_auto = model.predict(pairs, n_cells=n_cells, seed=seed)                               # interaction='auto'
    preds = {"SCCVAE default": cells_of(pred_auto),
             "SCCVAE, interaction 0": cells_of(model.predict(pairs, n_cells=n_cells, seed=seed, interaction=0.0)),
             "SCCVAE, fitted kappa + w": cells_of(model.predict(pairs, n_cells=n_cells, seed=seed, interaction="fit")),
             "SCCVAE, interaction 1": cells_of(model.predict(pairs, n_cells=n_cells, seed=seed, interaction=1.0))}
    w_auto = float(pred_auto.uns["sccvae_prediction"].get("additive_scale", 1.0))
    add = AdditiveBaseline().fit(a, split_key="split")
    preds["additive (SALT)"] = cells_of(add.predict(pairs, n_cells=n_cells, seed=seed))
    pm = PerturbedMeanBaseline().fit(a, split_key="split")
    preds["perturbed mean"] = cells_of(pm.predict(pairs, n_cells=n_cells, seed=seed))

    cls = pair_classes(pairs, seen)
    rows, means = [], {}
    for name, cells in preds.items():
        long, pmean, tmean = score_cells(cells, truth_cells, ref)
        long = long[long.column_set == "all"]
        rows.append(long.assign(method=name, pair_class=cls.reindex(long.perturbation).to_numpy(), seed=seed))
        means[name] = pmean

    # interactions: predicted deviation from that method's own additive guess vs the simulator's true deviation
    tn = [str(p) for p in truth["pair_names"]]
    dev_true = pd.DataFrame(np.asarray(truth["pair_effect"]) - np.asarray(truth["pair_additive"]), index=tn).loc[pairs].to_numpy()
    ctrl = ref.control_mean
    tr = (a.obs["split"] == "train").to_numpy()
    def best(g):      # the single change the default model's pair is centred on: observed if seen, else its anchor
        if g in seen: return np.asarray(a.X[np.flatnonzero(tr & (t == g))].mean(0), np.float64).ravel() - ctrl
        return model.anchor.predict(model.label_rows([g]).cpu().numpy(), scd.target_columns(a, [g]))[0]
    inter = []
    guess_all = np.stack([best(x) + best(y) for x, y in (p.split("+") for p in pairs)])
    # a model-free yardstick for the interaction: the additive guess scaled by kappa, fitted on the trained pairs
    # (least squares of observed pair change on the sum of its singles' observed changes)
    tp = model.trained_combinations()
    if tp:
        obs = np.stack([np.asarray(a.X[np.flatnonzero(tr & (t == q))].mean(0), np.float64).ravel() - ctrl for q in tp])
        add = np.stack([best(x) + best(y) for x, y in (q.split("+") for q in tp)])
        kappa = float((obs * add).sum() / (add * add).sum())
    else: kappa = 1.0
    devs = {}
    for name in preds:
        P = means[name].loc[pairs].to_numpy() - ctrl
        if name.startswith("SCCVAE") and model.anchor is not None: devs[name] = P - guess_all
        else: devs[name] = P - P     # the baselines predict no interaction
    devs[f"additive × kappa (fitted on trained pairs)"] = (kappa - 1.0) * guess_all
    print(f"seed {seed}: kappa {kappa:.3f} (benchmark), default additive scale {w_auto:.3f}", file=sys.stderr)
    for name, dev in devs.items():
        r = [np.corrcoef(dev[q], dev_true[q])[0, 1] if dev[q].std() > 0 else np.nan for q in range(len(pairs))]
        perm = rng.permutation(len(pairs))
        chance = [np.corrcoef(dev[q], dev_true[perm[q]])[0, 1] if dev[q].std() > 0 and perm[q] != q else np.nan
                  for q in range(len(pairs))]
        rel = (pd.Series(np.asarray(truth["pair_related"]), index=tn).loc[pairs].to_numpy() if "pair_related" in truth
               else np.zeros(len(pairs), bool))
        inter.append(pd.DataFrame({"pair": pairs, "method": name, "pair_class": cls.to_numpy(), "seed": seed, "related": rel,
                                   "interaction_r": r, "chance_r": chance,
                                   "true_dev_norm": np.linalg.norm(dev_true, axis=1)}))
    return pd.concat(rows, ignore_index=True), pd.concat(inter, ignore_index=True), secs, n_train_pairs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="small")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--n-pairs", type=int, default=60)
    ap.add_argument("--holdout-frac", type=float, default=0.25, help="share of the singles held out")
    ap.add_argument("--holdout-pairs", type=float, default=0.5,
                    help="share of the pairs of training genes held out (1: every pair held out, singles-only training)")
    ap.add_argument("--pair-related", type=float, default=0.0,
                    help="share of pairs of two shifting targets of one module (simulate_screen(pair_related=...))")
    ap.add_argument("--n-cells", type=int, default=100)
    ap.add_argument("--max-epochs", type=int, default=None, help="default: the default train preset's")
    ap.add_argument("--out", default="runs/combinations")
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("IN_TEST", "1")
    from sccvae.utils import md_table, write_csv
    scores, inter, times = [], [], []
    for s in a.seeds:
        sc, it, secs, ntp = run_seed(a.size, s, a.n_pairs, a.holdout_frac, a.holdout_pairs, a.n_cells, a.max_epochs, a.pair_related)
        scores.append(sc); inter.append(it); times.append(secs)
        print(f"seed {s}: {ntp} pairs trained; trained in {secs:.0f} s", file=sys.stderr)
    sc, it = pd.concat(scores, ignore_index=True), pd.concat(inter, ignore_index=True)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "pair_scores.csv", sc, index=False); write_csv(out / "pair_interactions.csv", it, index=False)
    keep = sc[sc.metric.isin(["pearson_delta", "edistance"])]
    tab = keep.groupby(["metric", "pair_class", "method"], observed=True).value.agg(["mean", "count"]).unstack("method")
    allp = keep.groupby(["metric", "method"]).value.mean().unstack("method")
    print(f"## Held-out pairs: {a.size} screen, seeds {a.seeds}, {a.n_pairs} pairs per seed, "
          f"holdout_singles {a.holdout_frac}, holdout_pairs {a.holdout_pairs}\n")
    print("### All pairs (mean over pairs)\n"); print(md_table(allp)); print()
    print("### By seen-singles class (mean; count = pairs)\n"); print(md_table(tab)); print()
    itab = it.groupby("method").agg(interaction_r=("interaction_r", "mean"), chance_r=("chance_r", "mean"),
                                    pairs=("pair", "size"))
    print("### Predicted vs true interaction (Pearson over genes of the deviation from additive; mean over pairs)\n")
    print(md_table(itab)); print()
    print(md_table(it.groupby(["pair_class", "method"], observed=True).interaction_r.mean().unstack("method")))
    print()
    print(md_table(it.groupby(["related", "method"]).agg(interaction_r=("interaction_r", "mean"), chance_r=("chance_r", "mean"),
                                                         pairs=("pair", "size")).unstack("method")))


if __name__ == "__main__":
    main()
