#!/usr/bin/env python
"""Gene-level direct effects against the simulator's gene network (issue 14, item 4): SCCVAE's direct-effect map
(`direct_effects` of its total effects over every measured gene) against the same inversion on observed perturbations
only, the total effects themselves, control co-expression and chance. Prints Markdown tables; writes CSVs under --out.

    python benchmarks/effects.py --seeds 1 2 3 --out runs/effects          # the report (settings chosen on seed 0)
    python benchmarks/effects.py --tune --out runs/effects_tune            # the seed-0 grid the settings come from

Protocol (per seed): `simulate_screen("small", seed=s, gene_network=5)` (1,000 genes, 40 perturbed regulators; a
knockdown acts only through the gene DAG B, chapter `00_synthetic`). Every perturbation is trained on (15 % of all
cells are the validation split); the default `sccvae.SCCVAE` is trained with the default preset (30 epochs;
`--max-epochs` to shorten). Methods, each a gene × gene score matrix ranked by |score|:

* SCCVAE direct: `direct_effects(model.total_effects(...))`, the inversion of the full 1,000 × 1,000 T (every measured
  gene perturbed in silico); SCCVAE direct, observed rows: `model.direct_effects()`, the same inversion of a T whose
  perturbed genes' rows are their observed changes and whose other rows are the model's (the library default);
  SCCVAE direct, block only: the inversion of the model's T restricted to its perturbed × perturbed block
  (a diagnostic: what the unobserved rows add);
* SCCVAE |T|, observed |T_obs|: total effects as edge scores, ranked by |T| as they are (on seed 0 that beat rows
  divided by their own effect T_jj); each row is multiplied by the sign of its own effect, so a score's sign is the
  edge's (a knockdown lowers an activated child);
* observed inversion: `direct_effects(observed_total_effects(adata))`, its perturbed × perturbed block only;
* control |corr|: Pearson between genes over control cells (`control_correlation`); control partial corr: the
  partial correlations of a Ledoit–Wolf shrunk precision matrix of the control cells (an extra baseline);
* random: seeded uniform scores with random signs.

Edge sets: (a) block: ordered pairs of distinct perturbed genes (every method scores them); (b) from: perturbed gene
→ any gene; (c) all: every ordered gene pair. A pair a method has no score for scores 0 (`edge_scores`). Metrics:
AUPRC (chance = positive rate), AUROC, sign accuracy on the true edges. The inversion settings (Tikhonov λ or SVD
rank, control cells averaged, whether the own effect keeps the decoded change at the gene's own column) were chosen
on seed 0 only, by the block AUPRC (`--tune` prints that grid); the report uses seeds 1-3.
"""
from __future__ import annotations
import argparse, os, sys, time, warnings
from pathlib import Path

import numpy as np
import pandas as pd

SETS = ("block", "from", "all")


def screen(seed, gene_network, size="small"):
    "The simulated screen, registered and normalised, with every perturbation in training and 15 % of cells in val."
    import sccvae
    from sccvae import data as scd
    from sccvae.synthetic import simulate_screen
    a = simulate_screen(size, seed=seed, gene_network=gene_network)
    sccvae.SCCVAE.setup_anndata(a, perturbation_key="gene", control_group="non-targeting")
    rng = np.random.default_rng([seed, 45])
    split = np.where(rng.random(a.n_obs) < 0.15, "val", "train")
    a.obs["split"] = pd.Categorical(split, categories=["train", "val", "test"])
    reg = scd.get_registry(a); reg["split_key"] = "split"; a.uns[scd.REGISTRY_KEY] = reg
    return a


def train(a, seed, max_epochs=None):
    import sccvae
    model = sccvae.SCCVAE(a, seed=seed)
    model.train(progress=False, **({"max_epochs": max_epochs} if max_epochs else {}))
    return model


def model_totals(model, n_cells, seed):
    "(T with the on-target term, T with the own effect reduced to the on-target term: the decoded self-change left out)."
    T = model.total_effects(n_cells=n_cells, seed=seed)
    mod = model.module
    if not getattr(mod, "on_target", False): return T, T
    mod.on_target = False
    try: T0 = model.total_effects(n_cells=n_cells, seed=seed)   # decoded change only
    finally: mod.on_target = True
    Tk = T.copy()
    d = np.diag(T.to_numpy()) - np.diag(T0.to_numpy())           # the on-target term of each row
    Tk.values[np.diag_indices(len(Tk))] = d
    return T, Tk


