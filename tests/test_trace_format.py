"""Trace format: round trip, golden file, streaming, and the reader's validation of each bad case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moe_placement.errors import PlacementError
from moe_placement.traces.reader import TraceFile
from moe_placement.traces.schema import (
    LOAD_COLUMNS,
    LOAD_META_KEY,
    META_KEY,
    LoadMeta,
    TraceMeta,
    arrow_schema,
    load_arrow_schema,
)
from moe_placement.traces.writer import TraceWriter

GOLDEN = Path(__file__).parent / "golden"


def golden_content() -> tuple[TraceMeta, dict[str, np.ndarray]]:
    """The content of tests/golden/trace_v1.parquet: 2 layers, 3 tokens, 8 experts, top-2."""
    meta = TraceMeta(
        model_name="golden",
        num_moe_layers=2,
        num_experts=8,
        top_k=2,
        hidden_size=16,
        expert_intermediate_size=32,
        source="tests/golden",
    )
    arrays = {
        "step": np.array([0, 0, 1]),
        "seq_id": np.array([0, 0, 1]),
        "pos": np.array([0, 1, 0]),
        "expert_ids": np.array([[[1, 2], [3, 4], [7, 0]], [[5, 6], [1, 0], [2, 3]]]),
        "weights": np.array(
            [[[0.7, 0.3], [0.6, 0.4], [0.9, 0.1]], [[0.5, 0.5], [0.8, 0.2], [0.55, 0.45]]]
        ),
    }
    return meta, arrays


def write_golden(path: Path) -> None:
    meta, a = golden_content()
    with TraceWriter(path, meta) as writer:
        writer.write(a["step"], a["seq_id"], a["pos"], a["expert_ids"], a["weights"])


def test_golden_file_reads_back_exactly() -> None:
    """The committed v1 file must stay readable, with these exact values (format stability)."""
    meta, a = golden_content()
    trace = TraceFile(GOLDEN / "trace_v1.parquet")
    assert trace.meta == meta
    chunk = trace.read_all()
    np.testing.assert_array_equal(chunk.expert_ids, a["expert_ids"])
    np.testing.assert_allclose(chunk.weights, a["weights"], rtol=1e-6)
    np.testing.assert_array_equal(chunk.seq_id, a["seq_id"])
    np.testing.assert_array_equal(chunk.step, a["step"])
    schema = pq.read_schema(GOLDEN / "trace_v1.parquet")
    assert [f.name for f in schema] == ["step", "seq_id", "pos", "layer", "expert_ids", "weights"]
    ids_type = schema.field("expert_ids").type
    assert pa.types.is_fixed_size_list(ids_type) and ids_type.list_size == 2
    assert ids_type.value_type == pa.int16()
    assert json.loads(schema.metadata[META_KEY])["schema_version"] == 1


def test_round_trip_same_rows_as_golden(tmp_path: Path) -> None:
    write_golden(tmp_path / "t.parquet")
    new = pq.read_table(tmp_path / "t.parquet")
    old = pq.read_table(GOLDEN / "trace_v1.parquet")
    assert new.equals(old)


def test_writer_orders_experts_by_weight(tmp_path: Path) -> None:
    meta, _ = golden_content()
    ids = np.array([[[1, 2]], [[3, 4]]])
    weights = np.array([[[0.2, 0.8]], [[0.9, 0.1]]])
    with TraceWriter(tmp_path / "o.parquet", meta) as w:
        w.write(np.zeros(1), np.zeros(1), np.zeros(1), ids, weights)
    chunk = TraceFile(tmp_path / "o.parquet").read_all()
    assert chunk.expert_ids[0, 0].tolist() == [2, 1]
    assert chunk.expert_ids[1, 0].tolist() == [3, 4]


def test_streaming_row_groups_are_bounded(tmp_path: Path) -> None:
    meta, _ = golden_content()
    rng = np.random.default_rng(0)
    n = 1000
    ids = np.stack([np.stack([rng.permutation(8)[:2] for _ in range(n)]) for _ in range(2)])
    with TraceWriter(tmp_path / "s.parquet", meta, row_group_tokens=128) as w:
        for start in range(0, n, 300):
            sl = slice(start, min(n, start + 300))
            cnt = sl.stop - sl.start
            w.write(
                np.zeros(cnt),
                np.arange(sl.start, sl.stop),
                np.zeros(cnt),
                ids[:, sl],
                np.ones((2, cnt, 2)),
            )
    trace = TraceFile(tmp_path / "s.parquet")
    sizes = [c.num_tokens for c in trace.iter_chunks()]
    assert sum(sizes) == n and max(sizes) <= 128 and trace.num_row_groups == len(sizes)


def test_writer_leaves_nothing_on_error(tmp_path: Path) -> None:
    meta, a = golden_content()
    target = tmp_path / "bad.parquet"
    with pytest.raises(PlacementError), TraceWriter(target, meta) as w:
        w.write(a["step"], a["seq_id"], a["pos"], a["expert_ids"] + 100, a["weights"])
    assert list(tmp_path.iterdir()) == []


def _write_raw(
    path: Path,
    meta: TraceMeta | None,
    ids: list[list[int]],
    k: int,
    layers: list[int] | None = None,
    seq: list[int] | None = None,
) -> None:
    """Write a table by hand, bypassing the writer's checks."""
    n = len(ids)
    schema_meta = meta or TraceMeta("x", 1, 4, k, 8, 8)
    schema = arrow_schema(schema_meta, False)
    if meta is None:
        schema = schema.remove_metadata()
    flat = [x for row in ids for x in row]
    width = len(ids[0])
    table = pa.table(
        {
            "step": pa.array([0] * n, pa.int32()),
            "seq_id": pa.array(seq if seq is not None else list(range(n)), pa.int64()),
            "pos": pa.array([0] * n, pa.int32()),
            "layer": pa.array(layers if layers is not None else [0] * n, pa.int16()),
            "expert_ids": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.int16()), width),
            "weights": pa.FixedSizeListArray.from_arrays(
                pa.array([0.5] * len(flat), pa.float32()), width
            ),
        }
    )
    table = table.cast(schema) if width == k else table.replace_schema_metadata(schema.metadata)
    pq.write_table(table, path)


