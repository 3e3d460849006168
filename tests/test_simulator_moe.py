"""simulate_moe on a tiny trace and plan, overlap modes, outputs, and the ``placement simulate`` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moe_placement.cli.commands._common import load_workload
from moe_placement.cli.main import main
from moe_placement.cluster import load_cluster
from moe_placement.errors import PlacementError
from moe_placement.plan import Plan, Provenance
from moe_placement.simulator import SimResult, simulate_moe


def _plan(layers: int = 4, experts: int = 16, gpus: int = 8, per_node: int = 4) -> Plan:
    phy2log = np.tile(np.arange(experts), (layers, 1))
    return Plan(
        gpus,
        per_node,
        experts // gpus,
        phy2log,
        provenance=Provenance(solver="round-robin"),
    )


@pytest.fixture(scope="module")
def setup(tiny_trace: Path):  # type: ignore[no-untyped-def]
    cluster = load_cluster("h800-mpft").with_counts(8, 4)
    return _plan(), cluster, load_workload(str(tiny_trace), 8, progress=False)


@pytest.mark.parametrize("algo", ["direct", "deepep", "2dh", "deepep-ll"])
def test_per_layer_outputs(setup, algo: str) -> None:  # type: ignore[no-untyped-def]
    plan, cluster, workload = setup
    res = simulate_moe(plan, cluster, workload, algo=algo, progress=False)
    assert isinstance(res, SimResult)
    assert len(res.per_layer) == plan.num_layers
    for row in res.per_layer:
        for key in (
            "layer",
            "dispatch_us",
            "compute_us",
            "combine_us",
            "layer_us",
            "exposed_comm_us",
        ):
            assert key in row
        # GPUs move on as their own data lands, so phases of different GPUs may overlap a little
        assert row["dispatch_us"] + row["compute_us"] + row["combine_us"] >= row["layer_us"] - 1e-6
        assert row["layer_us"] >= max(row["dispatch_us"], row["combine_us"]) - 1e-6
        assert row["dispatch_us"] + row["combine_us"] >= row["comm_lower_bound_us"] * (1 - 1e-9)
    assert res.total_us == pytest.approx(sum(r["layer_us"] for r in res.per_layer))
    assert res.stats["worst_link_utilisation"] <= 1 + 1e-9
    json.dumps(res.to_dict())


def test_deepep_moves_fewer_nic_bytes_than_direct(setup) -> None:  # type: ignore[no-untyped-def]
    plan, cluster, workload = setup
    direct = simulate_moe(plan, cluster, workload, algo="direct", layers=[0], progress=False)
    deepep = simulate_moe(plan, cluster, workload, algo="deepep", layers=[0], progress=False)
    assert deepep.per_gpu_bytes("nic-tx").sum() < direct.per_gpu_bytes("nic-tx").sum()


def test_overlap_hides_communication(setup) -> None:  # type: ignore[no-untyped-def]
    plan, cluster, workload = setup
    kw = {
        "algo": "deepep",
        "layers": [1],
        "attention_us": 400.0,
        "shared_expert_us": 100.0,
        "progress": False,
    }
    none = simulate_moe(plan, cluster, workload, overlap="none", **kw)
    two = simulate_moe(plan, cluster, workload, overlap="two-batch", **kw)
    chunked = simulate_moe(plan, cluster, workload, overlap="chunked", **kw)
    assert two.total_us < none.total_us
    assert chunked.total_us < none.total_us
    assert two.per_layer[0]["exposed_comm_us"] < none.per_layer[0]["exposed_comm_us"]


def test_chrome_trace(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan, cluster, workload = setup
    res = simulate_moe(
        plan, cluster, workload, layers=[0], overlap="two-batch", attention_us=50.0, progress=False
    )
    out = tmp_path / "trace.json"
    res.write_chrome_trace(out)
    events = json.loads(out.read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert {e["cat"] for e in spans} == {"compute", "comm"}
    assert all(e["dur"] >= 0 for e in spans)


def test_bad_arguments(setup) -> None:  # type: ignore[no-untyped-def]
    plan, cluster, workload = setup
    with pytest.raises(PlacementError):
        simulate_moe(plan, cluster, workload, algo="ring")
    with pytest.raises(PlacementError):
        simulate_moe(plan, cluster, workload, overlap="three-batch")
    with pytest.raises(PlacementError):
        simulate_moe(plan, cluster, workload, layers=[9])
    with pytest.raises(PlacementError):
        simulate_moe(plan, load_cluster("h800-mpft").with_counts(16, 8), workload)


def test_cli(tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan_path = tmp_path / "plan.json"
    _plan().save(plan_path)
    args = [
        "simulate",
        "--trace",
        str(tiny_trace),
        "--plan",
        str(plan_path),
        "--cluster",
        "h800-mpft",
    ]
    assert (
        main(
            [
                *args,
                "--algo",
                "deepep",
                "--overlap",
                "two-batch",
                "--json",
                "--layers",
                "0,1",
                "--chrome-trace",
                str(tmp_path / "t.json"),
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert len(out["per_layer"]) == 2 and out["summary"]["total_us"] > 0
    assert (tmp_path / "t.json").exists()
    assert main([*args, "--algo", "2dh"]) == 0
    assert "layer us" in capsys.readouterr().out
    assert main([*args, "--algo", "deepep-ll-rdma", "--layers", "0", "--json"]) == 0
    ll = json.loads(capsys.readouterr().out)
    assert ll["summary"]["nvlink_bytes_sent"] == 0 and ll["summary"]["nic_bytes_sent"] > 0
    # the current low-latency kernels copy to GPUs of the same node over NVLink
    assert main([*args, "--algo", "deepep-ll", "--layers", "0", "--json"]) == 0
    ll = json.loads(capsys.readouterr().out)
    assert ll["summary"]["nvlink_bytes_sent"] > 0 and ll["summary"]["nic_bytes_sent"] > 0
    uni = [
        "simulate",
        "--traffic",
        "uniform",
        "--cluster",
        "h800-mpft",
        "--gpus",
        "16",
        "--gpus-per-node",
        "8",
        "--tokens",
        "256",
        "--hidden",
        "1024",
        "--top-k",
        "4",
        "--node-limit",
        "2",
        "--algo",
        "deepep",
    ]
    assert main([*uni, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("dispatch_us", "combine_us", "nvlink_bytes_sent", "nic_bytes_sent"):
        assert key in res
    assert len(res["nic_bytes_sent"]) == 16
    assert main(uni) == 0
    assert "RDMA" in capsys.readouterr().out
    ll_uni = [*uni[: uni.index("--node-limit")], "--algo", "deepep-ll-rdma", "--json"]
    assert main(ll_uni) == 0
    res = json.loads(capsys.readouterr().out)
    assert sum(res["nvlink_bytes_sent"]) == 0 and res["dispatch_rdma_gbytes_per_s"] > 0
    # --fast: the same bytes from the analytical path, no events
    assert main([*ll_uni, "--fast"]) == 0
    fast = json.loads(capsys.readouterr().out)
    assert fast["events"] == 0 and fast["nic_bytes_sent"] == pytest.approx(res["nic_bytes_sent"])
    assert main(["simulate", "--cluster", "h800-mpft"]) == 2
    assert main([*args, "--layers", "x"]) == 2
    assert main([*uni, "--plan", str(plan_path)]) == 2


@pytest.mark.skipif(
    not (Path(__file__).resolve().parents[1].parent / "shared/data/dsv3-expert-loads").exists(),
    reason="../shared/data/dsv3-expert-loads absent",
)
def test_real_deepseek_loads_at_ep64() -> None:
    loads = (
        Path(__file__).resolve().parents[1].parent
        / "shared/data/dsv3-expert-loads/prefill_in4096.json"
    )
    workload = load_workload(str(loads), 64, model="deepseek-v3", progress=False)
    plan = Plan(
        64,
        8,
        4,
        np.tile(np.arange(256), (workload.num_layers, 1)),
        provenance=Provenance(solver="round-robin"),
    )
    cluster = load_cluster("h800-mpft")
    deepep = simulate_moe(plan, cluster, workload, algo="deepep", layers=[0], progress=False)
    direct = simulate_moe(plan, cluster, workload, algo="direct", layers=[0], progress=False)
    # node deduplication moves fewer NIC bytes and, NIC-bound at EP64, finishes sooner
    assert deepep.per_gpu_bytes("nic-tx").sum() < direct.per_gpu_bytes("nic-tx").sum()
    assert deepep.total_us < direct.total_us
    assert deepep.stats["worst_link_utilisation"] <= 1 + 1e-9
