"""Fuzzing the command line: malformed traces, plans, cluster files, baselines, importer inputs, flag
values and output places for every subcommand, run in-process through ``moe_placement.cli.main.main``.

Every case changes exactly one thing in an argument list that works, to something that must be refused;
the contract checked is the CLI's: exit code 2, exactly one non-empty line on stderr, no traceback, no
warning, and nothing written (no output, no temporary file, inputs untouched).

Half the examples come from a catalogue of named cases (about 4,300: each subcommand x each input slot x
each malformed variant, each numeric, choice and parsed-string option x each bad value, each output x
each place that cannot be written); the other half are made up by hypothesis: random bytes, a random cut
of a good file, a random bad value for a trace metadata field, random text for a numeric option.

Subcommands that start Ray or torch workers (``validate``, ``calibrate``, ``capture``, and ``demo``'s
what-if step) are fuzzed only on what must fail before workers start; a tripwire on worker, model and
Ray start-up turns a late refusal into a test failure instead of a minutes-long run.

The default profile (``FAST_EXAMPLES`` examples, derandomized so CI sees the same cases every run) takes
about 1.5 minutes on a loaded 2-core machine; ``test_cli_refuses_malformed_input_long`` draws ten times
as many and is marked slow. ``python tests/test_fuzz_cli.py [SPEC ...]`` runs every catalogued case once
and lists the failures (4,283 cases, about 8.5 minutes on the same machine).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_placement.cli.commands._common import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from moe_placement.cli.main import build_parser, discover, main
from moe_placement.cluster import load_cluster, save_cluster
from moe_placement.traces.schema import META_KEY
from moe_placement.traces.synth import SynthConfig, generate

FAST_EXAMPLES = 600
LONG_EXAMPLES = 6000
# Generous: a refusal takes milliseconds; only a case that wrongly runs the whole command comes near.
DEADLINE = timedelta(seconds=60)

# ---- the working inputs every case starts from -------------------------------------------------------


@dataclass(frozen=True)
class Good:
    """Valid inputs, shared by every case and never written to (a case that changes one fails)."""

    folder: Path
    trace: Path
    plan: Path
    cluster: Path
    baseline: Path
    npy: Path
    logical_count: Path

    def snapshot(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.folder.iterdir()) if p.is_file()}


def make_good(folder: Path) -> Good:
    folder.mkdir(parents=True, exist_ok=True)
    trace = folder / "trace.parquet"
    generate(
        SynthConfig(num_layers=2, num_experts=8, top_k=2, num_tokens=256, seq_len=64), trace, seed=1
    )
    cluster = folder / "cluster.yaml"
    save_cluster(load_cluster("h100-multirail").with_counts(4, 2), cluster)
    plan = folder / "plan.json"
    baseline = folder / "baseline.json"
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        argv = ["solve", "--trace", str(trace), "--cluster", str(cluster), "--solver", "greedy"]
        assert main([*argv, "--out", str(plan)]) == 0, quiet.getvalue()
        argv = ["regress", "--trace", str(trace), "--plan", str(plan), "--cluster", str(cluster)]
        argv += ["--gpus", "4", "--gpus-per-node", "2"]
        assert main([*argv, "--baseline", str(baseline), "--update-baseline"]) == 0, (
            quiet.getvalue()
        )
    npy = folder / "routing.npy"
    rng = np.random.default_rng(0)
    np.save(npy, rng.integers(0, 8, size=(64, 2)).astype(np.int64))
    logical_count = folder / "logical_count.json"
    logical_count.write_text(json.dumps({"logical_count": rng.integers(1, 50, (2, 8)).tolist()}))
    return Good(folder, trace, plan, cluster, baseline, npy, logical_count)


# ---- the commands, each with an argument list that works ----------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One way to call a subcommand that works. ``files``: option -> kind of input file it reads
    (``"IN"`` is the positional input); ``optional_files`` are not in ``argv`` and are added when
    fuzzed; ``outputs``: option -> "file" or "folder"; ``early_only``: starts workers, so only
    refusals that come before them are fuzzed."""

    command: str
    argv: Callable[[Good, Path], list[str]]
    files: dict[str, str] = field(default_factory=dict)
    optional_files: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    early_only: bool = False
    unused_options: tuple[str, ...] = ()


