"""Scale benchmark: screens of K562 shape and larger, trained from disk (`sccvae.data.prepare_store`) vs from memory.

For each screen a synthetic Perturb-seq h5ad is written to disk in chunks (raw counts, cells in random order like
Replogle's files; a block of Poisson cells with perturbation effects, tiled), then every stage runs in its own
subprocess, so its peak resident set size (ru_maxrss: the process, not the page cache) is its own:

  prepare        prepare_store: chunked checks, log-normalisation, cells sorted by perturbation, contiguous h5ad
  labels         the control-PCA labels of every gene, read from the store (control cells only)
  train_disk     SCCVAE (default preset, default sizes for the gene count) on the store: `--steps` timed steps,
                 rows read ahead in a thread; `train_cold` the same after evicting the store from the page cache
  train_memory   the same model on the same cells held in memory (the store read whole), for the ratio
  evaluate       shift selection (prior) + prediction + scoring (sccvae.evaluate) of 50 held-out perturbations,
                 their truth read from the store

    python benchmarks/scale.py --out runs/scale                           # K562 dense + sparse, 100k / 1M sparse
    python benchmarks/scale.py --out runs/scale_quick --quick             # small shapes, minutes
    python benchmarks/scale.py --device cuda --out runs/scale_gpu         # on one H100/H200

The RSS-flatness line compares `train_disk` peak RSS across the sparse screens of 100k, 300k and 1M cells (the
control pool is kept at the same ~10.7k cells, K562's count, so what grows is the perturbed cells on disk).
"""
from __future__ import annotations
import argparse, json, os, resource, subprocess, sys, time
from pathlib import Path

