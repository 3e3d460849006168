"""Conformance suite over every registered solver, plus the CLI and infeasible inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moe_placement.cli.main import main
from moe_placement.cluster import load_cluster
from moe_placement.errors import InfeasibleError, PlacementError
from moe_placement.metrics import evaluate
from moe_placement.shapes import ModelShape
from moe_placement.solvers import REGISTRY, PlacementProblem, SolverConfig, run_solver
from moe_placement.traces.derive import derive_workload
from moe_placement.traces.reader import TraceFile
from moe_placement.traces.synth import SynthConfig, generate
from moe_placement.workload import Workload

DSV3 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dsv3-expert-loads"
FAST = SolverConfig(time_limit_s=1.0, extra={"deterministic": True})


@pytest.fixture(scope="module")
def trace_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("solvers") / "tiny.parquet"
    cfg = SynthConfig(
        num_layers=3, num_experts=8, top_k=2, num_tokens=1024, seq_len=64, affinity=0.8
    )
    generate(cfg, path, seed=3)
    return path


@pytest.fixture(scope="module")
def cluster():  # type: ignore[no-untyped-def]
    return load_cluster("h100-multirail").with_counts(4, 2)


@pytest.fixture(scope="module")
def workload(trace_path: Path, cluster) -> Workload:  # type: ignore[no-untyped-def]
    return derive_workload(TraceFile(trace_path), num_gpus=cluster.num_gpus)


def load_only(load: np.ndarray) -> Workload:
    layers, experts = load.shape
    shape = ModelShape("tiny", layers, experts, 2, 256, 128)
    return Workload(
        shape=shape, load=load, num_tokens=int(load.sum(axis=1).mean() / 2), source="test"
    )


def check_plan(plan, problem: PlacementProblem) -> None:  # type: ignore[no-untyped-def]
    plan.validate()
    assert plan.phy2log.shape == (problem.num_layers, problem.num_experts + problem.num_redundant)
    assert (plan.logcnt() >= 1).all()
    per_gpu = plan.phy2log.reshape(problem.num_layers, problem.num_gpus, problem.slots_per_gpu)
    for layer in range(problem.num_layers):
        for g in range(problem.num_gpus):
            assert len(set(per_gpu[layer, g].tolist())) == problem.slots_per_gpu
    log2phy = plan.log2phy()
    for layer in range(problem.num_layers):
        for e in range(problem.num_experts):
            slots = log2phy[layer, e][log2phy[layer, e] >= 0]
            assert (plan.phy2log[layer, slots] == e).all()
    prov = plan.provenance
    for key in ("objective", "bound", "gap"):
        assert getattr(prov, key) is not None, key
    assert prov.method
    assert prov.seconds >= 0
    assert prov.bound <= prov.objective * (1 + 1e-9) + 1e-9
    assert 0.0 <= prov.gap <= 1.0


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("redundant", [0, 4])
def test_every_solver_standard(name: str, redundant: int, workload: Workload, cluster) -> None:  # type: ignore[no-untyped-def]
    problem = PlacementProblem(workloads=(workload,), cluster=cluster, num_redundant=redundant)
    plan = run_solver(name, problem, FAST)
    check_plan(plan, problem)
    assert plan.provenance.seconds < 10


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_solver_coherent_and_load_only(name: str, workload: Workload, cluster) -> None:  # type: ignore[no-untyped-def]
    problem = PlacementProblem(workloads=(workload,), cluster=cluster, mode="coherent")
    check_plan(run_solver(name, problem, FAST), problem)
    rng = np.random.default_rng(0)
    lo = load_only(rng.integers(1, 1000, size=(2, 8)).astype(float))
    problem = PlacementProblem(workloads=(lo,), cluster=cluster, num_redundant=4)
    check_plan(run_solver(name, problem, FAST), problem)


def test_best_is_deterministic(workload: Workload, cluster) -> None:  # type: ignore[no-untyped-def]
    problem = PlacementProblem(workloads=(workload,), cluster=cluster, num_redundant=4)
    a = run_solver("best", problem, FAST)
    b = run_solver("best", problem, FAST)
    assert np.array_equal(a.phy2log, b.phy2log)


def test_best_beats_baselines_on_its_objective(workload: Workload, cluster) -> None:  # type: ignore[no-untyped-def]
    problem = PlacementProblem(workloads=(workload,), cluster=cluster)
    best = run_solver("best", problem, FAST).provenance.objective
    for name, entry in REGISTRY.items():
        if entry.baseline:
            assert best <= run_solver(name, problem, FAST).provenance.objective * (1 + 1e-9), name


def test_coherent_cuts_hops(workload: Workload, cluster) -> None:  # type: ignore[no-untyped-def]
    problem = PlacementProblem(workloads=(workload,), cluster=cluster, mode="coherent")
    best = run_solver("best", problem, SolverConfig(time_limit_s=2.0))
    base = run_solver("contiguous", problem, FAST)
    ev_best = evaluate(best, cluster, workload, mode="coherent")
    ev_base = evaluate(base, cluster, workload, mode="coherent")
    assert ev_best.hops.sum() <= 0.7 * ev_base.hops.sum()


def test_migration_budget(workload: Workload, cluster) -> None:  # type: ignore[no-untyped-def]
    start = run_solver("contiguous", PlacementProblem(workloads=(workload,), cluster=cluster), FAST)
    for budget in (0, 3):
        problem = PlacementProblem(
            workloads=(workload,), cluster=cluster, current=start, max_moves=budget
        )
        plan = run_solver("best", problem, FAST)
        moved = 0
        for layer in range(plan.num_layers):
            old = start.phy2log[layer].reshape(4, -1)
            new = plan.phy2log[layer].reshape(4, -1)
            moved += sum(len(set(new[g]) - set(old[g])) for g in range(4))
        assert moved <= budget


def test_robust_several_traces(workload: Workload, cluster) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    other = load_only(rng.integers(1, 1000, size=workload.load.shape).astype(float))
    other = Workload(
        shape=workload.shape, load=other.load, num_tokens=other.num_tokens, source="other"
    )
    for robust in ("weighted", "worst"):
        problem = PlacementProblem(workloads=(other, other), cluster=cluster, weights=(1.0, 2.0))
        plan = run_solver("best", problem, SolverConfig(time_limit_s=1.0, robust=robust))
        check_plan(plan, problem)


def test_infeasible_inputs(workload: Workload, cluster) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InfeasibleError):
        PlacementProblem(
            workloads=(workload,), cluster=load_cluster("h100-multirail").with_counts(16, 8)
        )
    problem = PlacementProblem(workloads=(workload,), cluster=cluster)
    for name in sorted(REGISTRY):
        with pytest.raises(InfeasibleError, match="GiB"):
            run_solver(name, problem, SolverConfig(free_memory_gib=1e-4))
    with pytest.raises(PlacementError):
        run_solver(
            "best",
            PlacementProblem(
                workloads=(load_only(workload.load),), cluster=cluster, mode="coherent"
            ),
        )


def test_cli(trace_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = [
        "--trace",
        str(trace_path),
        "--gpus",
        "4",
        "--gpus-per-node",
        "2",
        "--time-limit",
        "0.5",
    ]
    out = tmp_path / "plan.json"
    assert main(["solve", *common, "--out", str(out), "--redundant", "4", "--deterministic"]) == 0
    assert out.exists()
    assert main(["solve", *common, "--solver", "all", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for name in REGISTRY:
        assert name in text
    again = tmp_path / "again.json"
    code = main(
        [
            "solve",
            *common,
            "--out",
            str(again),
            "--redundant",
            "4",
            "--current",
            str(out),
            "--max-moves",
            "2",
        ]
    )
    assert code == 0
    assert main(["solve", *common, "--mode", "coherent", "--json", "--out", str(out)]) == 0
    assert main(["solve", *common, "--free-memory-gib", "0.00001", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "GiB" in err and "\n" not in err
    assert main(["solve", "--trace", str(trace_path), "--gpus", "16", "--out", str(out)]) == 2
    assert main(["solve", *common, "--solver", "nope", "--out", str(out)]) == 2


@pytest.mark.skipif(not DSV3.exists(), reason="DeepSeek-V3 loads not present")
def test_dsv3_targets() -> None:
    from moe_placement.solvers.common import load_bound
    from moe_placement.traces.loadjson import load_logical_count

    wl = load_logical_count(DSV3 / "prefill_in4096.json")
    cl = load_cluster("h100-multirail")
    plan = run_solver("best", PlacementProblem(workloads=(wl,), cluster=cl, num_redundant=64))
    assert evaluate(plan, cl, wl).max_over_mean().mean() <= 1.002
    problem = PlacementProblem(workloads=(wl,), cluster=cl)
    best = evaluate(run_solver("best", problem), cl, wl).gpu_load.max(axis=1)
    greedy = evaluate(run_solver("eplb-global", problem), cl, wl).gpu_load.max(axis=1)
    assert (best <= greedy * (1 + 1e-9)).all()
    bound = np.array([load_bound(wl.load[layer], 64, 4, 0) for layer in range(wl.num_layers)])
    assert best.mean() <= bound.mean() * 1.005


def test_deterministic_on_decomposed_paths(tmp_path: Path) -> None:
    """--deterministic must give identical plans on the LNS and hierarchical paths too."""
    rng = np.random.default_rng(5)
    lo = load_only(rng.zipf(1.5, size=(2, 128)).astype(float))
    cl = load_cluster("h100-multirail").with_counts(16, 8)
    config = SolverConfig(time_limit_s=1.0, extra={"deterministic": True})
    problem = PlacementProblem(workloads=(lo,), cluster=cl)
    a, b = run_solver("best", problem, config), run_solver("best", problem, config)
    assert "lns" in a.provenance.method
    assert np.array_equal(a.phy2log, b.phy2log)
    path = tmp_path / "wide.parquet"
    generate(
        SynthConfig(num_layers=2, num_experts=64, top_k=4, num_tokens=512, seq_len=64), path, seed=4
    )
    wl = derive_workload(TraceFile(path), num_gpus=16)
    problem = PlacementProblem(workloads=(wl,), cluster=cl)
    a, b = run_solver("best", problem, config), run_solver("best", problem, config)
    assert "hierarchical" in a.provenance.method
    assert np.array_equal(a.phy2log, b.phy2log)