SPECS: dict[str, Spec] = {
    spec.command if spec.command != "import" else f"import:{spec.files['IN']}": spec
    for spec in (
        Spec(
            "compare",
            lambda g, o: (
                [
                    "compare",
                    "--trace",
                    str(g.trace),
                    "--cluster",
                    str(g.cluster),
                    "--solvers",
                    "greedy,contiguous",
                    "--time-limit",
                    "1",
                ]
            ),
            files={"--trace": "trace", "--cluster": "cluster"},
            optional_files={"--current": "plan"},
        ),
        Spec(
            "demo",
            lambda g, o: (
                [
                    "demo",
                    "--trace",
                    str(g.trace),
                    "--out",
                    str(o / "demo"),
                    "--gpus",
                    "4",
                    "--gpus-per-node",
                    "2",
                    "--redundant",
                    "0",
                    "--time-limit",
                    "1",
                ]
            ),
            files={"--trace": "trace"},
            outputs={"--out": "folder"},
        ),
        Spec(
            "evaluate",
            lambda g, o: (
                [
                    "evaluate",
                    "--trace",
                    str(g.trace),
                    "--plan",
                    str(g.plan),
                    "--cluster",
                    str(g.cluster),
                ]
            ),
            files={"--trace": "trace", "--plan": "plan", "--cluster": "cluster"},
        ),
        Spec(
            "export",
            lambda g, o: (
                ["export", "--plan", str(g.plan), "--format", "vllm", "--out", str(o / "maps.json")]
            ),
            files={"--plan": "plan"},
            outputs={"--out": "file"},
        ),
        Spec(
            "import",
            lambda g, o: (
                [
                    "import",
                    str(g.npy),
                    "--format",
                    "exflow-npy",
                    "--out",
                    str(o / "imported.parquet"),
                ]
            ),
            files={"IN": "npy"},
            outputs={"--out": "file"},
        ),
        Spec(
            "import",
            lambda g, o: (
                [
                    "import",
                    str(g.logical_count),
                    "--format",
                    "logical-count",
                    "--out",
                    str(o / "imported.json"),
                ]
            ),
            files={"IN": "logical_count"},
            outputs={"--out": "file"},
        ),
        Spec(
            "rebalance",
            lambda g, o: (
                [
                    "rebalance",
                    "--trace",
                    str(g.trace),
                    "--cluster",
                    str(g.cluster),
                    "--windows",
                    "2",
                    "--interval",
                    "1",
                    "--solver",
                    "greedy",
                    "--time-limit",
                    "1",
                    "--plots",
                    str(o / "plots"),
                ]
            ),
            files={"--trace": "trace", "--cluster": "cluster"},
            outputs={"--plots": "folder"},
        ),
        Spec(
            "regress",
            lambda g, o: (
                [
                    "regress",
                    "--trace",
                    str(g.trace),
                    "--plan",
                    str(g.plan),
                    "--cluster",
                    str(g.cluster),
                    "--baseline",
                    str(g.baseline),
                    "--gpus",
                    "4",
                    "--gpus-per-node",
                    "2",
                    "--junit",
                    str(o / "junit.xml"),
                ]
            ),
            files={
                "--trace": "trace",
                "--plan": "plan",
                "--cluster": "cluster",
                "--baseline": "baseline",
            },
            outputs={"--junit": "file"},
            unused_options=("--solver",),  # --plan is measured, not solved
        ),
        Spec(
            "simulate",
            lambda g, o: (
                [
                    "simulate",
                    "--trace",
                    str(g.trace),
                    "--plan",
                    str(g.plan),
                    "--cluster",
                    str(g.cluster),
                    "--chrome-trace",
                    str(o / "chrome.json"),
                ]
            ),
            files={"--trace": "trace", "--plan": "plan", "--cluster": "cluster"},
            outputs={"--chrome-trace": "file"},
        ),
        Spec(
            "solve",
            lambda g, o: (
                [
                    "solve",
                    "--trace",
                    str(g.trace),
                    "--cluster",
                    str(g.cluster),
                    "--solver",
                    "greedy",
                    "--out",
                    str(o / "plan.json"),
                ]
            ),
            files={"--trace": "trace", "--cluster": "cluster"},
            optional_files={"--current": "plan"},
            outputs={"--out": "file"},
        ),
        Spec(
            "stats",
            lambda g, o: ["stats", "--trace", str(g.trace), "--plots", str(o / "plots")],
            files={"--trace": "trace"},
            optional_files={"--compare": "trace"},
            outputs={"--plots": "folder"},
        ),
        Spec(
            "synth",
            lambda g, o: (
                [
                    "synth",
                    "--out",
                    str(o / "synth.parquet"),
                    "--layers",
                    "2",
                    "--experts",
                    "8",
                    "--tokens",
                    "64",
                ]
            ),
            outputs={"--out": "file"},
        ),
        Spec(
            "whatif",
            lambda g, o: (
                [
                    "whatif",
                    "--trace",
                    str(g.trace),
                    "--cluster",
                    str(g.cluster),
                    "--serial",
                    "--no-reference-solvers",
                    "--solver",
                    "greedy",
                    "--time-limit",
                    "1",
                    "--out",
                    str(o / "whatif"),
                ]
            ),
            files={"--trace": "trace", "--cluster": "cluster"},
            outputs={"--out": "folder"},
        ),
        Spec(
            "validate",
            lambda g, o: (
                [
                    "validate",
                    "--trace",
                    str(g.trace),
                    "--plan",
                    str(g.plan),
                    "--workers",
                    "2",
                    "--out",
                    str(o / "validate.json"),
                ]
            ),
            files={"--trace": "trace", "--plan": "plan"},
            optional_files={"--baseline-plan": "plan", "--cluster": "cluster"},
            early_only=True,
        ),
        Spec(
            "calibrate",
            lambda g, o: ["calibrate", "--workers", "2", "--out", str(o / "cluster.yaml")],
            optional_files={"--trace": "trace_metadata"},  # only the shape is read
            early_only=True,
        ),
        Spec(
            "capture",
            lambda g, o: (
                [
                    "capture",
                    "--arch",
                    "mixtral",
                    "--tokens",
                    "64",
                    "--out",
                    str(o / "captured.parquet"),
                ]
            ),
            early_only=True,
            unused_options=("--arch",),  # checked by the model loader, once torch is imported
        ),
    )
}

# ---- malformed files ----------------------------------------------------------------------------------

NON_UTF8 = b"\xff\xfe\x00\x81 not text \xc3\x28"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _table_and_meta(good: Good) -> tuple[pa.Table, dict[str, Any]]:
    table = pq.read_table(good.trace)
    return table, json.loads(table.schema.metadata[META_KEY])


def _write_trace(path: Path, table: pa.Table, meta: Any, raw: bytes | None = None) -> Path:
    blob = raw if raw is not None else json.dumps(meta).encode()
    pq.write_table(table.replace_schema_metadata({META_KEY: blob}), path)
    return path


