"""Engines' own dumps imported (issue 13 part 4) and the whole loop closed on each engine's files.

Golden fixtures in tests/fixtures/importers/ (written by :func:`write_engine_fixtures`, which follows each
engine's writer; regenerate with ``python -c "from tests.test_engine_imports import *;
write_engine_fixtures(FIXTURES)"`` from the repository root): a 4-layer model whose layer 0
is dense, MoE layers 1..3, 6 logical experts in 8 physical slots on 2 EP ranks, top-2.

- SGLang ``python/sglang/srt/eplb/expert_distribution.py``: ``_DetailAccumulator.dump`` (per_pass and
  per_token files, ``records`` + ``last_physical_to_logical_map``), ``_StatAccumulator.dump`` (stat:
  ``logical_count [buffered steps, layers, experts]``);
- vLLM routed experts: int16 ``[tokens, num_moe_layers, top_k]``;
- TensorRT-LLM ``ExpertStatistic._write``: ``meta_info.json`` + ``rank<r>.safetensors`` of int64
  bincounts named ``<iter>_<layer>``.

The loop test serves the bundled trace through each engine's exported map, emulating what the engine
records (SGLang: physical slot ids by its static dispatch), writes the engine's dump, imports it, and
checks that the routing and the model layers come back unchanged.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from moe_placement.cli.main import main
from moe_placement.errors import PlacementError
from moe_placement.exporters import export_plan
from moe_placement.layers import LayerIdentity, layers_from_hf_config
from moe_placement.plan import Plan
from moe_placement.traces import importers
from moe_placement.traces.importers import ImportOptions
from moe_placement.traces.importers.trtllm import read_safetensors
from moe_placement.traces.reader import TraceFile
from moe_placement.traces.schema import TraceMeta
from moe_placement.traces.writer import TraceWriter

from .conftest import DSV3_LOADS, needs_dsv3

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "importers"
BUNDLED = Path(__file__).resolve().parents[1] / "traces" / "data" / "tiny_moe_trace.parquet"

# The fixtures' model: 4 layers, layer 0 dense; 6 experts in 8 slots (2 ranks x 4), top-2.
TOTAL, MOE_IDS, EXPERTS, SLOTS, RANKS, TOP_K = 4, (1, 2, 3), 6, 8, 2, 2
P2L = np.array(  # SGLang's map: one row per model layer; row 0 (dense) is the trivial s % E
    [
        [0, 1, 2, 3, 4, 5, 0, 1],
        [0, 1, 2, 3, 4, 5, 0, 3],
        [5, 4, 3, 2, 1, 0, 5, 2],
        [2, 0, 1, 4, 3, 5, 1, 0],
    ]
)
# token routing (logical ids) of the per-token dumps: [moe layers, tokens, top-2], rank r has tokens r::2
ROUTES = np.array(
    [
        [[0, 1], [3, 5], [0, 2], [4, 1], [0, 3]],
        [[5, 2], [2, 1], [0, 4], [5, 3], [2, 5]],
        [[1, 0], [0, 2], [1, 3], [4, 5], [0, 1]],
    ]
)


def sglang_static_dispatch(p2l: np.ndarray, ep_size: int, seed: int = 42) -> np.ndarray:
    """``[ranks, layers, experts]``: the physical slot each rank sends each logical expert's tokens to.

    Re-implements ``compute_logical_to_rank_dispatch_physical_map`` (SGLang
    ``python/sglang/srt/eplb/expert_location.py``): candidates in ascending physical order, the first
    replica on the rank's own GPU if any, else ``_fair_choices`` (repeat the list, sample the rest with
    ``random.Random(42)``, shuffle), drawing layer by layer over *every* row of the map, dense ones too.
    """
    layers, physical = p2l.shape
    experts = int(p2l.max()) + 1
    local = physical // ep_size
    rng = random.Random(seed)
    out = np.full((ep_size, layers, experts), -1, dtype=np.int64)
    for layer in range(layers):
        for expert in range(experts):
            candidates = [int(s) for s in np.flatnonzero(p2l[layer] == expert)]
            column = out[:, layer, expert]
            for gpu in range(ep_size):
                same = [s for s in candidates if s // local == gpu]
                if same:
                    column[gpu] = same[0]
            remain = int((column == -1).sum())
            quotient, remainder = divmod(remain, len(candidates))
            chosen = candidates * quotient + rng.sample(candidates, k=remainder)
            rng.shuffle(chosen)
            column[column == -1] = chosen
    assert (out != -1).all()
    return out


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """The safetensors layout: 8-byte little-endian header length, JSON header, raw little-endian data."""
    names = {np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int16): "I16"}
    header: dict[str, Any] = {}
    blobs, offset = [], 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        blob = array.astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": names[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"".join(blobs))


def trtllm_counts() -> dict[int, dict[str, np.ndarray]]:
    """Rank -> ``{"<iter>_<layer>": bincount}`` for iterations 10 and 11: rank r routes tokens r::2."""
    out: dict[int, dict[str, np.ndarray]] = {}
    for rank in range(RANKS):
        records = {}
        for iteration in (10, 11):
            for moe, layer in enumerate(MOE_IDS):
                ids = (
                    ROUTES[moe, rank::RANKS] if iteration == 10 else ROUTES[moe, ::-1][rank::RANKS]
                )
                records[f"{iteration}_{layer}"] = np.bincount(
                    ids.ravel(), minlength=EXPERTS
                ).astype(np.int64)
        out[rank] = records
    return out


def write_engine_fixtures(folder: Path) -> None:
    """Each engine's dump of the fixture model, in that engine's own layout."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    dispatch = sglang_static_dispatch(P2L, RANKS)
    # SGLang per_token: one file per rank, records of physical ids [model layers, tokens, 8], -1 padded
    per_token = folder / "sglang_per_token"
    per_token.mkdir(exist_ok=True)
    for rank in range(RANKS):
        logical = ROUTES[:, rank::RANKS]
        ids = np.full((TOTAL, logical.shape[1], 8), -1, dtype=np.int32)
        for moe, layer in enumerate(MOE_IDS):
            ids[layer, :, :TOP_K] = dispatch[rank, layer][logical[moe]]
        record = {
            "forward_pass_id": 7,
            "rank": rank,
            "gatherer_key": "primary",
            "input_ids": list(range(logical.shape[1])),
            "positions": list(range(logical.shape[1])),
            "extend_seq_lens": [logical.shape[1]],
            "forward_mode": 1,
            "topk_ids_of_layer": torch.from_numpy(ids),
        }
        torch.save(
            {"records": [record], "last_physical_to_logical_map": torch.from_numpy(P2L)},
            per_token / f"expert_distribution_recorder_1.0_{rank}.pt",
        )
    # SGLang per_pass: global_physical_count [model layers, physical] per pass and rank
    per_pass = folder / "sglang_per_pass"
    per_pass.mkdir(exist_ok=True)
    for rank in range(RANKS):
        records = []
        for pass_id, logical in enumerate(
            (ROUTES[:, rank::RANKS], ROUTES[:, ::-1][:, rank::RANKS])
        ):
            count = np.zeros((TOTAL, SLOTS), dtype=np.int32)
            for moe, layer in enumerate(MOE_IDS):
                np.add.at(count[layer], dispatch[rank, layer][logical[moe]].ravel(), 1)
            records.append(
                {
                    "forward_pass_id": pass_id,
                    "rank": rank,
                    "gatherer_key": "primary",
                    "global_physical_count": torch.from_numpy(count),
                }
            )
        torch.save(
            {"records": records, "last_physical_to_logical_map": torch.from_numpy(P2L)},
            per_pass / f"expert_distribution_recorder_1.0_{rank}.pt",
        )
    # SGLang stat: rank 0 writes logical_count [buffered steps, model layers, experts]
    stat = np.zeros((2, TOTAL, EXPERTS), dtype=np.int32)
    for moe, layer in enumerate(MOE_IDS):
        stat[0, layer] = np.bincount(ROUTES[moe].ravel(), minlength=EXPERTS)
        stat[1, layer] = np.bincount(ROUTES[moe, :2].ravel(), minlength=EXPERTS)
    torch.save(
        {
            "rank": 0,
            "logical_count": torch.from_numpy(stat),
            "average_utilization_rate_over_window": None,
        },
        folder / "sglang_stat.pt",
    )
    # vLLM routed experts: int16 [tokens, num_moe_layers, top_k]
    np.save(folder / "vllm_routed_int16.npy", ROUTES.transpose(1, 0, 2).astype(np.int16))
    # TensorRT-LLM expert statistics
    stats = folder / "trtllm_expert_statistic"
    stats.mkdir(exist_ok=True)
    (stats / "meta_info.json").write_text(
        json.dumps({"num_experts": EXPERTS, "num_experts_per_token": TOP_K})
    )
    for rank, records in trtllm_counts().items():
        write_safetensors(stats / f"rank{rank}.safetensors", records)


