"""sccvae.combinations: closed forms of the interaction scores, the agreement of predicted and true interactions,
pair classes, and the truth of a simulated pair screen."""
import numpy as np
import pandas as pd
import pytest

from sccvae.combinations import (PAIR_CLASSES, interaction_agreement, interaction_deviation, interaction_scores,
                                 pair_classes, pair_errors)

A, B = np.array([1.0, 0, 0]), np.array([0.0, 1, 0])
PAIRS = pd.DataFrame([[1, 1, 0], [2, 2, 0], [0.5, 0.5, 0], [1, 0, 0], [1, 1, 1], [-1, -1, 0]], dtype=float,
                     index=["sum", "amplified", "buffered", "a masks b", "neomorphic", "reversed"])
SA, SB = np.tile(A, (6, 1)), np.tile(B, (6, 1))


def test_deviation_keeps_labels_and_checks_shapes():
    d = interaction_deviation(PAIRS, SA, SB)
    assert list(d.index) == list(PAIRS.index) and d.shape == PAIRS.shape
    np.testing.assert_array_equal(d.loc["amplified"].to_numpy(), [1, 1, 0])
    assert interaction_deviation([1, 1], [1, 0], [0, 1]).to_numpy().tolist() == [[0, 0]]   # 1-d: one pair
    with pytest.raises(ValueError, match="same shape"):
        interaction_deviation(PAIRS, SA[:2], SB[:2])


def test_scores_closed_forms():
    s = interaction_scores(PAIRS, SA, SB)
    assert list(s["call"]) == ["additive", "synergy", "suppression", "suppression", "synergy", "additive"]
    np.testing.assert_allclose(s["magnitude_ratio"], [1, 2, 0.5, 2 ** -0.5, 1.5 ** 0.5, 1])
    np.testing.assert_allclose(s["deviation_norm"], [0, 2 ** 0.5, 0.5 ** 0.5, 1, 1, 8 ** 0.5])
    np.testing.assert_allclose(s[["c_a", "c_b"]].to_numpy(), [[1, 1], [2, 2], [.5, .5], [1, 0], [1, 1], [-1, -1]], atol=1e-12)
    np.testing.assert_allclose(s["linear_magnitude"], np.hypot(s["c_a"], s["c_b"]))
    np.testing.assert_allclose(s["fit_r2"], [1, 1, 1, 1, 2 / 3, 1])
    assert s.loc["sum", "dominance"] == 0 and s.loc["sum", "equality"] == 1
    assert s.loc["a masks b", "dominance"] == np.inf and s.loc["a masks b", "equality"] == 0
    # the ratio ignores direction: the reversed pair is 'additive' by magnitude but deviates by 2(a+b)
    assert s.loc["reversed", "deviation_norm"] > 2


def test_scores_tau_and_degenerate_singles():
    assert interaction_scores(PAIRS, SA, SB, tau=0.6)["call"].tolist() == ["additive", "synergy"] + ["additive"] * 4
    with pytest.raises(ValueError, match="tau"):
        interaction_scores(PAIRS, SA, SB, tau=1.0)
    z = interaction_scores([[0, 0, 0], [1, 0, 0]], np.zeros((2, 3)), np.zeros((2, 3)))
    assert np.isnan(z["magnitude_ratio"].iloc[0]) and z["call"].tolist() == ["additive", "synergy"]
    assert np.isinf(z["magnitude_ratio"].iloc[1]) and z["c_a"].isna().all()


def test_agreement():
    true = (PAIRS, SA, SB)
    same = interaction_agreement(true, true)
    assert same["match"].all() and np.allclose(same["pearson"].drop("sum"), 1) and np.isnan(same.loc["sum", "pearson"])
    gi = interaction_deviation(*true).to_numpy()
    flipped = interaction_agreement((SA + SB - gi, SA, SB), true)
    np.testing.assert_allclose(flipped["pearson"].drop("sum"), -1)
    additive = interaction_agreement((SA + SB, SA, SB), true)
    assert additive["pearson"].isna().all() and (additive["call_pred"] == "additive").all()
    assert additive["match"].mean() == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="same pairs"):
        interaction_agreement((PAIRS.iloc[:2], SA[:2], SB[:2]), true)


