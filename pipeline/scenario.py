"""What-if scenarios: one point of a sweep, the axes that span a sweep, and the cluster a scenario builds.

A :class:`Scenario` is frozen data: a trace (path plus content fingerprint), the cluster choices (GPU
count, GPUs per node, GPU type, topology, NIC bandwidth), the workload choices (tokens per GPU per step,
execution mode) and the placement and runtime choices (solver, redundant slots, all-to-all algorithm,
overlap) and the whole-model figures the step time is built from (the model's MoE and dense layer counts,
the per-layer attention, shared-expert and dense-layer times, the serving phase). Its :meth:`Scenario.key`
hashes all of that plus the result-format version and the timing engine, so a cached result is reused
exactly when nothing that could change it has changed.

Axes (``--sweep AXIS=V1,V2,...``): ``gpus``, ``gpus_per_node``, ``gpu``, ``topology``, ``nic_gbps``,
``tokens``, ``redundant``, ``experts`` (synthetic profiles only), ``solver``, ``overlap``, ``algo``,
``mode``. Topology values are the cluster
fabrics ``single-switch``, ``multi-rail``, ``multi-plane``, ``three-tier``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from moe_placement.cluster import FABRICS, ClusterSpec, gpu_type
from moe_placement.dispatch import ENGINES
from moe_placement.errors import PlacementError
from moe_placement.metrics import MODES

# Bump when the meaning or set of result columns changes: every cached result is then recomputed.
RESULTS_VERSION = 3  # 3: scenarios record their replica dispatch ("dispatch")

TOPOLOGIES = tuple(f for f in FABRICS if f != "none")
OVERLAPS = ("none", "two-batch", "chunked")
ALGOS = ("direct", "deepep", "2dh", "deepep-ll")


def _int_at_least(minimum: int) -> Any:
    def parse(axis: str, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise PlacementError(f"--sweep {axis}: {text!r} is not an integer") from None
        if value < minimum:
            raise PlacementError(f"--sweep {axis}: values must be >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)


def _positive_float(axis: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PlacementError(f"--sweep {axis}: {text!r} is not a number") from None
    if not value > 0:
        raise PlacementError(f"--sweep {axis}: values must be > 0, got {value}")
    return value


def _choice(choices: Sequence[str]) -> Any:
    def parse(axis: str, text: str) -> str:
        if text not in choices:
            raise PlacementError(f"--sweep {axis}: {text!r} is not one of {', '.join(choices)}")
        return text

    return parse


def _gpu_name(axis: str, text: str) -> str:
    return gpu_type(text).name


def _solver_name(axis: str, text: str) -> str:
    from moe_placement.solvers import REGISTRY

    if text not in REGISTRY:
        raise PlacementError(
            f"--sweep {axis}: unknown solver {text!r}; known: {', '.join(sorted(REGISTRY))}"
        )
    return text


# axis name -> (Scenario field, parser of one value)
AXES: dict[str, tuple[str, Any]] = {
    "gpus": ("gpus", _positive_int),
    "gpus_per_node": ("gpus_per_node", _positive_int),
    "gpu": ("gpu", _gpu_name),
    "topology": ("topology", _choice(TOPOLOGIES)),
    "nic_gbps": ("nic_gbps", _positive_float),
    "tokens": ("tokens_per_gpu", _positive_int),
    "redundant": ("redundant", _int_at_least(0)),
    "experts": ("experts", _positive_int),
    "solver": ("solver", _solver_name),
    "overlap": ("overlap", _choice(OVERLAPS)),
    "algo": ("algo", _choice(ALGOS)),
    "mode": ("mode", _choice(MODES)),
    "engine": ("dispatch", _choice(ENGINES)),
}


@dataclass(frozen=True)
class Scenario:
    """One what-if point; fields not swept take the base cluster's and the command line's values."""

    trace: str
    trace_fingerprint: str
    gpus: int
    gpus_per_node: int
    gpu: str
    topology: str
    nic_gbps: float
    tokens_per_gpu: int = 4096
    redundant: int = 0
    experts: int = 0  # the trace's expert count (a synthetic profile's trace is chosen by it)
    solver: str = "greedy"
    overlap: str = "none"
    algo: str = "deepep"
    mode: str = "standard"
    seed: int = 0
    time_limit_s: float = 10.0
    # Whole model (see moe_placement.wholemodel): the input's MoE layers are timed (``sample_layers`` of
    # them, evenly spread; 0: all) and their mean stands for each of the model's ``moe_layers``; the
    # ``dense_layers`` each take ``dense_layer_us``. Times are per layer for a step of
    # ``tokens_per_gpu`` tokens on every GPU.
    model: str = ""  # model shape name for the input ("" : the input's own)
    phase: str = "prefill"
    sample_layers: int = 0
    moe_layers: int = 0  # 0: the input's layer count
    dense_layers: int = 0
    attention_us: float = 0.0
    shared_expert_us: float = 0.0
    dense_layer_us: float = 0.0
    # whose replica dispatch the plan is solved for and timed under (moe_placement.dispatch): a serving
    # engine or the share-aware router ("share"); not "engine", which names the timing engine in keys
    dispatch: str = "share"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self, base: ClusterSpec, engine: str) -> str:
        """Hash of everything that determines the result: this scenario (the trace by content, not by
        path), the base cluster it modifies, the timing engine and the result-format version."""
        payload = self.to_dict()
        payload.pop("trace")
        payload["base_cluster"] = base.to_dict()
        payload["engine"] = engine
        payload["results_version"] = RESULTS_VERSION
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def cluster(self, base: ClusterSpec) -> ClusterSpec:
        """The base cluster with this scenario's GPU type, fabric, NIC bandwidth and counts."""
        if self.gpus % self.gpus_per_node:
            raise PlacementError(
                f"{self.gpus} GPUs is not a multiple of {self.gpus_per_node} GPUs per node"
            )
        nodes = self.gpus // self.gpus_per_node
        changes: dict[str, Any] = {
            "name": f"{base.name}/{self.topology}/{self.gpu}",
            "gpu": gpu_type(self.gpu),
            "nic_gbits_per_s": float(self.nic_gbps),
            "fabric": self.topology,
            "num_nodes": nodes,
            "gpus_per_node": self.gpus_per_node,
            "nics_per_gpu": max(1, base.nics_per_gpu),
        }
        # DeepSeek's MPFT puts NIC i of every node on plane i, so the plane count follows the node size.
        changes["planes"] = (
            self.gpus_per_node * changes["nics_per_gpu"] if self.topology == "multi-plane" else 1
        )
        return dataclasses.replace(base, **changes)

    def label(self, axes: Sequence[str]) -> str:
        """Short text naming this scenario's values on ``axes`` (for plots and tables)."""
        parts = []
        for axis in axes:
            value = getattr(self, AXES[axis][0])
            parts.append(f"{axis}={_fmt_value(value)}")
        return " ".join(parts)


