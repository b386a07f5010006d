"""Bad inputs that used to pass silently (issue 13) now stop with a message that names the problem and the fix:
a manifest of another file, a stale checkpoint, a non-finite or mistyped penetrance, NaN predictions, log1p of raw
counts, predicting with an untrained model, and an interrupted save over an existing model folder."""
import os
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import sccvae
from sccvae import data as D, loader as L
from sccvae.model import SCCVAE
from sccvae.synthetic import simulate_screen


def screen(fold=0, seed=0):
    "The tiny simulated screen, registered, normalised and split (OOD fold `fold` of 4)."
    a = simulate_screen("tiny", seed=seed)
    D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting")
    D.normalize(a)
    D.apply_split(a, D.ood_manifest(a, n_folds=4, seed=0), fold)
    return a


def small_model(a, **kw):
    return SCCVAE(a, n_latent=8, n_hidden=16, n_label_components=8, preset="paper", **kw)


TRAIN = dict(max_epochs=1, pack=4, progress=False, accelerator="cpu")


@pytest.fixture(scope="module")
def adata():
    torch.set_num_threads(1)
    return screen()


@pytest.fixture(scope="module")
def trained(adata):
    model = small_model(adata)
    model.train(**TRAIN)
    unseen = sorted(set(adata.obs.loc[adata.obs.split == "test", "_scc_target"].astype(str)))
    return model, unseen


# ---------- 1. manifests ----------

def _registered():
    a = simulate_screen("tiny", seed=0)
    D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting")
    return D.normalize(a)


def test_manifest_of_another_file_with_the_same_cell_names(tmp_path):
    a = _registered()
    other = a.copy()   # same obs_names and perturbations, cells assigned to other perturbations
    other.obs["gene"] = np.random.default_rng(1).permutation(other.obs["gene"].to_numpy())
    D.setup_anndata(other, perturbation_key="gene", control_group="non-targeting")
    man = D.ood_manifest(other, n_folds=4, seed=0)
    with pytest.raises(ValueError, match=r"another perturbation in the manifest than in this AnnData.*"
                                         r"held-out perturbations would land in training.*ood_manifest"):
        D.apply_split(a, man, 0)
    assert "split" not in a.obs
    D.save_manifest(man, tmp_path / "m.csv")
    with pytest.raises(ValueError, match="made for another file"):
        D.load_manifest(tmp_path / "m.csv", a)
    D.apply_split(other, D.load_manifest(tmp_path / "m.csv", other), 0)     # the file it was made for: fine


def test_manifest_missing_cells_is_an_error_not_none():
    a = _registered()
    man = D.ood_manifest(a, n_folds=4, seed=0)
    p = man.perturbation[man.perturbation != "control"].iloc[0]
    drop = man.index[man.perturbation == p][:10]
    short = man.drop(index=drop)
    with pytest.raises(ValueError, match=r"10 cells of this AnnData .* not in the manifest.*allow_missing=True"):
        D.apply_split(a, short, 0)
    with pytest.warns(UserWarning, match="10 cells of this AnnData"):
        s = D.apply_split(a, short, 0, allow_missing=True)
    assert (s == "none").sum() == 10 and set(a.obs_names[(s == "none").to_numpy()]) == set(man.cell[drop])


def test_manifest_over_a_subset_of_perturbations_still_leaves_the_rest_out():
    a = _registered()
    perts = [p for p in D.perturbation_table(a).index if p != "control"]
    keep = perts[:8]
    s = D.apply_split(a, D.ood_manifest(a, n_folds=4, seed=0, perturbations=keep), 0)
    t = D.targets(a).astype(str)
    assert ((s == "none") == ~t.isin(keep + ["control"])).all()


@pytest.mark.parametrize("typo, fix", [("validation", "'validation': 'val'"), ("TRAIN", "'TRAIN': 'train'"),
                                       ("Test", "'Test': 'test'"), (None, None)])
def test_split_value_typos_raise(typo, fix):
    a = _registered()
    man = D.ood_manifest(a, n_folds=4, seed=0)
    old = {"validation": "val", "TRAIN": "train", "Test": "test", None: "val"}[typo]
    rows = man.split_0 == old
    man.loc[rows, "split_0"] = typo if typo is not None else np.nan
    what = f"'{typo}' ({int(rows.sum())} cells)" if typo is not None else f"missing ({int(rows.sum())} cells)"
    with pytest.raises(ValueError, match=r"split values .*" + re.escape(what) + r".*only \['train', 'val', 'test'\]"):
        D.apply_split(a, man, 0)
    if fix is not None:
        with pytest.raises(ValueError, match=fix):
            D.apply_split(a, man, 0)
    assert "split" not in a.obs


# ---------- 2. stale checkpoints ----------

@pytest.mark.parametrize("change, shown", [(dict(lr=1e-3), "lr: 0.0005 -> 0.001"),
                                           (dict(max_epochs=3), "max_epochs: 1 -> 3"),
                                           (dict(batch_size=16), "batch_size: 32 -> 16"),
                                           (dict(gamma=1.0), "gamma: 10.0 -> 1.0"),
                                           (dict(seed=5), "seed: 0 -> 5")])
