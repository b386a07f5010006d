"""Training-step throughput of sccvae vs the original code's pattern, measured in the same run.

Each configuration runs in its own subprocess (so peak memory is per configuration) on random data of the given
shape (default: K562, m = 8,563 genes, n = 512 latents, hidden 1024, label dim 50) and prints a markdown table:
cells/s, seconds per step, peak memory, and the speed-up over the original pattern at batch 32.

Configurations
  ours         sccvae.train.training_step as the Trainer runs it (float32, triangular solve, controls drawn on the
               device with torch.randint, MMD from one Gram matrix, global grad-norm clipping, fused Adam, finite
               check of the running loss only), one perturbation of `--batch` cells per step
  ours_packed  the same with `--pack` perturbations per step (MMD per perturbation group)
  ours_bf16    (CUDA only, with --bf16) bf16 autocast for the MLPs
  original     the authors' pattern: float64 everywhere, torch.inverse(I - A) every step, controls sampled on the
               host with np.random.choice and copied, shift encoder run on every row, decoder called twice, MMD
               from a (2B, 2B, m) broadcast tensor, clip_grad_norm_ per parameter tensor, default Adam, and a NaN
               scan of all parameters after every step

Peak memory: on CPU the peak resident set size sampled every 2 ms during the timed steps (and the RSS before
them, i.e. data + model), on CUDA torch.cuda.max_memory_allocated.

    python benchmarks/train_throughput.py                       # K562 shape on this machine's CPU
    python benchmarks/train_throughput.py --threads 1 --repeats 2 --full-fold   # steadier on a shared CPU

On a CPU shared with other jobs, two OpenMP threads stall on each other whenever one core is taken (we saw the
same configuration vary 7x between runs); `--threads 1` gives both sides one core and reproducible ratios.
    python benchmarks/train_throughput.py --device cuda --bf16 --full-fold
    python benchmarks/train_throughput.py --genes 2000 --steps 3 # quick
"""
from __future__ import annotations
import argparse, json, math, os, subprocess, sys, threading, time
from pathlib import Path

HERE = Path(__file__).resolve()


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 | mps")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--genes", type=int, default=8563)
    p.add_argument("--latent", type=int, default=512)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--label-dim", type=int, default=50)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--pack", type=int, default=8)
    p.add_argument("--n-controls", type=int, default=2048, help="control pool size (data held in memory)")
    p.add_argument("--n-perturbations", type=int, default=16)
    p.add_argument("--cells-per-perturbation", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=1,
                   help="run every configuration this many times, interleaved, and keep its fastest run "
                        "(steadier numbers on a shared machine)")
    p.add_argument("--configs", default="ours,ours_packed,original", help="comma-separated subset")
    p.add_argument("--bf16", action="store_true", help="also time bf16 autocast (CUDA only)")
    p.add_argument("--full-fold", action="store_true", help="estimate a 100-epoch K562 OOD fold from the step times")
    p.add_argument("--train-cells", type=int, default=72_000, help="training cells per epoch for --full-fold")
    p.add_argument("--val-cells", type=int, default=12_700, help="validation cells per epoch for --full-fold")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------------------
# memory
class PeakRSS:
    "Sample this process's resident set size every `dt` seconds in a thread; `.peak` in bytes."
    def __init__(self, dt=0.002):
        self.dt, self.peak, self._stop = dt, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def rss(self):
        with open("/proc/self/statm") as f: return int(f.read().split()[1]) * self._page

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss()); time.sleep(self.dt)

    def __enter__(self):
        self.peak = self.rss(); self._t = threading.Thread(target=self._run, daemon=True); self._t.start(); return self

    def __exit__(self, *a):
        self._stop.set(); self._t.join(); self.peak = max(self.peak, self.rss())


def sync(dev):
    import torch
    if dev.type == "cuda": torch.cuda.synchronize(dev)
    elif dev.type == "mps": torch.mps.synchronize()


