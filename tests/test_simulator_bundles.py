"""Bundles of arrays as numba structrefs: shared with the tuple they came from, read by name or position."""

from __future__ import annotations

import numpy as np
import pytest

from moe_placement.simulator import bundles, kernels

pytestmark = pytest.mark.skipif(not bundles.HAVE_NUMBA, reason="bundles are numba structrefs")


@kernels._njit(cache=False)
def _write_through(bundle) -> float:  # type: ignore[no-untyped-def]
    bundle[2][0] = bundle[0][1] + bundle[1][0]
    return bundle.a2[0]


@kernels._njit(cache=False)
def _named(arrays) -> float:  # type: ignore[no-untyped-def]
    b = bundles.pack(arrays, "left right")
    b.right[0] += 1.0
    return b.left[0] + b.right[0]


def test_a_bundle_shares_its_arrays_with_the_tuple() -> None:
    arrays = (np.arange(3.0), np.full(2, 5.0), np.zeros(4), np.zeros(1, dtype=np.int64))
    bundle = bundles.packed(arrays)
    assert _write_through(bundle) == 6.0
    assert arrays[2][0] == 6.0  # written by the kernel, seen in Python's tuple: not a copy


def test_fields_by_name() -> None:
    arrays = (np.array([2.0]), np.array([3.0]))
    assert _named(arrays) == 6.0
    assert arrays[1][0] == 4.0


def test_the_network_bundle_reads_as_its_named_view() -> None:
    import simpy

    from moe_placement.simulator.engine import FluidNetwork

    net = FluidNetwork(simpy.Environment(), [1.0, 2.0])
    assert isinstance(net._arrays, bundles.Bundle)
    # a kernel given the bundle reads the same capacities the engine holds
    assert kernels.advance(net._arrays, np.zeros(0, dtype=np.int64), 0.0) == np.inf
    assert list(net.s.cap) == [1.0, 2.0]


@kernels._njit(cache=False)
def _one_name_short(arrays) -> float:  # type: ignore[no-untyped-def]
    return bundles.pack(arrays, "only").only[0]


def test_a_bundle_needs_a_name_per_array() -> None:
    with pytest.raises(TypeError, match="1 names for 2 arrays"):
        _one_name_short((np.zeros(1), np.zeros(1)))


def _simulate_json(env: dict[str, str]) -> dict[str, float]:
    import json
    import os
    import subprocess
    import sys

    command = [
        sys.executable,
        "-m",
        "moe_placement.cli.main",
        "simulate",
        "--traffic",
        "uniform",
        "--gpus",
        "16",
        "--gpus-per-node",
        "8",
        "--tokens",
        "64",
        "--hidden",
        "128",
        "--top-k",
        "2",
        "--algo",
        "deepep",
        "--json",
    ]
    done = subprocess.run(
        command, env={**os.environ, **env}, capture_output=True, text=True, timeout=600, check=True
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_kernels_run_as_python_with_jit_disabled_give_the_same_times() -> None:
    # NUMBA_DISABLE_JIT=1: bundles stay tuples and numba's intrinsics are not used
    compiled = _simulate_json({})
    plain = _simulate_json({"NUMBA_DISABLE_JIT": "1"})
    for key in ("dispatch_us", "combine_us"):
        assert plain[key] == pytest.approx(compiled[key], rel=1e-9)
    assert plain["events"] == compiled["events"]


def test_types_only_stands_for_the_bundle_it_would_pack() -> None:
    # the warm-up compiles kernels for these stand-ins: their types must be those of the real bundles
    import numba
    import simpy

    from moe_placement.simulator.engine import FluidNetwork

    arrays = (np.zeros(2), np.zeros(3, dtype=np.int64), np.zeros(1, dtype=np.bool_))
    net = FluidNetwork(simpy.Environment(), [1.0, 2.0])
    with bundles.types_only():
        assert bundles.types_only_active()
        stand_in = bundles.packed(arrays)
        net_stand_in = kernels.pack_net(tuple(net.s))
        scratch_stand_in = kernels.scratch(4, 2)
    assert not bundles.types_only_active()
    assert not isinstance(stand_in, bundles.Bundle)
    assert numba.typeof(stand_in) == numba.typeof(bundles.packed(arrays))
    assert numba.typeof(net_stand_in) == numba.typeof(net._arrays)
    assert numba.typeof(scratch_stand_in) == numba.typeof(kernels.scratch(4, 2))
    with pytest.raises(RuntimeError), bundles.types_only():
        raise RuntimeError
    assert not bundles.types_only_active()  # left as it was, whatever ends the block
