"""sccvae.model.SCCVAE and sccvae.shift: the user-facing API end to end on a tiny simulated screen."""
import warnings
import numpy as np
import pandas as pd
import pytest
import torch

from sccvae import data as D
from sccvae.model import SCCVAE
from sccvae.shift import ShiftSelection, default_grid, select_penetrance
from conftest import tiny_fold


@pytest.fixture(scope="module")
def trained():
    adata, unseen = tiny_fold()
    model = SCCVAE(adata, n_latent=8, n_hidden=32, n_label_components=8, preset="paper")
    model.train(max_epochs=2, pack=4, progress=False, accelerator="cpu")
    return adata, model, unseen


def test_requires_registration_and_normalisation():
    from sccvae.synthetic import simulate_screen
    a = simulate_screen("tiny", seed=1)
    with pytest.raises(ValueError, match="not registered"):
        SCCVAE(a)
    D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting", normalize=False)
    with pytest.raises(ValueError, match="normalise"):
        SCCVAE(a)


def test_one_registration_entry_point():
    "SCCVAE.setup_anndata is sccvae.data.setup_anndata: registers and, by default, normalises once in place."
    import sccvae
    from sccvae.synthetic import simulate_screen
    assert SCCVAE.setup_anndata is D.setup_anndata is sccvae.setup_anndata
    a, b = simulate_screen("tiny", seed=1), simulate_screen("tiny", seed=1)
    SCCVAE.setup_anndata(a, perturbation_key="gene", control_group="non-targeting")
    D.setup_anndata(b, perturbation_key="gene", control_group="non-targeting")
    assert D.get_registry(a)["normalized"] and D.get_registry(b)["normalized"]
    xa, xb = (x.X.toarray() if hasattr(x.X, "toarray") else x.X for x in (a, b))
    assert np.array_equal(xa, xb)


def test_shift_room_uses_public_methods_only():
    "No import circle: sccvae.shift, anchor, predict and saving import nothing of sccvae.model."
    import ast, inspect, sccvae.shift, sccvae.anchor, sccvae.predict, sccvae.saving
    for mod in (sccvae.shift, sccvae.anchor, sccvae.predict, sccvae.saving):
        tree = ast.parse(inspect.getsource(mod))
        names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not any(m.endswith("model") for m in names), (mod.__name__, names)
    import sccvae.model as M
    assert not {"train", "predict", "save", "load", "log"} & set(M.__all__), M.__all__


def test_unseen_not_in_training(trained):
    adata, model, unseen = trained
    assert not set(unseen) & set(model.train_perturbations)
    assert model.module.n_perturbations == len(model.train_perturbations)
    assert len(model.history) == 2 and model.is_trained