def test_reader_rejects_out_of_range_id(tmp_path: Path) -> None:
    _write_raw(tmp_path / "t.parquet", TraceMeta("x", 1, 4, 2, 8, 8), [[0, 1], [2, 9]], 2)
    with pytest.raises(PlacementError, match="out of range"):
        TraceFile(tmp_path / "t.parquet").validate()


def test_reader_rejects_wrong_k(tmp_path: Path) -> None:
    _write_raw(tmp_path / "t.parquet", TraceMeta("x", 1, 4, 2, 8, 8), [[0, 1, 2], [1, 2, 3]], 2)
    with pytest.raises(PlacementError, match="top_k=2"):
        TraceFile(tmp_path / "t.parquet")


def test_reader_rejects_missing_metadata(tmp_path: Path) -> None:
    _write_raw(tmp_path / "t.parquet", None, [[0, 1]], 2)
    with pytest.raises(PlacementError, match="metadata missing"):
        TraceFile(tmp_path / "t.parquet")


def test_reader_rejects_incomplete_metadata(tmp_path: Path) -> None:
    meta = TraceMeta("x", 1, 4, 2, 8, 8)
    table = pa.table({"a": [1]}).replace_schema_metadata(
        {META_KEY: json.dumps({"schema_version": 1}).encode()}
    )
    pq.write_table(table, tmp_path / "t.parquet")
    del meta
    with pytest.raises(PlacementError, match="metadata missing: model_name"):
        TraceFile(tmp_path / "t.parquet")


def test_reader_rejects_non_contiguous_layers(tmp_path: Path) -> None:
    meta = TraceMeta("x", 2, 4, 2, 8, 8)
    _write_raw(
        tmp_path / "t.parquet",
        meta,
        [[0, 1], [1, 2], [0, 1], [1, 2]],
        2,
        layers=[0, 0, 0, 1],
        seq=[0, 1, 0, 1],
    )
    with pytest.raises(PlacementError, match="layers not contiguous"):
        TraceFile(tmp_path / "t.parquet").validate()


