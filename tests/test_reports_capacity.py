"""Capacity questions of ``placement whatif``: load-only inputs, whole-model figures, the JSON contract,
scope strings, the memory model, and advice that follows the table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moe_placement.cli.commands._common import human_bytes
from moe_placement.cli.main import main
from moe_placement.cluster import GPU_TYPES, load_cluster
from moe_placement.pipeline.results import load_results
from moe_placement.pipeline.scenario import sampled_layers
from moe_placement.reports.report import ReportOptions, target_advice
from moe_placement.shapes import model_shape
from moe_placement.traces.loadjson import write_load_parquet
from moe_placement.wholemodel import (
    kv_tokens_per_gpu,
    layer_costs,
    memory_model,
    whole_model,
)

CONTRACT_KEYS = {"gpus", "moe_layers", "layer_us", "tokens_per_s", "usd_per_m_tokens"}


def _olmoe_counts(seed: int = 0) -> np.ndarray:
    """16 MoE layers x 64 experts of skewed counts (OLMoE's shape), 20,000 tokens x top-8 per layer."""
    rng = np.random.default_rng(seed)
    weights = rng.zipf(1.6, size=(16, 64)).astype(float)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.round(weights * 20000 * 8)


@pytest.fixture(scope="module")
def load_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same counts as a logical_count JSON (named as a decode run) and as a load-only Parquet."""
    folder = tmp_path_factory.mktemp("loads")
    counts = _olmoe_counts()
    json_path = folder / "decode_in1000out200.json"
    json_path.write_text(json.dumps({"logical_count": counts.tolist()}))
    parquet_path = write_load_parquet(
        folder / "loads.parquet", counts, list(range(16)), model_shape("olmoe-1b-7b"), "test"
    )
    return json_path, parquet_path


def _whatif_json(trace: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    argv = [
        "whatif",
        "--trace",
        str(trace),
        "--model",
        "olmoe-1b-7b",
        "--gpus-per-node",
        "2",
        "--sweep",
        "gpus=2,4",
        "--solver",
        "greedy",
        "--no-reference-solvers",
        "--sample-layers",
        "2",
        "--serial",
        "--json",
        "--out",
        str(out),
        *extra,
    ]
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_logical_count_json_gives_the_contract_and_per_model_figures(
    load_inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_path, _ = load_inputs
    out = _whatif_json(json_path, tmp_path, capsys, "--target-layer-us", "1e9")
    assert {"scenarios", "smallest_meeting_target"} <= set(out)
    assert len(out["scenarios"]) == 2
    for scenario in out["scenarios"]:
        assert set(scenario) >= CONTRACT_KEYS, scenario
        assert scenario["moe_layers"] == 16 and scenario["timed_layers"] == 2
        # tokens/s is per model: the step holds every MoE layer, each with its attention
        assert scenario["attention_us"] > 0
        assert scenario["step_us"] == pytest.approx(16 * scenario["layer_us"])
        tokens_per_step = scenario["tokens_per_gpu"] * scenario["gpus"]
        assert scenario["tokens_per_s"] == pytest.approx(
            tokens_per_step / scenario["step_us"] * 1e6
        )
    # the file name says decode: the phase and its default step size are inferred and stated
    assert all(s["phase"] == "decode" and s["tokens_per_gpu"] == 128 for s in out["scenarios"])
    assert (
        "per step of 128 tokens per GPU (default for decode), phase decode (from the input)"
        in (out["scope"])
    )
    assert "load-only" in out["scope"] and "Per model (olmoe-1b-7b)" in out["scope"]
    # an easy target: the smallest cluster is the 2-GPU one
    assert out["smallest_meeting_target"]["gpus"] == 2
    _, layers, meta = load_results(tmp_path)
    assert sorted(set(layers["layer"])) == [0, 15]  # the two timed layers, first and last
    assert meta["context_tokens"] == 1100 and meta["context_source"] == "file name"


def test_load_only_parquet_matches_its_json(
    load_inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_path, parquet_path = load_inputs
    common = ("--phase", "decode", "--context-tokens", "1100", "--target-tokens-per-s", "1e15")
    from_json = _whatif_json(json_path, tmp_path / "j", capsys, *common)
    from_parquet = _whatif_json(parquet_path, tmp_path / "p", capsys, *common)
    assert from_parquet["smallest_meeting_target"] is None  # nobody reaches 1e15 tokens/s
    for a, b in zip(from_json["scenarios"], from_parquet["scenarios"], strict=True):
        for key in (
            "layer_us",
            "step_us",
            "tokens_per_s",
            "usd_per_m_tokens",
            "memory_per_gpu_gib",
        ):
            assert a[key] == pytest.approx(b[key]), key
    assert "phase decode (given)" in from_parquet["scope"]


def test_text_output_states_scope_and_answers(
    load_inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_path, _ = load_inputs
    argv = [
        "whatif",
        "--trace",
        str(json_path),
        "--model",
        "olmoe-1b-7b",
        "--gpus",
        "2",
        "--solver",
        "greedy",
        "--no-reference-solvers",
        "--sample-layers",
        "1",
        "--tokens-per-gpu",
        "64",
        "--serial",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "per step of 64 tokens per GPU (given)" in text
    assert "solver time limit 10 s per scenario" in text
    assert "tokens/s (model)" in text and "GiB/GPU" in text
    assert "redundant experts per layer" in text
    md = (tmp_path / "summary.md").read_text()
    assert "How many redundant experts fit beside the KV cache" in md


def test_synthetic_profile_counts_every_layer_of_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 2-layer synthetic profile of Mixtral stands for its 32 MoE layers, not for 2."""
    argv = [
        "whatif",
        "--model",
        "mixtral-8x7b",
        "--synth-layers",
        "2",
        "--synth-tokens",
        "256",
        "--gpus",
        "2",
        "--solver",
        "greedy",
        "--no-reference-solvers",
        "--serial",
        "--json",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    (scenario,) = json.loads(capsys.readouterr().out)["scenarios"]
    assert scenario["moe_layers"] == 32 and scenario["timed_layers"] == 2
    assert scenario["step_us"] == pytest.approx(32 * scenario["layer_us"])


def test_deepseek_v3_memory_figures() -> None:
    model = whole_model("deepseek-v3")
    assert model is not None
    shape = model_shape("deepseek-v3")
    assert (model.num_moe_layers, model.num_dense_layers) == (58, 3)
    assert model.kv_bytes_per_token == (512 + 64) * 2 * 61  # MLA latent + rope key, BF16
    # 671 B parameters in all, 256 x 58 routed experts of 44 M parameters each: about 17 B remain
    routed = shape.expert_weight_bytes * 256 * 58
    assert 16.5e9 < model.non_expert_weight_bytes(shape) < 17.5e9
    assert 665e9 < routed + model.non_expert_weight_bytes(shape) < 675e9


@pytest.mark.parametrize("gpus", [32, 64, 128])
def test_memory_model_max_redundant_fits_and_one_more_slot_does_not(gpus: int) -> None:
    model = whole_model("deepseek-v3")
    assert model is not None
    shape = model_shape("deepseek-v3")
    for gpu in ("H100", "H200"):
        memory = memory_model(
            model, shape, GPU_TYPES[gpu], kv_tokens_per_gpu=kv_tokens_per_gpu("decode", 128, 4096)
        )
        redundant = memory.max_redundant(256, gpus)
        assert redundant is not None and (256 + redundant) % gpus == 0
        slots = (256 + redundant) // gpus
        assert memory.used_bytes(slots) <= memory.gpu_memory_bytes
        assert memory.used_bytes(slots + 1) > memory.gpu_memory_bytes
    # a longer context keeps more KV cache, leaving room for fewer experts
    short = memory_model(model, shape, GPU_TYPES["H100"], kv_tokens_per_gpu=128 * 1024)
    long = memory_model(model, shape, GPU_TYPES["H100"], kv_tokens_per_gpu=128 * 8192)
    assert long.max_slots_per_gpu() < short.max_slots_per_gpu()


def test_attention_time_grows_with_context_and_decode_reads_the_kv_cache() -> None:
    model = whole_model("deepseek-v3")
    assert model is not None
    shape, cluster = model_shape("deepseek-v3"), load_cluster(None)
    short = layer_costs(
        model, shape, cluster, phase="decode", tokens_per_gpu=128, context_tokens=1024
    )
    long = layer_costs(
        model, shape, cluster, phase="decode", tokens_per_gpu=128, context_tokens=8192
    )
    assert long.attention_us > short.attention_us
    # decode is bound by HBM: 128 x 8192 tokens x 1,152 B of KV per layer, at least this long
    kv_us = 128 * 8192 * 1152 / (cluster.gpu.hbm_gbytes_per_s * 1e3)
    assert long.attention_us >= kv_us
    assert long.dense_layer_us > long.attention_us  # DeepSeek-V3's dense layers add an FFN


def _frame(layer_us_by_gpus: dict[int, float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "gpus": list(layer_us_by_gpus),
            "layer_us": list(layer_us_by_gpus.values()),
            "tokens_per_s": [1e5 * g for g in layer_us_by_gpus],
        }
    )


def test_advice_follows_the_table() -> None:
    options = ReportOptions(target_layer_us=400.0)
    rising = target_advice(_frame({32: 728.0, 64: 1437.0, 128: 3174.0}), options, None)
    assert "larger clusters" not in rising
    assert "gets worse with GPU count (728 at 32 -> 1,437 at 64 -> 3,174 at 128 GPUs)" in rising
    falling = target_advice(_frame({32: 900.0, 64: 600.0, 128: 450.0}), options, None)
    assert "Sweep larger clusters" in falling
    # both targets stated: more GPUs are advised only when both figures improve with them
    both = ReportOptions(target_layer_us=400.0, target_tokens_per_s=1e9)
    assert "larger clusters" not in target_advice(_frame({32: 728.0, 64: 1437.0}), both, None)


def test_sampled_layers_spread_evenly() -> None:
    assert sampled_layers(58, 4) == [0, 19, 38, 57]
    assert sampled_layers(4, 4) == [0, 1, 2, 3] and sampled_layers(5, 0) == [0, 1, 2, 3, 4]
    assert sampled_layers(9, 1) == [4]


def test_solve_states_its_step_and_shows_bytes_per_step(
    load_inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A load-only input counted over a whole run: the table's bytes are for the step its times are
    for, and the scope line says which step, which phase and where each came from."""
    json_path, _ = load_inputs
    argv = [
        "solve",
        "--trace",
        str(json_path),
        "--model",
        "olmoe-1b-7b",
        "--gpus",
        "4",
        "--gpus-per-node",
        "2",
        "--solver",
        "greedy",
        "--out",
        str(tmp_path / "plan.json"),
    ]
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scope"]["tokens_per_gpu"] == 128 and report["scope"]["phase"] == "decode"
    step_nic_bytes = report["summary"]["inter_node_bytes"] * report["time_scale"]
    assert report["time_scale"] == pytest.approx(128 * 4 / 20000, rel=1e-3)
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert (
        "per MoE layer, per step of 128 tokens per GPU (default for decode) x 4 GPUs, phase decode "
        "(from the file name); the input holds counts of 20,000 tokens over a whole run (load-only)"
    ) in text
    total = next(line for line in text.splitlines() if line.startswith("total:"))
    assert f"NIC {human_bytes(step_nic_bytes)}," in total and "per step" in total


def test_kv_cache_follows_each_scenarios_tokens_per_gpu(
    load_inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_path, _ = load_inputs
    out = _whatif_json(json_path, tmp_path, capsys, "--sweep", "tokens=64,128")
    by = {(s["gpus"], s["tokens_per_gpu"]): s["memory_per_gpu_gib"] for s in out["scenarios"]}
    model = whole_model("olmoe-1b-7b")
    assert model is not None
    # decode keeps each sequence's whole context (1100 tokens, from the file name)
    extra_gib = (128 - 64) * 1100 * model.kv_bytes_per_token / 1024**3
    for gpus in (2, 4):
        assert by[(gpus, 128)] - by[(gpus, 64)] == pytest.approx(extra_gib)