def sign_rows(T):
    "Total effects with each row multiplied by the sign of the row gene's own effect T_jj: |T| unchanged, a score's sign the edge's."
    s = np.sign(np.array([T.at[x, x] if x in T.columns else 1.0 for x in T.index], np.float64))
    return T.mul(np.where(s == 0, 1.0, s), axis=0)


def precision_partial(a):
    "Partial correlations between genes over control cells from a Ledoit–Wolf shrunk covariance."
    from sklearn.covariance import LedoitWolf
    from sccvae import data as scd
    from sccvae.effects import _gene_names
    ctrl = (scd.targets(a).astype(str) == scd.CONTROL).to_numpy()
    X = a.X[ctrl]
    X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, np.float64)
    live = X.std(0) > 0
    P = np.linalg.inv(LedoitWolf().fit(X[:, live]).covariance_)
    d = np.sqrt(np.diag(P))
    R = np.zeros((X.shape[1],) * 2)
    R[np.ix_(live, live)] = -P / d[:, None] / d[None]
    names = _gene_names(a)
    return pd.DataFrame(R, index=names, columns=names)


def random_scores(names, seed):
    rng = np.random.default_rng([seed, 4545])
    n = len(names)
    return pd.DataFrame(rng.random((n, n)) * rng.choice([-1.0, 1.0], (n, n)), index=names, columns=names)


def score_all(methods, Bt, pert, seed):
    from sccvae.effects import edge_scores
    rows = []
    for name, Bh in methods.items():
        for s in SETS:
            e = edge_scores(Bh, Bt, pairs=s, genes=pert)
            rows.append({"seed": seed, "method": name, "edges": s, **e.to_dict()})
    return pd.DataFrame(rows)


def run_seed(seed, args):
    import torch
    from sccvae.effects import direct_effects, observed_total_effects, control_correlation, simulated_gene_dag
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    a = screen(seed, args.gene_network)
    model = train(a, seed, args.max_epochs)
    t_train = time.perf_counter() - t0
    T, Tk = model_totals(model, args.n_cells, seed)
    Tm = Tk if args.own_effect == "on-target" else T
    inv = dict(rank=args.rank) if args.rank else dict(lam=args.lam)
    To = observed_total_effects(a)
    pert = list(To.index)
    oinv = dict(rank=args.obs_rank) if args.obs_rank else dict(lam=args.obs_lam)
    hinv = dict(lam=args.hyb_lam)
    methods = {
        "SCCVAE direct (full T)": direct_effects(Tm, **inv),
        "SCCVAE direct (block only)": direct_effects(Tm.loc[pert, pert], **inv),
        "SCCVAE direct, observed rows (model.direct_effects)": model.direct_effects(n_cells=args.n_cells, seed=seed, **hinv),
        "SCCVAE |T|": sign_rows(T),
        "observed inversion (block)": direct_effects(To, **oinv),
        "observed |T_obs|": sign_rows(To),
        "control |corr|": control_correlation(a, signed=True),
        "control partial corr (LW precision)": precision_partial(a),
        "random": random_scores(list(T.columns), seed),
    }
    res = score_all(methods, simulated_gene_dag(a), pert, seed)
    print(f"seed {seed}: trained in {t_train:.0f} s, scored in {time.perf_counter() - t0 - t_train:.0f} s", file=sys.stderr)
    return res


