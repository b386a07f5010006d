"""sccvae.graph and sccvae.module: masks, the triangular SCM solve, the one-Gram MMD, the loss."""
import numpy as np
import pandas as pd
import pytest
import torch

from sccvae.graph import causal_graph, full_graph, conditional_graph, make_graph, random_graph, estimate_graph
from sccvae.module import SCCVAEModule, gaussian_kl, mmd, mmd_broadcast, sccvae_loss, scm_solve, group_layout


def test_masks_strictly_upper_and_density():
    for g in (full_graph(9), conditional_graph(9), random_graph(9, n_edges=10, seed=1)):
        assert not np.tril(g.mask).any() and g.mask.dtype == np.float32
    assert full_graph(9).n_edges == 36 and conditional_graph(9).n_edges == 0
    r = random_graph(512, n_edges=3929, seed=3)
    assert r.n_edges == 3929 and r.seed == 3
    assert np.array_equal(random_graph(512, n_edges=3929, seed=3).mask, r.mask)
    assert not np.array_equal(random_graph(512, n_edges=3929, seed=4).mask, r.mask)
    approx = random_graph(512, density=r.density, seed=0, exact=False)
    assert abs(approx.n_edges - 3929) < 300


def test_causal_graph_reorders_and_pads():
    E = pd.DataFrame({"parent": ["y", "x"], "child": ["z", "y"]})
    g = causal_graph(E, nodes=["z", "y", "x"], n_latent=4)
    assert g.nodes == ["x", "y", "z", ""] and g.n_edges == 2 and g.info["reordered"]
    with pytest.raises(ValueError, match="cycle"):
        causal_graph(pd.DataFrame({"parent": ["a", "b"], "child": ["b", "a"]}), nodes=["a", "b"])
    with pytest.raises(ValueError, match="needs `edges`"):
        make_graph("causal", 4)


def test_k562_gsp_graph(reference_dir):
    g = causal_graph(reference_dir / "k562_gsp_dag_edges.csv", reference_dir / "k562_dag_genes.csv", n_latent=512)
    assert g.n_edges == 3929 and not g.info["reordered"] and len(g.nodes) == 512
    r = make_graph("random", 512, edges=reference_dir / "k562_gsp_dag_edges.csv",
                   nodes=reference_dir / "k562_dag_genes.csv", seed=1)
    assert r.n_edges == 3929


def test_estimate_graph_missing_dependency_is_clear():
    try:
        import causallearn  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install causal-learn"):
            estimate_graph(np.zeros((5, 2)), ["a", "b"])
    else:
        pytest.skip("causal-learn is installed")


def test_scm_solve_equals_inverse_and_gradients():
    torch.manual_seed(0)
    n = 12
    B = torch.randn(n, n, dtype=torch.float64, requires_grad=True)
    M = torch.triu(torch.ones(n, n, dtype=torch.float64), 1)
    e = torch.randn(7, n, dtype=torch.float64)
    f = lambda B: torch.linalg.solve_triangular(torch.eye(n, dtype=torch.float64) - B * M, e, upper=True,
                                                left=False, unitriangular=True)
    assert torch.allclose(f(B), e @ torch.inverse(torch.eye(n, dtype=torch.float64) - B * M), atol=1e-8)
    assert torch.autograd.gradcheck(f, (B,))
    A32 = (B * M).detach().float()
    assert torch.allclose(scm_solve(e.float(), A32), e.float() @ torch.inverse(torch.eye(n) - A32), atol=1e-4)


def test_module_forward_conditional_and_seed():
    m, d, P, n = 25, 5, 3, 6
    mod = SCCVAEModule(m, d, P, n_latent=n, n_hidden=16, seed=1)
    assert torch.equal(SCCVAEModule(m, d, P, n_latent=n, n_hidden=16, seed=1).B, mod.B)
    x = torch.rand(8, m)
    c = mod.penetrance_of(torch.tensor([1] * 4 + [-1] * 4))
    out = mod(x, torch.randn(2, d), c, index=torch.tensor([0] * 4 + [1] * 4), generator=torch.Generator().manual_seed(0))
    assert out["y_hat"].shape == (8, m) and torch.allclose(out["u"][4:], out["u0"][4:], atol=1e-6)
    cond = SCCVAEModule(m, d, P, torch.zeros(n, n), n_latent=n, n_hidden=16)
    assert cond.adjacency() is None
    sd = cond.state_dict()
    assert "mask" in sd  # the mask is saved with the weights
    full = SCCVAEModule(m, d, P, n_latent=n, n_hidden=16)
    full.load_state_dict(sd)
    assert full.adjacency() is None  # loading a conditional state switches the solve off


def test_mmd_gram_matches_broadcast_and_groups():
    torch.manual_seed(1)
    a, b = torch.randn(20, 50) * 4, torch.randn(20, 50) * 4 + 2
    assert torch.allclose(mmd(a, b), mmd_broadcast(a.double(), b.double()).float(), atol=1e-4)
    g = torch.tensor([0] * 6 + [1] * 9 + [2] * 5)
    per = mmd(a, b, group=g, reduce=False)
    ref = torch.stack([mmd(a[g == k], b[g == k]) for k in range(3)])
    assert torch.allclose(per, ref, atol=1e-4)
    G, L, slot, counts = group_layout(g)
    assert (G, L) == (3, 9) and counts.tolist() == [6, 9, 5]


def test_loss_parts_and_kl():
    assert float(gaussian_kl(torch.zeros(4, 3), torch.ones(4, 3))) == pytest.approx(0.0, abs=1e-7)
    mod = SCCVAEModule(10, 3, 2, n_latent=4, n_hidden=8)
    x, y = torch.rand(6, 10), torch.rand(6, 10)
    out = mod(x, torch.randn(1, 3), mod.penetrance_of(torch.zeros(6, dtype=torch.long)), index=torch.zeros(6, dtype=torch.long))
    loss, p = sccvae_loss(out, x, y, beta=0.3, gamma=10, recon_scale=0.25)
    assert float(loss) == pytest.approx(float(0.25 * p["recon"] + p["pert"] + 0.3 * p["kl"] + 10 * p["mmd"]), rel=1e-5)