def test_reader_rejects_truncated_file(tmp_path: Path) -> None:
    write_golden(tmp_path / "t.parquet")
    data = (tmp_path / "t.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(PlacementError, match="not a readable Parquet"):
        TraceFile(tmp_path / "cut.parquet")


def test_reader_rejects_non_parquet(tmp_path: Path) -> None:
    (tmp_path / "t.parquet").write_text("step,seq_id\n0,0\n")
    with pytest.raises(PlacementError, match="not a readable Parquet"):
        TraceFile(tmp_path / "t.parquet")


def test_reader_rejects_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PlacementError, match="not found"):
        TraceFile(tmp_path / "nope.parquet")


# ---- load-only counts (the second layout of traces/schema.py) --------------------------------------

FIXTURE_COUNTS = Path(__file__).parent / "fixtures" / "importers" / "logical_count.json"


def test_golden_load_only_file_reads_back_exactly() -> None:
    """tests/golden/load_v1.parquet was written before the load-only layout moved into
    traces/schema.py (from tests/fixtures/importers/logical_count.json); it must keep loading."""
    from moe_placement.traces.loadjson import is_load_parquet, read_load_parquet, read_logical_count

    counts, layer_ids = read_logical_count(FIXTURE_COUNTS)
    path = GOLDEN / "load_v1.parquet"
    assert is_load_parquet(path)
    load, meta = read_load_parquet(path)
    np.testing.assert_array_equal(load, counts)
    assert meta == LoadMeta(
        3, 8, layer_ids, None, str(FIXTURE_COUNTS.relative_to(GOLDEN.parents[1]))
    )
    with pytest.raises(PlacementError, match="load-only"):
        TraceFile(path)


def test_load_only_writer_matches_golden(tmp_path: Path) -> None:
    from moe_placement.traces.loadjson import read_logical_count, write_load_parquet

    counts, layer_ids = read_logical_count(FIXTURE_COUNTS)
    old = pq.read_table(GOLDEN / "load_v1.parquet")
    source = json.loads(old.schema.metadata[LOAD_META_KEY])["source"]
    write_load_parquet(tmp_path / "l.parquet", counts, layer_ids, None, source)
    new = pq.read_table(tmp_path / "l.parquet")
    assert new.column_names == old.column_names == list(LOAD_COLUMNS)
    assert all(new.column(c).equals(old.column(c)) for c in LOAD_COLUMNS)
    assert new.schema.types == old.schema.types
    assert json.loads(new.schema.metadata[LOAD_META_KEY]) == json.loads(
        old.schema.metadata[LOAD_META_KEY]
    )


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"schema_version": 2, "num_moe_layers": 1, "num_experts": 2}, "schema_version 2"),
        ({"schema_version": 1, "num_experts": 2}, "missing: num_moe_layers"),
        (
            {"schema_version": 1, "num_moe_layers": 2, "num_experts": 2, "moe_layer_ids": [0]},
            "1 moe_layer_ids for 2 layers",
        ),
    ],
)
def test_load_only_reader_rejects_bad_metadata(tmp_path: Path, meta: dict, message: str) -> None:
    from moe_placement.traces.loadjson import read_load_parquet

    table = pa.table({"layer": [0], "expert": [0], "count": [1.0]})
    pq.write_table(
        table.replace_schema_metadata({LOAD_META_KEY: json.dumps(meta).encode()}),
        tmp_path / "l.parquet",
    )
    with pytest.raises(PlacementError, match=message):
        read_load_parquet(tmp_path / "l.parquet")


def test_load_only_reader_rejects_index_outside_shape(tmp_path: Path) -> None:
    from moe_placement.traces.loadjson import read_load_parquet

    meta = LoadMeta(num_moe_layers=1, num_experts=2, moe_layer_ids=[0])
    table = pa.table({"layer": [0], "expert": [5], "count": [1.0]}, schema=load_arrow_schema(meta))
    pq.write_table(table, tmp_path / "l.parquet")
    with pytest.raises(PlacementError, match="outside the metadata's shape"):
        read_load_parquet(tmp_path / "l.parquet")