# Values that no metadata field of that kind may hold.
BAD_INT = ["sixteen", -1, 0, 1.5, None, [], {}, True, "8"]
BAD_FLOAT = ["two", -1.0, 0.0, None, math.nan, math.inf, [], True]
BAD_TEXT = [5, None, [], {"a": 1}, 1.5]
BAD_META: dict[str, list[Any]] = {
    "schema_version": ["one", 2, 0, None, 1.5, True],
    "model_name": BAD_TEXT,
    "source": BAD_TEXT,
    "num_moe_layers": [*BAD_INT, 3, 10**9],
    "num_experts": [*BAD_INT, 4, 10**6],
    "top_k": [*BAD_INT, 3, 9],
    "hidden_size": BAD_INT,
    "expert_intermediate_size": BAD_INT,
    "shared_experts": ["one", -1, 1.5, None, [], True],
    "dispatch_bytes_per_elem": BAD_FLOAT,
    "combine_bytes_per_elem": BAD_FLOAT,
    "moe_layer_ids": ["abc", [1], [0, 0], [-1, 0], [0, "x"], 5, {}],
    "extra": ["x", 5, [1]],
}


def trace_variants(good: Good) -> dict[str, Callable[[Path], Path]]:
    """Name -> writer of a malformed per-token trace at the given path."""
    out: dict[str, Callable[[Path], Path]] = {}
    table, meta = _table_and_meta(good)

    for key, values in BAD_META.items():
        for i, value in enumerate(values):
            out[f"meta {key}={value!r}#{i}"] = lambda p, k=key, v=value: _write_trace(
                p, table, {**meta, k: v}
            )
    for key in ("schema_version", "num_experts", "top_k", "num_moe_layers", "hidden_size"):
        out[f"meta without {key}"] = lambda p, k=key: _write_trace(
            p, table, {m: v for m, v in meta.items() if m != k}
        )
    for name, raw in {
        "not JSON": b"{not json",
        "a list": b"[1, 2]",
        "a string": b'"trace"',
        "null": b"null",
        "non-UTF-8": NON_UTF8,
    }.items():
        out[f"metadata {name}"] = lambda p, r=raw: _write_trace(p, table, None, r)
    out["no metadata"] = lambda p: _no_meta(p, table)
    for column in ("step", "seq_id", "pos", "layer", "expert_ids", "weights"):
        out[f"without column {column}"] = lambda p, c=column: _write_trace(
            p, table.drop_columns([c]), meta
        )
        out[f"column {column} as text"] = lambda p, c=column: _write_trace(
            p, _retype(table, c, pa.string()), meta
        )
    for column in ("step", "seq_id", "pos", "layer"):
        out[f"column {column} as float"] = lambda p, c=column: _write_trace(
            p, _retype(table, c, pa.float64()), meta
        )
    out["zero tokens"] = lambda p: _write_trace(p, table.slice(0, 0), meta)
    out["half a token"] = lambda p: _write_trace(p, table.slice(0, table.num_rows - 1), meta)
    out["expert id out of range"] = lambda p: _write_trace(p, _set_id(table, 8), meta)
    out["negative expert id"] = lambda p: _write_trace(p, _set_id(table, -1), meta)
    out["expert twice in a token"] = lambda p: _write_trace(p, _duplicate_id(table), meta)
    out["NaN gate weight"] = lambda p: _write_trace(p, _nan_weight(table), meta)
    out["layers swapped"] = lambda p: _write_trace(p, _swap_layers(table), meta)
    out["load-only JSON that is a list"] = lambda p: _write(p.with_suffix(".json"), b"[1, 2]")
    out["load-only JSON that is a string"] = lambda p: _write(p.with_suffix(".json"), b'"x"')
    out["load-only JSON of the wrong shape"] = lambda p: _write(
        p.with_suffix(".json"), b'{"logical_count": [[1, 2], [3]]}'
    )
    out["load-only JSON, non-UTF-8"] = lambda p: _write(p.with_suffix(".json"), NON_UTF8)
    return out


def _no_meta(path: Path, table: pa.Table) -> Path:
    pq.write_table(table.replace_schema_metadata(None), path)
    return path


def _retype(table: pa.Table, column: str, typ: pa.DataType) -> pa.Table:
    index = table.schema.get_field_index(column)
    values = [str(v) if typ == pa.string() else float(v) for v in table.column(column).to_pylist()]
    if typ != pa.string() and isinstance(table.column(column).to_pylist()[0], list):
        values = [float(v[0]) for v in table.column(column).to_pylist()]
    return table.set_column(index, column, pa.array(values, typ))


def _with_ids(table: pa.Table, ids: np.ndarray) -> pa.Table:
    k = ids.shape[1]
    array = pa.FixedSizeListArray.from_arrays(pa.array(ids.reshape(-1), pa.int16()), k)
    return table.set_column(table.schema.get_field_index("expert_ids"), "expert_ids", array)


def _ids(table: pa.Table) -> np.ndarray:
    return np.array(table.column("expert_ids").to_pylist(), dtype=np.int16)