def test_pair_classes_and_errors():
    c = pair_classes(["A+B", "A+C", "C+D"], ["A", "B"])
    assert list(c) == ["both seen", "one unseen", "both unseen"] and list(c.cat.categories) == list(PAIR_CLASSES)
    assert list(c.index) == ["A+B", "A+C", "C+D"]
    with pytest.raises(ValueError, match="not a pair"):
        pair_classes(["A+B+C"], ["A"])
    e = pair_errors(np.array([[1.0, 0], [0, 0]]), pd.DataFrame([[1.0, 0], [1, 1]], index=["A+B", "C+D"]), ["A", "B"])
    np.testing.assert_allclose(e["rmse"], [0, 1]); np.testing.assert_allclose(e["pearson"].iloc[0], 1)
    assert list(e["pair_class"]) == ["both seen", "both unseen"]
    with pytest.raises(ValueError, match="same shape"):
        pair_errors(np.zeros((1, 2)), np.zeros((2, 2)))


def test_true_additive_errs_by_exactly_the_true_interaction():
    from sccvae.synthetic import simulate_screen
    t = simulate_screen("tiny", seed=0, n_pairs=10, n_truth=200).uns["sccvae_truth"]
    te, (ia, ib) = t["true_effect"].astype(np.float64), t["pair_index"].T
    s = interaction_scores(pd.DataFrame(t["pair_effect"], index=t["pair_names"]), te[ia], te[ib])
    np.testing.assert_allclose(s["deviation_norm"], np.linalg.norm(t["pair_effect"] - t["pair_additive"], axis=1), rtol=1e-4, atol=1e-6)
    assert list(s.index) == list(t["pair_names"]) and set(s["call"]) <= {"synergy", "suppression", "additive"}
    e = pair_errors(t["pair_additive"], pd.DataFrame(t["pair_effect"], index=t["pair_names"]), t["perturbations"])
    assert (e["pair_class"] == "both seen").all()
    np.testing.assert_allclose(e["rmse"] * np.sqrt(te.shape[1]), s["deviation_norm"], rtol=1e-4, atol=1e-6)


def _pair_screen(holdout_pairs=0.5):
    from sccvae import data as D
    from sccvae.synthetic import simulate_screen
    a = simulate_screen("tiny", seed=4, n_pairs=16, pair_cells=(24, 32))
    D.setup_anndata(a, perturbation_key="gene", control_group="non-targeting")
    man = D.combination_manifest(a, holdout_singles=0.25, holdout_pairs=holdout_pairs, seed=0)
    D.apply_split(a, man, "pairs")
    return a, man


def test_combination_manifest_classes_and_leaks():
    "Pairs with an unseen gene are always test; singles held out never train; holdout_pairs=1 trains no pair."
    a, man = _pair_screen()
    per = man.groupby("perturbation").agg(n_unseen=("n_unseen", "first"), splits=("split_pairs", lambda s: set(s)))
    held_singles = {p for p, r in per.iterrows() if r.n_unseen == -1 and r.splits == {"test"}}
    for p, r in per[per.n_unseen >= 0].iterrows():
        genes = p.split("+")
        assert r.n_unseen == sum(g in held_singles for g in genes)
        if r.n_unseen > 0: assert r.splits == {"test"}
    assert (per.n_unseen == 0).sum() > 0 and any(r.splits != {"test"} for _, r in per[per.n_unseen == 0].iterrows())
    _, none = _pair_screen(holdout_pairs=1.0)
    assert (none[none.n_unseen >= 0].split_pairs == "test").all()
    with pytest.raises(ValueError, match="holdout_singles"):
        from sccvae import data as D
        D.combination_manifest(a, holdout_singles=1.0)


