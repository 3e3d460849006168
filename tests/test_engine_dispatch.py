"""Engine dispatch models (moe_placement.dispatch): per-engine properties, the evaluator under an engine
against a token-by-token emulation of that engine's own rule, and solving for an engine.

The emulations below are written from the engines' sources, independently of the module under test:
SGLang ``python/sglang/srt/eplb/expert_location.py`` (``compute_logical_to_rank_dispatch_physical_map``,
``_fair_choices``), vLLM ``vllm/model_executor/layers/fused_moe/router/base_router.py``
(``eplb_map_to_physical_and_record``), TensorRT-LLM
``cpp/tensorrt_llm/kernels/moeLoadBalance/moeLoadBalanceKernels.cu`` (``moeComputeRouteKernel``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from moe_placement.cli.main import main
from moe_placement.cluster import load_cluster
from moe_placement.dispatch import (
    ENGINES,
    dispatch_shares,
    draw_sglang_static_slots,
    emulated_shares,
    sglang_expected_shares,
    sglang_static_slots,
)
from moe_placement.metrics import evaluate
from moe_placement.plan import Plan
from moe_placement.shapes import ModelShape
from moe_placement.solvers import PlacementProblem, SolverConfig, run_solver
from moe_placement.solvers.common import greedy_layout, water_fill
from moe_placement.solvers.ilp import even_deal_counts
from moe_placement.traces.derive import derive_workload
from moe_placement.traces.reader import TraceFile
from moe_placement.workload import Workload, home_gpus

G, GPN, E, SPG = 8, 4, 16, 3  # 24 slots: 8 replicas


def skewed_plan(load: np.ndarray) -> Plan:
    """A greedy layout with water-filled replicas and deliberately uneven planned shares (0.8 to the
    first replica), so that the share-aware router and the engines' rules disagree."""
    rows, shares = [], []
    for layer_load in load:
        counts = water_fill(layer_load.astype(float), G * SPG - E, G)
        row = np.array(greedy_layout(layer_load.astype(float), counts, G, SPG, GPN)).ravel()
        share = np.zeros(row.size)
        for expert in range(E):
            slots = np.flatnonzero(row == expert)
            share[slots] = 0.2 / max(slots.size - 1, 1)
            share[slots[0]] = 0.8 if slots.size > 1 else 1.0
        rows.append(row)
        shares.append(share)
    return Plan(G, GPN, SPG, np.stack(rows), np.stack(shares)).validate()


def load_only(load: np.ndarray) -> Workload:
    layers, experts = load.shape
    return Workload(
        shape=ModelShape("tiny", layers, experts, 2, 256, 128),
        load=load,
        num_tokens=int(load.sum(axis=1).mean() / 2),
        source="test",
    )