def test_stale_checkpoint_is_refused(adata, tmp_path, change, shown):
    ck = tmp_path / "ck"
    small_model(adata).train(checkpoint_dir=ck, **TRAIN)
    before = (ck / "last.pt").read_bytes()
    with pytest.raises(ValueError, match=rf"other settings \({shown}\).*another checkpoint_dir.*resume=False"):
        small_model(adata).train(checkpoint_dir=ck, **{**TRAIN, **change})
    assert (ck / "last.pt").read_bytes() == before
    # resume=False starts over in the folder, under the new settings
    m = small_model(adata)
    m.train(checkpoint_dir=ck, resume=False, **{**TRAIN, **change})
    st = torch.load(ck / "last.pt", weights_only=False)
    assert all(st["config"][k] == v for k, v in change.items())


def test_checkpoint_resumes_under_the_same_settings(adata, tmp_path):
    ck = tmp_path / "ck"
    a = small_model(adata); a.train(checkpoint_dir=ck, **TRAIN)
    b = small_model(adata); h = b.train(checkpoint_dir=ck, **{**TRAIN, "progress": True})   # progress: not a setting
    assert len(h) == 1
    for k, v in a.module.state_dict().items(): assert torch.equal(v, b.module.state_dict()[k]), k
    st = torch.load(ck / "last.pt", weights_only=False)
    assert st["version"] == 2 and st["settings"]["config"]["lr"] == 5e-4 and len(st["settings_hash"]) == 16


def test_checkpoint_of_other_data_is_refused(adata, tmp_path):
    ck = tmp_path / "ck"
    small_model(adata).train(checkpoint_dir=ck, **TRAIN)
    other = screen(fold=1)                   # another fold: other training perturbations and cells
    with pytest.raises(ValueError, match=r"other settings \(.*perturbations: '[0-9a-f]{12}' -> '[0-9a-f]{12}'"):
        small_model(other).train(checkpoint_dir=ck, **TRAIN)


def test_old_checkpoint_without_hash_is_compared_by_its_config(adata, tmp_path):
    ck = tmp_path / "ck"
    small_model(adata).train(checkpoint_dir=ck, **TRAIN)
    st = torch.load(ck / "last.pt", weights_only=False)
    st.pop("settings"); st.pop("settings_hash"); st["version"] = 1
    torch.save(st, ck / "last.pt")
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.0005 -> 0.002\)"):
        small_model(adata).train(checkpoint_dir=ck, **{**TRAIN, "lr": 2e-3})
    assert len(small_model(adata).train(checkpoint_dir=ck, **TRAIN)) == 1    # same config: resumed


# ---------- 3. penetrance and non-finite predictions ----------

FORMS = r"finite float .*dict or pd.Series .*None"

@pytest.mark.parametrize("bad, exc, what", [
    (float("nan"), ValueError, r"penetrance=nan: a penetrance must be finite"),
    (float("inf"), ValueError, r"penetrance=inf: a penetrance must be finite"),
    (-np.inf, ValueError, r"penetrance=-inf"),
    ("1.0", TypeError, r"penetrance='1.0' \(str\) is not a penetrance"),
    (True, TypeError, r"penetrance=True \(bool\) is not a penetrance"),
    (np.bool_(False), TypeError, r"\(bool_?\) is not a penetrance"),
    ([1.0], TypeError, r"penetrance=\[1.0\] \(list\)"),
    ("dict-nan", ValueError, r"penetrance\['P'\]=nan"),
    ("dict-str", TypeError, r"penetrance\['P'\]='2' \(str\)"),
])
def test_bad_penetrance_is_rejected(trained, bad, exc, what):
    model, unseen = trained
    p = unseen[0]
    if bad == "dict-nan": bad, what = {p: np.nan}, what.replace("'P'", repr(p))
    elif bad == "dict-str": bad, what = pd.Series({p: "2"}), what.replace("'P'", repr(p))
    with pytest.raises(exc, match=what + ".*" + FORMS):
        model.predict([p], n_cells=2, penetrance=bad)
    with pytest.raises(exc, match=FORMS):
        model.perturbation_embedding([p], penetrance=bad)


def test_good_penetrance_forms_still_work(trained):
    model, unseen = trained
    p = unseen[0]
    ref = model.predict([p], n_cells=3, penetrance=1.5, seed=1).X
    for form in (np.float32(1.5), np.array(1.5), {p: 1.5}, pd.Series({p: np.float64(1.5)})):
        out = model.predict([p], n_cells=3, penetrance=form, seed=1)
        np.testing.assert_array_equal(out.X, ref)
        assert (out.obs.penetrance == 1.5).all()
    assert (model.predict([p], n_cells=2, penetrance=2).obs.penetrance == 2.0).all()


@pytest.mark.parametrize("value, sparse", [(np.nan, False), (np.inf, False), (-np.inf, True), (np.nan, True)])
def test_evaluate_refuses_non_finite_predictions(adata, trained, value, sparse):
    model, unseen = trained
    pred = model.predict(unseen, n_cells=5, penetrance=1.0)
    X = np.asarray(pred.X).copy()
    X[7, 3] = value; X[12, 0] = value
    pred.X = sp.csr_matrix(X) if sparse else X
    truth = adata[(adata.obs.split == "test").to_numpy()].copy()
    ctrl = adata[((D.targets(adata) == "control") & (adata.obs.split == "train")).to_numpy()].copy()
    bad = sorted(set(pred.obs["_scc_target"].astype(str).iloc[[7, 12]]))
    with pytest.raises(ValueError, match=rf"predictions of 'SCCVAE' have 2 NaN/inf values in 2 cells "
                                         rf"\(perturbations {bad!r}\).*finite `penetrance=`.*drop those cells".replace("[", r"\[")):
        sccvae.evaluate({"SCCVAE": pred}, truth, ctrl, device="cpu")


