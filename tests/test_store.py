"""The on-disk store (sccvae.data.store): bad input is refused with a message that names the fix, nothing half-written
is left, training from a store is training from memory, and the streamed loader reads ahead without changing a batch."""
import os
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import anndata as ad
import torch

from sccvae import data as D
from sccvae.synthetic import simulate_screen


def _write(path, X, obs=None, n_ctrl=20, var=None):
    n, m = X.shape
    if obs is None:
        lab = np.array(["non-targeting"] * n_ctrl + [f"G{i % 3}" for i in range(n - n_ctrl)], dtype=object)
        obs = pd.DataFrame({"gene": lab}, index=[f"c{i}" for i in range(n)])
    var = pd.DataFrame(index=[f"G{j}" for j in range(m)]) if var is None else var
    ad.AnnData(X=X, obs=obs, var=var).write_h5ad(path)
    return path


def _prep(src, out, **kw):
    return D.prepare_store(src, out, perturbation_key="gene", control_group="non-targeting", **kw)


@pytest.mark.parametrize("sparse", [False, True])
def test_bad_values_are_refused_and_nothing_is_left(tmp_path, sparse):
    rng = np.random.default_rng(0)
    X = rng.poisson(1.0, (60, 8)).astype(np.float32)
    X[45, 3] = np.nan
    src = _write(tmp_path / "nan.h5ad", sp.csr_matrix(X) if sparse else X)
    with pytest.raises(ValueError, match=r"NaN/inf values in cells .*nan_to_num"):
        _prep(src, tmp_path / "st.h5ad", chunk_cells=16)
    assert not (tmp_path / "st.h5ad").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".st.h5ad")]   # no temporary file left
    X[45, 3] = -2.0
    src = _write(tmp_path / "neg.h5ad", sp.csr_matrix(X) if sparse else X)
    with pytest.raises(ValueError, match="negative values"):
        _prep(src, tmp_path / "st.h5ad", chunk_cells=16)


def test_wrong_labels_and_existing_files(tmp_path):
    X = np.random.default_rng(0).poisson(1.0, (40, 6)).astype(np.float32)
    src = _write(tmp_path / "s.h5ad", X)
    with pytest.raises(KeyError, match="perturbation_key='guide'"):
        D.prepare_store(src, tmp_path / "st.h5ad", perturbation_key="guide", control_group="non-targeting")
    with pytest.raises(ValueError, match="control_group"):
        D.prepare_store(src, tmp_path / "st.h5ad", perturbation_key="gene", control_group="NT")
    (tmp_path / "other.h5ad").write_bytes(b"not a store")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        _prep(src, tmp_path / "other.h5ad")
    with pytest.raises(ValueError, match="another file"):
        _prep(src, src)
    with pytest.raises(ValueError, match="prepare_store"):
        D.read_store(src)                                          # a plain h5ad is not a store
    backed = ad.read_h5ad(src, backed="r")
    with pytest.raises(ValueError, match="prepare_store"):
        D.setup_anndata(backed, perturbation_key="gene", control_group="non-targeting")


def test_empty_cells_and_excluded_labels_are_left_out(tmp_path):
    X = np.random.default_rng(1).poisson(2.0, (50, 6)).astype(np.float32)
    X[30] = 0                                                      # a cell with no counts
    obs = pd.DataFrame({"gene": ["non-targeting"] * 20 + ["G1"] * 20 + ["multiple"] * 10},
                       index=[f"c{i}" for i in range(50)])
    st = D.read_store(_prep(_write(tmp_path / "s.h5ad", X, obs), tmp_path / "st.h5ad"))
    assert st.n_obs == 39 and "c30" not in st.obs_names
    assert D.get_registry(st)["n_excluded"] == 11


def test_log_normalised_input_is_kept_as_is(tmp_path):
    a = simulate_screen("tiny", seed=2)
    D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting")
    b = ad.AnnData(X=a.X.toarray() if sp.issparse(a.X) else a.X, obs=a.obs[["gene"]].copy(), var=a.var.copy())
    st = D.read_store(_prep(_write(tmp_path / "ln.h5ad", b.X, b.obs, var=b.var), tmp_path / "st.h5ad"))
    assert D.get_registry(st)["normalized"] == "input was log-normalised"
    ref = b[st.obs_names].X
    np.testing.assert_allclose(D.read_rows(st, np.arange(st.n_obs)), ref, rtol=1e-6, atol=1e-6)


def test_training_from_a_store_is_training_from_memory(tmp_path):
    "The same cells from disk (rows read ahead in a thread) and in memory give the same loss, step for step."
    import sccvae
    a = simulate_screen("tiny", seed=3)
    a.X = sp.csr_matrix(a.X)
    st = D.read_store(_prep(_write(tmp_path / "s.h5ad", a.X, a.obs[["gene"]], var=a.var), tmp_path / "st.h5ad"))
    D.apply_split(st, D.ood_manifest(st, n_folds=4, seed=0), 0)
    mem = D.cells_to_memory(st, np.arange(st.n_obs))
    torch.set_num_threads(1)
    out = []
    for x in (st, mem):
        m = sccvae.SCCVAE(x, n_latent=8, n_hidden=32)
        out.append(m.train(max_epochs=2, progress=False))
    assert m.data_view().streamed is False and sccvae.SCCVAE(st, n_latent=8, n_hidden=32).data_view().streamed
    for k in ("train_loss", "val_score"):
        np.testing.assert_array_equal(out[0][k].to_numpy(), out[1][k].to_numpy())


def test_prefetch_yields_the_batches_in_order(tmp_path):
    a = simulate_screen("tiny", seed=4)
    st = D.read_store(_prep(_write(tmp_path / "s.h5ad", a.X, a.obs[["gene"]], var=a.var), tmp_path / "st.h5ad"))
    from sccvae.loader import PerturbationData
    labels = D.perturbation_labels(st, n_components=5)
    data = PerturbationData(st, labels=labels, split_key=None, device="cpu")
    batches = [np.arange(s, s + 7) for s in range(0, 300, 7)] + [np.array([0, 5, 2])]
    got = list(data.prefetch(iter(batches), depth=2))
    assert [g[0].tolist() for g in got] == [b.tolist() for b in batches]
    for idx, host in got: np.testing.assert_array_equal(host, D.read_rows(st, idx))
    gen = data.prefetch(iter(batches), depth=1); next(gen); gen.close()   # stopping early ends the reader thread


def test_reader_falls_back_to_h5py_for_chunked_files(tmp_path):
    import h5py
    X = np.random.default_rng(5).poisson(1.0, (30, 5)).astype(np.float32)
    p = _write(tmp_path / "c.h5ad", X)
    with h5py.File(p, "r+") as f:
        del f["X"]
        ds = f.create_dataset("X", data=X, chunks=(4, 5), compression="gzip")
        ds.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
    r = D.RowReader(p)
    assert not r.direct
    idx = np.array([29, 0, 4, 5, 6, 4])
    np.testing.assert_array_equal(r.read(idx), X[idx])
    r.close()
