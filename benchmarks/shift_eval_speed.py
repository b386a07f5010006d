"""Wall time of shift selection + evaluation at K562 shape: 57 unseen perturbations x 41 penetrance candidates.

    python benchmarks/shift_eval_speed.py [--device auto] [--threads 1] [--loop-pairs 6]

Our shift selection (`sccvae.shift.penetrance_errors`: one batched, common-random-numbers pass; the SCM is linear so
u = u0 + c * v_q and the control draws are encoded once) against the authors' pattern (for every candidate c and
every perturbation: fresh control draws, encode, matrix inverse of I - A, decode in float64, one 32-cell batch at a
time) timed on `--loop-pairs` (perturbation, c) pairs and extrapolated to 57 x 41. Evaluation is timed with
`sccvae.evaluate` on 57 perturbations x ~300 cells vs 10,000 controls (`benchmarks/eval_speed.py` has the
evaluation-only comparison with the original metric loop). Model weights are random: the cost does not depend on them.
Prints a markdown table.
"""
import argparse, time
import numpy as np


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--genes", type=int, default=8563)
    p.add_argument("--latent", type=int, default=512)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--perturbations", type=int, default=57)
    p.add_argument("--candidates", type=int, default=41)
    p.add_argument("--cells", type=int, default=300, help="test cells per perturbation (original: one batch of 32 per 32 cells)")
    p.add_argument("--n-cells", type=int, default=128, help="control draws shared by every candidate (ours)")
    p.add_argument("--loop-pairs", type=int, default=6, help="(perturbation, c) pairs timed in the original pattern")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    a = parse(argv)
    import torch
    from sccvae.utils import get_device
    from sccvae.module import SCCVAEModule
    from sccvae.graph import full_graph
    from sccvae.shift import penetrance_errors, default_grid
    if a.threads: torch.set_num_threads(a.threads)
    dev = get_device(a.device)
    g = torch.Generator().manual_seed(a.seed)
    n_ctrl = 10_000
    mod = SCCVAEModule(a.genes, 50, 200, full_graph(a.latent).mask, n_latent=a.latent, n_hidden=a.hidden, seed=a.seed).to(dev).eval()
    ctrl = torch.rand(n_ctrl, a.genes, generator=g).to(dev)
    labels = torch.randn(a.perturbations, 50, generator=g).to(dev)
    targets = torch.rand(a.perturbations, a.genes, generator=g).to(dev)
    grid = default_grid()[: a.candidates]
    rows = []

    def sync():
        if dev.type == "cuda": torch.cuda.synchronize()

    # ---- ours: encode the shared control draws once, one batched pass over all (perturbation, c)
    sync(); t = time.perf_counter()
    with torch.no_grad():
        idx = torch.randint(0, n_ctrl, (a.n_cells,), generator=g).to(dev)
        mu, var = mod.encode(ctrl[idx])
        z = mu + var.sqrt() * torch.randn(mu.shape, generator=g).to(dev)
        S = mod.shift(labels)
        E = penetrance_errors(mod, z, S, targets, grid)
        chosen = E.argmin(1)
    sync(); ours = time.perf_counter() - t
    rows.append(("shift selection, sccvae (float32, CRN, batched)", ours, 1.0))

    # ---- original pattern: per c, per perturbation, per 32-cell batch; float64; inverse; fresh controls on host
    mod64 = SCCVAEModule(a.genes, 50, 200, full_graph(a.latent).mask, n_latent=a.latent, n_hidden=a.hidden, seed=a.seed).double().eval()
    ctrl64 = ctrl.cpu().double().numpy()
    n_batches = a.cells // 32
    rng = np.random.default_rng(a.seed)
    t = time.perf_counter()
    with torch.no_grad():
        for k in range(a.loop_pairs):
            q, c = k % a.perturbations, float(grid[k % len(grid)])
            A = mod64.adjacency()
            inv = torch.inverse(torch.eye(a.latent, dtype=torch.float64) - A) if A is not None else None  # every time, as the original
            s = mod64.shift(labels[q:q + 1].cpu().double())
            means = []
            for _ in range(n_batches):
                x = torch.from_numpy(ctrl64[rng.choice(n_ctrl, 32)])
                mu, var = mod64.encode(x)
                zz = mu + var.sqrt() * torch.randn_like(mu)
                u = (zz + c * s) @ inv if inv is not None else zz + c * s
                means.append(mod64.decode(u).mean(0))
            pm = torch.stack(means).mean(0)
            _ = ((pm - targets[q].cpu().double()) ** 2).mean()
    loop = (time.perf_counter() - t) / a.loop_pairs * a.perturbations * len(grid)
    rows.append((f"shift selection, original pattern (extrapolated from {a.loop_pairs} pairs)", loop, loop / ours))

    if not a.skip_eval:
        import anndata as ad, pandas as pd
        from sccvae.evaluate import evaluate
        rs = np.random.default_rng(a.seed)
        genes = [f"G{i}" for i in range(a.genes)]
        def mk(n_per, shift):
            X = rs.gamma(0.5, 0.6, size=(n_per * a.perturbations, a.genes)).astype(np.float32)
            lab = np.repeat([f"P{i}" for i in range(a.perturbations)], n_per)
            X += shift * (lab == "P0")[:, None]
            return ad.AnnData(X, obs=pd.DataFrame({"_scc_target": lab}, index=[f"c{i}" for i in range(len(lab))]),
                              var=pd.DataFrame(index=genes))
        truth, pred = mk(a.cells, 0.1), mk(a.cells, 0.0)
        ctrl_ad = ad.AnnData(rs.gamma(0.5, 0.6, size=(10_000, a.genes)).astype(np.float32), var=pd.DataFrame(index=genes))
        t = time.perf_counter()
        evaluate({"sccvae": pred}, truth, ctrl_ad, device=dev, seed=a.seed)
        ev = time.perf_counter() - t
        rows.append(("evaluation (parity + corrected, all genes + top-50)", ev, float("nan")))
        rows.append(("shift selection + evaluation, sccvae", ours + ev, float("nan")))
    print(f"\nK562 shape: {a.genes} genes, n_latent {a.latent}, hidden {a.hidden}, {a.perturbations} perturbations x "
          f"{len(grid)} candidates, device {dev}, threads {a.threads}\n")
    print("| step | seconds | original / ours |\n|---|---:|---:|")
    for n, s, r in rows:
        print(f"| {n} | {s:.2f} | {'' if np.isnan(r) else f'{r:.1f}x'} |")


if __name__ == "__main__":
    main()