def test_evaluate_refuses_a_non_finite_declared_bulk(adata, trained):
    model, unseen = trained
    pred = model.predict(unseen, n_cells=5, penetrance=1.0)
    bulk = np.zeros((len(unseen), adata.n_vars), np.float32); bulk[1, 4] = np.nan
    pred.uns["sccvae_bulk"] = {"perturbations": np.asarray(unseen, dtype=object), "X": bulk}
    truth = adata[(adata.obs.split == "test").to_numpy()].copy()
    ctrl = adata[((D.targets(adata) == "control") & (adata.obs.split == "train")).to_numpy()].copy()
    with pytest.raises(ValueError, match=rf"declared pseudo-bulk of 'pred' has NaN/inf values \(perturbations "
                                         rf"\['{unseen[1]}'\]\).*use_bulk=False"):
        sccvae.evaluate(pred, truth, ctrl, device="cpu")


# ---------- 4. log1p of raw counts ----------

@pytest.mark.parametrize("sparse", [True, False])
def test_log1p_of_raw_counts_is_refused(sparse):
    a = simulate_screen("tiny", seed=0)
    L = a.X.copy(); L.data = np.log1p(L.data)
    a.X = L if sparse else L.toarray()
    D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting", normalize=False)
    with pytest.raises(ValueError, match=r"log1p of raw counts without total-count normalisation.*whole numbers.*"
                                         r"np.expm1\(adata.X\).*normalize_total"):
        D.normalize(a)
    assert not D.get_registry(a).get("normalized")


def test_unnormalised_non_integer_log_data_warns_and_normalised_data_do_not():
    a = simulate_screen("tiny", seed=0)
    L = a.X.copy(); L.data = np.log1p(0.37 * L.data)          # library sizes kept, not whole numbers
    a.X = L
    D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting", normalize=False)
    with pytest.warns(UserWarning, match=r"totals of expm1\(X\) vary .*-fold.*normalised for library size.*raw counts"):
        D.normalize(a)
    b = simulate_screen("tiny", seed=0)
    D.setup_anndata(b, perturbation_key="gene", control_group="non-targeting"); D.normalize(b)
    c = simulate_screen("tiny", seed=0); c.X = b.X.copy()     # log1p(normalize_total): accepted silently
    D.setup_anndata(c, perturbation_key="gene", control_group="non-targeting", normalize=False)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        D.normalize(c)
    assert not [w for w in got if "expm1" in str(w.message)]
    assert D.get_registry(c)["normalized"] == "input was log-normalised" and (c.X != b.X).nnz == 0


# ---------- 5. predicting with an untrained model ----------

def test_untrained_model_does_not_predict(adata, tmp_path):
    m = small_model(adata)
    p = m.train_perturbations[0]
    with pytest.raises(RuntimeError, match=r"untrained.*model.train\(\).*SCCVAE.load"):
        m.predict([p], n_cells=3)
    m.save(tmp_path / "u")
    with pytest.raises(RuntimeError, match="untrained"):
        SCCVAE.load(tmp_path / "u", adata, accelerator="cpu").predict([p], n_cells=3)


# ---------- 6. atomic save ----------

