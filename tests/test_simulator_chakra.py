"""Chakra export: per-peer send/recv nodes that match the simulated traffic (skips without mlc-chakra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moe_placement.cli.commands._common import load_workload
from moe_placement.cli.main import main
from moe_placement.cluster import load_cluster
from moe_placement.plan import Plan, Provenance

pytest.importorskip("chakra.schema.protobuf.et_def_pb2")


def _read(path: Path) -> list:  # type: ignore[type-arg]
    import chakra.schema.protobuf.et_def_pb2 as et
    from chakra.src.third_party.utils.protolib import decodeMessage, openFileRd

    handle = openFileRd(str(path))
    meta = et.GlobalMetadata()
    assert decodeMessage(handle, meta)
    nodes = []
    while True:
        node = et.Node()
        if not decodeMessage(handle, node):
            break
        nodes.append(node)
    handle.close()
    return nodes


@pytest.mark.parametrize("algo", ["direct", "deepep"])
def test_sends_match_receives(tiny_trace: Path, tmp_path: Path, algo: str) -> None:
    import chakra.schema.protobuf.et_def_pb2 as et

    from moe_placement.simulator.chakra_export import export_chakra

    plan = Plan(
        8, 4, 2, np.tile(np.arange(16), (4, 1)), provenance=Provenance(solver="round-robin")
    )
    cluster = load_cluster("h800-mpft").with_counts(8, 4)
    workload = load_workload(str(tiny_trace), 8, progress=False)
    paths = export_chakra(plan, cluster, workload, tmp_path / "moe", algo=algo, layers=[0, 1])
    assert len(paths) == 8
    sent = received = 0
    comps = 0
    for path in paths:
        for node in _read(path):
            size = {a.name: a for a in node.attr}.get("comm_size")
            if node.type == et.COMM_SEND_NODE:
                sent += size.int64_val
            elif node.type == et.COMM_RECV_NODE:
                received += size.int64_val
            elif node.type == et.COMP_NODE:
                comps += 1
            assert all(dep < node.id for dep in node.data_deps)
    assert sent == received > 0
    assert comps == 8 * 2


def test_cli_chakra(tiny_trace: Path, tmp_path: Path) -> None:
    plan_path = tmp_path / "plan.json"
    Plan(8, 4, 2, np.tile(np.arange(16), (4, 1)), provenance=Provenance(solver="rr")).save(
        plan_path
    )
    assert (
        main(
            [
                "simulate",
                "--trace",
                str(tiny_trace),
                "--plan",
                str(plan_path),
                "--cluster",
                "h800-mpft",
                "--layers",
                "0",
                "--chakra",
                str(tmp_path / "et"),
            ]
        )
        == 0
    )
    assert (tmp_path / "et.7.et").exists()
