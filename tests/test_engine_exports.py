"""Engine exports (issue 13 part 3): each file read back the way its engine reads it.

Every round trip re-implements the engine's own parsing and shape checks (file and function named in
each helper) and asserts rows, shapes, dtypes, that the map puts the plan's replicas on the right model
layers, and the balance the engine's dispatch gives on that map (against ``moe_placement.dispatch``).
Then the CLI contract: ``placement export`` on plans solved from the shared DeepSeek-V3 loads (61 rows,
first 3 dense, no flag), flags, warnings, and bad input (exit 2, one line, no file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from moe_placement import dispatch
from moe_placement.cli.main import main
from moe_placement.errors import PlacementError
from moe_placement.exporters import export_plan, write_export
from moe_placement.layers import LayerIdentity, resolve_layers
from moe_placement.plan import Plan, Provenance

from .conftest import DSV3_LOADS, needs_dsv3
from .test_engine_imports import sglang_static_dispatch

GOLDEN_PLAN = Path(__file__).parent / "golden" / "plan_v1.json"


def random_plan(
    seed: int, layers: LayerIdentity | None, moe_layers: int = 4, gpus: int = 4, per_gpu: int = 5
) -> Plan:
    """A valid plan: every expert once, the redundant slots on GPUs without that expert."""
    rng = np.random.default_rng(seed)
    experts = gpus * per_gpu - gpus  # one redundant slot per GPU
    rows = []
    while len(rows) < moe_layers:
        row = np.concatenate([rng.permutation(experts), rng.choice(experts, gpus, replace=False)])
        rng.shuffle(row)
        per = np.sort(row.reshape(gpus, per_gpu), axis=1)
        if not (per[:, 1:] == per[:, :-1]).any():
            rows.append(row)
    return Plan(gpus, 2, per_gpu, np.array(rows), layers=layers).validate()


DENSE_FIRST = LayerIdentity((2, 3, 5, 6), 8)  # dense layers 0, 1, 4 and 7


def uniform_demand(plan: Plan, layer: int) -> np.ndarray:
    """``[gpus, experts]``: a skewed load split evenly over the sources (as for load-only inputs)."""
    load = np.arange(1, plan.num_experts + 1, dtype=np.float64) ** 2 + layer
    return np.repeat(load[None, :] / plan.num_gpus, plan.num_gpus, axis=0)


def max_over_mean(gpu_load: np.ndarray) -> float:
    return float(gpu_load.max() / gpu_load.mean())


# ---- SGLang ---------------------------------------------------------------------------------------


def sglang_load(
    path: Path, num_hidden_layers: int, num_logical: int, redundant: int, ep_size: int
) -> dict[str, Any]:
    """SGLang's loader, re-implemented from ``python/sglang/srt/eplb/expert_location.py``:

    ``compute_initial_expert_location_metadata`` (``.pt`` -> ``torch.load(weights_only=True)``, ``.json`` ->
    ``json.loads``; a dict with ``physical_to_logical_map`` goes to ``init_by_mapping(**data_dict)``, so
    any other key is a TypeError); ``_init_common`` (physical = logical + ``ep_num_redundant_experts``,
    divisible by ``ep_size``); ``_compute_logical_to_all_physical_map`` (a logical id out of range is an
    IndexError) and ``_pad_nested_array``; ``_init_raw`` (pad to the physical count with -1, count the
    valid entries); ``ExpertLocationMetadata.__post_init__`` (shapes agree). ``ModelConfigForExpertLocation
    .num_layers`` is the config's ``num_hidden_layers`` and the model reads row ``layer_id``.
    """
    if path.suffix == ".pt":
        import torch

        data = torch.load(path, weights_only=True)
        p2l_tensor = data["physical_to_logical_map"]
        assert p2l_tensor.dtype == torch.int64
        p2l = p2l_tensor.numpy()
    else:
        data = json.loads(path.read_text())
        p2l = np.asarray(data["physical_to_logical_map"])
        assert p2l.dtype == np.int64  # torch.tensor of Python ints: int64
    assert set(data) == {"physical_to_logical_map"}, "init_by_mapping takes no other keyword"
    num_physical = num_logical + redundant
    assert num_physical % ep_size == 0
    layers, physical = p2l.shape
    assert layers == num_hidden_layers, "the model indexes the map by model layer"
    assert physical == num_physical
    assert p2l.min() >= 0 and p2l.max() < num_logical  # else IndexError in the nested lists
    nested: list[list[list[int]]] = [[[] for _ in range(num_logical)] for _ in range(layers)]
    for layer in range(layers):
        for slot in range(physical):
            nested[layer][int(p2l[layer, slot])].append(slot)
    width = max(len(inner) for outer in nested for inner in outer)
    l2all = np.array([[inner + [-1] * (width - len(inner)) for inner in outer] for outer in nested])
    l2all = np.pad(l2all, ((0, 0), (0, 0), (0, physical - width)), constant_values=-1)
    num_valid = (l2all != -1).sum(axis=-1)
    assert l2all.shape == (layers, num_logical, physical) and num_valid.shape == (
        layers,
        num_logical,
    )
    assert (num_valid >= 1).all(), "_fair_choices divides by the replica count"
    return {
        "physical_to_logical_map": p2l,
        "logical_to_all_physical_map": l2all,
        "num_valid": num_valid,
    }


@pytest.mark.parametrize("layers", [None, DENSE_FIRST], ids=["no-dense", "dense-rows"])
@pytest.mark.parametrize("suffix", [".json", ".pt"])
def test_sglang_round_trip(tmp_path: Path, layers: LayerIdentity | None, suffix: str) -> None:
    if suffix == ".pt":
        pytest.importorskip("torch")
    plan = random_plan(1, layers)
    identity = resolve_layers(plan.num_layers, plan.layers)
    out = write_export(export_plan(plan, "sglang", identity), tmp_path / f"m{suffix}")
    meta = sglang_load(
        out, identity.total_layers, plan.num_experts, plan.num_redundant, plan.num_gpus
    )
    p2l = meta["physical_to_logical_map"]
    for moe, model_layer in enumerate(identity.moe_layer_ids):
        np.testing.assert_array_equal(p2l[model_layer], plan.phy2log[moe])
    for dense in identity.dense_layer_ids:  # SGLang's trivial row: every expert has a slot
        np.testing.assert_array_equal(p2l[dense], np.arange(plan.num_slots) % plan.num_experts)
    # the balance SGLang's static dispatch gives on this map, against the dispatch model
    table = sglang_static_dispatch(p2l, plan.num_gpus)  # [ranks, model layers, experts]
    local = plan.num_slots // plan.num_gpus
    model_table = dispatch.sglang_static_slots(plan)  # [moe layers, gpus, experts]
    for moe, model_layer in enumerate(identity.moe_layer_ids):
        demand = uniform_demand(plan, moe)
        served = np.zeros(plan.num_gpus)
        for rank in range(plan.num_gpus):
            slots = table[rank, model_layer]
            assert (plan.phy2log[moe][slots] == np.arange(plan.num_experts)).all()
            np.add.at(served, slots // local, demand[rank])
        D = dispatch.dispatch_shares(plan, moe, "sglang", demand, model_table)
        modelled = dispatch.gpu_load(plan, moe, D, demand)
        assert served.sum() == pytest.approx(modelled.sum())
        if not identity.dense_layer_ids:  # the same draw: the model is the engine
            np.testing.assert_allclose(served, modelled)
            assert max_over_mean(served) == pytest.approx(max_over_mean(modelled))


# ---- TensorRT-LLM ---------------------------------------------------------------------------------


def trtllm_load(
    path: Path, moe_layer_idx: tuple[int, ...], num_experts: int, ep_size: int
) -> dict[int, np.ndarray]:
    """TensorRT-LLM's reading of the load-balancer YAML, re-implemented:

    ``moe_config.load_balancer`` names the file; it is ``yaml.safe_load``-ed into
    ``MoeLoadBalancerConfig`` (``tensorrt_llm/llmapi/llm_args.py``, a strict pydantic model: no other key);
    ``setup(ep_rank, ep_size)`` (``num_slots`` divisible by ``ep_size``);
    ``get_layer_initial_global_assignments(layer_idx)`` (KeyError for a missing layer, length
    ``num_slots``); the fused MoE module's checks (``tensorrt_llm/_torch/modules/fused_moe``: a list,
    ``num_slots >= num_experts``, ``set(assignments) == set(range(num_experts))``), keyed by the module's
    ``layer_idx`` (the model layer).
    """
    config = yaml.safe_load(path.read_text())
    assert set(config) <= {"num_slots", "initial_global_assignments", "layer_updates_per_iter"}
    num_slots = config["num_slots"]
    assert isinstance(num_slots, int) and num_slots % ep_size == 0
    assigned = config["initial_global_assignments"]
    out = {}
    for layer_idx in moe_layer_idx:
        if layer_idx not in assigned:
            raise KeyError(f"layer_idx {layer_idx} not found in `initial_global_assignments`.")
        row = assigned[layer_idx]
        assert isinstance(row, list) and len(row) == num_slots
        assert num_slots >= num_experts and set(row) == set(range(num_experts))
        out[layer_idx] = np.asarray(row)
    assert set(assigned) == set(moe_layer_idx)
    return out


@pytest.mark.parametrize("layers", [None, DENSE_FIRST], ids=["no-dense", "dense-rows"])
def test_trtllm_round_trip(tmp_path: Path, layers: LayerIdentity | None) -> None:
    plan = random_plan(2, layers)
    identity = resolve_layers(plan.num_layers, plan.layers)
    out = write_export(export_plan(plan, "trtllm", identity), tmp_path / "lb.yaml")
    assert "[" in out.read_text()  # lists inline, as the example's save_eplb_config writes them
    rows = trtllm_load(out, identity.moe_layer_ids, plan.num_experts, plan.num_gpus)
    local = plan.num_slots // plan.num_gpus
    for moe, model_layer in enumerate(identity.moe_layer_ids):
        row = rows[model_layer]
        np.testing.assert_array_equal(row, plan.phy2log[moe])
        # rank r holds slots [r * local, (r + 1) * local): the plan's GPUs
        np.testing.assert_array_equal(np.arange(row.size) // local, plan.slot_gpu())
        # its round-robin over replicas: an even split of each expert
        demand = uniform_demand(plan, moe)
        count = np.bincount(row, minlength=plan.num_experts)
        served = np.bincount(
            np.arange(row.size) // local, weights=demand.sum(axis=0)[row] / count[row]
        )
        D = dispatch.dispatch_shares(plan, moe, "trtllm", demand)
        np.testing.assert_allclose(served, dispatch.gpu_load(plan, moe, D, demand))


# ---- vLLM -----------------------------------------------------------------------------------------

VLLM_MAX_EXPERT_REDUNDANCY = 1023  # vllm/distributed/eplb/eplb_state.py, EplbState.build


def vllm_load(
    path: Path, num_moe_layers: int, num_logical: int, num_physical: int
) -> dict[str, np.ndarray]:
    """vLLM's ``EplbState`` maps, re-implemented from ``vllm/distributed/eplb/eplb_state.py``
    (``EplbState.build``: ``logical_to_physical_map`` allocated ``[layers, logical,
    MAX_EXPERT_REDUNDANCY + 1]`` of -1, the rebalanced map's width asserted to fit and padded into it;
    ``logical_replica_count`` the non -1 count) and the validation of the unreleased loader, vLLM pull
    request #49572 (``eplb_config.initial_expert_map_path``: a per-MoE-layer physical-to-logical list,
    dimensions, logical id range, full coverage)."""
    data = json.loads(path.read_text())
    p2l = np.asarray(data["physical_to_logical_map"])
    l2p = np.asarray(data["logical_to_physical_map"])
    count = np.asarray(data["logical_replica_count"])
    assert p2l.dtype == l2p.dtype == count.dtype == np.int64
    assert p2l.shape == (num_moe_layers, num_physical)
    assert p2l.min() >= 0 and p2l.max() < num_logical
    assert all(set(row) == set(range(num_logical)) for row in p2l.tolist())
    redundant = num_physical - num_logical
    assert l2p.shape == (num_moe_layers, num_logical, redundant + 1)
    allocated = VLLM_MAX_EXPERT_REDUNDANCY + 1
    assert l2p.shape[-1] <= allocated
    l2p = np.pad(l2p, ((0, 0), (0, 0), (0, allocated - l2p.shape[-1])), constant_values=-1)
    np.testing.assert_array_equal(count, (l2p != -1).sum(axis=-1))
    for layer in range(num_moe_layers):
        for expert in range(num_logical):
            slots = l2p[layer, expert, : count[layer, expert]]
            assert (slots >= 0).all() and (l2p[layer, expert, count[layer, expert] :] == -1).all()
            assert (p2l[layer, slots] == expert).all()
    return {
        "physical_to_logical_map": p2l,
        "logical_to_physical_map": l2p,
        "logical_replica_count": count,
    }


@pytest.mark.parametrize("layers", [None, DENSE_FIRST], ids=["no-dense", "dense-rows"])
def test_vllm_round_trip(tmp_path: Path, layers: LayerIdentity | None) -> None:
    plan = random_plan(3, layers)
    identity = resolve_layers(plan.num_layers, plan.layers)
    out = write_export(export_plan(plan, "vllm", identity), tmp_path / "v.json")
    maps = vllm_load(out, plan.num_layers, plan.num_experts, plan.num_slots)  # by MoE layer
    np.testing.assert_array_equal(maps["physical_to_logical_map"], plan.phy2log)
    for moe in range(plan.num_layers):
        demand = uniform_demand(plan, moe)
        row, count = maps["physical_to_logical_map"][moe], maps["logical_replica_count"][moe]
        served = np.bincount(plan.slot_gpu(), weights=demand.sum(axis=0)[row] / count[row])
        D = dispatch.dispatch_shares(plan, moe, "vllm", demand)
        np.testing.assert_allclose(served, dispatch.gpu_load(plan, moe, D, demand))


# ---- DeepSeek EPLB --------------------------------------------------------------------------------


def test_eplb_tensors_match_rebalance_experts_outputs(tmp_path: Path) -> None:
    """deepseek-ai/EPLB ``eplb.py`` ``rebalance_experts``: ``phy2log [layers, replicas]``, ``log2phy
    [layers, logical, num_redundant + 1]`` filled by ``log2phy.view(layers, -1).scatter_(-1, phy2log *
    maxlogcnt + phyrank, arange(replicas))`` and -1 elsewhere, ``logcnt [layers, logical]``."""
    plan = random_plan(4, DENSE_FIRST)
    out = write_export(export_plan(plan, "eplb", DENSE_FIRST), tmp_path / "e.json")
    data = json.loads(out.read_text())
    assert set(data) == {"phy2log", "log2phy", "logcnt"}
    phy2log, log2phy, logcnt = (np.asarray(data[k]) for k in ("phy2log", "log2phy", "logcnt"))
    layers, replicas = phy2log.shape
    maxlogcnt = replicas - plan.num_experts + 1
    assert log2phy.shape == (layers, plan.num_experts, maxlogcnt) and logcnt.shape == (
        layers,
        plan.num_experts,
    )
    np.testing.assert_array_equal(phy2log, plan.phy2log)  # by MoE layer
    phyrank = np.zeros_like(phy2log)
    for layer in range(layers):
        seen: dict[int, int] = {}
        for slot, expert in enumerate(phy2log[layer].tolist()):
            phyrank[layer, slot] = seen.get(expert, 0)
            seen[expert] = phyrank[layer, slot] + 1
    flat = log2phy.reshape(layers, -1)
    np.testing.assert_array_equal(
        np.take_along_axis(flat, phy2log * maxlogcnt + phyrank, axis=1),
        np.tile(np.arange(replicas), (layers, 1)),
    )
    assert (flat >= 0).sum() == phy2log.size
    np.testing.assert_array_equal(logcnt, plan.logcnt())


# ---- plan files and layer identity ----------------------------------------------------------------


def test_plan_json_keeps_layer_identity_and_old_files_load(tmp_path: Path) -> None:
    plan = random_plan(5, DENSE_FIRST)
    plan.save(tmp_path / "p.json")
    data = json.loads((tmp_path / "p.json").read_text())
    assert (
        data["moe_layer_ids"] == [2, 3, 5, 6]
        and data["total_layers"] == 8
        and data["first_moe_layer"] == 2
    )
    assert Plan.load(tmp_path / "p.json").layers == DENSE_FIRST
    old = Plan.load(GOLDEN_PLAN)  # written before plans recorded layers
    assert old.layers is None and "moe_layer_ids" not in old.to_dict()
    only_first = {**json.loads(GOLDEN_PLAN.read_text()), "first_moe_layer": 3, "total_layers": 61}
    assert Plan.from_dict(only_first).layers == LayerIdentity.contiguous(3, 2, 61)
    for bad, message in (
        ({"moe_layer_ids": [3, 2]}, "strictly increasing"),
        ({"moe_layer_ids": [3, 4], "total_layers": 4}, "does not fit"),
        ({"moe_layer_ids": [1, 2, 3]}, "moe_layer_ids name 3 layers"),
        ({"moe_layer_ids": [1, 2], "first_moe_layer": 0}, "disagrees"),
    ):
        with pytest.raises(PlacementError, match=message):
            Plan.from_dict({**json.loads(GOLDEN_PLAN.read_text()), **bad})


def test_flags_resolve_layers() -> None:
    known = LayerIdentity.contiguous(3, 58, 61)
    assert resolve_layers(58, known) == known
    assert resolve_layers(58, None) == LayerIdentity.contiguous(0, 58, 58)
    assert resolve_layers(58, None, first_moe_layer=3, total_layers=61) == known
    assert resolve_layers(58, known, first_moe_layer=3) == known  # the plan's total is kept
    assert resolve_layers(58, known, total_layers=64) == LayerIdentity(known.moe_layer_ids, 64)
    # --total-layers alone cannot say which layers are dense: it used to shift every layer
    with pytest.raises(PlacementError, match="pass --first-moe-layer"):
        resolve_layers(58, None, total_layers=61)
    with pytest.raises(PlacementError, match="do not fit"):
        resolve_layers(58, None, first_moe_layer=4, total_layers=61)
    with pytest.raises(PlacementError, match="do not fit"):
        resolve_layers(58, known, total_layers=60)


# ---- the CLI contract -----------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def dsv3_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not DSV3_LOADS.exists():
        pytest.skip("../shared/data/dsv3-expert-loads absent")
    out = tmp_path_factory.mktemp("dsv3") / "p.json"
    argv = [
        "solve",
        "--trace",
        str(DSV3_LOADS / "decode_in2000out100.json"),
        "--gpus",
        "64",
        "--gpus-per-node",
        "8",
        "--redundant",
        "64",
        "--solver",
        "eplb",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    return out


@needs_dsv3()
def test_contract_sglang_61_rows_with_no_flag(
    dsv3_plan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = Plan.load(dsv3_plan)
    assert plan.layers == LayerIdentity.contiguous(3, 58, 61)
    out = tmp_path / "m.json"
    code, stdout, err = run_cli(
        capsys, ["export", "--plan", str(dsv3_plan), "--format", "sglang", "--out", str(out)]
    )
    assert code == 0 and "61 rows by model layer" in stdout
    assert err.strip().startswith(
        "warning: plan solved for the share-aware router exported to sglang"
    )
    meta = sglang_load(out, 61, 256, 64, 64)
    for moe in range(58):
        np.testing.assert_array_equal(meta["physical_to_logical_map"][moe + 3], plan.phy2log[moe])
    yaml_out = tmp_path / "lb.yaml"
    assert (
        main(["export", "--plan", str(dsv3_plan), "--format", "trtllm", "--out", str(yaml_out)])
        == 0
    )
    assert sorted(trtllm_load(yaml_out, tuple(range(3, 61)), 256, 64)) == list(range(3, 61))


def test_no_warning_for_a_plan_solved_for_the_engine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = random_plan(6, DENSE_FIRST)
    plan = Plan(
        plan.num_gpus,
        plan.gpus_per_node,
        plan.slots_per_gpu,
        plan.phy2log,
        provenance=Provenance("x", engine="vllm"),
        layers=DENSE_FIRST,
    )
    plan.save(tmp_path / "p.json")
    code, _, err = run_cli(
        capsys,
        [
            "export",
            "--plan",
            str(tmp_path / "p.json"),
            "--format",
            "vllm",
            "--out",
            str(tmp_path / "v.json"),
        ],
    )
    assert code == 0 and err == ""
    code, _, err = run_cli(
        capsys,
        [
            "export",
            "--plan",
            str(tmp_path / "p.json"),
            "--format",
            "sglang",
            "--out",
            str(tmp_path / "s.json"),
        ],
    )
    assert code == 0 and "solved for vllm's dispatch exported to sglang" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ep-size", "3"], "not divisible by the EP size 3"),
        (["--total-layers", "6"], "do not fit"),
        (["--first-moe-layer", "5", "--total-layers", "8"], "do not fit"),
        (["--format", "trtllm"], "written as .yaml"),
    ],
)
def test_bad_export_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    random_plan(7, DENSE_FIRST).save(tmp_path / "p.json")
    out = tmp_path / "m.json"
    argv = [
        "export",
        "--plan",
        str(tmp_path / "p.json"),
        "--format",
        "sglang",
        "--out",
        str(out),
        *extra,
    ]
    code, _, err = run_cli(capsys, argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]


def test_total_layers_alone_on_a_plan_without_ids_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.json"
    argv = [
        "export",
        "--plan",
        str(GOLDEN_PLAN),
        "--format",
        "sglang",
        "--out",
        str(out),
        "--total-layers",
        "5",
    ]
    code, _, err = run_cli(capsys, argv)
    assert code == 2 and "--first-moe-layer" in err and not out.exists()
    argv += ["--first-moe-layer", "3"]
    assert run_cli(capsys, argv)[0] == 0
    rows = json.loads(out.read_text())["physical_to_logical_map"]
    assert len(rows) == 5 and rows[3:] == Plan.load(GOLDEN_PLAN).phy2log.tolist()
