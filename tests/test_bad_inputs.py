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
from sccvae import data as D
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
    D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting")
    with pytest.raises(ValueError, match=r"log1p of raw counts without total-count normalisation.*whole numbers.*"
                                         r"np.expm1\(adata.X\).*normalize_total"):
        D.normalize(a)
    assert not D.get_registry(a).get("normalized")


def test_unnormalised_non_integer_log_data_warns_and_normalised_data_do_not():
    a = simulate_screen("tiny", seed=0)
    L = a.X.copy(); L.data = np.log1p(0.37 * L.data)          # library sizes kept, not whole numbers
    a.X = L
    D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting")
    with pytest.warns(UserWarning, match=r"totals of expm1\(X\) vary .*-fold.*normalised for library size.*raw counts"):
        D.normalize(a)
    b = simulate_screen("tiny", seed=0)
    D.setup_anndata(b, perturbation_key="gene", control_group="non-targeting"); D.normalize(b)
    c = simulate_screen("tiny", seed=0); c.X = b.X.copy()     # log1p(normalize_total): accepted silently
    D.setup_anndata(c, perturbation_key="gene", control_group="non-targeting")
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
    import sccvae.model as sm
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
