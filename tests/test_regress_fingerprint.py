"""``placement regress`` keys a baseline by the trace's routing fingerprint; the file name is a label.

A renamed (or re-encoded) trace is checked against its own baseline entry; a baseline recorded on another
trace is refused with exit 2 and the reason, before anything is solved.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moe_placement.cli.main import main
from moe_placement.pipeline.regress import routing_fingerprint
from moe_placement.traces.reader import TraceFile
from moe_placement.traces.synth import SynthConfig, generate

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "traces" / "data" / "tiny_moe_trace.parquet"


def _regress(trace: Path, baseline: Path, *extra: str) -> list[str]:
    return ["regress", "--trace", str(trace), "--baseline", str(baseline), *extra]


@pytest.fixture(scope="module")
def greedy_baseline(tiny_trace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fingerprint") / "baseline.json"
    argv = _regress(tiny_trace, path, "--solver", "greedy", "--gpus", "4", "--gpus-per-node", "2")
    assert main([*argv, "--update-baseline"]) == 0
    return path


@pytest.fixture(scope="module")
def other_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same shape as ``tiny_trace``, other routing (another seed), and the same file name."""
    path = tmp_path_factory.mktemp("other") / "tiny.parquet"
    config = SynthConfig(num_layers=4, num_experts=16, top_k=2, num_tokens=2048, seq_len=128)
    generate(config, path, seed=4)
    return path


def test_fingerprint_is_of_the_routing_not_the_file(tiny_trace: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "renamed.parquet"
    shutil.copy(tiny_trace, renamed)
    # the same row groups written again with another compression and without statistics: other bytes
    recoded = tmp_path / "recoded.parquet"
    source = pq.ParquetFile(tiny_trace)
    with pq.ParquetWriter(
        recoded, source.schema_arrow, compression="gzip", write_statistics=False
    ) as writer:
        for group in range(source.num_row_groups):
            writer.write_table(source.read_row_group(group))
    assert TraceFile(recoded).fingerprint() != TraceFile(tiny_trace).fingerprint()
    expected = routing_fingerprint(tiny_trace)
    assert routing_fingerprint(renamed) == expected
    assert routing_fingerprint(recoded) == expected
    # two experts of one token swapped places (top-1 <-> top-2): other routing, another fingerprint
    table = pq.read_table(tiny_trace)
    ids = table.column("expert_ids").combine_chunks().flatten().to_numpy().copy()
    ids[0], ids[1] = ids[1], ids[0]
    swapped = pa.FixedSizeListArray.from_arrays(pa.array(ids), 2)
    column = table.schema.get_field_index("expert_ids")
    changed = tmp_path / "changed.parquet"
    pq.write_table(table.set_column(column, table.schema.field(column), swapped), changed)
    assert routing_fingerprint(changed) != expected


def test_renamed_trace_is_checked_against_its_baseline(
    greedy_baseline: Path, tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    renamed = tmp_path / "served-2026-12.parquet"
    shutil.copy(tiny_trace, renamed)
    # a load-blind solver on the renamed trace fails against the greedy baseline (not "new", not exit 0)
    assert main(_regress(renamed, greedy_baseline, "--solver", "round-robin")) == 1
    captured = capsys.readouterr()
    assert "max_over_mean regressed" in captured.err
    assert " new" not in captured.out
    assert f"checked against the baseline's {tiny_trace.name} (same routing)" in captured.out
    # and the same plan as the baseline's passes
    assert main(_regress(renamed, greedy_baseline)) == 0


def test_baseline_of_another_trace_exits_2_with_the_reason(
    greedy_baseline: Path, other_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = greedy_baseline.read_bytes()
    assert main(_regress(other_trace, greedy_baseline)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "recorded on another trace" in err and routing_fingerprint(other_trace) in err
    assert greedy_baseline.read_bytes() == before


def test_unknown_trace_under_a_new_name_exits_2(
    greedy_baseline: Path, other_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    renamed = tmp_path / "unseen.parquet"
    shutil.copy(other_trace, renamed)
    assert main(_regress(renamed, greedy_baseline)) == 2
    err = capsys.readouterr().err
    assert "holds no trace with the routing of unseen.parquet" in err and "--update-baseline" in err


def test_update_moves_a_renamed_entry(
    greedy_baseline: Path, tiny_trace: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "b.json"
    copy.write_bytes(greedy_baseline.read_bytes())
    renamed = tmp_path / "renamed.parquet"
    shutil.copy(tiny_trace, renamed)
    assert main([*_regress(renamed, copy), "--update-baseline"]) == 0
    traces = json.loads(copy.read_text())["traces"]
    assert list(traces) == ["renamed.parquet"]
    assert traces["renamed.parquet"]["fingerprint"] == routing_fingerprint(tiny_trace)


def test_older_baseline_with_a_file_hash_still_checks(
    greedy_baseline: Path, tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = json.loads(greedy_baseline.read_text())
    data["traces"][tiny_trace.name]["fingerprint"] = TraceFile(tiny_trace).fingerprint()
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    assert main(_regress(tiny_trace, old)) == 0
    assert "stores a file hash" in capsys.readouterr().out


def test_committed_baselines_store_the_bundled_traces_routing() -> None:
    expected = routing_fingerprint(BUNDLED)
    for path in sorted((REPO / "reports" / "baselines").glob("tiny_moe_trace.*.json")):
        entry = json.loads(path.read_text())["traces"]["tiny_moe_trace.parquet"]
        assert entry["fingerprint"] == expected, path
