"""The streamed JL projectors: contracts, determinism, chunking, JL tolerance, unbiasedness and memory."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from mwga_plugins.projectors.fastfood import FastfoodProjector, FastfoodProjectorConfig, walsh_hadamard_
from mwga_plugins.projectors.gaussian import GaussianProjector, GaussianProjectorConfig
from mwga_plugins.projectors.rademacher import RademacherProjector, RademacherProjectorConfig
from mwga_plugins.projectors.sparse_jl import SparseJLProjector, SparseJLProjectorConfig

from mwga_core.api.context import RunContext
from mwga_core.api.errors import ConfigValueError
from mwga_core.testing import ProjectorContract


class TestRademacherContract(ProjectorContract):
    component_class = RademacherProjector


class TestSparseJLContract(ProjectorContract):
    component_class = SparseJLProjector
    config = SparseJLProjectorConfig(dim=64, sparsity=4)


class TestFastfoodContract(ProjectorContract):
    component_class = FastfoodProjector


def make(name: str, dim: int, **extra):
    if name == "gaussian":
        return GaussianProjector(GaussianProjectorConfig(dim=dim))
    if name == "rademacher":
        return RademacherProjector(RademacherProjectorConfig(dim=dim))
    if name == "sparse_jl":
        return SparseJLProjector(SparseJLProjectorConfig(dim=dim, **extra))
    return FastfoodProjector(FastfoodProjectorConfig(dim=dim))


PROJECTORS = [
    ("gaussian", {}),
    ("rademacher", {}),
    ("sparse_jl", {}),
    ("sparse_jl", {"sparsity": 8}),
    ("fastfood", {}),
]
IDS = ["gaussian", "rademacher", "countsketch", "sparse_jl_s8", "fastfood"]


def random_rows(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32))


def jl_epsilon(dim: int, vectors: int, failure: float) -> float:
    """Smallest eps with vectors * 2 exp(-P (eps^2/2 - eps^3/3) / 2) <= failure (Dasgupta and Gupta)."""
    target = math.log(2 * vectors / failure) * 2 / dim
    eps = 0.0
    while eps**2 / 2 - eps**3 / 3 < target:
        eps += 1e-3
    return eps


@pytest.mark.parametrize(("name", "extra"), PROJECTORS, ids=IDS)
def test_norms_and_inner_products_within_jl_tolerance(name, extra):
    # JL bound: for one vector x, P(| ||Ax||^2 / ||x||^2 - 1 | > eps) <= 2 exp(-P (eps^2/2 - eps^3/3) / 2)
    # (Gaussian; Rademacher satisfies the same bound). Inner products follow by polarisation from the
    # norms of x_i +- x_j: |<Ax_i, Ax_j> - <x_i, x_j>| <= eps (|x_i|^2 + |x_j|^2) / 2. With n = 50
    # vectors that is 50 + 2 * 1225 = 2500 vectors; a union bound at failure probability 1e-3 and
    # P = 512 gives eps ~= 0.41. Sparse JL and Fastfood have weaker worst-case tails, but on these
    # well-spread random vectors they concentrate the same way. All maps are seeded: no flakiness.
    n, d, p = 50, 4096, 512
    eps = jl_epsilon(p, n + n * (n - 1), 1e-3)
    assert 0.35 < eps < 0.45
    x = random_rows(n, d, seed=11)
    y = make(name, p, **extra).project(x, RunContext(seed=5)).double()
    gram, projected = (x.double() @ x.double().T), y @ y.T
    norms = torch.diag(gram)
    assert float(((torch.diag(projected) - norms) / norms).abs().max()) <= eps
    bound = eps * (norms[:, None] + norms[None, :]) / 2
    assert bool(((projected - gram).abs() <= bound).all())


@pytest.mark.parametrize(("name", "extra"), PROJECTORS, ids=IDS)
def test_inner_products_preserved_in_expectation(name, extra):
    # Averaged over 50 independent maps (seeds), <Ax, Ay> estimates <x, y> with standard error
    # <= sqrt(2/P) |x| |y| / sqrt(50) = 0.0125 |x| |y| at P = 256; a scaling bug would be far off.
    # D = 700 pads to 1024 in Fastfood, so the zero padding is exercised too.
    x = random_rows(2, 700, seed=3)
    x[1] = 0.6 * x[0] + 0.8 * x[1]
    projector = make(name, 256, **extra)
    estimates = torch.stack(
        [(lambda y: y @ y.T)(projector.project(x, RunContext(seed=s)).double()) for s in range(50)]
    ).mean(0)
    exact = x.double() @ x.double().T
    scale = float(torch.sqrt(exact[0, 0] * exact[1, 1]))
    assert float((estimates - exact).abs().max()) / scale < 0.05


@pytest.mark.parametrize(("name", "extra"), PROJECTORS, ids=IDS)
def test_chunking_and_repeated_calls(name, extra):
    x = random_rows(9, 9000, seed=1)
    projector, ctx = make(name, 96, **extra), RunContext(seed=2)
    whole = projector.project(x, ctx)
    pieces = torch.cat(
        [projector.project(x[:4], ctx), projector.project(x[4:5], ctx), projector.project(x[5:], ctx)]
    )
    np.testing.assert_array_equal(projector.project(x, ctx).numpy(), whole.numpy())
    if name in ("sparse_jl", "fastfood"):
        # row-wise operations only: bit-identical whatever the chunking
        np.testing.assert_array_equal(pieces.numpy(), whole.numpy())
    else:
        np.testing.assert_allclose(pieces.numpy(), whole.numpy(), rtol=1e-5, atol=1e-4)
    other_seed = projector.project(x, RunContext(seed=3))
    assert not torch.allclose(other_seed, whole)


def test_fastfood_stacks_blocks_when_p_exceeds_padded_d():
    x = random_rows(3, 100, seed=4)  # pads to 128; P = 300 needs 3 blocks
    y = make("fastfood", 300).project(x, RunContext(seed=0))
    assert y.shape == (3, 300)
    ratio = (y.double().norm(dim=1) ** 2) / (x.double().norm(dim=1) ** 2)
    assert bool(((ratio > 0.6) & (ratio < 1.4)).all())
    # the third block is not a copy of the first
    assert not torch.allclose(y[:, :44], y[:, 256:300])


@pytest.mark.parametrize("length", [1, 2, 4, 8, 16, 32, 64, 256])
def test_walsh_hadamard_matches_explicit_matrix(length):
    hadamard = torch.ones((1, 1), dtype=torch.float64)
    while hadamard.shape[0] < length:
        hadamard = torch.cat([torch.cat([hadamard, hadamard], 1), torch.cat([hadamard, -hadamard], 1)], 0)
    x = torch.from_numpy(np.random.default_rng(length).standard_normal((3, length)))
    np.testing.assert_allclose(walsh_hadamard_(x.clone()).numpy(), (x @ hadamard).numpy(), atol=1e-10)


def test_walsh_hadamard_rejects_non_power_of_two():
    with pytest.raises(ValueError, match="power-of-two"):
        walsh_hadamard_(torch.zeros((1, 12)))


@pytest.mark.parametrize(
    ("projector_class", "config", "field"),
    [
        (RademacherProjector, RademacherProjectorConfig(dim=0), "dim"),
        (FastfoodProjector, FastfoodProjectorConfig(dim=-3), "dim"),
        (SparseJLProjector, SparseJLProjectorConfig(dim=0), "dim"),
        (SparseJLProjector, SparseJLProjectorConfig(dim=16, sparsity=0), "sparsity"),
        (SparseJLProjector, SparseJLProjectorConfig(dim=16, sparsity=17), "sparsity"),
    ],
)
def test_bad_config_values_are_rejected(projector_class, config, field):
    with pytest.raises(ConfigValueError) as error:
        projector_class(config)
    assert error.value.field == field


def test_sparse_jl_has_sparsity_nonzeros_per_coordinate():
    # Projecting the identity reveals the implicit (D, P) matrix: s entries +-1/sqrt(s) per row,
    # one in each of the s output groups.
    d, p, s = 50, 24, 3
    matrix = make("sparse_jl", p, sparsity=s).project(torch.eye(d), RunContext(seed=0))
    nonzero = matrix != 0
    assert bool((nonzero.sum(1) == s).all())
    np.testing.assert_allclose(matrix[nonzero].abs().numpy(), 1 / math.sqrt(s), rtol=1e-6)
    for group in range(s):
        low, high = group * p // s, (group + 1) * p // s
        assert bool((nonzero[:, low:high].sum(1) == 1).all())


PROCESS_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np, torch
    from mwga_core.api.context import RunContext
    from mwga_plugins.projectors.fastfood import FastfoodProjector, FastfoodProjectorConfig
    from mwga_plugins.projectors.gaussian import GaussianProjector, GaussianProjectorConfig
    from mwga_plugins.projectors.rademacher import RademacherProjector, RademacherProjectorConfig
    from mwga_plugins.projectors.sparse_jl import SparseJLProjector, SparseJLProjectorConfig

    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    report = {"small": {}, "growth_mib": {}}
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((5, 3000)).astype(np.float32))
    projectors = {
        "gaussian": GaussianProjector(GaussianProjectorConfig(dim=64)),
        "rademacher": RademacherProjector(RademacherProjectorConfig(dim=64)),
        "sparse_jl": SparseJLProjector(SparseJLProjectorConfig(dim=64, sparsity=2)),
        "fastfood": FastfoodProjector(FastfoodProjectorConfig(dim=64)),
    }
    for name, projector in projectors.items():
        report["small"][name] = projector.project(x, RunContext(seed=7)).numpy().tolist()
    # A dense (D, P) float32 matrix would take D * P * 4 bytes: 293 MiB for the dense projectors at
    # D = 150k, 1.9 GiB for the others at D = 1M (generating 5e8 dense entries would take too long).
    for name, d in (("gaussian", 150_000), ("rademacher", 150_000), ("sparse_jl", 1_000_000), ("fastfood", 1_000_000)):
        big = torch.ones((3, d), dtype=torch.float32)
        before = peak_mib()
        out = type(projectors[name])(type(projectors[name].config)(dim=512)).project(big, RunContext(seed=7))
        assert out.shape == (3, 512) and bool(out.isfinite().all())
        report["growth_mib"][name] = peak_mib() - before
        del big, out
    print(json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def other_process_report() -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PROCESS_SCRIPT], capture_output=True, text=True, timeout=3600, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["gaussian", "rademacher", "sparse_jl", "fastfood"])
def test_same_map_in_another_process(name, other_process_report):
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((5, 3000)).astype(np.float32))
    extra = {"sparsity": 2} if name == "sparse_jl" else {}
    here = make(name, 64, **extra).project(x, RunContext(seed=7)).numpy()
    np.testing.assert_array_equal(np.asarray(other_process_report["small"][name], dtype=np.float32), here)


@pytest.mark.parametrize("name", ["gaussian", "rademacher", "sparse_jl", "fastfood"])
def test_never_allocates_a_dense_matrix(name, other_process_report):
    # Peak resident memory growth while projecting 3 vectors to P = 512 stays far below the dense
    # matrix (>= 293 MiB, see PROCESS_SCRIPT); the streamed maps need tens of MiB.
    assert other_process_report["growth_mib"][name] < 140