# ---- the golden fixtures --------------------------------------------------------------------------


def test_sglang_per_token_dump_maps_physical_slots_back_to_the_routes() -> None:
    pytest.importorskip("torch")
    imported = importers.load("sglang", FIXTURES / "sglang_per_token")
    assert imported.layer_ids == list(MOE_IDS) and imported.total_layers == TOTAL
    # rank 0's tokens come first (files in rank order), then rank 1's
    expected = np.concatenate([ROUTES[:, 0::2], ROUTES[:, 1::2]], axis=1)
    np.testing.assert_array_equal(imported.expert_ids, expected)
    assert imported.layer_identity() == LayerIdentity(MOE_IDS, TOTAL)


def test_sglang_per_pass_dump_is_load_only_by_model_layer(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    imported = importers.load("sglang", FIXTURES / "sglang_per_pass")
    assert imported.load_only and imported.extra["recorder_mode"] == "per_pass"
    expected = np.stack([2 * np.bincount(r.ravel(), minlength=EXPERTS) for r in ROUTES])
    np.testing.assert_array_equal(imported.load, expected)
    assert imported.layer_identity() == LayerIdentity(MOE_IDS, TOTAL)
    # a logical_count JSON out: one row per model layer, the dense row zero
    out = imported.write(tmp_path / "lc.json")
    rows = np.asarray(json.loads(out.read_text())["logical_count"])
    assert rows.shape == (TOTAL, EXPERTS) and not rows[0].any()
    np.testing.assert_array_equal(rows[1:], expected)


def test_sglang_stat_dump_sums_buffered_steps() -> None:
    pytest.importorskip("torch")
    for fmt in ("sglang", "logical-count"):
        imported = importers.load(fmt, FIXTURES / "sglang_stat.pt")
        expected = np.stack(
            [
                np.bincount(r.ravel(), minlength=EXPERTS)
                + np.bincount(r[:2].ravel(), minlength=EXPERTS)
                for r in ROUTES
            ]
        )
        np.testing.assert_array_equal(imported.load, expected)
        assert imported.layer_identity() == LayerIdentity(MOE_IDS, TOTAL)


def test_vllm_int16_routes_are_moe_layer_indexed(tmp_path: Path) -> None:
    raw = np.load(FIXTURES / "vllm_routed_int16.npy")
    assert raw.dtype == np.int16 and raw.shape == (5, 3, TOP_K)
    imported = importers.load("vllm", FIXTURES / "vllm_routed_int16.npy")
    np.testing.assert_array_equal(imported.expert_ids, ROUTES)
    # vLLM's axis counts MoE layers only: without a shape or flag they are layers 0..2 ...
    assert imported.layer_identity() == LayerIdentity((0, 1, 2), 3)
    # ... and a flag places them in the model (the trace records it)
    options = ImportOptions(first_moe_layer=1, total_layers=TOTAL)
    imported.write(tmp_path / "v.parquet", options)
    meta = TraceFile(tmp_path / "v.parquet").meta
    assert meta.moe_layer_ids == list(MOE_IDS) and meta.total_layers == TOTAL


def test_trtllm_expert_statistic_folder() -> None:
    imported = importers.load("trtllm", FIXTURES / "trtllm_expert_statistic")
    expected = sum(
        np.stack([records[f"{i}_{layer}"] for layer in MOE_IDS])
        for records in trtllm_counts().values()
        for i in (10, 11)
    )
    np.testing.assert_array_equal(imported.load, expected)
    assert imported.layer_ids == list(MOE_IDS) and imported.extra["ranks"] == RANKS
    # keys are model layers; the model's trailing dense layers are unknown without a shape or flag
    assert imported.layer_identity(ImportOptions(total_layers=TOTAL)) == LayerIdentity(
        MOE_IDS, TOTAL
    )


def test_safetensors_parser_agrees_with_the_safetensors_package(tmp_path: Path) -> None:
    numpy_io = pytest.importorskip("safetensors.numpy")
    tensors = {"3_7": np.arange(6, dtype=np.int64), "4_7": np.array([[1, -2]], dtype=np.int32)}
    numpy_io.save_file(tensors, str(tmp_path / "a.safetensors"))
    mine = read_safetensors(tmp_path / "a.safetensors")
    assert set(mine) == set(tensors)
    for name, array in tensors.items():
        assert mine[name].dtype == array.dtype
        np.testing.assert_array_equal(mine[name], array)
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(PlacementError, match="header length"):
        read_safetensors(tmp_path / "bad.safetensors")


def test_import_cli_bad_dump_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "rank0.safetensors").write_bytes(b"\x00" * 3)
    out = tmp_path / "t.parquet"
    assert main(["import", "--format", "trtllm", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "safetensors" in err and not out.exists()


# ---- layer identity from inputs -------------------------------------------------------------------


@needs_dsv3()
def test_dsv3_loads_carry_61_layers_first_3_dense(tmp_path: Path) -> None:
    imported = importers.load("logical-count", DSV3_LOADS / "prefill_in1024.json")
    assert imported.layer_identity() == LayerIdentity.contiguous(3, 58, 61)
    imported.write(tmp_path / "l.parquet")
    from moe_placement.traces.loadjson import load_load_parquet, load_logical_count

    for workload in (
        load_logical_count(DSV3_LOADS / "prefill_in1024.json"),
        load_load_parquet(tmp_path / "l.parquet"),
    ):
        assert workload.shape.layer_identity() == LayerIdentity.contiguous(3, 58, 61)


def test_hf_config_rules() -> None:
    transformers = pytest.importorskip("transformers")
    deepseek = transformers.DeepseekV3Config(num_hidden_layers=61, first_k_dense_replace=3)
    assert layers_from_hf_config(deepseek) == LayerIdentity.contiguous(3, 58, 61)
    qwen = transformers.Qwen3MoeConfig(
        num_hidden_layers=8, mlp_only_layers=[1], decoder_sparse_step=2
    )
    assert layers_from_hf_config(qwen) == LayerIdentity((3, 5, 7), 8)
    mixtral = transformers.MixtralConfig(num_hidden_layers=5)
    assert layers_from_hf_config(mixtral) == LayerIdentity.contiguous(0, 5, 5)


def test_capture_records_the_config_layers(tmp_path: Path) -> None:
    """A captured tiny DeepSeek-V3 (3 layers, first_k_dense_replace 1) records layers 1-2 of 3, and its
    plan exports 3 SGLang rows with no flag."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from moe_placement.traces.capture import CaptureOptions, capture, load_model

    text = tmp_path / "text"
    text.mkdir()
    (text / "a.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    loaded = load_model(arch="deepseek_v3", seed=1, device="cpu")
    result = capture(
        loaded,
        [text],
        tmp_path / "t.parquet",
        CaptureOptions(tokens=64, batch=2, seq_len=32),
        progress=False,
    )
    meta = TraceFile(result.path).meta
    assert meta.moe_layer_ids == [1, 2] and meta.total_layers == 3
    assert meta.extra["config_moe_layer_ids"] == [1, 2]
    plan_path = tmp_path / "p.json"
    assert (
        main(
            [
                "solve",
                "--trace",
                str(result.path),
                "--gpus",
                "2",
                "--solver",
                "greedy",
                "--out",
                str(plan_path),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "export",
                "--plan",
                str(plan_path),
                "--format",
                "sglang",
                "--out",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    rows = json.loads((tmp_path / "m.json").read_text())["physical_to_logical_map"]
    plan = Plan.load(plan_path)
    assert len(rows) == 3 and rows[1:] == plan.phy2log.tolist()


# ---- the loop: capture -> solve -> export -> serve -> import, each engine's files ------------------


def _placed_trace(tmp_path: Path, layers: LayerIdentity) -> Path:
    """The bundled trace with its 4 MoE layers placed at ``layers`` in the model."""
    trace = TraceFile(BUNDLED)
    chunk = trace.read_all()
    meta = TraceMeta(
        **{
            **trace.meta.__dict__,
            "moe_layer_ids": list(layers.moe_layer_ids),
            "total_layers": layers.total_layers,
        }
    )
    out = tmp_path / "placed.parquet"
    with TraceWriter(out, meta) as writer:
        writer.write(chunk.step, chunk.seq_id, chunk.pos, chunk.expert_ids, chunk.weights)
    return out


def _home_rank(chunk: Any, ranks: int) -> np.ndarray:
    return np.arange(chunk.num_tokens) % ranks


@pytest.mark.parametrize(
    "layers",
    [LayerIdentity.contiguous(0, 4, 4), LayerIdentity((2, 3, 5, 6), 8)],
    ids=["bundled", "dense-rows"],
)
def test_loop_closes_with_every_engines_files(tmp_path: Path, layers: LayerIdentity) -> None:
    torch = pytest.importorskip("torch")
    trace_path = BUNDLED if layers.total_layers == 4 else _placed_trace(tmp_path, layers)
    chunk = TraceFile(trace_path).read_all()
    logical = chunk.expert_ids  # [moe layers, tokens, k]
    plan_path = tmp_path / "plan.json"
    argv = [
        "solve",
        "--trace",
        str(trace_path),
        "--gpus",
        "4",
        "--gpus-per-node",
        "2",
        "--redundant",
        "4",
        "--solver",
        "greedy",
        "--out",
        str(plan_path),
    ]
    assert main(argv) == 0
    plan = Plan.load(plan_path)
    assert plan.layers == layers  # the trace's layer ids reached the plan
    ranks = plan.num_gpus
    home = _home_rank(chunk, ranks)

    # SGLang: export the map, serve by its static dispatch, record per_token, import
    sg_map = tmp_path / "sglang.json"
    assert (
        main(["export", "--plan", str(plan_path), "--format", "sglang", "--out", str(sg_map)]) == 0
    )
    p2l = np.asarray(json.loads(sg_map.read_text())["physical_to_logical_map"])
    dispatch = sglang_static_dispatch(p2l, ranks)
    dump = tmp_path / "sglang_dump"
    dump.mkdir()
    for rank in range(ranks):
        mine = home == rank
        ids = np.full((layers.total_layers, int(mine.sum()), 8), -1, dtype=np.int32)
        for moe, layer in enumerate(layers.moe_layer_ids):
            ids[layer, :, : logical.shape[2]] = dispatch[rank, layer][logical[moe][mine]]
        record = {"forward_pass_id": 0, "rank": rank, "topk_ids_of_layer": torch.from_numpy(ids)}
        torch.save(
            {"records": [record], "last_physical_to_logical_map": torch.from_numpy(p2l)},
            dump / f"r_{rank}.pt",
        )
    back = tmp_path / "from_sglang.parquet"
    assert main(["import", "--format", "sglang", str(dump), "--out", str(back)]) == 0
    served = TraceFile(back)
    order = np.concatenate([np.flatnonzero(home == r) for r in range(ranks)])
    np.testing.assert_array_equal(
        np.sort(served.read_all().expert_ids, axis=2), np.sort(logical[:, order], axis=2)
    )
    assert served.meta.layer_identity() == layers

    # vLLM: maps by MoE layer; routed experts come back int16 [tokens, moe layers, k]
    vl_map = tmp_path / "vllm.json"
    assert main(["export", "--plan", str(plan_path), "--format", "vllm", "--out", str(vl_map)]) == 0
    assert len(json.loads(vl_map.read_text())["physical_to_logical_map"]) == len(
        layers.moe_layer_ids
    )
    np.save(tmp_path / "routed.npy", logical.transpose(1, 0, 2).astype(np.int16))
    back = tmp_path / "from_vllm.parquet"
    flags = [
        "--first-moe-layer",
        str(layers.first_moe_layer),
        "--total-layers",
        str(layers.total_layers),
    ]
    if layers.moe_layer_ids != tuple(range(layers.first_moe_layer, layers.first_moe_layer + 4)):
        flags = []  # not contiguous: vLLM's dump cannot say; the trace then numbers MoE layers only
    assert (
        main(
            ["import", "--format", "vllm", str(tmp_path / "routed.npy"), "--out", str(back), *flags]
        )
        == 0
    )
    np.testing.assert_array_equal(TraceFile(back).read_all().expert_ids, logical)

    # TensorRT-LLM: YAML keyed by model layer; its expert statistics keyed the same way
    yaml_path = tmp_path / "lb.yaml"
    assert (
        main(["export", "--plan", str(plan_path), "--format", "trtllm", "--out", str(yaml_path)])
        == 0
    )
    import yaml

    config = yaml.safe_load(yaml_path.read_text())
    assert sorted(config["initial_global_assignments"]) == list(layers.moe_layer_ids)
    stats = tmp_path / "stats"
    stats.mkdir()
    (stats / "meta_info.json").write_text(
        json.dumps({"num_experts": 16, "num_experts_per_token": 2})
    )
    for rank in range(ranks):
        mine = home == rank
        write_safetensors(
            stats / f"rank{rank}.safetensors",
            {
                f"0_{layer}": np.bincount(logical[moe][mine].ravel(), minlength=16).astype(np.int64)
                for moe, layer in enumerate(layers.moe_layer_ids)
            },
        )
    back = tmp_path / "from_trtllm.parquet"
    argv = [
        "import",
        "--format",
        "trtllm",
        str(stats),
        "--out",
        str(back),
        "--total-layers",
        str(layers.total_layers),
    ]
    assert main(argv) == 0
    from moe_placement.traces.loadjson import read_load_parquet

    load, load_meta = read_load_parquet(back)
    expected = np.stack(
        [np.bincount(logical[m].ravel(), minlength=16) for m in range(logical.shape[0])]
    )
    np.testing.assert_array_equal(load, expected)
    assert load_meta.layer_identity() == layers

    # and the trace SGLang served solves again to a plan on the same model layers
    back = tmp_path / "from_sglang.parquet"
    again = tmp_path / "again.json"
    assert (
        main(
            [
                "solve",
                "--trace",
                str(back),
                "--gpus",
                "4",
                "--gpus-per-node",
                "2",
                "--redundant",
                "4",
                "--solver",
                "greedy",
                "--out",
                str(again),
            ]
        )
        == 0
    )
    assert Plan.load(again).layers == layers
    assert export_plan(Plan.load(again), "sglang", layers).rows == layers.total_layers


def test_trace_metadata_layer_identity_is_checked() -> None:
    base = TraceFile(BUNDLED).meta.__dict__
    meta = TraceMeta(**{**base, "moe_layer_ids": [2, 3, 5, 6], "total_layers": 8})
    assert meta.shape().layer_identity() == LayerIdentity((2, 3, 5, 6), 8)
    assert TraceMeta.from_json(meta.to_json()) == meta
    assert "total_layers" not in json.loads(TraceFile(BUNDLED).meta.to_json())  # unknown: left out
    for bad, message in (
        ({"total_layers": "8"}, "not an integer"),
        ({"moe_layer_ids": [3, 2, 5, 6]}, "strictly increasing"),
        ({"moe_layer_ids": [0, 1, 2]}, "3 moe_layer_ids for 4 layers"),
        ({"moe_layer_ids": [0, 1, 2, 3], "total_layers": 3}, "does not fit"),
    ):
        with pytest.raises(PlacementError, match=message):
            TraceMeta(**{**base, **bad})
