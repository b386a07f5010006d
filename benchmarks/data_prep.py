"""Time and memory of the data layer at K562 shape (synthetic: 8,563 genes, 300 perturbations, ~100k cells).

    python benchmarks/data_prep.py [--size k562] [--seed 0]

Prints a table: step, seconds, peak RSS (MB). The K562 shape matches Replogle 2022 K562 essential's gene count and
the paper's subset size; the real file (310k cells) scales roughly linearly in cells for every step but the labels.
"""
import argparse, resource, time
import numpy as np


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="k562")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from sccvae import data as D, loader as L
    from sccvae.synthetic import simulate_screen
    rows = []

    def step(name, fn):
        t = time.perf_counter(); out = fn(); rows.append((name, time.perf_counter() - t, rss_mb())); return out

    a = step("simulate_screen", lambda: simulate_screen(args.size, seed=args.seed))
    step("setup_anndata", lambda: D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting", normalize=False))
    step("normalize", lambda: D.normalize(a))
    ft = step("filter_perturbations (5-fold logreg, 50 PCs)", lambda: D.filter_perturbations(a, min_cells=200, seed=args.seed))
    kept = ft.index[ft.kept].tolist()
    L = step("perturbation_labels (genes x controls PCA, 50)", lambda: D.perturbation_labels(a, perturbations=kept))
    man = step("ood_manifest (5 folds)", lambda: D.ood_manifest(a, perturbations=kept, seed=args.seed))
    step("apply_split", lambda: D.apply_split(a, man, 0))
    step("PerturbationData (cpu)", lambda: L.PerturbationData(a, labels=L, device="cpu"))
    print(f"\n{a.n_obs} cells x {a.n_vars} genes, {len(ft)} perturbations, {len(kept)} kept, nnz {a.X.nnz:,}\n")
    print("| step | seconds | peak RSS MB |\n|---|---:|---:|")
    for n, s, m in rows: print(f"| {n} | {s:.2f} | {m:.0f} |")
    print(f"| total | {sum(r[1] for r in rows):.2f} | {max(r[2] for r in rows):.0f} |")


if __name__ == "__main__":
    main()