def tune(args):
    "The seed-0 grid: inversion settings for SCCVAE (λ / rank, control cells, own effect) and for the observed block."
    import torch
    from sccvae.effects import direct_effects, observed_total_effects, simulated_gene_dag
    torch.set_num_threads(1)
    seed = 0
    a = screen(seed, args.gene_network)
    model = train(a, seed, args.max_epochs)
    Bt = simulated_gene_dag(a)
    To = observed_total_effects(a)
    pert = list(To.index)
    grid = [dict(lam=l) for l in (1e-3, 1e-2, 1e-1, 1.0, 10.0)] + [dict(rank=r) for r in (10, 40, 100, 300)]
    methods = {}
    for nc in (64, 512):
        T, Tk = model_totals(model, nc, seed)
        for own, M in (("full", T), ("on-target", Tk)):
            for g in grid:
                k, v = next(iter(g.items()))
                methods[f"SCCVAE n_cells={nc} own={own} {k}={v:g}"] = direct_effects(M, **g)
    for g in [dict(lam=l) for l in (1e-3, 1e-2, 1e-1, 1.0)] + [dict(rank=r) for r in (10, 20, 30, 39)]:
        k, v = next(iter(g.items()))
        methods[f"observed {k}={v:g}"] = direct_effects(To, **g)
    Th = model.total_effects(n_cells=512, seed=seed, observed=True)        # what model.direct_effects() inverts
    for l in (1e-4, 1e-3, 1e-2, 1e-1, 1.0):
        methods[f"SCCVAE direct, observed rows lam={l:g}"] = direct_effects(Th, lam=l)
    return score_all(methods, Bt, pert, seed)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--gene-network", type=float, default=5.0, help="mean out-degree of the simulator's regulators")
    ap.add_argument("--max-epochs", type=int, default=None, help="default: the default train preset's (30)")
    ap.add_argument("--n-cells", type=int, default=512, help="control cells the model's total effects average over (seed 0)")
    ap.add_argument("--lam", type=float, default=1.0, help="Tikhonov λ of SCCVAE's inversion (chosen on seed 0)")
    ap.add_argument("--rank", type=int, default=None, help="truncated-SVD rank of SCCVAE's inversion instead of λ")
    ap.add_argument("--own-effect", choices=["full", "on-target"], default="full",
                    help="own effect of a row: T_jj (full) or the on-target term only (decoded self-change left out)")
    ap.add_argument("--obs-lam", type=float, default=1e-2, help="Tikhonov λ of the observed-only inversion (seed 0)")
    ap.add_argument("--obs-rank", type=int, default=None)
    ap.add_argument("--hyb-lam", type=float, default=1e-2,
                    help="Tikhonov λ of model.direct_effects (observed rows + the model's rows; chosen on seed 0)")
    ap.add_argument("--tune", action="store_true", help="print the seed-0 grid the settings were chosen from")
    ap.add_argument("--out", default="runs/effects")
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("IN_TEST", "1")
    from sccvae.utils import md_table, write_csv
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    if a.tune:
        res = tune(a)
        write_csv(out / "effects_tune.csv", res, index=False)
        tab = res.pivot_table(index="method", columns="edges", values="auprc", sort=False)[list(SETS)]
        tab.columns = [f"AUPRC {c}" for c in tab.columns]
        pr = res.groupby("edges").positive_rate.first()
        print(f"## Seed-0 grid (gene_network={a.gene_network:g}); positive rate: "
              + ", ".join(f"{s} {pr[s]:.4f}" for s in SETS) + "\n")
        print(md_table(tab.sort_values("AUPRC block", ascending=False), floatfmt=".3f"))
        return
    res = pd.concat([run_seed(s, a) for s in a.seeds], ignore_index=True)
    write_csv(out / "edge_scores.csv", res, index=False)
    order = list(dict.fromkeys(res.method))
    inv = f"rank {a.rank}" if a.rank else f"λ = {a.lam:g}"
    oinv = f"rank {a.obs_rank}" if a.obs_rank else f"λ = {a.obs_lam:g}"
    print(f"## Direct effects vs the simulator's gene DAG: small screen, gene_network={a.gene_network:g}, seeds {a.seeds}\n")
    print(f"SCCVAE inversion {inv}, {a.n_cells} control cells, own effect {a.own_effect}; observed inversion {oinv}. "
          "Mean ± sd over seeds.\n")
    for s in SETS:
        r = res[res.edges == s]
        g = r.groupby("method", sort=False)
        f = lambda c: g[c].mean().map("{:.3f}".format) + " ± " + g[c].std().map("{:.3f}".format)
        tab = pd.DataFrame({"AUPRC": f("auprc"), "AUROC": f("auroc"), "sign accuracy": f("sign_accuracy"),
                            "coverage": g.coverage.mean().map("{:.3f}".format)}).loc[order]
        print(f"### ({'abc'[SETS.index(s)]}) {s}: {int(r.n_edges.mean())} true edges among {int(r.n_pairs.mean())} pairs "
              f"per seed; positive rate (AUPRC by chance) {r.positive_rate.mean():.4f}\n")
        print(md_table(tab)); print()


if __name__ == "__main__":
    main()