def _set_id(table: pa.Table, value: int) -> pa.Table:
    ids = _ids(table)
    ids[len(ids) // 2, 0] = value
    return _with_ids(table, ids)


def _duplicate_id(table: pa.Table) -> pa.Table:
    ids = _ids(table)
    ids[3, 1] = ids[3, 0]
    return _with_ids(table, ids)


def _nan_weight(table: pa.Table) -> pa.Table:
    weights = np.array(table.column("weights").to_pylist(), dtype=np.float32)
    weights[5, 0] = np.nan
    array = pa.FixedSizeListArray.from_arrays(pa.array(weights.reshape(-1)), weights.shape[1])
    return table.set_column(table.schema.get_field_index("weights"), "weights", array)


def _swap_layers(table: pa.Table) -> pa.Table:
    layer = np.array(table.column("layer").to_pylist(), dtype=np.int16)
    return table.set_column(table.schema.get_field_index("layer"), "layer", pa.array(layer[::-1]))


BAD_PLAN_FIELDS: dict[str, list[Any]] = {
    "schema_version": ["one", 2, None, 1.5, [], True],
    "num_gpus": ["four", -1, 0, 3, 1.5, None, [], True, "4"],
    "gpus_per_node": ["two", -1, 0, 3, 1.5, None, [], True, 8],
    "slots_per_gpu": ["two", -1, 0, 1.5, None, [], True, 3],
    "phy2log": [[], [[]], "x", 5, None, [[0, 1], [0]], [["a", "b"]], [[0.5, 1.5]], [[-1, 0]]],
    "replica_share": ["x", 5, [[]], [[math.nan]], [["a"]]],
    "provenance": ["x", 5, [1], {"seconds": "long"}, {"extra": "x"}, {"extra": [1]}],
    "num_experts": ["eight", -1, 0, 1.5, None, [], 9],
    "num_layers": ["two", -1, 0, 1.5, None, [], 3],
}


def plan_variants(good: Good) -> dict[str, Callable[[Path], Path]]:
    plan = json.loads(good.plan.read_text())
    out: dict[str, Callable[[Path], Path]] = {}
    for key, values in BAD_PLAN_FIELDS.items():
        for i, value in enumerate(values):
            out[f"plan {key}={value!r}#{i}"] = lambda p, k=key, v=value: _write(
                p, json.dumps({**plan, k: v}).encode()
            )
    for key in ("num_gpus", "gpus_per_node", "slots_per_gpu", "phy2log"):
        out[f"plan without {key}"] = lambda p, k=key: _write(
            p, json.dumps({m: v for m, v in plan.items() if m != k}).encode()
        )
    out["plan with zero layers"] = lambda p: _write(
        p, json.dumps({**plan, "phy2log": [], "num_layers": 0}).encode()
    )
    out["plan for another trace shape"] = lambda p: _write(
        p, json.dumps({**plan, "phy2log": [row[:8] * 2 for row in plan["phy2log"]][:1]}).encode()
    )
    out.update(_document_variants(".json"))
    return out


CLUSTER_FIELDS: dict[str, list[Any]] = {
    "num_nodes": ["two", -1, 0, 1.5, None, [], True],
    "gpus_per_node": ["two", -1, 0, 1.5, None, [], True],
    "nic_gbits_per_s": ["fast", -1, 0, math.nan, math.inf, None, []],
    "nvlink_efficiency": ["x", -0.5, 0, 1.5, math.nan, None, []],
    "nic_efficiency": ["x", -0.5, 0, 1.5, math.nan, None],
    "fabric": [5, "no-such-fabric", None, []],
    "gpu": [5, "no-such-gpu", [], {"name": "X"}, {"bogus": 1}, None],
    "planes": ["x", -1, 0, 1.5, None],
    "nics_per_gpu": ["x", -1, 0, 1.5, None],
    "no_such_key": [1],
    "preset": ["no-such-preset", 5, []],
}


def cluster_variants(good: Good) -> dict[str, Callable[[Path], Path]]:
    cluster = yaml.safe_load(good.cluster.read_text())
    out: dict[str, Callable[[Path], Path]] = {}
    for key, values in CLUSTER_FIELDS.items():
        for i, value in enumerate(values):
            out[f"cluster {key}={value!r}#{i}"] = lambda p, k=key, v=value: _write(
                p.with_suffix(".json"), json.dumps({**cluster, k: v}).encode()
            )
    out["cluster YAML syntax error"] = lambda p: _write(p.with_suffix(".yaml"), b"a: [1, 2\n")
    out["cluster YAML list"] = lambda p: _write(p.with_suffix(".yaml"), b"- 1\n- 2\n")
    out["cluster YAML string"] = lambda p: _write(p.with_suffix(".yaml"), b"just text\n")
    out["cluster TOML error"] = lambda p: _write(p.with_suffix(".toml"), b"num_nodes = = 2\n")
    out["cluster non-UTF-8 YAML"] = lambda p: _write(p.with_suffix(".yaml"), NON_UTF8)
    out["cluster non-UTF-8 TOML"] = lambda p: _write(p.with_suffix(".toml"), NON_UTF8)
    out.update(_document_variants(".json"))
    return out


BAD_BASELINE_FIELDS: dict[str, list[Any]] = {
    "schema_version": ["one", 2, None],
    "config": ["x", 5, [], None],
    "tolerances": ["x", 5, []],
    "engine": [5, [], {}],
    "traces": ["x", 5, [], None, {"t": 5}, {"t": {"metrics": "x"}}, {"t": {"metrics": {"m": "x"}}}],
}


def baseline_variants(good: Good) -> dict[str, Callable[[Path], Path]]:
    baseline = json.loads(good.baseline.read_text())
    out: dict[str, Callable[[Path], Path]] = {}
    for key in ("schema_version", "traces"):
        out[f"baseline without {key}"] = lambda p, k=key: _write(
            p, json.dumps({m: v for m, v in baseline.items() if m != k}).encode()
        )
    for key, values in BAD_BASELINE_FIELDS.items():
        for i, value in enumerate(values):
            out[f"baseline {key}={value!r}#{i}"] = lambda p, k=key, v=value: _write(
                p, json.dumps({**baseline, k: v}).encode()
            )
    out.update(_document_variants(".json"))
    return out


def npy_variants(good: Good) -> dict[str, Callable[[Path], Path]]:
    routing = np.load(good.npy)
    out: dict[str, Callable[[Path], Path]] = {}
    full = good.npy.read_bytes()
    for cut in (10, 100, len(full) - 8):
        out[f"npy truncated at {cut} bytes"] = lambda p, c=cut: _write(p, full[:c])
    arrays = {
        "float": routing.astype(np.float64) + 0.5,
        "float, integral": routing.astype(np.float64),
        "complex": routing.astype(np.complex128),
        "bool": routing > 3,
        "text": routing.astype(str),
        "one axis": routing[:, 0],
        "four axes": routing[:, :, None, None],
        "no tokens": routing[:0],
        "no layers": routing[:, :0],
        "negative id": np.where(routing == 0, -1, routing),
        "NaN": np.where(routing == 0, np.nan, routing.astype(float)),
    }
    for name, array in arrays.items():
        out[f"npy {name}"] = lambda p, a=array: _save(p, a)
    out["npy pickled object array"] = lambda p: _save(p, np.array([{"a": 1}], dtype=object), True)
    out["npz archive"] = lambda p: _savez(p, routing)
    out.update(_document_variants(".npy"))
    return out


def _save(path: Path, array: np.ndarray, allow_pickle: bool = False) -> Path:
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=allow_pickle)
    return path


