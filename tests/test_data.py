"""The data layer through the installed API: real screens from ../shared, the Replogle file format, the paper's
K562 reference tables, and a clear error for every kind of bad input."""
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import anndata as ad

from sccvae import data as D, loader as L


def make_screen(n_ctrl=120, perts=("GA", "GB", "GC", "GD"), n_per=60, n_genes=30, seed=0):
    "A small hand-made raw-count screen (independent of sccvae.synthetic)."
    rng = np.random.default_rng(seed)
    genes = [f"G{i}" for i in range(n_genes - len(perts))] + list(perts)
    labels = ["non-targeting"] * n_ctrl + [p for p in perts for _ in range(n_per)]
    X = rng.poisson(3.0, size=(len(labels), n_genes)).astype(np.float32)
    for j, p in enumerate(perts):  # knock down the target and shift a few genes
        rows = np.array(labels) == p
        X[rows, genes.index(p)] = 0
        X[rows, j] += 4
    a = ad.AnnData(sp.csr_matrix(X), obs=pd.DataFrame({"gene": labels}, index=[f"c{i}" for i in range(len(labels))]),
                   var=pd.DataFrame(index=genes))
    return a


def registered(**kw):
    a = make_screen(**kw)
    D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting")
    return D.normalize(a)


# ---------- real screens ----------

def test_tapseq_k562(tapseq_path):
    a = ad.read_h5ad(tapseq_path)
    D.setup_anndata(a, perturbation_key="target", control_group="non-targeting", normalize=False)
    reg = D.get_registry(a)
    assert reg["n_excluded"] == 728 + 558          # `multiple` and `unassigned` are not perturbations
    assert "multiple" not in D.perturbation_table(a).index
    D.normalize(a)
    assert "counts" in a.layers and a.X.dtype == np.float32
    ft = D.filter_perturbations(a, min_cells=200, n_pcs=20, seed=0)
    knock = ["FAM83A", "OXR1", "CCNE2", "PHF20L1", "CPQ", "RIPK2", "LRRCC1", "UBR5", "STK3", "DSCC1"]
    big = ft.index[ft.n_cells >= 200]
    assert sorted(big) == sorted(knock)               # enhancer guides all have < 200 cells
    assert ft.loc[knock, "cv_mean"].notna().all() and ft.loc[knock, "cv_mean"].between(0, 1).all()
    L = D.perturbation_labels(a, n_components=20, perturbations=knock)
    assert list(L.index) == knock and L.shape == (10, 20) and np.isfinite(L.to_numpy()).all()
    with pytest.raises(ValueError, match="not measured"):   # enhancer targets have no gene row
        D.perturbation_labels(a, n_components=20)
    man = D.ood_manifest(a, perturbations=knock, n_folds=5, seed=0)
    folds = man.drop_duplicates("perturbation").set_index("perturbation").fold.drop("control")
    assert sorted(folds.value_counts().tolist()) == [2, 2, 2, 2, 2]


def test_datlinger_guides_and_targets(datlinger_path):
    a = ad.read_h5ad(datlinger_path)
    D.setup_anndata(a, perturbation_key="target", control_group="control", normalize=False)
    t_target = D.perturbation_table(a)
    assert len(t_target) == 21 and t_target.loc["control", "n_cells"] == 200
    b = ad.read_h5ad(datlinger_path)
    D.setup_anndata(b, perturbation_key="perturbation", control_group="control", collapse_guides=True, normalize=False)
    pd.testing.assert_frame_equal(D.perturbation_table(b).sort_index(), t_target.sort_index())
    D.normalize(a)
    # this subset keeps 2,000 genes: most targets are not measured, and that is an explicit error, not a silent zero
    with pytest.raises(ValueError, match="14 perturbation targets are not measured"):
        D.perturbation_labels(a, n_components=30)
    L = D.perturbation_labels(a, n_components=30, missing="drop")
    assert len(L) == 6 and set(L.index) <= set(a.var_names)


def test_replogle_format_file(tmp_path):
    from sccvae.synthetic import simulate_screen
    a = simulate_screen("tiny", seed=0, style="replogle")
    a.write_h5ad(tmp_path / "k562_like.h5ad")
    b = ad.read_h5ad(tmp_path / "k562_like.h5ad")
    assert b.var_names[0].startswith("ENSG") and "gene_name" in b.var
    D.setup_anndata(b, perturbation_key="gene", control_group="non-targeting", normalize=False)
    assert D.get_registry(b)["gene_symbol_key"] == "gene_name"   # detected from Ensembl ids
    D.normalize(b)
    L = D.perturbation_labels(b, n_components=8)
    assert set(L.index) <= set(b.var["gene_name"])
    man = D.ood_manifest(b, n_folds=3)
    D.save_manifest(man, tmp_path / "m.csv")
    D.apply_split(b, D.load_manifest(tmp_path / "m.csv", b), 1)
    assert set(b.obs["split"].unique()) <= {"train", "val", "test"}