def test_training_on_pairs_shifts_by_the_sum_and_trains_both_genes():
    "A pair's cells train with e = z + c_A S_A + c_B S_B; a pair-only batch sends gradient to both genes' penetrance."
    import torch
    from sccvae.model import SCCVAE
    from sccvae.train import Trainer, TrainConfig
    a, _ = _pair_screen()
    model = SCCVAE(a, n_latent=6, n_hidden=16, n_label_components=6, seed=0)
    data = model.data_view()
    t = a.obs["split"].astype(str).to_numpy()
    train_pairs = sorted({p for p, s in zip(a.obs["_scc_target"].astype(str), t) if "+" in p and s in ("train", "val")})
    assert set(train_pairs) <= set(data.combinations) and len(train_pairs) > 0   # held-out pairs of seen genes too
    tr = Trainer(model.module, data, TrainConfig.from_preset("default", max_epochs=1, progress=False))
    P = len(data.perturbations)
    cells = torch.cat(list(tr.sampler)).numpy()
    assert set(t[cells]) == {"train"}                                     # held-out pairs never train
    assert {data.combinations[c - P] for c in data.codes[cells].tolist() if c >= P} == \
        {p for p in train_pairs if (t[a.obs["_scc_target"].astype(str).to_numpy() == p] == "train").any()}
    q = train_pairs[0]
    idx = data.indices("train", perturbation=q)[:8]
    x, y, labels_g, index, c, layout, extra = tr._batch(idx, torch.Generator().manual_seed(0))
    assert index.shape == (8, 2) and c.shape == (8, 2)
    ga, gb = (data.perturbations.index(g) for g in q.split("+"))
    mod = model.module
    torch.testing.assert_close(c[0], mod.penetrance[[ga, gb]].detach().float())
    noise = torch.zeros(8, mod.n_latent)
    out = mod(x, labels_g, c, index=index, noise=noise, target_cols=extra.get("target_cols"))
    S = mod.shift(data.labels[[ga, gb]])
    want = out["z"] + c[:, :1] * S[0] + c[:, 1:] * S[1]
    torch.testing.assert_close(out["u"], mod.scm(want), rtol=1e-6, atol=1e-6)
    mod.zero_grad()
    out["y_hat"].pow(2).mean().backward()
    g = mod.penetrance.grad
    assert g[ga] != 0 and g[gb] != 0 and int((g != 0).sum()) == 2
    tr.fit()
    assert np.isfinite(tr.history[-1]["train_loss"]) and np.isfinite(tr.history[-1]["val_loss"])


def test_fit_interaction_closed_form_and_prediction_centre(monkeypatch):
    "With no model interaction (I = 0) the fitted rule is kappa = <obs, add>/<add, add> over the trained pairs; predict centres held-out pairs on it."
    import warnings
    from sccvae import data as D
    from sccvae.model import SCCVAE
    from sccvae.predict import PredictMixin
    a, _ = _pair_screen()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = SCCVAE(a, n_latent=6, n_hidden=16, n_label_components=6, seed=0)
        m.train(max_epochs=1, progress=False, accelerator="cpu")
    pairs = m.trained_combinations()
    t, tr = D.targets(a).astype(str).to_numpy(), (a.obs["split"] == "train").to_numpy()
    mean = lambda p: np.asarray(a.X[np.flatnonzero(tr & (t == p))].mean(0), np.float64).ravel()
    ctrl = mean("control")
    obs = np.stack([mean(p) - ctrl for p in pairs])
    add = np.stack([mean(p.split("+")[0]) + mean(p.split("+")[1]) - 2 * ctrl for p in pairs])
    monkeypatch.setattr(PredictMixin, "_decoded_changes", lambda self, mod, u0, v, C, cols, lib=None: np.zeros((v.shape[0], a.n_vars)))
    fit = m.fit_interaction(seed=1)
    assert fit["weight"] == 0.0 and fit["pairs"] == len(pairs) >= 3
    assert fit["kappa"] == pytest.approx((obs * add).sum() / (add * add).sum(), rel=1e-5)
    held = sorted(p for p in set(t[(a.obs["split"] == "test").to_numpy()]) if "+" in p and all(g in m.train_perturbations for g in p.split("+")))
    q = held[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m._interaction_fit = ((int(m.module.n_steps), 256, 0), fit)        # the same rule for the default call
        pred = m.predict([q], n_cells=64, seed=0, clip=False)
    want = fit["kappa"] * (mean(q.split("+")[0]) + mean(q.split("+")[1]) - 2 * ctrl)
    np.testing.assert_allclose(np.asarray(pred.X, np.float64).mean(0) - m.anchor.control_mean_, want, atol=2e-5)
    assert pred.uns["sccvae_prediction"]["additive_scale"] == pytest.approx(fit["kappa"])