def _savez(path: Path, array: np.ndarray) -> Path:
    with open(path, "wb") as handle:
        np.savez(handle, routing=array)
    return path


def logical_count_variants(good: Good) -> dict[str, Callable[[Path], Path]]:
    out: dict[str, Callable[[Path], Path]] = {}
    bad = {
        "no logical_count key": {"counts": [[1, 2]]},
        "ragged": {"logical_count": [[1, 2], [3]]},
        "text counts": {"logical_count": [["a", "b"]]},
        "negative": {"logical_count": [[1, -2]]},
        "all zero": {"logical_count": [[0, 0], [0, 0]]},
        "empty": {"logical_count": []},
        "a number": {"logical_count": 5},
        "four axes": {"logical_count": [[[[1]]]]},
        "null": {"logical_count": None},
    }
    for name, doc in bad.items():
        out[f"logical_count {name}"] = lambda p, d=doc: _write(p, json.dumps(d).encode())
    out["logical_count NaN"] = lambda p: _write(p, b'{"logical_count": [[NaN, 1]]}')
    out["logical_count Infinity"] = lambda p: _write(p, b'{"logical_count": [[Infinity, 1]]}')
    out.update(_document_variants(".json"))
    return out


def _document_variants(suffix: str) -> dict[str, Callable[[Path], Path]]:
    """Whole documents of the wrong kind, for any file an option reads."""
    docs = {
        "JSON list": b"[1, 2, 3]",
        "JSON string": b'"plan"',
        "JSON number": b"7",
        "JSON null": b"null",
        "JSON true": b"true",
        "empty file": b"",
        "non-UTF-8 bytes": NON_UTF8,
        "truncated JSON": b'{"schema_version": 1, "phy2',
        "NUL bytes": b"\x00" * 64,
    }
    return {
        f"document {name}": lambda p, d=data: _write(p.with_suffix(suffix), d)
        for name, data in docs.items()
    }


def generic_variants(good: Good, kind: str) -> dict[str, Callable[[Path], Path]]:
    """What any input path may be instead of a file of its kind."""
    source = getattr(good, kind.removesuffix("_metadata"))

    def folder(path: Path) -> Path:
        path.mkdir()
        return path

    def dangling(path: Path) -> Path:
        path.symlink_to(path.parent / "nowhere")
        return path

    def parent_is_file(path: Path) -> Path:
        path.write_text("a file")
        return path / "inside.json"

    out: dict[str, Callable[[Path], Path]] = {
        "missing file": lambda p: p.parent / ("missing" + source.suffix),
        "a folder": folder,
        "dangling symlink": dangling,
        "parent is a file": parent_is_file,
    }
    if kind != "logical_count":  # a JSON cut short is in the document variants
        size = source.stat().st_size
        for share in (0.0, 0.1, 0.5, 0.9):
            cut = int(size * share)
            out[f"truncated to {share:.0%}"] = lambda p, c=cut: _write(
                p.with_suffix(source.suffix), source.read_bytes()[:c]
            )
    return out


# Variants whose metadata is sound and whose rows are not: refused by commands that read the rows.
ROW_VARIANTS = (
    "meta num_experts=4#9",
    "expert id out of range",
    "negative expert id",
    "expert twice in a token",
    "NaN gate weight",
    "layers swapped",
)


def trace_metadata_variants(good: Good) -> dict[str, Callable[[Path], Path]]:
    return {k: v for k, v in trace_variants(good).items() if k not in ROW_VARIANTS}


KIND_VARIANTS: dict[str, Callable[[Good], dict[str, Callable[[Path], Path]]]] = {
    "trace": trace_variants,
    "trace_metadata": trace_metadata_variants,
    "plan": plan_variants,
    "cluster": cluster_variants,
    "baseline": baseline_variants,
    "npy": npy_variants,
    "logical_count": logical_count_variants,
}


def file_variants(good: Good, kind: str) -> dict[str, Callable[[Path], Path]]:
    return {**generic_variants(good, kind), **KIND_VARIANTS[kind](good)}


# ---- bad flag values ----------------------------------------------------------------------------------