HERE = Path(__file__).resolve()
N_CONTROLS = 10_700


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/scale")
    p.add_argument("--genes", type=int, default=8563)
    p.add_argument("--screens", default="310000:dense,310000:sparse,100000:sparse,1000000:sparse",
                   help="comma-separated CELLS:FORMAT")
    p.add_argument("--perturbations", type=int, default=2000)
    p.add_argument("--steps", type=int, default=60, help="timed training steps per mode")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default); on a CPU shared with other jobs use 1 (steady ratios)")
    p.add_argument("--repeats", type=int, default=1,
                   help="run the training stages this many times, interleaved, and keep each one's fastest run")
    p.add_argument("--quick", action="store_true", help="20k/60k cells x 2000 genes, 20 steps")
    p.add_argument("--keep", action="store_true", help="keep the h5ad files (default: removed after each screen)")
    p.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    p.add_argument("--source", default=None, help=argparse.SUPPRESS)
    p.add_argument("--store", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    p.add_argument("--ab", action="store_true",
                   help="also time disk and memory alternating in one process (4 blocks): a ratio robust to a busy CPU")
    a = p.parse_args(argv)
    if a.quick:
        a.genes, a.steps, a.perturbations = 2000, 20, 300
        a.screens = "60000:dense,60000:sparse,20000:sparse"
    return a


# ---------------------------------------------------------------------------------------------- the synthetic file
def write_source(path: Path, n_cells: int, n_genes: int, n_perts: int, sparse: bool, seed: int = 0):
    "Write raw counts to an h5ad in chunks (never the whole matrix in memory): controls + perturbed cells, shuffled."
    import numpy as np, pandas as pd, h5py, anndata as ad, scipy.sparse as sp
    rng = np.random.default_rng(seed)
    genes = [f"G{j:05d}" for j in range(n_genes)]
    mean = rng.lognormal(-2.8 if sparse else -0.3, 1.2, n_genes)          # sparse: ~10% non-zero; dense: ~60%
    effects = rng.normal(0, 0.4, (64, n_genes)) * (rng.random((64, n_genes)) < 0.05)
    n_ctrl = min(N_CONTROLS, n_cells // 4)
    perts = np.array(genes[:n_perts])
    lab = np.r_[np.full(n_ctrl, "non-targeting", dtype=object), perts[rng.integers(0, n_perts, n_cells - n_ctrl)]]
    lab = lab[rng.permutation(n_cells)]
    obs = pd.DataFrame({"gene": pd.Categorical(lab)}, index=[f"c{i}" for i in range(n_cells)])
    ad.AnnData(obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(path)
    base_n = 4096
    pid = {g: i for i, g in enumerate(perts)}
    with h5py.File(path, "r+") as f:
        if "X" in f: del f["X"]
        if sparse:
            g = f.create_group("X")
            g.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": np.array([n_cells, n_genes])})
            dd = g.create_dataset("data", (0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 20,))
            di = g.create_dataset("indices", (0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 20,))
            indptr = [np.zeros(1, np.int64)]
        else:
            dx = f.create_dataset("X", (n_cells, n_genes), dtype=np.float32, chunks=(64, n_genes))
            dx.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        for s in range(0, n_cells, base_n):
            e = min(s + base_n, n_cells)
            code = np.array([pid.get(x, -1) for x in lab[s:e]])
            lam = mean * rng.lognormal(0, 0.3, (e - s, 1))
            lam = lam * np.where(code[:, None] >= 0, np.exp(effects[np.maximum(code, 0) % 64]), 1.0)
            own = code >= 0
            lam[np.flatnonzero(own), code[own]] *= 0.2                       # knock-down of the target gene
            B = rng.poisson(lam).astype(np.float32)
            B[B.sum(1) == 0, 0] = 1
            if sparse:
                C = sp.csr_matrix(B)
                o = dd.shape[0]; dd.resize((o + C.nnz,)); di.resize((o + C.nnz,))
                dd[o:] = C.data; di[o:] = C.indices
                indptr.append(C.indptr[1:].astype(np.int64) + indptr[-1][-1])
            else:
                dx[s:e] = B
        if sparse: g.create_dataset("indptr", data=np.concatenate(indptr))


# ---------------------------------------------------------------------------------------------------- the stages
def _peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # Linux: KiB


def _evict(path):
    "Drop a file's pages from the page cache (clean pages; no privileges needed), so the next reads hit the disk."
    fd = os.open(path, os.O_RDONLY)
    try: os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally: os.close(fd)


def _model_on(adata, a):
    import numpy as np, torch
    import sccvae
    from sccvae import data as D
    from sccvae.train import Trainer, TrainConfig
    man = D.ood_manifest(adata, n_folds=5, seed=0)
    D.apply_split(adata, man, 0)
    model = sccvae.SCCVAE(adata)
    dev = torch.device(a.device)
    model.device = dev; model.module.to(dev)
    data = model.data_view(dev)
    cfg = TrainConfig.from_preset("default", progress=False, precision="bf16" if a.bf16 else "32")
    tr = Trainer(model.module, data, cfg, val_split=None)
    return model, man, tr


def stage(a):
    import numpy as np, torch, warnings
    warnings.filterwarnings("ignore")
    if a.threads: torch.set_num_threads(a.threads)
    from sccvae import data as D
    out = {}
    t0 = time.perf_counter()
    if a.stage == "prepare":
        D.prepare_store(a.source, a.store, perturbation_key="gene", control_group="non-targeting", overwrite=True)
        out["seconds"] = time.perf_counter() - t0
    elif a.stage == "labels":
        st = D.read_store(a.store)
        D.perturbation_labels(st, n_components=50)
        out["seconds"] = time.perf_counter() - t0
    elif a.stage in ("train_disk", "train_cold", "train_memory"):   # each alone: its peak RSS and cells/s
        st = D.read_store(a.store)
        if a.stage == "train_memory":
            st = D.cells_to_memory(st, np.arange(st.n_obs))   # the whole store, in memory
        model, man, tr = _model_on(st, a)
        out["setup_seconds"] = time.perf_counter() - t0
        if a.stage == "train_cold": _evict(a.store)
        tr.step_limit = a.warmup
        tr._train_epoch(0)                                    # warm-up steps (untimed)
        if a.device.startswith("cuda"): torch.cuda.synchronize()
        n_cells = []
        sampler_iter = tr.sampler
        orig = tr._steps
        def counting(s):
            for item in orig(s):
                n_cells.append(len(item[0])); yield item
        tr._steps = counting
        tr.step_limit = a.steps
        t1 = time.perf_counter()
        tr._train_epoch(1)
        if a.device.startswith("cuda"): torch.cuda.synchronize()
        dt = time.perf_counter() - t1
        out.update(seconds=dt, steps=len(n_cells), cells=int(sum(n_cells)), cells_per_s=sum(n_cells) / dt)
        if a.device.startswith("cuda"): out["gpu_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    elif a.stage == "train_ab":                          # disk and memory alternating in one process: the ratio
        st = D.read_store(a.store)
        mem = D.cells_to_memory(st, np.arange(st.n_obs))
        trs = dict(disk=_model_on(st, a)[2], memory=_model_on(mem, a)[2])
        for tr in trs.values(): tr.step_limit = a.warmup; tr._train_epoch(0)
        secs, cells = dict(disk=0.0, memory=0.0), dict(disk=0, memory=0)
        blocks = 4
        for b in range(blocks):
            for k in (("disk", "memory") if b % 2 == 0 else ("memory", "disk")):
                tr = trs[k]; n = []
                orig = type(tr)._steps
                tr._steps = lambda s, tr=tr, orig=orig, n=n: ((n.append(len(i[0])), i)[1] for i in orig(tr, s))
                tr.step_limit = max(1, a.steps // blocks)
                t1 = time.perf_counter(); tr._train_epoch(b + 1)
                if a.device.startswith("cuda"): torch.cuda.synchronize()
                secs[k] += time.perf_counter() - t1; cells[k] += sum(n)
        out.update({f"{k}_cells_per_s": cells[k] / secs[k] for k in secs})
        out["ratio"] = out["disk_cells_per_s"] / out["memory_cells_per_s"]
    elif a.stage == "evaluate":
        import sccvae
        from sccvae.data import read_rows
        st = D.read_store(a.store)
        model, man, tr = _model_on(st, a)
        tr.step_limit = 5; tr._train_epoch(0)
        model.module.eval(); model.is_trained = True
        unseen = sorted(man.query("fold == 0").perturbation.unique())[:50]
        t1 = time.perf_counter()
        model.select_penetrance(unseen)
        pred = model.predict(unseen, n_cells=100)
        t = D.targets(st).astype(str).to_numpy()
        rng = np.random.default_rng(0)
        ev = np.sort(np.concatenate([rng.permutation(np.flatnonzero(t == p))[:300] for p in unseen]))
        ct = np.sort(rng.permutation(np.flatnonzero((t == "control") & (st.obs.split.to_numpy() == "train")))[:2000])
        truth = D.cells_to_memory(st, ev); control = D.cells_to_memory(st, ct)
        res = sccvae.evaluate(pred, truth, control)
        out.update(seconds=time.perf_counter() - t1, n_perturbations=len(unseen))
    out["peak_rss_gb"] = _peak_rss_gb()
    Path(a.json).write_text(json.dumps(out))


def run_stage(a, name, source, store):
    js = Path(a.out) / f".{name}.json"
    cmd = [sys.executable, str(HERE), "--stage", name, "--source", str(source), "--store", str(store), "--json", str(js),
           "--device", a.device, "--steps", str(a.steps), "--warmup", str(a.warmup), "--threads", str(a.threads)]
    if a.bf16: cmd.append("--bf16")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"stage {name} failed")
    return json.loads(js.read_text())


def main(argv=None):
    a = parse(argv)
    if a.stage: return stage(a)
    import pandas as pd
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in a.screens.split(","):
        n, fmt = spec.split(":"); n = int(n)
        src, store = out / f"source_{n}_{fmt}.h5ad", out / f"store_{n}_{fmt}.h5ad"
        t0 = time.perf_counter()
        if not src.exists(): write_source(src, n, a.genes, a.perturbations, fmt == "sparse")
        row = dict(screen=f"{n:,} x {a.genes:,} {fmt}", source_gb=src.stat().st_size / 1e9,
                   write_s=time.perf_counter() - t0)
        print(f"[{spec}] source written ({row['source_gb']:.2f} GB, {row['write_s']:.0f} s)", flush=True)
        train = ("train_disk", "train_cold", "train_memory")
        for name in ("prepare", "labels", *train * max(1, a.repeats), *(("train_ab",) if a.ab else ()), "evaluate"):
            t1 = time.perf_counter()
            r = run_stage(a, name, src, store)
            print(f"[{spec}] {name} ({time.perf_counter() - t1:.0f} s wall): {json.dumps(r)}", flush=True)
            if name == "train_ab":
                row["ab_disk/memory"] = r["ratio"]; continue
            if name.startswith("train"):
                if r["cells_per_s"] < row.get(f"{name}_cells_s", 0): continue          # keep the fastest repeat
                row[f"{name}_cells_s"] = r["cells_per_s"]; row[f"{name}_rss_gb"] = r["peak_rss_gb"]
                if "gpu_peak_gb" in r: row[f"{name}_gpu_gb"] = r["gpu_peak_gb"]
            else:
                row[f"{name}_s"] = r["seconds"]; row[f"{name}_rss_gb"] = r["peak_rss_gb"]
        row["store_gb"] = store.stat().st_size / 1e9
        row["disk/memory"] = row["train_disk_cells_s"] / row["train_memory_cells_s"]
        row["cold/memory"] = row["train_cold_cells_s"] / row["train_memory_cells_s"]
        rows.append(row)
        if not a.keep:
            for p in (src, store, store.with_name(store.name + ".lock")): p.unlink(missing_ok=True)
        pd.DataFrame(rows).to_csv(out / "scale.csv", index=False)
    df = pd.DataFrame(rows).set_index("screen")
    cols = ["source_gb", "prepare_s", "prepare_rss_gb", "labels_s", "train_disk_cells_s", "train_cold_cells_s",
            "train_memory_cells_s", "disk/memory", "cold/memory", "ab_disk/memory", "train_disk_rss_gb", "train_memory_rss_gb",
            "evaluate_s", "evaluate_rss_gb"]
    print(f"\n## Scale benchmark ({a.device}{', bf16' if a.bf16 else ''}; {a.steps} timed steps, best of {a.repeats}; "
          f"{a.threads or 'default'} threads; default model for {a.genes} genes)\n")
    from sccvae.utils import md_table
    print(md_table(df[[c for c in cols if c in df]].reset_index(), floatfmt=".3g"))
    sparse = df[df.index.str.endswith("sparse")]
    if len(sparse) > 1:
        r = sparse.train_disk_rss_gb
        print(f"\ntrain_disk peak RSS over the sparse screens: {r.min():.2f}..{r.max():.2f} GB "
              f"(max/min {r.max() / r.min():.2f}; flat means <= 1.5)")


if __name__ == "__main__":
    main()