def _fmt_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def parse_sweep(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["gpus=8,16", "solver=greedy"]`` -> ``{"gpus": [8, 16], "solver": ["greedy"]}`` (order kept,
    duplicates dropped); unknown axes and bad values raise :class:`PlacementError`."""
    out: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise PlacementError(f"--sweep {item!r}: expected AXIS=V1,V2,...")
        axis, _, values = item.partition("=")
        axis = axis.strip().replace("-", "_")
        if axis not in AXES:
            raise PlacementError(f"--sweep: unknown axis {axis!r}; known: {', '.join(AXES)}")
        if axis in out:
            raise PlacementError(f"--sweep: axis {axis} given twice")
        parser = AXES[axis][1]
        parsed: list[Any] = []
        for text in values.split(","):
            text = text.strip()
            if not text:
                raise PlacementError(f"--sweep {axis}: empty value in {values!r}")
            value = parser(axis, text)
            if value not in parsed:
                parsed.append(value)
        out[axis] = parsed
    return out


def expand(base: Scenario, sweep: dict[str, list[Any]]) -> list[Scenario]:
    """Every combination of the swept axes applied to ``base``, in a fixed order (the product of the
    axes in the order given, values in the order given)."""
    axes = list(sweep)
    out: list[Scenario] = []
    seen: set[Scenario] = set()
    for combo in itertools.product(*(sweep[a] for a in axes)):
        changes = {AXES[a][0]: v for a, v in zip(axes, combo, strict=True)}
        scenario = dataclasses.replace(base, **changes)
        # GPUs per node never exceeds the GPU count: an 8-GPU point of a sweep over 8..64 GPUs with
        # 8 per node is one node, and a 4-GPU point is one node of 4.
        if scenario.gpus_per_node > scenario.gpus:
            scenario = dataclasses.replace(scenario, gpus_per_node=scenario.gpus)
        if scenario not in seen:
            seen.add(scenario)
            out.append(scenario)
    return out


def sampled_layers(num_layers: int, sample: int) -> list[int]:
    """``sample`` MoE layer indices spread evenly over ``num_layers`` (first and last included); every
    layer when ``sample`` is 0 or at least ``num_layers``."""
    if sample <= 0 or sample >= num_layers:
        return list(range(num_layers))
    if sample == 1:
        return [num_layers // 2]
    step = (num_layers - 1) / (sample - 1)
    return sorted({round(i * step) for i in range(sample)})