BAD_INTS = ["-1", "1.5", "nan", "inf", "x", "", "1e3", "0x10", "--"]
BAD_FLOATS = ["-0.5", "nan", "NaN", "inf", "-inf", "x", "", "1e400", "--"]
# String-valued options the commands parse themselves; each value must be refused.
BAD_STRINGS: dict[str, list[str]] = {
    "--solver": ["nosuch"],
    "--solvers": ["nosuch", ",", "greedy,nosuch"],
    "--weights": ["a", "nan", "-1", "inf", "1,2,3"],
    "--sweep": ["bogus=1", "gpus=", "gpus=x", "gpus=-1", "gpus=nan", "noequals", "redundant=1.5"],
    "--tolerance": ["x=nan", "bogus", "bogus=0.1", "inter_node_bytes=-1", "inter_node_bytes=inf"],
    "--gpu-hour-usd": ["H100=x", "H100=-1", "H100=nan", "H100=inf"],
    "--endpoint-usd": ["three-tier=x", "three-tier=-1", "three-tier=nan"],
    "--layers": ["x", "-1", "99", ",", "1.5"],
    "--model": ["no-such-model"],
    "--arch": ["no-such-arch"],
    "--inject-fault": ["x", "0:explode"],
}


def numeric_options(command: str) -> dict[str, tuple[str, bool]]:
    """Option -> ("int" or "float", must be > 0) for every numeric option of ``command``."""
    parser = _subparsers()[command]
    out: dict[str, tuple[str, bool]] = {}
    for action in parser._actions:
        option = next((o for o in action.option_strings if o.startswith("--")), None)
        if option is None:
            continue
        if action.type in (non_negative_int, positive_int):
            out[option] = ("int", action.type is positive_int)
        elif action.type in (non_negative_float, positive_float):
            out[option] = ("float", action.type is positive_float)
    return out


def choice_options(command: str) -> list[str]:
    parser = _subparsers()[command]
    return [
        next(o for o in a.option_strings if o.startswith("--"))
        for a in parser._actions
        if a.choices and a.option_strings
    ]


def string_options(command: str) -> list[str]:
    parser = _subparsers()[command]
    options = {o for a in parser._actions for o in a.option_strings}
    return [o for o in BAD_STRINGS if o in options]


_PARSERS: dict[str, argparse.ArgumentParser] = {}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    if not _PARSERS:
        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        _PARSERS.update(sub.choices)
    return _PARSERS


# Counts the commands themselves refuse at 0 (the parser takes any integer >= 0 for them).
ZERO_REFUSED_BY_COMMAND = (
    "--workers",
    "--tokens",
    "--rounds",
    "--node-limit",
    "--window",
    "--hidden-scale",
)
# ... except where the spec's call does not use the option (simulate: uniform traffic only).
ZERO_UNUSED = {("simulate", "--tokens"), ("simulate", "--node-limit")}


def bad_values(command: str, option: str) -> list[str]:
    numeric = numeric_options(command)
    if option in numeric:
        kind, positive = numeric[option]
        values = list(BAD_INTS if kind == "int" else BAD_FLOATS)
        zero_refused = option in ZERO_REFUSED_BY_COMMAND and (command, option) not in ZERO_UNUSED
        return [*values, "0"] if positive or zero_refused else values
    if option in BAD_STRINGS:
        return BAD_STRINGS[option]
    return ["no-such-choice"]  # a choices option


def set_option(argv: list[str], option: str, value: str) -> list[str]:
    """``argv`` with ``option`` set to ``value``, as one ``--option=value`` word so that values
    starting with a dash ("-1") are read as values, not as options."""
    out = list(argv)
    if option in out:
        at = out.index(option)
        del out[at : at + 2]
    return [*out, f"{option}={value}"]


# ---- output places that cannot be written -------------------------------------------------------------


def output_variants(kind: str) -> dict[str, Callable[[Path], Path]]:
    """What an output path may be instead of a writable place, for a "file" or "folder" output."""

    def existing_folder(path: Path) -> Path:
        path.mkdir()
        return path

    def existing_file(path: Path) -> Path:
        path.write_text("keep me")
        return path

    def parent_is_file(path: Path) -> Path:
        path.parent.joinpath("blocker").write_text("keep me")
        return path.parent / "blocker" / path.name

    def grandparent_is_file(path: Path) -> Path:
        path.parent.joinpath("blocker").write_text("keep me")
        return path.parent / "blocker" / "sub" / path.name

    out = {
        "parent is a file": parent_is_file,
        "grandparent is a file": grandparent_is_file,
        "under /proc": lambda p: Path("/proc/no-such-pid") / p.name,
        "under /sys (permission denied)": lambda p: Path("/sys") / p.name,
    }
    if kind == "file":
        out["an existing folder"] = existing_folder
    else:
        out["an existing file"] = existing_file
    return out


# ---- one case ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    spec: str
    what: str  # "file", "flag" or "output"
    slot: str  # the option (or "IN")
    variant: str