# ------------------------------------------------------------------------------------------------------------
# our step, exactly as sccvae.train.Trainer runs it
def run_ours(a, dev, pack, precision):
    import numpy as np, pandas as pd, anndata as ad, torch
    from sccvae import data as D, loader as L
    from sccvae.module import SCCVAEModule
    from sccvae.train import Trainer, TrainConfig, training_step
    rng = np.random.default_rng(0)
    P, per, nc = a.n_perturbations, a.cells_per_perturbation, a.n_controls
    n = nc + P * per
    X = rng.gamma(0.5, 1.0, size=(n, a.genes)).astype(np.float32)  # log-normalised-like values, dense
    obs = pd.DataFrame({"target": ["ctrl"] * nc + [f"G{i:04d}" for i in range(P) for _ in range(per)]},
                       index=[f"c{i}" for i in range(n)])
    var = pd.DataFrame(index=[f"G{i:04d}" for i in range(a.genes)])
    adata = ad.AnnData(X, obs=obs, var=var)
    D.setup_anndata(adata, perturbation_key="target", control_group="ctrl")
    D.normalize(adata)  # input is log-normalised already: kept as is
    labels = pd.DataFrame(rng.normal(size=(P, a.label_dim)).astype(np.float32), index=[f"G{i:04d}" for i in range(P)])
    data = L.PerturbationData(adata, labels=labels, split_key=None, device=dev)
    mod = SCCVAEModule(a.genes, a.label_dim, P, n_latent=a.latent, n_hidden=a.hidden)
    cfg = TrainConfig(batch_size=a.batch, pack=pack, precision=precision, progress=False)
    tr = Trainer(mod, data, cfg, val_split=None)
    batches = list(tr.sampler)
    need = a.warmup + a.steps
    batches = (batches * math.ceil(need / len(batches)))[:need]

    def step(idx):
        x, y, lg, index, c, layout, cnt = tr._batch(idx, tr.generator)
        return training_step(tr.module, tr.optimizer, x, y, lg, index, c, beta=0.5, cfg=cfg, layout=layout,
                             generator=tr.generator, **cnt)

    acc = torch.zeros(5, device=dev)
    for idx in batches[:a.warmup]: p = step(idx); acc += torch.stack(list(p.values()))
    timed = batches[a.warmup:]
    return _timed(dev, timed, step, acc, sum(len(b) for b in timed))