def test_paper_reference_tables(reference_dir):
    sub = D.paper_subset(reference_dir / "k562_essential_logreg_scores.csv", reference_dir / "k562_dag_genes.csv")
    assert len(sub) == 279
    scores = D.read_logreg_scores(reference_dir / "k562_essential_logreg_scores.csv")
    assert ((scores.n_cells >= 200) & (scores.cv_mean >= 0.6)).sum() == 285
    folds = D.paper_folds(reference_dir / "k562_ood_splits.csv")
    assert folds.value_counts().sort_index().tolist() == [55, 57, 54, 57, 56]
    assert set(folds.index) == set(sub)


def test_paper_folds_drive_the_manifest():
    a = registered()
    man = D.ood_manifest(a, test_fold_of={"GA": 0, "GB": 1, "GC": 0, "GD": 1})
    assert man.attrs["n_folds"] == 2
    assert (man.loc[man.perturbation == "GC", "split_0"] == "test").all()
    assert (man.loc[man.perturbation == "GC", "split_1"] != "test").all()


def test_precomputed_scores_table():
    a = registered()
    tab = pd.DataFrame({"Gene": ["non-targeting", "GA", "GB"], "cv1": [1, .7, .5], "cv2": [1.0, .7, .5],
                        "cv3": [0.0, .7, .5], "cv4": [10691, .7, .5], "cv5": [None, .7, .5],
                        "cv_mean": [None, .7, .5], "cv_std": [None, 0, 0], "counts": [None, 250, 300]})
    ft = D.filter_perturbations(a, scores=tab)
    assert ft.kept.to_dict() == {"GA": True, "GB": False}


def test_iid_fractions():
    a = registered(n_per=100)
    man = D.iid_manifest(a, seed=3)
    pert = man[man.perturbation != "control"]
    share = pert.split_iid.value_counts(normalize=True)
    assert abs(share["train"] - 0.7) < 0.02 and abs(share["val"] - 0.1) < 0.02 and abs(share["test"] - 0.2) < 0.02
    assert (man.loc[man.perturbation == "control", "split_iid"] == "train").all()


# ---------- bad input: each names the problem and the fix ----------

def test_missing_keys():
    a = make_screen()
    with pytest.raises(KeyError, match="not a column of adata.obs"):
        D.setup_anndata(a, perturbation_key="guide", control_group="non-targeting")
    with pytest.raises(KeyError, match="not in adata.layers"):
        D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting", layer="raw")
    with pytest.raises(KeyError, match="gene_symbol_key"):
        D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting", gene_symbol_key="symbol")
    with pytest.raises(ValueError, match="setup_anndata"):
        D.normalize(make_screen())


def test_unknown_control_label():
    with pytest.raises(ValueError, match="does not occur.*non-targeting"):
        D.setup_anndata(make_screen(), perturbation_key="gene", control_group="NT")


def test_no_control_cells():
    a = registered()
    sub = a[a.obs["gene"] != "non-targeting"].copy()
    with pytest.raises(ValueError, match="no control cells"):
        D.perturbation_labels(sub)
    with pytest.raises(ValueError, match="does not occur"):
        D.setup_anndata(sub, perturbation_key="gene", control_group="non-targeting")


@pytest.mark.parametrize("bad,msg", [(np.nan, "NaN"), (np.inf, "NaN/inf"), (-2.0, "negative")])
def test_bad_values(bad, msg):
    a = make_screen()
    a.X = a.X.toarray(); a.X[3, 4] = bad
    D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting", normalize=False)
    with pytest.raises(ValueError, match=msg):
        D.normalize(a)
    with pytest.raises(ValueError, match=msg):        # the default registers and normalises: the same check
        D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting")


def test_duplicated_names():
    a = make_screen()
    a.obs_names = ["c0"] * 2 + list(a.obs_names[2:])
    with pytest.raises(ValueError, match="duplicated cell.*obs_names_make_unique"):
        D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting")
    b = make_screen()
    b.var_names = ["G0", "G0"] + list(b.var_names[2:])
    with pytest.raises(ValueError, match="duplicated gene.*var_names_make_unique"):
        D.setup_anndata(b, perturbation_key="gene", control_group="non-targeting")


def test_target_absent_from_var():
    a = make_screen()
    a.obs["gene"] = a.obs["gene"].replace("GA", "ENHANCER1")
    D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting"); D.normalize(a)
    with pytest.raises(ValueError, match="not measured genes.*missing='drop'"):
        D.perturbation_labels(a, n_components=5)
    assert "ENHANCER1" not in D.perturbation_labels(a, n_components=5, missing="drop").index
    z = D.perturbation_labels(a, n_components=5, missing="zero")
    assert (z.loc["ENHANCER1"] == 0).all()