def test_predict_penetrance_forms(trained):
    adata, model, unseen = trained
    seen = model.train_perturbations[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = model.predict([seen, "control"] + unseen, n_cells=7, seed=1)
    assert p.shape == ((2 + len(unseen)) * 7, adata.n_vars) and list(p.var_names) == list(adata.var_names)
    assert p.obs["gene"].tolist()[:7] == [seen] * 7
    src = list(p.uns["sccvae_prediction"]["penetrance_source"])
    assert src[:2] == ["learned", "control"] and set(src[2:]) == {"median_learned"}
    f = model.predict(unseen, n_cells=5, penetrance=0.0)
    c0 = model.predict(["control"], n_cells=5)
    # c = 0 gives exactly the control prediction (same control draws and noise for the same seed)
    np.testing.assert_allclose(f.X[:5], c0.X, atol=1e-5)
    d = model.predict(unseen, n_cells=5, penetrance={unseen[0]: 2.5})
    assert d.obs.penetrance.iloc[0] == 2.5
    with pytest.raises(KeyError, match="no label"):
        model.predict(["NOT_A_GENE"], n_cells=3)


def test_latents_and_embedding(trained):
    adata, model, unseen = trained
    z = model.get_latent_representation(kind="z")
    u = model.get_latent_representation(kind="u")
    assert z.shape == u.shape == (adata.n_obs, 8)
    with pytest.raises(ValueError, match="'z' or 'u'"):
        model.get_latent_representation(kind="w")
    emb = model.perturbation_embedding(model.train_perturbations[:3], relative=True)
    assert emb.shape == (3, 8) and np.isfinite(emb.to_numpy()).all()


@pytest.mark.parametrize("mode", ["oracle", "holdout", "linear", "none"])
def test_shift_selection_modes(trained, mode):
    adata, model, unseen = trained
    try:
        sel = select_penetrance(model, mode=mode, n_cells=16, store=False)
    except ImportError:
        pytest.skip("sccvae.baselines.LinearBaseline not available")
    assert list(sel.chosen.index) == unseen and sel.mode == mode and sel.label.startswith(mode)
    if mode != "none":
        assert sel.errors.shape == (len(unseen), 41)
        assert np.array_equal(sel.chosen.to_numpy(), default_grid()[sel.errors.to_numpy().argmin(1)])
    if mode == "holdout":
        keep = sel.evaluation_mask(adata)
        for p in unseen:
            used = adata.obs_names.isin(sel.selection_cells[p])
            assert used.any() and not keep[used].any()
            n = int(((adata.obs._scc_target == p) & (adata.obs.split == "test")).sum())
            assert used.sum() == round(n / 2)


def test_shift_selection_common_random_numbers(trained):
    adata, model, unseen = trained
    a = select_penetrance(model, mode="oracle", n_cells=16, seed=5, store=False)
    b = select_penetrance(model, mode="oracle", n_cells=16, seed=5, grid=[0.5, 1.0], store=False)
    # the same controls and noise for every candidate: a sub-grid gives the same errors
    np.testing.assert_allclose(b.errors.to_numpy(), a.errors[[0.5, 1.0]].to_numpy(), rtol=1e-4, atol=1e-7)


def test_save_load_roundtrip(trained, tmp_path):
    adata, model, unseen = trained
    sel = model.select_penetrance(mode="holdout", n_cells=16)
    model.save(tmp_path / "m")
    m2 = SCCVAE.load(tmp_path / "m", adata, accelerator="cpu")
    for k, v in model.module.state_dict().items():
        assert torch.equal(v.cpu(), m2.module.state_dict()[k].cpu()), k
    assert m2.graph.mode == "full" and m2.train_perturbations == model.train_perturbations
    assert m2.shift_selection.mode == "holdout" and m2.penetrance_overrides == model.penetrance_overrides
    np.testing.assert_allclose(model.predict(unseen, n_cells=6, seed=2).X, m2.predict(unseen, n_cells=6, seed=2).X, atol=1e-5)
    bad = adata[:, adata.var_names[::-1]].copy()
    with pytest.raises(ValueError, match="genes differ"):
        SCCVAE.load(tmp_path / "m", bad)


def test_graph_modes_build(trained):
    adata = trained[0]
    for g, kw in (("conditional", {}), ("random", dict(n_edges=5, graph_seed=2)),
                  ("causal", dict(edges=pd.DataFrame({"parent_idx": [0, 1], "child_idx": [2, 3]})))):
        m = SCCVAE(adata, graph=g, n_latent=6, n_hidden=8, n_label_components=4, **kw)
        assert m.graph.mode == g and m.module.mask.shape == (6, 6)
    assert SCCVAE(adata, graph="random", n_latent=6, n_hidden=8, n_label_components=4, n_edges=5,
                  graph_seed=2).graph.n_edges == 5


def test_train_preset_fast_and_save_load(trained, tmp_path):
    adata, _, unseen = trained
    m = SCCVAE(adata, n_latent=8, n_hidden=32, n_label_components=8, preset="paper")
    m.train(preset="fast", max_epochs=2, progress=False, accelerator="cpu")
    tc = m.train_config
    assert tc["preset"] == "fast" and tc["gamma"] == 1.0 and tc["lr"] == 1e-3 and tc["max_epochs"] == 2
    assert m.module.labels_standardized
    m.save(tmp_path / "m")
    m2 = SCCVAE.load(tmp_path / "m", adata, accelerator="cpu")
    assert torch.equal(m2.module.label_scale, m.module.label_scale)
    a = m.predict(unseen, n_cells=5, penetrance=1.0, seed=0).X
    b = m2.predict(unseen, n_cells=5, penetrance=1.0, seed=0).X
    assert np.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="preset"):
        m.train(preset="quick", max_epochs=1, progress=False, accelerator="cpu")


def test_train_default_is_paper(trained):
    _, model, _ = trained
    tc = model.train_config
    assert tc["preset"] == "paper" and tc["gamma"] == 10.0 and tc["adam_eps"] == 1e-2 and tc["lr"] == 5e-4
    assert tc["lr_schedule"] == "constant" and not model.module.labels_standardized


def test_measured_gene_by_symbol_or_id_and_unmeasured_error(trained):
    adata, model, unseen = trained
    perturbed = set(adata.obs["_scc_target"].astype(str))
    never = [g for g in model.labels.index if g not in perturbed][0]
    p = model.predict([never], n_cells=3, penetrance=1.0)
    assert p.obs["gene"].tolist() == [never] * 3
    # by var_names id (the simulated screen has Ensembl-style ids with symbols in var["gene_name"])
    j = list(D.gene_symbols(adata)).index(never)
    assert adata.var_names[j] != never
    by_id = model.predict([adata.var_names[j]], n_cells=3, penetrance=1.0)
    np.testing.assert_array_equal(np.asarray(by_id.X), np.asarray(p.X))
    with pytest.raises(KeyError, match="not measured genes"):
        model.predict(["NOT_A_GENE"], n_cells=3, penetrance=1.0)


