"""sccvae.effects: the CLIPR-style inversion on linear models with a known answer, and its refusals."""
import numpy as np
import pandas as pd
import pytest

from sccvae.effects import direct_effects


def _linear(n=15, seed=0, density=0.3):
    rng = np.random.default_rng(seed)
    B = np.triu(rng.random((n, n)) < density, 1) * rng.normal(0, 0.6, (n, n))
    p = rng.permutation(n); B = B[np.ix_(p, p)]
    g = [f"g{i}" for i in range(n)]
    T = np.diag(rng.uniform(0.3, 2.0, n) * rng.choice([-1, 1], n)) @ np.linalg.inv(np.eye(n) - B)
    return B, pd.DataFrame(T, index=g, columns=g)


def test_exact_inversion_recovers_the_dag():
    B, T = _linear()
    np.testing.assert_allclose(direct_effects(T, lam=0).to_numpy(), B, atol=1e-9)
    np.testing.assert_allclose(direct_effects(T, rank=len(T)).to_numpy(), B, atol=1e-9)


def test_regularised_inversion_ranks_true_edges_first_under_noise():
    B, T = _linear(n=25, seed=1)
    noisy = T + np.random.default_rng(2).normal(0, 0.01, T.shape)
    Bh = np.abs(direct_effects(noisy, lam=1e-3).to_numpy())
    true = np.abs(B) > 0
    off = ~np.eye(len(B), dtype=bool)
    top = np.argsort(-Bh[off])[:true[off].sum()]
    assert true[off][top].mean() > 0.8          # precision at the number of true edges


def test_extra_columns_and_weak_rows():
    B, T = _linear(n=8)
    wide = T.assign(extra=1.0)                   # affected genes that are not perturbed are ignored
    np.testing.assert_allclose(direct_effects(wide, lam=0).to_numpy(), B, atol=1e-9)
    weak = T.copy(); weak.iloc[0, 0] = 0.0
    assert "g0" not in direct_effects(weak, lam=0).index
    with pytest.raises(ValueError, match="square block"):
        direct_effects(pd.DataFrame(np.eye(2), index=["a", "b"], columns=["c", "d"]))
    with pytest.raises(ValueError, match="rank"):
        direct_effects(T, rank=99)
