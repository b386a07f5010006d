#!/usr/bin/env python
"""Execute notebooks in nbs/ and store their outputs, so the docs show results (tables, figures) without quarto.

    python tools/run_nbs.py nbs/01_data.ipynb [nbs/40_model.ipynb ...]   # or no argument: every chapter

Every cell runs (including cells flagged `slow`; `notest` and `gpu` cells are skipped, as is the papermill template),
from nbs/ with IN_TEST=1 (no progress bars), one kernel per notebook. What is kept is what a reader needs:
stderr streams (warnings, logs) are dropped, long text outputs are cut, and the notebook is then cleaned with
`nbdev-clean` (execution counts and metadata removed; the papermill `tags` stay). The run fails, and the
notebook is left untouched, if any cell raises. Written with a temp file and a rename.
"""
from __future__ import annotations
import argparse, os, subprocess, sys, time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
SKIP_FLAGS = ("notest", "gpu")
SKIP_FILES = ("90_run_fold.ipynb",)     # the papermill template: its outputs belong to runs/, never to git
MAX_TEXT_LINES = 60


def _flags(cell) -> set[str]:
    out = set()
    for line in cell.source.splitlines():
        if not line.startswith("#|"): break
        words = line[2:].split()
        if words and words[0] in ("notest", "slow", "gpu", "eval:"): out.add(words[0].rstrip(":"))
    return out


def _trim(cell):
    keep = []
    for o in cell.get("outputs", []):
        if o.output_type == "stream":
            if o.name == "stderr": continue
            lines = o.text.splitlines()
            if len(lines) > MAX_TEXT_LINES:
                o.text = "\n".join(lines[:MAX_TEXT_LINES] + [f"... ({len(lines) - MAX_TEXT_LINES} more lines)"]) + "\n"
        keep.append(o)
    cell.outputs = keep


def run(path: Path, timeout: int = 1200) -> float:
    nb = nbformat.read(path, as_version=4)
    skipped = []
    for c in nb.cells:
        if c.cell_type == "code" and _flags(c) & set(SKIP_FLAGS):
            skipped.append(c); c.source_saved, c.source = c.source, "pass"
    env_before = os.environ.get("IN_TEST")
    os.environ["IN_TEST"] = "1"
    t = time.perf_counter()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        if env_before is None: os.environ.pop("IN_TEST", None)
        else: os.environ["IN_TEST"] = env_before
    for c in skipped:
        c.source = c.pop("source_saved"); c.outputs = []
    for c in nb.cells:
        if c.cell_type == "code": _trim(c)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    subprocess.run(["nbdev-clean", "--fname", str(path)], check=True, cwd=ROOT)
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    a = ap.parse_args(argv)
    nbs = a.notebooks or sorted(p for p in NBS.glob("*.ipynb") if not p.name.startswith(("_", ".")))
    for p in nbs:
        p = p.resolve()
        if p.name in SKIP_FILES: print(f"skip {p.name} (papermill template)"); continue
        secs = run(p, a.timeout)
        kb = p.stat().st_size / 1024
        print(f"{p.name}: executed in {secs:.0f} s, {kb:.0f} KB with outputs")


if __name__ == "__main__":
    main()