def reference_sglang_table(plan: Plan, seed: int = 42) -> np.ndarray:
    """SGLang's static map, written from its loop: per layer, per logical expert, each rank takes its
    own replica (lowest physical id on it) if any; the others get a fair deal (each candidate
    ``k // n`` times plus ``k % n`` sampled, shuffled) from one ``random.Random(seed)``."""
    r = random.Random(seed)
    per_gpu = plan.slots_per_gpu
    out = np.full((plan.num_layers, plan.num_gpus, plan.num_experts), -1)
    for layer in range(plan.num_layers):
        for expert in range(plan.num_experts):
            candidates = [int(s) for s in np.flatnonzero(plan.phy2log[layer] == expert)]
            for gpu in range(plan.num_gpus):
                same = [s for s in candidates if s // per_gpu == gpu]
                if same:
                    out[layer, gpu, expert] = same[0]
            remain = int((out[layer, :, expert] == -1).sum())
            quotient, remainder = divmod(remain, len(candidates))
            dealt = candidates * quotient + r.sample(candidates, k=remainder)
            r.shuffle(dealt)
            out[layer, out[layer, :, expert] == -1, expert] = dealt
    return out


@pytest.fixture(scope="module")
def tiny(tiny_trace: Path) -> tuple[Workload, Plan]:
    wl = derive_workload(TraceFile(tiny_trace), num_gpus=G)
    return wl, skewed_plan(wl.load)


def test_shares_sum_to_one_per_source_and_expert(tiny: tuple[Workload, Plan]) -> None:
    wl, plan = tiny
    for engine in ENGINES:
        for layer in range(plan.num_layers):
            D = dispatch_shares(plan, layer, engine, wl.demand(G)[layer])
            assert D.shape == (G, plan.num_slots)
            assert (D >= -1e-12).all()
            per_expert = np.zeros((G, E))
            np.add.at(per_expert.T, plan.phy2log[layer], D.T)
            np.testing.assert_allclose(per_expert, 1.0, atol=1e-9, err_msg=engine)


def test_sglang_local_first_and_even_deal(tiny: tuple[Workload, Plan]) -> None:
    _, plan = tiny
    table = sglang_static_slots(plan)
    np.testing.assert_array_equal(table, reference_sglang_table(plan))
    slot_gpu = plan.slot_gpu()
    for layer in range(plan.num_layers):
        row = plan.phy2log[layer]
        for expert in range(E):
            slots = np.flatnonzero(row == expert)
            hosts = slot_gpu[slots]
            chosen = table[layer, :, expert]
            assert set(chosen) <= set(slots)  # only the expert's own replicas
            assert (slot_gpu[chosen[hosts]] == hosts).all()  # a host GPU keeps its tokens local
            remote = np.setdiff1d(np.arange(G), hosts)
            dealt = np.bincount(np.searchsorted(slots, chosen[remote]), minlength=slots.size)
            assert dealt.max() - dealt.min() <= 1  # the fair deal: floor or ceil each
    # the expectation over the draw: local 1, else an even split
    D = sglang_expected_shares(plan, 0)
    for expert in range(E):
        slots = np.flatnonzero(plan.phy2log[0] == expert)
        hosts = slot_gpu[slots]
        np.testing.assert_allclose(D[hosts][:, slots], np.eye(slots.size))
        remote = np.setdiff1d(np.arange(G), hosts)
        np.testing.assert_allclose(D[remote][:, slots], 1.0 / slots.size)


@pytest.mark.slow  # compiles the deal kernel (~20 CPU-s cold)
@pytest.mark.parametrize("kernel", [False, True])
def test_sglang_deal_replays_pythons_generator_on_both_sample_paths(kernel: bool) -> None:
    """Many replicas of one expert (31 on 64 GPUs: ``random.sample`` takes its set path) and pairs;
    the plain and the compiled deal both replay ``random.Random(42)`` as the engine calls it."""
    G64, spg = 64, 2
    rng = np.random.default_rng(2)
    rows = []
    for _ in range(3):
        items = np.concatenate([np.zeros(30, dtype=np.int64), np.arange(98)])  # expert 0: 31 slots
        held: list[list[int]] = [[] for _ in range(G64)]
        for g, e in zip(range(30), items[:30], strict=True):
            held[g].append(int(e))
        rest = rng.permutation(items[30:])
        for e in rest.tolist():
            g = next(g for g in rng.permutation(G64) if len(held[g]) < spg and e not in held[g])
            held[g].append(e)
        rows.append(np.array(held).ravel())
    plan = Plan(G64, 8, spg, np.stack(rows)).validate()
    drawn = draw_sglang_static_slots(plan, kernel=kernel)
    np.testing.assert_array_equal(drawn, reference_sglang_table(plan))


def test_vllm_and_trtllm_split_evenly_whatever_the_plan_shares(tiny: tuple[Workload, Plan]) -> None:
    wl, plan = tiny
    count = plan.logcnt()
    for engine in ("vllm", "trtllm"):
        D = dispatch_shares(plan, 1, engine, wl.demand(G)[1])
        np.testing.assert_allclose(D, np.broadcast_to(1.0 / count[1][plan.phy2log[1]], D.shape))
    share = dispatch_shares(plan, 1, "share", None)
    np.testing.assert_allclose(share, np.broadcast_to(plan.shares()[1], share.shape))


def brute_force_loads(wl: Workload, plan: Plan, engine: str, orders: int = 1) -> np.ndarray:
    """``[layers, gpus]`` assignments when each token, at its home rank, picks a replica by the engine's
    own rule; ``orders`` random orders of each rank's batch, averaged (vLLM and TensorRT-LLM depend on
    the entries' positions in the rank's batch)."""
    L = plan.num_layers
    log2phy, cnt, slot_gpu = plan.log2phy(), plan.logcnt(), plan.slot_gpu()
    table = reference_sglang_table(plan) if engine == "sglang" else None
    chunks = list(wl.chunks())
    seq = np.concatenate([c.seq_id for c in chunks])
    pos = np.concatenate([c.pos for c in chunks])
    ids = np.concatenate([c.expert_ids for c in chunks], axis=1)  # [layers, tokens, k]
    home = home_gpus(seq, pos, G, wl.home_policy)
    k = ids.shape[2]
    rng = np.random.default_rng(0)
    total = np.zeros((L, G))
    for _ in range(orders):
        for rank in range(G):
            mine = rng.permutation(np.flatnonzero(home == rank))
            for layer in range(L):
                entries = ids[layer, mine].ravel()  # the rank's batch, flattened (token, k) entries
                seen = np.zeros(E, dtype=np.int64)  # TensorRT-LLM: occurrences so far in the block
                for flat, expert in enumerate(entries.tolist()):
                    r = int(cnt[layer, expert])
                    if engine == "sglang":
                        slot = table[layer, rank, expert]  # type: ignore[index]
                    elif engine == "vllm":
                        slot = log2phy[layer, expert, flat % r]
                    else:  # trtllm: round-robin per 1024-entry block, from block index + rank
                        block = flat // 1024
                        if flat % 1024 == 0:
                            seen[:] = 0
                        slot = log2phy[layer, expert, (block + rank + seen[expert]) % r]
                        seen[expert] += 1
                    total[layer, slot_gpu[slot]] += 1
    del k
    return total / orders


def test_evaluator_sglang_equals_token_by_token_emulation(tiny: tuple[Workload, Plan]) -> None:
    wl, plan = tiny
    ev = evaluate(plan, load_cluster("h100-multirail").with_counts(G, GPN), wl, engine="sglang")
    np.testing.assert_allclose(ev.gpu_load, brute_force_loads(wl, plan, "sglang"))
    assert ev.engine == "sglang" and ev.to_dict()["engine"] == "sglang"


@pytest.mark.parametrize("engine", ["vllm", "trtllm"])
def test_evaluator_even_split_engines_match_emulation(
    tiny: tuple[Workload, Plan], engine: str
) -> None:
    """The evaluator draws each token's replica from the engine's shares by a hash; the engine's own
    positional rule, averaged over batch orders, must give the same loads within sampling noise, and
    the share-aware router (0.8 to one replica here) must not."""
    wl, plan = tiny
    cluster = load_cluster("h100-multirail").with_counts(G, GPN)
    emulated = brute_force_loads(wl, plan, engine, orders=3)
    mean = emulated.mean()
    ev = evaluate(plan, cluster, wl, engine=engine)
    assert np.abs(ev.gpu_load - emulated).max() < 0.05 * mean
    router = evaluate(plan, cluster, wl, engine="share")
    assert np.abs(router.gpu_load - emulated).max() > 0.1 * mean


def test_load_only_evaluator_equals_engine_rule() -> None:
    rng = np.random.default_rng(5)
    load = np.rint(rng.lognormal(10, 1.0, size=(3, E)))
    wl = load_only(load)
    plan = skewed_plan(load)
    cluster = load_cluster("h100-multirail").with_counts(G, GPN)
    table = reference_sglang_table(plan)
    for engine in ("sglang", "vllm", "trtllm"):
        ev = evaluate(plan, cluster, wl, engine=engine)
        for layer in range(plan.num_layers):
            demand = np.broadcast_to(load[layer] / G, (G, E))
            if engine == "sglang":  # each source's demand to its one slot
                expected = np.zeros(G)
                for src in range(G):
                    np.add.at(expected, plan.slot_gpu()[table[layer, src]], demand[src])
            else:  # whole entries dealt round the replicas
                D = emulated_shares(plan, layer, engine, demand)
                expected = np.bincount(
                    plan.slot_gpu(),
                    weights=(demand[:, plan.phy2log[layer]] * D).sum(axis=0),
                    minlength=G,
                )
            np.testing.assert_allclose(ev.gpu_load[layer], expected, rtol=1e-3, err_msg=engine)


def test_even_deal_counts_divide_the_gpus() -> None:
    load = np.random.default_rng(1).lognormal(0, 1.2, size=64)
    counts = even_deal_counts(load, 16, 16)
    assert counts.sum() == 64 + 16 and counts.min() >= 1
    assert all(16 % c == 0 for c in counts)


SOLVE_G, SOLVE_E, SOLVE_R = 16, 64, 16


def test_solving_for_sglang_beats_the_default_plan_under_sglang(tmp_path: Path) -> None:
    """A skewed synthetic load: the default plan (free replica shares) loses balance under SGLang's
    dispatch; the plan solved with --engine sglang keeps it, and its MoE time is no worse."""
    rng = np.random.default_rng(7)
    load = np.rint(rng.lognormal(8, 1.0, size=(3, SOLVE_E)) * 100)
    wl = load_only(load)
    cluster = load_cluster("h100-multirail").with_counts(SOLVE_G, 8)
    config = SolverConfig(time_limit_s=2.0, extra={"deterministic": True})
    default = run_solver("best", PlacementProblem((wl,), cluster, SOLVE_R), config)
    sglang = run_solver("best", PlacementProblem((wl,), cluster, SOLVE_R, engine="sglang"), config)
    assert default.provenance.engine is None and sglang.provenance.engine == "sglang"
    under_default = evaluate(default, cluster, wl, engine="sglang").summary()
    under_sglang = evaluate(sglang, cluster, wl, engine="sglang").summary()
    assert under_sglang["mean_max_over_mean"] < under_default["mean_max_over_mean"] - 1e-3
    assert under_sglang["moe_time_us"] <= under_default["moe_time_us"] * (1 + 1e-9)
    # evaluate defaults to the plan's own engine; the plan stores the shares SGLang gives
    assert evaluate(sglang, cluster, wl).engine == "sglang"
    assert sglang.provenance.objective == pytest.approx(under_sglang["moe_time_us"])


def test_cli_engine_flag(
    tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tiny_trace
    out = tmp_path / "plan.json"
    args = [
        "--trace",
        str(trace),
        "--gpus",
        str(G),
        "--gpus-per-node",
        str(GPN),
        "--redundant",
        "8",
    ]
    solve = ["solve", *args, "--solver", "greedy", "--engine", "sglang", "--out", str(out)]
    assert main(solve) == 0
    text = capsys.readouterr().out
    assert "dispatch: sglang" in text
    assert json.loads(out.read_text())["provenance"]["engine"] == "sglang"
    assert main(["evaluate", "--trace", str(trace), "--plan", str(out), "--engine", "vllm"]) == 0
    assert "dispatch: vllm" in capsys.readouterr().out
    assert main(["compare", *args, "--solvers", "eplb", "--time-limit", "1"]) == 0
    assert "no serving engine implements it today" in capsys.readouterr().out
    with pytest.raises(SystemExit) as bad:
        main(["solve", *args, "--engine", "tgi", "--out", str(tmp_path / "x.json")])
    assert bad.value.code == 2
    assert not (tmp_path / "x.json").exists()


def test_whatif_scenarios_sweep_the_engine(tiny_trace: Path) -> None:
    """The what-if pipeline solves each scenario for its dispatch and the plan records it."""
    from moe_placement.pipeline.engine import solve_plan
    from moe_placement.pipeline.scenario import Scenario, expand, parse_sweep

    base = Scenario(str(tiny_trace), "x", G, GPN, "H100", "multi-rail", 400.0, redundant=8)
    sweep = parse_sweep(["engine=sglang,vllm"])
    assert [s.dispatch for s in expand(base, sweep)] == ["sglang", "vllm"]
    assert len({s.key(load_cluster("h100-multirail"), "t") for s in expand(base, sweep)}) == 2
    wl = derive_workload(TraceFile(tiny_trace), num_gpus=G)
    cluster = load_cluster("h100-multirail").with_counts(G, GPN)
    common = {"solver": "greedy", "redundant": 8, "mode": "standard", "time_limit_s": 1.0}
    plan = solve_plan(wl, cluster, **common, seed=0, dispatch="trtllm")
    assert plan.provenance.engine == "trtllm"
    assert evaluate(plan, cluster, wl).engine == "trtllm"


def test_regress_stores_the_engine_in_the_baseline(
    tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = tmp_path / "baseline.json"
    argv = [
        "regress",
        "--trace",
        str(tiny_trace),
        "--baseline",
        str(baseline),
        "--solver",
        "greedy",
        "--gpus",
        "4",
        "--gpus-per-node",
        "2",
        "--redundant",
        "4",
    ]
    assert main([*argv, "--engine", "sglang", "--update-baseline"]) == 0
    assert json.loads(baseline.read_text())["config"]["serving_engine"] == "sglang"
    assert "dispatch: sglang" in capsys.readouterr().out
    assert main([*argv, "--json"]) == 0  # the baseline's engine is used again
    assert json.loads(capsys.readouterr().out)["config"]["serving_engine"] == "sglang"