def all_cases(good: Good) -> list[Case]:
    """Every catalogued case: each spec x each slot x each variant."""
    cases: list[Case] = []
    variants = {kind: file_variants(good, kind) for kind in KIND_VARIANTS}
    for key, spec in SPECS.items():
        for slot, kind in {**spec.files, **spec.optional_files}.items():
            cases += [Case(key, "file", slot, v) for v in variants[kind]]
        for option in [
            *numeric_options(spec.command),
            *choice_options(spec.command),
            *string_options(spec.command),
        ]:
            if option in spec.unused_options:
                continue
            cases += [Case(key, "flag", option, v) for v in bad_values(spec.command, option)]
        if not spec.early_only:
            for slot, kind in spec.outputs.items():
                cases += [Case(key, "output", slot, v) for v in output_variants(kind)]
    return cases


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Files under ``folder`` with size and time; ``.lock`` files (flock-based locks of an output
    folder, which by design outlive their run) are not outputs."""
    return {
        str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in folder.rglob("*")
        if (p.is_file() or p.is_symlink()) and p.name != ".lock"
    }


Writer = Callable[[Path], Path]


def build_argv(
    good: Good, case: Case, work: Path, writer: Writer | None = None
) -> tuple[list[str], Path]:
    """The argument list of ``case`` and the folder where the command may write; ``writer`` makes
    the malformed file of a generated case (catalogued cases look theirs up by name)."""
    spec = SPECS[case.spec]
    inputs, outputs = work / "in", work / "out"
    inputs.mkdir()
    outputs.mkdir()
    argv = spec.argv(good, outputs)
    if case.what == "file":
        kind = {**spec.files, **spec.optional_files}[case.slot]
        suffix = getattr(good, kind.removesuffix("_metadata")).suffix
        writer = writer or file_variants(good, kind)[case.variant]
        path = writer(inputs / f"bad{suffix}")
        if case.slot == "IN":
            argv[1] = str(path)
        elif case.slot in argv:
            argv[argv.index(case.slot) + 1] = str(path)
        else:
            argv += [case.slot, str(path)]
    elif case.what == "flag":
        argv = set_option(argv, case.slot, case.variant)
    else:
        current = Path(argv[argv.index(case.slot) + 1])
        target = output_variants(spec.outputs[case.slot])[case.variant](current)
        argv[argv.index(case.slot) + 1] = str(target)
    return argv, outputs


@dataclass
class Outcome:
    code: int | None
    stderr: str
    problems: list[str]


def run_case(good: Good, case: Case, root: Path, writer: Writer | None = None) -> Outcome:
    """Run ``case`` in-process in a fresh folder; list how it broke the contract (empty: it held)."""
    work = Path(tempfile.mkdtemp(dir=root))
    good_before = good.snapshot()
    argv, _ = build_argv(good, case, work, writer)
    before = _tree(work)
    stdout, stderr = io.StringIO(), io.StringIO()
    code: int | None = None
    problems: list[str] = []
    cwd = os.getcwd()
    os.chdir(work)
    try:
        with (
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
            warnings.catch_warnings(record=True) as caught,
            _tripwires(),
        ):
            warnings.simplefilter("always")
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 2
            except BaseException:
                problems.append("raised: " + traceback.format_exc().strip().splitlines()[-1])
                stderr.write(traceback.format_exc())
    finally:
        os.chdir(cwd)
    lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
    lines += [f"warning: {w.category.__name__}: {w.message}" for w in caught]
    if code != 2:
        problems.append(f"exit code {code}")
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines")
    if "Traceback" in stderr.getvalue():
        problems.append("traceback")
    written = sorted(set(_tree(work).items()) - set(before.items()))
    if written:
        problems.append(f"wrote {[name for name, _ in written][:3]}")
    if good.snapshot() != good_before:
        problems.append("changed a shared input")
    if not problems:
        shutil.rmtree(work, ignore_errors=True)
    return Outcome(code, "\n".join(lines), problems)


class WorkersStartedError(AssertionError):
    """A command started workers or loaded a model for an input it should have refused first."""


@contextlib.contextmanager
def _tripwires() -> Iterator[None]:
    """Fail at once, instead of running for minutes, if workers, a model or Ray would start. The group
    of workers is built (and checks its settings) before it starts: the wire is on its start."""
    patches: list[tuple[Any, str, Any]] = []
    for module_name, path in (
        ("moe_placement.executor.group", "WorkerGroup.__enter__"),
        ("moe_placement.traces.capture", "load_model"),
        ("moe_placement.pipeline.sweep", "_run_ray"),
    ):
        owner: Any = importlib.import_module(module_name)
        *parents, attribute = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        patches.append((owner, attribute, getattr(owner, attribute)))

        def tripped(*args: Any, _what: str = f"{module_name}.{path}", **kwargs: Any) -> Any:
            raise WorkersStartedError(f"{_what} was called")

        setattr(owner, attribute, tripped)
    try:
        yield
    finally:
        for owner, attribute, original in patches:
            setattr(owner, attribute, original)


# ---- the tests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Good:
    return make_good(tmp_path_factory.mktemp("fuzz-good"))


@pytest.fixture(scope="module")
def cases(good: Good) -> list[Case]:
    return all_cases(good)


@pytest.fixture(scope="module")
def work_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-work")


def test_every_subcommand_is_fuzzed() -> None:
    """A new subcommand must get a spec here (discovered, so none is forgotten)."""
    names = {command.name for command in discover()}
    specs = {spec.command for spec in SPECS.values()}
    assert names == specs, (
        f"subcommands without a fuzz Spec in tests/test_fuzz_cli.py SPECS: {sorted(names - specs)}; "
        f"specs of removed subcommands: {sorted(specs - names)}"
    )


@pytest.mark.parametrize("key", ["export", "import:npy", "import:logical_count", "synth"])
def test_specs_work_unchanged(good: Good, tmp_path: Path, key: str) -> None:
    """The cheap argument lists succeed as they are, so every refusal comes from the one change."""
    argv = SPECS[key].argv(good, tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0


# ---- generated cases: random bytes, random cuts, random metadata values, random flag text -----------

# Per metadata field, values it must never accept (JSON can hold each of them).
_TEXT = st.text(max_size=12)
_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(_TEXT, st.integers(), max_size=2),
)
_NOT_INT = st.one_of(_JUNK, _TEXT, st.floats())
META_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "schema_version": st.one_of(_NOT_INT, st.integers().filter(lambda v: v != 1)),
    "num_moe_layers": st.one_of(_NOT_INT, st.integers(max_value=0)),
    "num_experts": st.one_of(_NOT_INT, st.integers(max_value=0)),
    "top_k": st.one_of(_NOT_INT, st.integers(max_value=0)),
    "hidden_size": st.one_of(_NOT_INT, st.integers(max_value=0)),
    "expert_intermediate_size": st.one_of(_NOT_INT, st.integers(max_value=0)),
    "shared_experts": st.one_of(_NOT_INT, st.integers(max_value=-1)),
    "dispatch_bytes_per_elem": st.one_of(
        _JUNK, _TEXT, st.floats(max_value=0), st.sampled_from([math.nan, math.inf])
    ),
    "combine_bytes_per_elem": st.one_of(
        _JUNK, _TEXT, st.floats(max_value=0), st.sampled_from([math.nan, math.inf])
    ),
    "model_name": st.one_of(_JUNK, st.integers(), st.floats()),
    "source": st.one_of(_JUNK, st.integers(), st.floats()),
    "moe_layer_ids": st.one_of(
        _TEXT,
        st.integers(),
        st.lists(st.integers(min_value=0), min_size=3, max_size=5),
        st.lists(st.integers(max_value=-1), min_size=2, max_size=2),
    ),
    "extra": st.one_of(_TEXT, st.integers(), st.lists(st.integers(), max_size=2)),
}


def _file_slots(spec: Spec) -> dict[str, str]:
    return {**spec.files, **spec.optional_files}


def _generated(good: Good, data: st.DataObject) -> tuple[Case, Writer | None]:
    """A case made up on the spot: random bytes, a random cut of a good file, a random bad value in a
    trace's metadata, or random text for a numeric option (kept only if its parser refuses it)."""
    how = data.draw(st.sampled_from(["bytes", "cut", "metadata", "flag"]), label="generated")
    if how == "flag":
        key = data.draw(
            st.sampled_from([k for k, s in SPECS.items() if numeric_options(s.command)])
        )
        command = SPECS[key].command
        option = data.draw(st.sampled_from(sorted(numeric_options(command))), label="option")
        parse = _type_of(command, option)
        value = data.draw(
            st.text(max_size=10).filter(lambda t: not _parses(parse, t)), label="value"
        )
        return Case(key, "flag", option, value), None
    with_files = [k for k, s in SPECS.items() if _file_slots(s)]
    if how == "metadata":
        with_files = [k for k in with_files if "trace" in _file_slots(SPECS[k]).values()]
    key = data.draw(st.sampled_from(with_files), label="spec")
    slots = _file_slots(SPECS[key])
    if how == "metadata":
        slot = data.draw(st.sampled_from([s for s, k in slots.items() if k == "trace"]))
        field_name = data.draw(st.sampled_from(sorted(META_STRATEGIES)), label="field")
        value = data.draw(META_STRATEGIES[field_name], label="value")
        table, meta = _table_and_meta(good)
        return Case(key, "file", slot, f"meta {field_name}={value!r}"), lambda p: _write_trace(
            p, table, {**meta, field_name: value}
        )
    slot = data.draw(st.sampled_from(sorted(slots)), label="slot")
    kind = slots[slot]
    source = getattr(good, kind.removesuffix("_metadata"))
    if how == "cut" and kind != "cluster":  # a YAML cut at a line end is a smaller valid mapping
        cut = data.draw(st.integers(0, source.stat().st_size - 2), label="cut")
        return Case(key, "file", slot, f"cut at {cut}"), lambda p: _write(
            p.with_suffix(source.suffix), source.read_bytes()[:cut]
        )
    blob = data.draw(
        st.binary(max_size=512).filter(lambda b: not _valid_cluster_text(b)), label="bytes"
    )
    return Case(key, "file", slot, f"random {blob[:16]!r}"), lambda p: _write(
        p.with_suffix(source.suffix), blob
    )