def _folder(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _anchor():
    from sccvae.anchor import MeanAnchor
    rng = np.random.default_rng(0)
    L, D_ = rng.normal(size=(30, 4)), rng.normal(size=(30, 12))
    return MeanAnchor(n_folds=3).fit(D_, L, np.full(30, -1), np.abs(rng.normal(size=12)))


@pytest.fixture
def to_save(adata):
    "A trained model of its own (the save tests change its shift selection and anchor)."
    model = small_model(adata)
    model.train(**TRAIN)
    return model, sorted(set(adata.obs.loc[adata.obs.split == "test", "_scc_target"].astype(str)))


def test_interrupted_save_keeps_the_previous_model(to_save, adata, tmp_path, monkeypatch):
    import sccvae.saving as sm
    model, unseen = to_save
    d = tmp_path / "m"
    model.save(d)
    before = _folder(d)
    assert "anchor.pt" not in before and "shift_selection.json" not in before
    model.select_penetrance(unseen, mode="none")       # the new save has a shift selection and an anchor
    model.anchor = _anchor()
    real = sm.write_json

    def crash(path, obj, *a, **k):
        if os.path.basename(path) == "config.json": raise KeyboardInterrupt("killed while saving")
        return real(path, obj, *a, **k)
    monkeypatch.setattr(sm, "write_json", crash)
    try:
        with pytest.raises(KeyboardInterrupt):
            model.save(d)
    finally:
        monkeypatch.setattr(sm, "write_json", real)
    assert _folder(d) == before                          # new weights, anchor.pt, shift_selection: none of them
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging folder left
    # a successful save replaces the folder whole; then an older file does not linger
    model.save(d)
    assert {"anchor.pt", "shift_selection.json", "shift_selection.csv"} <= set(_folder(d))
    m2 = SCCVAE.load(d, adata, accelerator="cpu")
    assert m2.anchor is not None and m2.shift_selection.mode == "none"
    model.anchor, model.shift_selection = None, None
    model.save(d)
    assert "anchor.pt" not in _folder(d) and "shift_selection.json" not in _folder(d)
    assert SCCVAE.load(d, adata, accelerator="cpu").anchor is None


def test_failed_swap_restores_the_previous_folder(trained, adata, tmp_path, monkeypatch):
    model, _ = trained
    d = tmp_path / "m"
    model.save(d)
    before = _folder(d)
    real = os.replace

    def replace(src, dst):   # the rename of the new folder into place fails (after the old one was moved aside)
        if os.path.basename(src).startswith(".m.tmp-") and os.path.basename(dst) == "m": raise OSError("disk gone")
        return real(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"):
        model.save(d)
    monkeypatch.setattr(os, "replace", real)
    assert _folder(d) == before and [p.name for p in tmp_path.iterdir()] == ["m"]
    # a save killed between its two renames leaves the previous model beside the folder, and load says so
    os.rename(d, tmp_path / ".m.old-123-abcd")
    with pytest.raises(FileNotFoundError, match=r"interrupted.*Rename .m.old-123-abcd back to m"):
        SCCVAE.load(d, adata, accelerator="cpu")


def test_save_refuses_a_folder_of_other_files(trained, tmp_path):
    model, _ = trained
    d = tmp_path / "results"; d.mkdir(); (d / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an SCCVAE model folder.*new or empty folder"):
        model.save(d)
    assert (d / "notes.txt").read_text() == "keep me"
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(d, overwrite=False)


# =====================================================================================================================
# Unclear or deep errors (issue 13, second part): each bad input now stops with one message naming the problem and
# the fix.
# =====================================================================================================================
import errno, json, signal, subprocess, sys, time
from pathlib import Path

import anndata as ad

from sccvae import cli, runner, utils


# ---------- 7. backed AnnData ----------

@pytest.fixture(scope="module")
def h5ad_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("h5") / "screen.h5ad"
    simulate_screen("tiny", seed=0).write_h5ad(p)
    return p


@pytest.mark.parametrize("entry", ["setup_anndata", "normalize", "SCCVAE", "SCCVAE.setup_anndata"])
def test_backed_anndata_is_refused_at_the_entry_points(h5ad_path, entry):
    if entry == "normalize":        # registered in memory, then opened backed (the registry travels in uns)
        a = simulate_screen("tiny", seed=0)
        D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting", normalize=False)
        p = h5ad_path.with_name("registered.h5ad"); a.write_h5ad(p)
    b = ad.read_h5ad(p if entry == "normalize" else h5ad_path, backed="r")
    call = {"setup_anndata": lambda: D.setup_anndata(b, perturbation_key="gene", control_group="non-targeting"),
            "normalize": lambda: D.normalize(b),
            "SCCVAE": lambda: SCCVAE(b),
            "SCCVAE.setup_anndata": lambda: SCCVAE.setup_anndata(b, perturbation_key="gene", control_group="non-targeting")}
    with pytest.raises(ValueError, match=r"cannot use this backed AnnData .*prepare_store.*read_store.*adata.to_memory\(\)"):
        call[entry]()
    b.file.close()
    m = ad.read_h5ad(h5ad_path, backed="r").to_memory()     # the fix the message gives works
    D.normalize(D.setup_anndata(m, perturbation_key="gene", control_group="non-targeting"))
    assert D.get_registry(m)["normalized"] == "counts->log1p"


# ---------- 8. predict: n_cells, the control label, labels= ----------

@pytest.mark.parametrize("n, exc, what", [
    (0, ValueError, r"n_cells=0: predict at least one cell"),
    (-5, ValueError, r"n_cells=-5: predict at least one cell"),
    (2.5, TypeError, r"n_cells=2.5 \(float\) is not a number of cells: pass a positive integer, e.g. n_cells=2"),
    (10.0, TypeError, r"n_cells=10.0 \(float\)"),
    ("10", TypeError, r"n_cells='10' \(str\)"),
    (True, TypeError, r"n_cells=True \(bool\)"),
    (None, TypeError, r"n_cells=None \(NoneType\)"),
])
def test_predict_refuses_bad_n_cells(trained, n, exc, what):
    model, unseen = trained
    with pytest.raises(exc, match=what):
        model.predict(unseen[:1], n_cells=n)
    assert model.predict(unseen[:1], n_cells=np.int64(3)).n_obs == 3       # NumPy integers are fine


@pytest.mark.parametrize("perts", [["non-targeting"], "non-targeting", ["G0007", "non-targeting"]])
def test_predict_of_the_control_label_names_the_canonical_control(trained, perts):
    model, _ = trained
    with pytest.raises(ValueError, match=r"\['non-targeting'\] is the label of the control cells .*'control'.*"
                                         r"predict \['control'\]"):
        model.predict(perts, n_cells=2)
    assert set(model.predict(["control"], n_cells=2).obs["_scc_target"].astype(str)) == {"control"}


@pytest.mark.parametrize("bad, exc, what", [
    ("narrow", ValueError, r"labels= has 5 columns, but the model was trained on 8-dimensional labels.*8 numeric columns"),
    ("wide", ValueError, r"labels= has 12 columns, but the model was trained on 8-dimensional"),
    ("gene column", ValueError, r"labels= has 9 columns, of which \['gene'\] are not numeric \(was the gene column "
                                r"read as data\? use index_col=0\)"),
    ("array", TypeError, r"labels= is a ndarray: pass a DataFrame indexed by gene symbol with 8 numeric columns"),
])
def test_predict_refuses_a_label_table_of_the_wrong_width(trained, bad, exc, what):
    model, unseen = trained
    p = unseen[0]
    L = model.labels.loc[[p]]
    tab = {"narrow": L.iloc[:, :5], "wide": pd.concat([L, L.iloc[:, :4].add_prefix("x")], axis=1),
           "gene column": L.reset_index().rename(columns={"index": "gene"}), "array": L.to_numpy()}[bad]
    with pytest.raises(exc, match=what):
        model.predict([p], n_cells=2, labels=tab)
    model.predict([p], n_cells=2, labels=L)          # the right width: fine


# ---------- 9. damaged model folders ----------

def _truncate(path, keep=0.5):
    b = path.read_bytes(); path.write_bytes(b[:int(len(b) * keep)])


@pytest.mark.parametrize("damage, exc, name", [
    ("truncated model.pt", ValueError, "model.pt"),
    ("garbage model.pt", ValueError, "model.pt"),
    ("missing model.pt", FileNotFoundError, "model.pt"),
    ("model.pt of another model", ValueError, "model.pt"),
    ("truncated config.json", ValueError, "config.json"),
    ("missing labels.csv", FileNotFoundError, "labels.csv"),
    ("labels.csv of another width", ValueError, "labels.csv"),
    ("empty labels.csv", ValueError, "labels.csv"),
])
def test_damaged_model_folder_is_named(trained, adata, tmp_path, damage, exc, name):
    model, _ = trained
    d = model.save(tmp_path / "m")
    f = d / name
    if damage.startswith("truncated"): _truncate(f)
    elif damage.startswith("garbage"): f.write_bytes(os.urandom(256))
    elif damage.startswith("missing"): f.unlink()
    elif damage == "model.pt of another model":
        other = SCCVAE(adata, n_latent=8, n_hidden=24, n_label_components=8, preset="paper")
        torch.save(other.module.state_dict(), f)
    elif damage == "labels.csv of another width": model.labels.iloc[:, :3].to_csv(f)
    elif damage == "empty labels.csv": f.write_text("")
    with pytest.raises(exc, match=rf"{re.escape(str(f))} (is missing|is truncated or corrupt).*the model folder "
                                  rf"{re.escape(str(d))} is damaged.*Copy the folder again.*save") as e:
        SCCVAE.load(d, adata, accelerator="cpu")
    assert "weights_only" not in str(e.value)


# ---------- 10. a truncated manifest ----------

@pytest.mark.parametrize("suffix, keep", [(".csv.gz", 0.5), (".csv.gz", 0.02), (".csv", 0.0)])
def test_truncated_manifest_names_its_path(tmp_path, suffix, keep):
    a = _registered()
    p = D.save_manifest(D.ood_manifest(a, n_folds=4, seed=0), tmp_path / f"manifest{suffix}")
    _truncate(p, keep)
    what = "truncated or corrupt" if suffix == ".csv.gz" else "is not an sccvae manifest"
    with pytest.raises(ValueError, match=rf"{re.escape(str(p))} .*{what}"):
        D.load_manifest(p, a)


# ---------- 11. Ensembl ids and gene_symbol_key ----------

def test_ensembl_var_names_without_a_symbol_column_hint_gene_symbol_key():
    a = simulate_screen("tiny", seed=0)
    a.var = a.var.rename(columns={"gene_name": "symbol"})       # not the auto-detected name
    with pytest.warns(UserWarning, match=r"var_names are Ensembl ids \(e.g. 'ENSG00000000001'\) but \d+ of \d+ "
                                         r"perturbations .* pass gene_symbol_key= the var column with the symbols "
                                         r"\(var columns: \['symbol'\]\)"):
        D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting", gene_symbol_key="symbol")
    assert D.gene_symbols(a)[0] == "G0000"


def test_gene_symbol_key_none_switches_the_auto_detection_off():
    a = simulate_screen("tiny", seed=0)          # Ensembl var_names with var['gene_name']
    D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting")
    assert D.get_registry(a)["gene_symbol_key"] == "gene_name" and D.gene_symbols(a)[0] == "G0000"
    with pytest.warns(UserWarning, match="pass gene_symbol_key="):
        D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting", gene_symbol_key=None)
    assert D.get_registry(a)["gene_symbol_key"] is None and D.gene_symbols(a)[0] == "ENSG00000000001"


# ---------- 12. a user's own split column ----------

@pytest.mark.parametrize("codes, what, fix", [
    ({"train": "TRAIN", "val": "VAL", "test": "TEST"}, r"'TEST' \(\d+ cells\), 'TRAIN' \(\d+ cells\), 'VAL'",
     r"replace\(\{'TEST': 'test', 'TRAIN': 'train', 'VAL': 'val'\}\)"),
    ({"train": 0, "val": 1, "test": 2}, r"'0' \(\d+ cells\), '1' \(\d+ cells\), '2'", r"Integer codes are not read as splits.*map"),
    ({"train": "training", "val": "valid", "test": "test"}, r"'training' .*'valid'", r"'training': 'train'"),
    ({"train": "train", "val": "val", "test": "holdout"}, r"'holdout'", r"apply_split"),
])
@pytest.mark.parametrize("entry", ["SCCVAE", "PerturbationData", "setup_anndata", "gene_embedding"])
def test_own_split_column_with_other_values_is_refused(adata, codes, what, fix, entry):
    a = adata.copy()
    a.obs["mysplit"] = a.obs["split"].astype(str).map(lambda s: codes.get(s, s))
    if isinstance(codes["train"], int): a.obs["mysplit"] = a.obs["mysplit"].astype(int)
    call = {"SCCVAE": lambda: small_model(a, split_key="mysplit"),
            "PerturbationData": lambda: L.PerturbationData(a, labels=small_model(adata).labels, split_key="mysplit", device="cpu"),
            "setup_anndata": lambda: D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting", split_key="mysplit"),
            "gene_embedding": lambda: D.gene_embedding(a, n_components=8, split_key="mysplit")}
    with pytest.raises(ValueError, match=r"\['mysplit'\]\)? has split values " + what + r".*only \['train', 'val', 'test'\]"
                                         r".*in no split.*" + fix):
        call[entry]()


# ---------- 13. one training perturbation under the fast preset ----------

def test_a_single_training_perturbation_under_the_fast_preset(adata):
    a = adata.copy()
    t = D.targets(a).astype(str)
    one = sorted(set(t[(a.obs.split == "train").to_numpy()]) - {"control"})[0]
    a.obs["split"] = np.where(t == "control", "train", np.where(t == one, "train", "test"))
    m = small_model(a)
    with pytest.raises(ValueError, match=rf"standardize_labels=True .*'fast'.*needs at least 2, but there is 1 "
                                         rf"\(\['{one}'\]\).*preset='paper'"):
        m.train(**{**TRAIN, "preset": "fast"})
    with pytest.warns(UserWarning, match="no validation cells"):
        small_model(a).train(**{**TRAIN, "preset": "paper"})          # the fix the message gives works


# ---------- 14. disk full ----------

def _enospc(*a, **k): raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("writer", ["torch.save", "DataFrame.to_csv", "write_text"])
def test_disk_full_while_saving_says_so_and_keeps_the_previous_model(to_save, adata, tmp_path, monkeypatch, writer):
    model, _ = to_save
    d = model.save(tmp_path / "m")
    before = _folder(d)
    if writer == "torch.save": monkeypatch.setattr(torch, "save", _enospc)
    elif writer == "DataFrame.to_csv": monkeypatch.setattr(pd.DataFrame, "to_csv", _enospc)
    else: monkeypatch.setattr(Path, "write_text", _enospc)
    with pytest.raises(OSError, match=r"the disk is full: writing .* failed \(no space left on device.*nothing was "
                                      r"replaced.*Free space") as e:
        model.save(d)
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert _folder(d) == before and [p.name for p in tmp_path.iterdir()] == ["m"]   # no staging folder, no temp file


def test_disk_full_in_a_checkpoint(adata, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", _enospc)
    with pytest.raises(OSError, match=r"the disk is full: writing .*last.pt|the disk is full: writing .*best.pt"):
        small_model(adata).train(checkpoint_dir=tmp_path / "ck", **TRAIN)
    assert not [p for p in (tmp_path / "ck").iterdir() if p.name.endswith(".pt")]


def test_other_os_errors_are_not_called_a_full_disk(tmp_path, monkeypatch):
    def denied(*a, **k): raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(Path, "write_text", denied)
    with pytest.raises(PermissionError, match="Permission denied"):
        utils.write_text(tmp_path / "x.txt", "hi")


# ---------- 15. orphaned temporary files ----------

def test_stale_temp_files_are_removed_but_live_ones_kept(tmp_path):
    run = tmp_path / "run"
    (run / "prepared").mkdir(parents=True); (run / "split_0" / "full" / "checkpoints").mkdir(parents=True)
    old = [run / "prepared" / ".adata.h5ad.999999999-ab12cd_9.h5ad",                     # its writer is gone
           run / "split_0" / "full" / "checkpoints" / ".last.pt.999999998-k2j3h4l5.pt",
           run / "prepared" / ".settings.json.q1w2e3r4.json", run / ".notes.zzzzzzzz.tmp"]    # older names: by age
    stage = run / "split_0" / "full" / ".model.tmp-999999999-0123abcd"           # a save whose process is gone
    stage.mkdir(); (stage / "model.pt").write_bytes(b"x")
    keep = [run / ".prepare.lock", run / "prepared" / "adata.h5ad", run / "prepared" / ".hidden"]
    for p in old + keep: p.write_bytes(b"partial")
    t0 = time.time() - 3600
    for p in old + keep + [stage]: os.utime(p, (t0, t0))
    live = run / "prepared" / f".labels.csv.{os.getpid()}-aaaaaaaa.csv"           # its writer is alive
    live.write_bytes(b"x"); os.utime(live, (t0, t0))
    fresh = run / "prepared" / ".manifest.csv.gz.bbbbbbbb.gz"                     # written after the run started
    fresh.write_bytes(b"x")
    gone = utils.remove_stale_temps(run, before=time.time() - 60)
    assert sorted(gone) == sorted(old + [stage])
    assert all(p.exists() for p in keep + [live, fresh]) and not any(p.exists() for p in old + [stage])


def test_a_write_in_progress_is_locked_against_cleanup(tmp_path):
    with utils.atomic_path(tmp_path / "adata.h5ad") as tmp:
        tmp.write_bytes(b"half")
        assert utils.remove_stale_temps(tmp_path, before=time.time() + 60) == []    # however old: in use
    assert (tmp_path / "adata.h5ad").read_bytes() == b"half" and [p.name for p in tmp_path.iterdir()] == ["adata.h5ad"]


def test_prepare_removes_what_a_killed_run_left(tmp_path):
    stale = tmp_path / "t" / "prepared" / ".adata.h5ad.x1y2z3w4.h5ad"
    stale.parent.mkdir(parents=True); stale.write_bytes(b"killed mid-write")
    t0 = time.time() - 10; os.utime(stale, (t0, t0))
    runner.prepare(None, name="t", out_dir=tmp_path, n_folds=3, n_label_components=10)
    assert not stale.exists() and (tmp_path / "t" / "prepared" / "adata.h5ad").exists()


# ---------- 16. the command line ----------

CLI_TINY = ["--n-folds", "3", "--n-label-components", "10", "--n-latent", "16", "--n-hidden", "64", "--pack", "4",
            "--train-preset", "fast", "--accelerator", "cpu", "--embedding", "pca", "--n-pred-cells", "32",
            "--max-eval-cells", "64"]


@pytest.fixture(scope="module")
def real_h5ad(tmp_path_factory):
    "A screen on disk that is not a simulated one (no true DAG)."
    a = simulate_screen("tiny", seed=1); del a.uns["sccvae_truth"]
    p = tmp_path_factory.mktemp("real") / "real.h5ad"; a.write_h5ad(p)
    return p


@pytest.mark.parametrize("args, what", [
    (["run", "--folds", "a-b"], r"folds 'a-b': 'a-b' is neither a fold number nor a range of them; write e.g. '0-4'"),
    (["run", "--folds", "3-1", "--n-folds", "5"], r"the range '3-1' runs backwards and holds no fold; write '1-3'"),
    (["run", "--folds", "0-6", "--n-folds", "5"], r"folds \[5, 6\] do not exist: there are 5 folds \(0-4\); pass --folds within 0-4"),
    (["fold", "--split", "7", "--n-folds", "3"], r"folds \[7\] do not exist: there are 3 folds .*pass --split within 0-2"),
    (["fold", "--kwargs", "{lr: 1}"], r"--kwargs is not valid JSON \(Expecting property name .*e.g. --kwargs '\{\"lr\": 0.001"),
    (["fold", "--kwargs", "[1, 2]"], r"--kwargs is a JSON list, not an object"),
    (["fold", "--kwargs", '{"learning_rate": 1}'], r"--kwargs has keys \['learning_rate'\] that are not run_fold keywords"),
    (["run", "--data", "DIR"], r"IsADirectoryError: data .* is a folder, not an .h5ad file; pass the .h5ad file itself"),
    (["prepare", "--data", "DIR"], r"is a folder, not an .h5ad file"),
    (["run", "--data", "CSV"], r"data .*screen.csv is not an .h5ad file \(suffix '.csv'\); convert it with anndata first"),
    (["fold", "--data", "FAKE"], r"is named .h5ad but is not an HDF5 file .*write it again"),
    (["run", "--data", "MISSING"], r"FileNotFoundError: data file .*does not exist"),
    (["run", "--manifest", "MISSING"], r"--manifest .*missing.h5ad: no such file"),
    (["run", "--eval-cells", "all"], r"--shift-mode holdout needs --eval-cells holdout.*--shift-mode oracle"),
    (["run", "--name", "a/b"], r"--name 'a/b' is not a folder name"),
    (["run", "--train-preset", "quick"], r"--train-preset 'quick' is not one of \['default', 'fast', 'paper'\]"),
    (["run", "--data", "REAL", "--graphs", "full,causal"], r"graph 'causal' needs a DAG: .*real.h5ad is not a simulated "
                                                           r"screen .*--causal-edges"),
    (["benchmark", "--data", "DIR"], r"is a folder, not an .h5ad file"),
])
def test_cli_errors_are_one_line_before_any_work(tmp_path, capsys, real_h5ad, args, what):
    (tmp_path / "DIR").mkdir(); (tmp_path / "screen.csv").write_text("a,b\n1,2\n"); (tmp_path / "fake.h5ad").write_text("no")
    subst = {"DIR": str(tmp_path / "DIR"), "CSV": str(tmp_path / "screen.csv"), "FAKE": str(tmp_path / "fake.h5ad"),
             "MISSING": str(tmp_path / "missing.h5ad"), "REAL": str(real_h5ad)}
    args = [subst.get(x, x) for x in args]
    out = tmp_path / "out"
    extra = {"benchmark": ["--out", str(out / "b")], "prepare": ["--out-dir", str(out), "--n-folds", "3"],
             "run": ["--out-dir", str(out), "--folds", "0"] + CLI_TINY}.get(args[0], ["--out-dir", str(out)] + CLI_TINY)
    t0 = time.perf_counter()
    assert cli.main(args[:1] + extra + args[1:]) == 1            # the case's own options win
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert re.match(rf"sccvae {args[0]}: error: ", err) and re.search(what, err), err
    assert err.endswith("(--verbose shows the traceback)")
    assert not out.exists()                                   # no empty run folder, no lock left behind
    assert time.perf_counter() - t0 < 20                       # refused up front, not after the preparation


@pytest.mark.parametrize("args, what", [
    (["run", "--n-latent", "0"], r"argument --n-latent: 0 is too small; pass a whole number >= 1"),
    (["run", "--n-hidden", "-4"], r"argument --n-hidden: -4 is too small"),
    (["fold", "--max-epochs", "ten"], r"argument --max-epochs: 'ten' is not an integer"),
    (["run", "--n-folds", "1"], r"argument --n-folds: 1 is too small; pass a whole number >= 2"),
    (["run", "--lr", "-1"], r"argument --lr: -1 is not a positive finite number"),
    (["run", "--random-density", "3"], r"argument --random-density: 3 is not a fraction in \(0, 1\]"),
    (["run", "--shift-mode", "best"], r"argument --shift-mode: invalid choice: 'best'"),
    (["fold", "--graph", "dag"], r"argument --graph: invalid choice: 'dag'"),
])
def test_cli_bad_option_values_are_refused_by_the_parser(tmp_path, capsys, args, what):
    with pytest.raises(SystemExit) as e:
        cli.main(args + ["--out-dir", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(what, err.strip().splitlines()[-1]), err
    assert not (tmp_path / "out").exists()


def test_cli_verbose_shows_the_traceback(tmp_path, capsys):
    for v in (["-v", "run"], ["run", "--verbose"]):
        assert cli.main(v + ["--folds", "x", "--out-dir", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "parse_folds" in err
        assert err.strip().splitlines()[-1].startswith("sccvae run: error: ValueError: folds 'x'")


def test_cli_failure_after_starting_removes_only_the_new_empty_folder(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["prepare", "--out-dir", str(out), "--perturbation-key", "condition"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "perturbation_key='condition' is not a column of adata.obs" in err
    assert not out.exists()                               # its lock and the folders the preparation made are gone
    keep = tmp_path / "mine"; keep.mkdir()                # a folder that existed before is left alone
    assert cli.main(["prepare", "--out-dir", str(keep), "--perturbation-key", "condition"]) == 1
    assert keep.exists()


def test_cli_force_prepare_and_collapse_guides(tmp_path, capsys):
    a = simulate_screen("tiny", seed=0)
    g = a.obs["gene"].astype(str)
    a.obs["guide"] = np.where(g == "non-targeting", g, g + "_" + (np.arange(a.n_obs) % 2 + 1).astype(str))
    p = tmp_path / "guides.h5ad"; a.write_h5ad(p)
    base = ["prepare", "--data", str(p), "--perturbation-key", "guide", "--out-dir", str(tmp_path / "o"),
            "--n-label-components", "10"]
    assert cli.main(base + ["--n-folds", "3", "--collapse-guides"]) == 0
    n_targets = g[g != "non-targeting"].nunique()
    prep = runner.prepare(p, name="guides", out_dir=tmp_path / "o", perturbation_key="guide", n_folds=3,
                          n_label_components=10, collapse_guides=True)
    assert len(prep.labels) == n_targets and not any("_" in x for x in prep.labels.index)
    capsys.readouterr()
    assert cli.main(base + ["--n-folds", "4", "--collapse-guides"]) == 1
    err = capsys.readouterr().err
    assert "prepared with other settings" in err and "`--force-prepare`" in err
    assert cli.main(base + ["--n-folds", "4", "--collapse-guides", "--force-prepare"]) == 0
    assert "held-out perturbations per fold: 0: " in capsys.readouterr().out


def test_cli_gene_symbol_key_none_and_auto():
    a = cli.build_parser().parse_args(["run", "--gene-symbol-key", "none"])
    assert cli.fold_kwargs(a)["gene_symbol_key"] == "none" and cli._symbol_key("none") is None
    assert cli._symbol_key(None) == "auto" and cli._symbol_key("symbol") == "symbol"


# ---------- 17. fault injection: a fold run killed during training ----------

def _sccvae(*args):
    env = dict(os.environ, IN_TEST="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return [sys.executable, "-c", "from sccvae.cli import main; raise SystemExit(main())", *args], env


def test_fold_killed_during_training_resumes_to_the_same_metrics(tmp_path):
    fold = ["fold", "--name", "k", "--split", "0", "--graph", "full", "--no-baselines", "--no-figures",
            "--max-epochs", "12", "--kwargs", '{"shift_modes": ["holdout"], "progress": false}', *CLI_TINY]
    cmd, env = _sccvae(*fold, "--out-dir", str(tmp_path / "ref"))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    cmd, env = _sccvae(*fold, "--out-dir", str(tmp_path / "kill"))
    ck = tmp_path / "kill" / "k" / "split_0" / "full" / "checkpoints"
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while not (ck / "history.csv").exists() or len(pd.read_csv(ck / "history.csv")) < 2:
            assert p.poll() is None, "the run ended before it could be killed"
            assert time.time() - t0 < 240
            time.sleep(0.01)
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL
    done_at_kill = len(pd.read_csv(ck / "history.csv"))
    assert done_at_kill < 12 and not (ck.parent / "DONE.json").exists()        # killed during training
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ref = pd.read_csv(tmp_path / "ref" / "k" / "split_0" / "full" / "per_perturbation.csv")
    got = pd.read_csv(ck.parent / "per_perturbation.csv")
    pd.testing.assert_frame_equal(got, ref)
    h_ref = pd.read_csv(tmp_path / "ref" / "k" / "split_0" / "full" / "history.csv")
    h = pd.read_csv(ck.parent / "history.csv")
    assert len(h) == 12
    pd.testing.assert_frame_equal(h.drop(columns=[c for c in h if "second" in c]),
                                  h_ref.drop(columns=[c for c in h_ref if "second" in c]))
    assert not [q for q in (tmp_path / "kill").rglob(".*") if utils._TEMP_FILE.match(q.name)]


def test_constructor_labels_not_numeric_or_empty():
    "SCCVAE(labels=...) with a gene column read as data, or no columns, names the problem and the fix."
    from sccvae.synthetic import simulate_screen
    import sccvae
    a = simulate_screen("tiny", seed=0)
    sccvae.data.setup_anndata(a, perturbation_key="gene", control_group="non-targeting"); sccvae.data.normalize(a)
    emb = sccvae.data.gene_embedding(a, n_components=4)
    with pytest.raises(ValueError, match="not numeric.*index_col=0"):
        sccvae.SCCVAE(a, n_latent=8, n_hidden=16, labels=emb.reset_index(), preset="paper")
    with pytest.raises(ValueError, match="no columns"):
        sccvae.SCCVAE(a, n_latent=8, n_hidden=16, labels=emb.iloc[:, :0], preset="paper")