@pytest.mark.parametrize("lik", ["gaussian", "nb"])
def test_noise_models_save_load_and_valid_cells(trained, tmp_path, lik):
    adata, _, unseen = trained
    m = SCCVAE(adata, n_latent=8, n_hidden=32, n_label_components=8, likelihood=lik, preset="paper")
    m.train(max_epochs=2, pack=4, progress=False, accelerator="cpu", preset="fast")
    assert np.isfinite(m.history.filter(like="train_").to_numpy()).all()
    for dec in ("sample", "counterfactual", "mean"):
        p = m.predict(unseen, n_cells=6, penetrance=1.0, seed=3, decoding=dec)
        assert (np.asarray(p.X) >= 0).all() and np.isfinite(np.asarray(p.X)).all()
        assert p.uns["sccvae_prediction"]["decoding"] == dec
        assert ("counts" in p.layers) == (lik == "nb" and dec != "mean")
    m.save(tmp_path / "m")
    m2 = SCCVAE.load(tmp_path / "m", adata)
    assert m2.module.likelihood == lik
    a, b = (x.predict(unseen, n_cells=6, penetrance=1.0, seed=3).X for x in (m, m2))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_nb_needs_counts(trained):
    adata, _, _ = trained
    a = adata.copy()
    del a.layers["counts"]
    with pytest.raises(ValueError, match="raw counts"):
        SCCVAE(a, n_latent=8, n_hidden=32, likelihood="nb")


def test_combinations_are_registered_and_predicted_for_unseen_genes():
    "Issue 14: `A+B` cells keep their canonical name; predict(['A+B']) works for pairs with unseen genes."
    from sccvae.synthetic import simulate_screen
    a = simulate_screen("tiny", seed=0, style="scperturb")
    lab = a.obs["perturbation"].astype(str).to_numpy().copy()
    g = sorted(set(lab) - {"control"})
    lab[:6] = f"{g[1]}_{g[0]}"                                    # scPerturb-style double
    a.obs["perturbation"] = lab
    D.setup_anndata(a, perturbation_key="perturbation", control_group="control", combination_delimiter="_")
    assert (D.targets(a)[:6] == f"{g[0]}+{g[1]}").all() and D.get_registry(a)["n_combinations"] == 1
    with pytest.raises(ValueError, match="combination_delimiter"):
        D.setup_anndata(a, perturbation_key="perturbation", control_group="control", combination_delimiter="ab")


def test_pair_prediction_sums_shifts_and_singles_are_unchanged(trained):
    adata, model, unseen = trained
    seen = model.train_perturbations[0]
    pairs = [f"{seen}+{unseen[0]}", f"{unseen[0]}+{unseen[1]}"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = model.predict(pairs + [unseen[0]], n_cells=16, seed=3, penetrance=0.8)
        alone = model.predict([unseen[0]], n_cells=16, seed=3, penetrance=0.8)
        _, cS, C, cols = model._combination_shifts(pairs, 0.8, None)
    assert pred.shape == (48, adata.n_vars) and list(pred.obs["_scc_target"].cat.categories) == pairs + [unseen[0]]
    S = model.shift_of([seen, unseen[0], unseen[1]])
    torch.testing.assert_close(cS, 0.8 * torch.stack([S[0] + S[1], S[1] + S[2]]), rtol=1e-6, atol=1e-6)
    assert C.shape == (2, 2) and (cols.shape == (2, 2))
    np.testing.assert_allclose(np.asarray(pred.X[32:]), np.asarray(alone.X), rtol=1e-5, atol=1e-6)   # float32: the same cells


def test_pair_interaction_weight_is_checked(trained):
    adata, model, unseen = trained
    with pytest.raises(ValueError, match="interaction"):
        model.predict([f"{unseen[0]}+{unseen[1]}"], n_cells=4, penetrance=1.0, interaction=float("nan"))


def test_anchored_pair_is_centred_on_the_additive_guess_plus_the_interaction():
    "Default model: a pair of seen genes is centred on Δ_A + Δ_B (their observed training changes); interaction=1 adds the model's."
    adata, unseen = tiny_fold()
    model = SCCVAE(adata, n_latent=8, n_hidden=32, n_label_components=8, seed=0)
    model.train(max_epochs=2, progress=False, accelerator="cpu")
    a, b = model.train_perturbations[:2]
    t, tr = D.targets(adata).astype(str).to_numpy(), (adata.obs["split"] == "train").to_numpy()
    mean = lambda m: np.asarray(adata.X[np.flatnonzero(m)].mean(0), np.float64).ravel()
    ctrl = model.anchor.control_mean_
    additive = mean(tr & (t == a)) + mean(tr & (t == b)) - 2 * ctrl
    p0 = model.predict([f"{a}+{b}"], n_cells=64, seed=0, interaction=0.0, clip=False)   # clipping moves near-0 genes
    np.testing.assert_allclose(np.asarray(p0.X, np.float64).mean(0) - ctrl, additive, atol=2e-5)
    p1 = model.predict([f"{a}+{b}"], n_cells=64, seed=0, clip=False, interaction=1.0)
    assert not np.allclose(np.asarray(p1.X).mean(0), np.asarray(p0.X).mean(0), atol=1e-6)   # the interaction moves it