def _timed(dev, batches, step, acc, cells):
    import torch
    sync(dev)
    if dev.type == "cuda": torch.cuda.reset_peak_memory_stats(dev)
    with PeakRSS() as mem:
        base = mem.rss()
        t0 = time.perf_counter()
        for idx in batches:
            p = step(idx)
            acc += torch.stack(list(p.values())) if isinstance(p, dict) else p
        sync(dev)
        dt = time.perf_counter() - t0
    if not torch.isfinite(acc).all(): raise FloatingPointError("non-finite loss in the benchmark")
    out = dict(cells=cells, steps=len(batches), seconds=dt, cells_per_s=cells / dt, step_s=dt / len(batches),
               cells_per_step=cells / len(batches))
    if dev.type == "cuda": out["peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    else: out["peak_mb"], out["base_mb"] = mem.peak / 2**20, base / 2**20
    return out


# ------------------------------------------------------------------------------------------------------------
# the original code's pattern (reference-method §2, §3, §4, §11), written from its description
def run_original(a, dev):
    import numpy as np, torch
    from torch import nn
    torch.set_default_dtype(torch.float64)
    np.random.seed(20); torch.manual_seed(20)
    m, n, h, d = a.genes, a.latent, a.hidden, a.label_dim
    act = lambda: nn.LeakyReLU(0.2)

    class Orig(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Sequential(nn.Linear(m, h), act(), nn.Linear(h, h), act())
            self.mean, self.var = nn.Linear(h, n), nn.Linear(h, n)
            self.shift = nn.Sequential(nn.Linear(d, h), act(), nn.Linear(h, h), act(), nn.Linear(h, n))
            self.B = nn.Parameter(torch.randn(n, n) * 0.1)
            self.s = nn.Parameter(torch.ones(n))
            self.dec = nn.Sequential(nn.Linear(n, h), act(), nn.Linear(h, h), act(), nn.Linear(h, m))
            self.M = torch.triu(torch.ones(n, n), 1).to(dev)

        def forward(self, x, label, onehot):
            hh = self.enc(x)
            mu, var = self.mean(hh), torch.exp(self.var(hh)) + 1e-4
            z = mu + var.sqrt() * torch.randn_like(mu)
            S = torch.softmax(self.shift(label), -1)
            c = onehot[:, :n] @ self.s
            inv = torch.inverse(torch.eye(n, device=x.device) - self.B * self.M)
            u, u0 = (z + c[:, None] * S) @ inv, z @ inv
            return mu, var, self.dec(u), self.dec(u0)

    def mmd_broadcast(p, o):
        P = torch.cat([p, o]); D = ((P[None] - P[:, None]) ** 2).sum(2)
        K = sum(torch.exp(-D / (31.25 * 2 ** k)) for k in range(10)); b = p.shape[0]
        return K[:b, :b].mean() + K[b:, b:].mean() - 2 * K[:b, b:].mean()

    model = Orig().to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, eps=1e-2, weight_decay=1e-6)
    rng = np.random.default_rng(0)
    Xs = rng.gamma(0.5, 1.0, size=(a.n_controls, m))              # host float64 control pool (model.Xs)
    Y = rng.gamma(0.5, 1.0, size=(a.n_perturbations * a.cells_per_perturbation, m))  # host float64 dataset
    labels = rng.normal(size=(a.n_perturbations, d))
    B = a.batch
    nb = len(Y) // B
    batches = [i % nb for i in range(a.warmup + a.steps)]

    def step(k):
        sl = slice(k * B, (k + 1) * B)
        y = torch.from_numpy(Y[sl]).to(dev)
        p = (k * B) // a.cells_per_perturbation
        label = torch.from_numpy(np.repeat(labels[p:p + 1], B, 0)).to(dev)
        onehot = torch.zeros(B, n + 1, device=dev); onehot[:, p % n] = 1
        x = torch.from_numpy(Xs[np.random.choice(len(Xs), B)]).to(dev)  # controls drawn on the host
        mu, var, y_hat, x_hat = model(x, label, onehot)
        kl = (0.5 * (mu ** 2 + var - var.log() - 1)).mean()
        loss = 0.25 * ((x_hat - x) ** 2).mean() + ((y_hat - y) ** 2).mean() + 0.5 * kl + 10 * mmd_broadcast(y_hat, y)
        opt.zero_grad(); loss.backward()
        for prm in model.parameters(): torch.nn.utils.clip_grad_norm_(prm, 1.0)   # per tensor
        opt.step()
        for prm in model.parameters():                                            # NaN scan, every step
            if torch.isnan(prm).any(): raise FloatingPointError("NaN parameter")
        return loss.detach()[None].expand(5)

    acc = torch.zeros(5, device=dev)
    for k in batches[:a.warmup]: acc += step(k)
    return _timed(dev, batches[a.warmup:], step, acc, B * a.steps)


def worker(a):
    import torch
    if a.threads: torch.set_num_threads(a.threads)
    from sccvae.utils import get_device
    dev = get_device(a.device) if a.device in ("auto", "cpu", "cuda", "mps") else get_device(device=a.device)
    cfg = a._worker
    if cfg == "ours": out = run_ours(a, dev, 1, "32")
    elif cfg == "ours_packed": out = run_ours(a, dev, a.pack, "32")
    elif cfg == "ours_bf16": out = run_ours(a, dev, 1, "bf16")
    elif cfg == "ours_packed_bf16": out = run_ours(a, dev, a.pack, "bf16")
    elif cfg == "original": out = run_original(a, dev)
    else: raise SystemExit(f"unknown config {cfg}")
    out.update(config=cfg, device=str(dev), threads=torch.get_num_threads())
    print("RESULT " + json.dumps(out))


def main(argv=None):
    a = parse(argv)
    if a._worker: return worker(a)
    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    if a.bf16: configs += ["ours_bf16", "ours_packed_bf16"]
    args = [x for x in (argv if argv is not None else sys.argv[1:])]
    results = {}
    for rep in range(a.repeats):
        for cfg in (configs if rep % 2 == 0 else configs[::-1]):
            cmd = [sys.executable, str(HERE), *args, "--_worker", cfg]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
            if r.returncode or not line:
                print(f"[{cfg}] failed:\n{r.stderr[-3000:]}", file=sys.stderr); continue
            res = json.loads(line[-1][7:])
            if cfg not in results or res["cells_per_s"] > results[cfg]["cells_per_s"]: results[cfg] = res
            print(f"[{cfg}] run {rep + 1}: {res['cells_per_s']:.1f} cells/s ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr)
    results = {c: results[c] for c in configs if c in results}
    if not results: raise SystemExit("no configuration finished")
    any_r = next(iter(results.values()))
    orig = results.get("original")
    print(f"\nshape: genes={a.genes} latent={a.latent} hidden={a.hidden} label_dim={a.label_dim} batch={a.batch} "
          f"pack={a.pack}; device={any_r['device']}, torch threads={any_r['threads']}; "
          f"{a.steps} timed steps after {a.warmup} warm-up; best of {a.repeats} interleaved run(s)\n")
    cpu = not any_r["device"].startswith("cuda")
    print(f"| config | cells/step | s/step | cells/s | peak {'RSS' if cpu else 'GPU'} MB | speed-up vs original |")
    print("|---|---|---|---|---|---|")
    for cfg, r in results.items():
        ratio = f"{r['cells_per_s'] / orig['cells_per_s']:.1f}x" if orig else "n/a"
        mem = f"{r['peak_mb']:.0f}" + (f" (data+model {r['base_mb']:.0f})" if cpu else "")
        print(f"| {cfg} | {r['cells_per_step']:.0f} | {r['step_s']:.3f} | {r['cells_per_s']:.0f} | {mem} | {ratio} |")
    if a.full_fold:
        print(f"\nestimated {a.epochs}-epoch fold ({a.train_cells} training cells/epoch, {a.val_cells} validation "
              "cells/epoch counted at 1/3 of a training cell's cost):")
        for cfg, r in results.items():
            sec = a.epochs * (a.train_cells + a.val_cells / 3) / r["cells_per_s"]
            print(f"- {cfg}: {sec / 60:.1f} min ({sec / 3600:.2f} h)")
    if a.json:
        Path(a.json).write_text(json.dumps(dict(args=vars(a), results=results), indent=2))


if __name__ == "__main__":
    main()