def _type_of(command: str, option: str) -> Callable[[str], Any]:
    parser = _subparsers()[command]
    return next(a.type for a in parser._actions if option in a.option_strings)  # type: ignore[return-value]


def _parses(parse: Callable[[str], Any], text: str) -> bool:
    try:
        parse(text)
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return False
    return True


def _valid_cluster_text(blob: bytes) -> bool:
    """Random bytes that YAML reads as a mapping could be a valid cluster of defaults ("{}")."""
    try:
        return isinstance(yaml.safe_load(blob), dict)
    except (yaml.YAMLError, ValueError):
        return False


def _fuzz(good: Good, cases: list[Case], work_root: Path, data: st.DataObject) -> None:
    writer: Writer | None = None
    if data.draw(st.booleans(), label="catalogued"):
        case = data.draw(st.sampled_from(cases), label="case")
    else:
        case, writer = _generated(good, data)
    outcome = run_case(good, case, work_root, writer)
    assert not outcome.problems, f"{case}: {outcome.problems}\n{outcome.stderr}"


@settings(
    max_examples=FAST_EXAMPLES,
    deadline=DEADLINE,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_cli_refuses_malformed_input(
    good: Good, cases: list[Case], work_root: Path, data: st.DataObject
) -> None:
    _fuzz(good, cases, work_root, data)


@pytest.mark.slow
@settings(
    max_examples=LONG_EXAMPLES,
    deadline=DEADLINE,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_cli_refuses_malformed_input_long(
    good: Good, cases: list[Case], work_root: Path, data: st.DataObject
) -> None:
    _fuzz(good, cases, work_root, data)


if __name__ == "__main__":  # every catalogued case once, failures listed
    import time

    only = sys.argv[1:]
    with tempfile.TemporaryDirectory() as scratch:
        good_files = make_good(Path(scratch) / "good")
        failures = 0
        every = [c for c in all_cases(good_files) if not only or c.spec in only]
        start = time.perf_counter()
        for case in every:
            result = run_case(good_files, case, Path(scratch))
            if result.problems:
                failures += 1
                last = result.stderr.strip().splitlines()[-1:] or [""]
                print(
                    f"FAIL {case.spec} {case.what} {case.slot} {case.variant!r}: {result.problems}"
                )
                print(f"     {last[0][:300]}")
        print(f"{len(every)} cases, {failures} failing, {time.perf_counter() - start:.1f} s")