def test_manifest_unknown_perturbations(tmp_path):
    a = registered()
    man = D.ood_manifest(a, n_folds=2)
    man.loc[man.perturbation == "GA", "perturbation"] = "NOPE"
    D.save_manifest(man, tmp_path / "m.csv")
    with pytest.raises(ValueError, match="perturbations that this AnnData does not have"):
        D.load_manifest(tmp_path / "m.csv", a)
    with pytest.raises(ValueError, match="not in this AnnData"):
        D.ood_manifest(a, test_fold_of={"GA": 0, "NOPE": 1})


def test_zero_cells_after_filtering():
    a = registered()
    with pytest.raises(ValueError, match="zero cells"):
        D.ood_manifest(a, perturbations=["GA", "GB", "GZ"], n_folds=2)


def test_empty_split():
    a = registered()
    with pytest.raises(ValueError, match="empty"):
        D.ood_manifest(a, n_folds=10)
    man = D.ood_manifest(a, n_folds=2)
    man["split_0"] = man["split_0"].where(man.perturbation == "control", "test")   # no perturbed train cells
    with pytest.raises(ValueError, match="no perturbed train cells"):
        D.apply_split(a, man, 0)
    with pytest.raises(ValueError, match="not in the manifest"):
        D.apply_split(a, man, 5)


def test_not_a_manifest(tmp_path):
    (tmp_path / "x.csv").write_text("cell,perturbation\nc0,GA\n")
    with pytest.raises(ValueError, match="not an sccvae manifest"):
        D.load_manifest(tmp_path / "x.csv")


def test_manifest_write_is_atomic(tmp_path):
    a = registered()
    man = D.ood_manifest(a, n_folds=2)
    p = D.save_manifest(man, tmp_path / "m.csv.gz")
    before = p.read_bytes()

    class Boom(pd.DataFrame):
        def to_csv(self, *a, **k):
            raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        D.save_manifest(Boom(man), p)
    assert p.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def test_already_log_normalised_input():
    a = make_screen()
    D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting"); D.normalize(a)
    X = a.X.copy()
    b = make_screen(); b.X = X.copy()
    D.setup_anndata(b, perturbation_key="gene", control_group="non-targeting"); D.normalize(b)
    assert "counts" not in b.layers and (b.X != X).nnz == 0


def test_sampler_keeps_small_groups():
    import torch
    codes = torch.tensor([0] * 5 + [1] * 70 + [-1] * 33)
    smp = L.PerturbationBatchSampler(codes, torch.arange(len(codes)), batch_size=32, seed=1)
    b = list(smp)
    assert sorted(torch.cat(b).tolist()) == list(range(len(codes)))
    assert min(len(x) for x in b) >= 5 and max(len(x) for x in b) <= 32


def test_setup_normalizes_by_default_like_setup_then_normalize():
    a, b = make_screen(), make_screen()
    D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting")
    D.setup_anndata(b, perturbation_key="gene", control_group="non-targeting", normalize=False)
    assert "normalized" not in D.get_registry(b) and "counts" not in b.layers     # register only
    D.normalize(b)
    assert D.get_registry(a) == D.get_registry(b) and D.get_registry(a)["normalized"] == "counts->log1p"
    assert np.array_equal(np.asarray(a.X.todense() if hasattr(a.X, "todense") else a.X),
                          np.asarray(b.X.todense() if hasattr(b.X, "todense") else b.X))
    X = a.X.copy()
    D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting")      # again: idempotent
    assert np.array_equal(np.asarray(a.X.todense() if hasattr(a.X, "todense") else a.X),
                          np.asarray(X.todense() if hasattr(X, "todense") else X))


def test_data_package_layout():
    import importlib, sccvae.synthetic as S
    from sccvae.data import registry, store, filter, labels, splits
    assert S.TARGET_SUM is D.TARGET_SUM and "TARGET_SUM" not in S.__all__          # one home for the constant
    mods = (registry, store, filter, labels, splits)
    assert sorted(D.__all__) == sorted(set().union(*(m.__all__ for m in mods)))
    assert all(getattr(D, n) is getattr(m, n) for m in mods for n in m.__all__)
    for name in ("_check_in_memory", "_lognorm_rows", "_SPLITS"): assert hasattr(D, name)
    for m in mods:                                                                  # submodules never import the package file
        imports = [l for l in open(m.__file__).read().splitlines() if l.startswith(("from ", "import "))]
        assert not [l for l in imports if l.startswith(("from . import", "from .data", "import sccvae.data")) or "synthetic" in l], imports

