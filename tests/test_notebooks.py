"""Run every library notebook in nbs/ as one pytest item, the way `nbdev-test` does (cells flagged
`notest`, `slow` or `gpu` are skipped)."""
from pathlib import Path
import os
import pytest
import nbdev.test as nbt  # not `from nbdev.test import test_nb`: pytest would collect it as a test

NBS = Path(__file__).resolve().parents[1] / "nbs"
NOTEBOOKS = sorted(p for p in NBS.glob("*.ipynb") if not p.name.startswith(("_", ".")))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook(nb, monkeypatch):
    monkeypatch.chdir(NBS)
    monkeypatch.setenv("IN_TEST", "1")
    ok, secs = nbt.test_nb(nb, skip_flags=["notest", "slow", "gpu"], do_print=False, basepath=str(NBS))
    assert ok, f"notebook {nb.name} failed (run `nbdev-test {nb}` to see the traceback)"
