"""Importers: each format on a tiny fixture, round trips as property tests, and ``placement import``."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_placement.cli.commands import import_trace
from moe_placement.cli.main import main
from moe_placement.errors import PlacementError
from moe_placement.traces import importers
from moe_placement.traces.importers import ImportOptions
from moe_placement.traces.reader import TraceFile

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "importers"


def test_cli_format_list_matches_registry() -> None:
    assert set(import_trace.FORMATS) == set(importers.FORMATS)


def test_logical_count_is_load_only(tmp_path: Path) -> None:
    imported = importers.load("logical-count", FIXTURES / "logical_count.json")
    assert imported.load_only and imported.layer_ids == [1, 2, 3] and imported.num_experts == 8
    raw = np.asarray(json.loads((FIXTURES / "logical_count.json").read_text())["logical_count"])
    np.testing.assert_array_equal(imported.load, raw[1:])
    out = imported.write(tmp_path / "lc.json")
    assert json.loads(out.read_text())["logical_count"] == raw.tolist()
    # The contract's `--out T.parquet` writes a load-only Parquet that every command reads as load-only.
    from moe_placement.traces.loadjson import is_load_parquet, load_load_parquet
    from moe_placement.traces.reader import TraceFile

    pq_out = imported.write(tmp_path / "lc.parquet")
    assert is_load_parquet(pq_out)
    workload = load_load_parquet(pq_out, model_shape_for_fixture())
    np.testing.assert_array_equal(workload.load, raw[1:])
    assert not workload.per_token
    with pytest.raises(PlacementError, match="load-only"):
        TraceFile(pq_out)
    with pytest.raises(PlacementError, match="load-only"):
        imported.write(tmp_path / "lc.csv")


def model_shape_for_fixture():  # type: ignore[no-untyped-def]
    from moe_placement.shapes import ModelShape

    return ModelShape("fixture", 3, 8, 2, 16, 16)


def test_exflow_top1(tmp_path: Path) -> None:
    raw = np.load(FIXTURES / "exflow_top1.npy")
    imported = importers.load(
        "exflow-npy", FIXTURES / "exflow_top1.npy", ImportOptions(num_experts=8)
    )
    out = imported.write(tmp_path / "x.parquet")
    trace = TraceFile(out)
    chunk = trace.read_all()
    assert trace.meta.top_k == 1 and trace.meta.num_experts == 8 and trace.meta.num_moe_layers == 3
    np.testing.assert_array_equal(chunk.expert_ids[:, :, 0], raw.T)


def test_vllm_jsonl_with_prompt_steps(tmp_path: Path) -> None:
    imported = importers.load("vllm", FIXTURES / "vllm_routed.jsonl", ImportOptions(num_experts=8))
    chunk = TraceFile(imported.write(tmp_path / "v.parquet")).read_all()
    lines = [json.loads(line) for line in (FIXTURES / "vllm_routed.jsonl").read_text().splitlines()]
    first = np.load(io.BytesIO(base64.b64decode(lines[0]["routed_experts"])))
    second = np.asarray(lines[1]["routed_experts"])
    expected = np.concatenate([first, second]).transpose(1, 0, 2)
    np.testing.assert_array_equal(np.sort(chunk.expert_ids, axis=2), np.sort(expected, axis=2))
    assert chunk.seq_id.tolist() == [0] * 7 + [1] * 5
    # Request 0 has a 4-token prompt: positions 0-3 are step 0, then steps 1, 2, 3.
    assert chunk.step[:7].tolist() == [0, 0, 0, 0, 1, 2, 3]
    assert list(chunk.domain[:1]) == ["chat"] and list(chunk.domain[-1:]) == ["code"]


def test_csv_weights_and_layers(tmp_path: Path) -> None:
    imported = importers.load("csv", FIXTURES / "routing.csv")
    trace = TraceFile(imported.write(tmp_path / "c.parquet"))
    chunk = trace.read_all()
    assert (
        trace.meta.moe_layer_ids == [3, 5] and trace.meta.top_k == 2 and trace.meta.num_experts == 6
    )
    np.testing.assert_allclose(chunk.weights[..., 0], 0.7, rtol=1e-6)
    assert chunk.seq_id.tolist() == [0, 0, 1, 1]


def test_csv_rejects_ragged_top_k(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("layer_id,token_id,e0,e1,e2\n0,0,1,1,0\n0,1,1,0,0\n")
    with pytest.raises(PlacementError, match="chooses 1 experts"):
        importers.load("csv", bad)


def _sglang_dump(path: Path) -> None:
    torch = pytest.importorskip("torch")
    # 4 model layers (layer 0 dense: all -1), 10 physical slots for 8 logical experts, top-2 padded to 8.
    p2l = torch.tensor([[*range(8), 0, 1]] * 4)
    extend = torch.full((4, 5, 8), -1, dtype=torch.int32)
    extend[1:, :, :2] = torch.tensor([[8, 2], [1, 3], [4, 9], [5, 6], [7, 0]], dtype=torch.int32)
    decode = torch.full((4, 2, 8), -1, dtype=torch.int32)
    decode[1:, :, :2] = torch.tensor([[2, 3], [6, 7]], dtype=torch.int32)
    records = [
        {
            "forward_pass_id": 0,
            "rank": 0,
            "rids": ["a", "b"],
            "extend_seq_lens": [3, 2],
            "forward_mode": 1,
            "topk_ids_of_layer": extend,
        },
        {
            "forward_pass_id": 1,
            "rank": 0,
            "rids": ["a", "b"],
            "forward_mode": 2,
            "topk_ids_of_layer": decode,
        },
    ]
    torch.save({"records": records, "last_physical_to_logical_map": p2l}, path)


def test_sglang_per_token_dump(tmp_path: Path) -> None:
    dump = tmp_path / "expert_distribution_recorder_1.0_0.pt"
    _sglang_dump(dump)
    imported = importers.load("sglang", dump, ImportOptions(num_experts=8))
    assert imported.layer_ids == [1, 2, 3]
    chunk = TraceFile(imported.write(tmp_path / "s.parquet")).read_all()
    # Physical slot 8 -> logical 0, 9 -> logical 1.
    assert sorted(chunk.expert_ids[0, 0].tolist()) == [0, 2]
    assert sorted(chunk.expert_ids[0, 2].tolist()) == [1, 4]
    assert chunk.seq_id.tolist() == [0, 0, 0, 1, 1, 0, 1]
    assert chunk.pos.tolist() == [0, 1, 2, 0, 1, 3, 2]
    assert chunk.step.tolist() == [0, 0, 0, 0, 0, 1, 1]


@settings(max_examples=25, deadline=None)
@given(
    tokens=st.integers(1, 30),
    layers=st.integers(1, 4),
    experts=st.integers(2, 12),
    k=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_round_trips_keep_routing(
    tokens: int,
    layers: int,
    experts: int,
    k: int,
    seed: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Random routing written as vLLM .npy, ExFlow .npy and CSV comes back unchanged."""
    k = min(k, experts)
    rng = np.random.default_rng(seed)
    ids = np.stack(
        [
            np.stack([rng.choice(experts, k, replace=False) for _ in range(layers)])
            for _ in range(tokens)
        ]
    )  # [tokens, layers, k]
    folder = tmp_path_factory.mktemp("rt")
    np.save(folder / "req.npy", ids)
    vllm = importers.load("vllm", folder / "req.npy", ImportOptions(num_experts=experts))
    np.testing.assert_array_equal(vllm.expert_ids, ids.transpose(1, 0, 2))
    np.save(folder / "ex.npy", ids)
    ex = importers.load("exflow-npy", folder / "ex.npy", ImportOptions(num_experts=experts))
    np.testing.assert_array_equal(ex.expert_ids, ids.transpose(1, 0, 2))
    lines = ["layer_id,token_id," + ",".join(f"expert_{e}" for e in range(experts))]
    for layer in range(layers):
        for tok in range(tokens):
            row = np.zeros(experts, dtype=int)
            row[ids[tok, layer]] = 1
            lines.append(f"{layer},{tok}," + ",".join(map(str, row)))
    (folder / "r.csv").write_text("\n".join(lines) + "\n")
    csv = importers.load("csv", folder / "r.csv")
    np.testing.assert_array_equal(
        np.sort(csv.expert_ids, axis=2), np.sort(ids.transpose(1, 0, 2), axis=2)
    )
    out = csv.write(folder / "r.parquet", ImportOptions(num_experts=experts))
    assert TraceFile(out).validate() == tokens


def test_import_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "v.parquet"
    assert (
        main(
            [
                "import",
                "--format",
                "vllm",
                str(FIXTURES / "vllm_routed.jsonl"),
                "--out",
                str(out),
                "--experts",
                "8",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["tokens"] == 12
    assert main(["stats", "--trace", str(out)]) == 0
    assert (
        main(
            [
                "import",
                "--format",
                "logical-count",
                str(FIXTURES / "logical_count.json"),
                "--out",
                str(tmp_path / "lc.json"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "import",
                "--format",
                "logical-count",
                str(FIXTURES / "logical_count.json"),
                "--out",
                str(tmp_path / "lc.parquet"),
            ]
        )
        == 0
    )
    assert (
        main(["stats", "--trace", str(tmp_path / "lc.parquet"), "--json"]) == 2
    )  # shape unknown: one line
    assert (
        main(["import", "--format", "csv", str(tmp_path / "missing.csv"), "--out", str(out)]) == 2
    )
    assert (
        main(
            [
                "import",
                "--format",
                "exflow-npy",
                str(FIXTURES / "exflow_top1.npy"),
                "--out",
                str(out),
                "--experts",
                "4",
            ]
        )
        == 2
    )  # ids reach 7
    assert "expert id" in capsys.readouterr().err
