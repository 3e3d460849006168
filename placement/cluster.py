"""Cluster model: GPU types, the NVLink scale-up domain, NICs and the scale-out fabric.

Units are in the names: ``*_gbytes_per_s`` is GB/s (10^9 bytes) per direction, ``*_gbits_per_s`` is
Gbit/s per direction, ``*_us`` microseconds, ``*_gib`` GiB (2^30 bytes), ``*_tflops`` 10^12 FLOP/s.

A :class:`ClusterSpec` is data without side effects: built from a preset name or a YAML/TOML/JSON file,
validated on construction, written next to results.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from moe_placement.errors import PlacementError

FABRICS = ("none", "single-switch", "multi-rail", "multi-plane", "three-tier")


def _check_field_types(spec: Any, where: str) -> None:
    """Every int, float and str field of a spec dataclass holds a value of its type (a float count, a
    string bandwidth or a NaN would fail far from the file that held it); booleans are not numbers."""
    for item in dataclasses.fields(spec):
        value = getattr(spec, item.name)
        kind = str(item.type)
        if value is None and "None" in kind:
            continue
        if kind.startswith("int"):
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            want = "an integer"
        elif kind.startswith("float"):
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
            ok = ok and math.isfinite(value)
            want = "a finite number"
        elif kind == "str":
            ok, want = isinstance(value, str), "a string"
        else:
            continue
        if not ok:
            raise PlacementError(f"{where}: {item.name} must be {want}, got {value!r}")


@dataclass(frozen=True)
class GPUSpec:
    """One GPU type: dense tensor throughput, HBM bandwidth and capacity, NVLink per direction."""

    name: str
    bf16_tflops: float
    fp8_tflops: float
    hbm_gbytes_per_s: float
    memory_gib: float
    nvlink_gbytes_per_s: float
    # What one SM of a communication kernel copies (Hybrid-EP's TMA copy, `--algo hybrid-ep`): bytes per
    # second while it streams, and a fixed cost per message (one token copy to one GPU). 0: no SM term.
    # Set once per GPU generation from the SM-bound points of DeepEP's Hybrid-EP figures (docs/simulator.md).
    sm_copy_gbytes_per_s: float = 0.0
    sm_message_us: float = 0.0

    def __post_init__(self) -> None:
        _check_field_types(self, f"gpu {self.name!r}")
        if self.sm_copy_gbytes_per_s < 0 or self.sm_message_us < 0:
            raise PlacementError(
                f"gpu {self.name}: sm_copy_gbytes_per_s and sm_message_us must be >= 0"
            )
        for key in ("bf16_tflops", "fp8_tflops", "hbm_gbytes_per_s", "memory_gib"):
            if not getattr(self, key) > 0:
                raise PlacementError(
                    f"gpu {self.name}: {key} must be > 0, got {getattr(self, key)}"
                )
        if self.nvlink_gbytes_per_s < 0:
            raise PlacementError(f"gpu {self.name}: nvlink_gbytes_per_s must be >= 0")


# Per-SM copy of a communication kernel (GPUSpec.sm_copy_gbytes_per_s, sm_message_us), one pair per SM
# generation, calibrated once on DeepEP's published Hybrid-EP "kernel only" figures (docs/simulator.md,
# "Hybrid-EP"): least squares of the log error over every point the model follows, the presets' link
# constants unchanged. Hopper (SM90; H100 points, 4-16 SMs at 2-8 nodes): 56 GB/s + 0.21 us per token
# copy; Blackwell (SM100; GB200 and B200 points, 16-32 SMs at 8-36 GPUs): 44 GB/s + 0.05 us.
_SM90_COPY = {"sm_copy_gbytes_per_s": 56.0, "sm_message_us": 0.21}
_SM100_COPY = {"sm_copy_gbytes_per_s": 44.0, "sm_message_us": 0.05}

# Dense (no sparsity) datasheet figures; NVLink per direction per GPU.
GPU_TYPES: dict[str, GPUSpec] = {
    "H100": GPUSpec("H100", 989.0, 1979.0, 3350.0, 80.0, 450.0, **_SM90_COPY),
    "H800": GPUSpec("H800", 989.0, 1979.0, 3350.0, 80.0, 200.0, **_SM90_COPY),
    "H200": GPUSpec("H200", 989.0, 1979.0, 4800.0, 141.0, 450.0, **_SM90_COPY),
    "B200": GPUSpec("B200", 2250.0, 4500.0, 8000.0, 180.0, 900.0, **_SM100_COPY),
    # GB200 NVL72: 180 / 360 PFLOPS dense BF16 / FP8 and 13.4 TB HBM3e over 72 GPUs; NVLink 5
    "GB200": GPUSpec("GB200", 2500.0, 5000.0, 8000.0, 186.0, 900.0, **_SM100_COPY),
    "A100": GPUSpec("A100", 312.0, 312.0, 2039.0, 80.0, 300.0),
}


def gpu_type(name: str) -> GPUSpec:
    """Look a GPU type up by name (case-insensitive)."""
    key = name.upper()
    if key not in GPU_TYPES:
        raise PlacementError(f"unknown gpu type {name!r}; known: {', '.join(GPU_TYPES)}")
    return GPU_TYPES[key]


@dataclass(frozen=True)
class ClusterSpec:
    """A homogeneous GPU cluster: ``num_nodes`` nodes of ``gpus_per_node`` GPUs.

    The scale-up domain is one node (NVSwitch, all-to-all at ``nvlink_gbytes_per_s`` per GPU). Each GPU
    has ``nics_per_gpu`` NICs of ``nic_gbits_per_s``; NIC i of every node attaches to rail/plane i of the
    fabric. Efficiencies turn nominal into achievable bandwidth (stated once here, never tuned per point).
    """

    name: str = "custom"
    gpu: GPUSpec = field(default_factory=lambda: GPU_TYPES["H100"])
    num_nodes: int = 8
    gpus_per_node: int = 8
    nvlink_gbytes_per_s: float | None = None  # None: the GPU type's figure
    nvlink_latency_us: float = 3.33
    nvlink_efficiency: float = 0.8
    nics_per_gpu: int = 1
    nic_gbits_per_s: float = 400.0
    nic_latency_us: float = 2.8
    nic_efficiency: float = 0.9
    pcie_gbytes_per_s: float = 64.0
    fabric: str = "multi-rail"
    planes: int = 1
    switch_radix: int = 64
    switch_latency_us: float = 0.45
    compute_efficiency: float = 0.6
    comm_sm_fraction: float = 0.15
    # SMs given to a communication kernel that copies with SMs (`--algo hybrid-ep`; `--sms`): 16, what
    # Hybrid-EP's published B200 / GB200 runs use and the most its H100 runs use
    comm_sms: int = 16
    gpu_hour_usd: float = 2.5
    network_cost_per_endpoint_usd: float = 4390.0

    def __post_init__(self) -> None:
        def bad(msg: str) -> PlacementError:
            return PlacementError(f"cluster {self.name}: {msg}")

        _check_field_types(self, f"cluster {self.name}")
        if not isinstance(self.gpu, GPUSpec):
            raise bad("gpu must be a GPU type name or a mapping of its fields")
        if self.num_nodes < 1 or self.gpus_per_node < 1:
            raise bad("num_nodes and gpus_per_node must be >= 1")
        if self.fabric not in FABRICS:
            raise bad(f"fabric must be one of {', '.join(FABRICS)}, got {self.fabric!r}")
        if self.num_nodes > 1 and self.fabric == "none":
            raise bad("more than one node needs a fabric (single-switch, multi-rail, ...)")
        if self.nics_per_gpu < 0 or (self.num_nodes > 1 and self.nics_per_gpu == 0):
            raise bad("a multi-node cluster needs nics_per_gpu >= 1")
        if self.nic_gbits_per_s <= 0:
            raise bad("nic_gbits_per_s must be > 0")
        if self.nvlink_bw <= 0 and self.gpus_per_node > 1:
            raise bad("nvlink bandwidth must be > 0 with more than one GPU per node")
        for key in ("nvlink_efficiency", "nic_efficiency", "compute_efficiency"):
            value = getattr(self, key)
            if not 0 < value <= 1:
                raise bad(f"{key} must be in (0, 1], got {value}")
        if not 0 <= self.comm_sm_fraction < 1:
            raise bad("comm_sm_fraction must be in [0, 1)")
        if self.comm_sms < 1:
            raise bad(f"comm_sms must be >= 1, got {self.comm_sms}")
        if self.planes < 1:
            raise bad("planes must be >= 1")
        if self.fabric == "multi-plane" and self.planes != self.nics_per_gpu * self.gpus_per_node:
            # DeepSeek MPFT: NIC i of every node sits on plane i.
            raise bad(
                "multi-plane needs planes == gpus_per_node * nics_per_gpu "
                f"({self.gpus_per_node * self.nics_per_gpu}), got {self.planes}"
            )
        if self.switch_radix < 4:
            raise bad("switch_radix must be >= 4")
        for key in ("nvlink_latency_us", "nic_latency_us", "switch_latency_us"):
            if getattr(self, key) < 0:
                raise bad(f"{key} must be >= 0")

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node

    @property
    def nvlink_bw(self) -> float:
        """Nominal NVLink GB/s per direction per GPU."""
        if self.nvlink_gbytes_per_s is not None:
            return self.nvlink_gbytes_per_s
        return self.gpu.nvlink_gbytes_per_s

    @property
    def nvlink_effective_gbytes_per_s(self) -> float:
        return self.nvlink_bw * self.nvlink_efficiency

    @property
    def nic_gbytes_per_s_per_gpu(self) -> float:
        """Nominal scale-out GB/s per direction per GPU (all its NICs)."""
        return self.nics_per_gpu * self.nic_gbits_per_s / 8.0

    @property
    def nic_effective_gbytes_per_s(self) -> float:
        return self.nic_gbytes_per_s_per_gpu * self.nic_efficiency

    def node_of(self, gpu: int) -> int:
        return gpu // self.gpus_per_node

    def with_counts(
        self, num_gpus: int | None = None, gpus_per_node: int | None = None
    ) -> ClusterSpec:
        """The same hardware with another GPU count or node size (``--gpus``, ``--gpus-per-node``)."""
        per_node = gpus_per_node if gpus_per_node is not None else self.gpus_per_node
        total = num_gpus if num_gpus is not None else self.num_nodes * per_node
        if per_node < 1 or total < 1:
            raise PlacementError("--gpus and --gpus-per-node must be >= 1")
        if total % per_node:
            raise PlacementError(
                f"--gpus ({total}) must be a multiple of --gpus-per-node ({per_node})"
            )
        nodes = total // per_node
        changes: dict[str, Any] = {"num_nodes": nodes, "gpus_per_node": per_node}
        if self.fabric == "multi-plane":
            changes["planes"] = per_node * self.nics_per_gpu
        if nodes > 1 and self.fabric == "none":
            changes["fabric"] = "single-switch"
            changes["nics_per_gpu"] = max(1, self.nics_per_gpu)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["gpu"] = dataclasses.asdict(self.gpu)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str = "custom") -> ClusterSpec:
        """Build from a mapping; ``gpu`` is a type name or a mapping of GPUSpec fields."""
        data = dict(data)
        base_name = data.pop("preset", None)
        base: dict[str, Any] = {}
        if base_name is not None:
            base = preset(str(base_name)).to_dict()
        gpu_value = data.pop("gpu", base.pop("gpu", "H100"))
        base.update(data)
        base.setdefault("name", name)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(base) - known)
        if unknown:
            raise PlacementError(f"cluster {base['name']}: unknown keys {', '.join(unknown)}")
        if isinstance(gpu_value, str):
            gpu = gpu_type(gpu_value)
        elif isinstance(gpu_value, dict):
            try:
                gpu = GPUSpec(**gpu_value)
            except TypeError as exc:
                raise PlacementError(f"cluster {base['name']}: bad gpu entry: {exc}") from None
        elif isinstance(gpu_value, GPUSpec):
            gpu = gpu_value
        else:
            raise PlacementError(f"cluster {base['name']}: gpu must be a type name or a mapping")
        try:
            return cls(gpu=gpu, **base)
        except TypeError as exc:
            raise PlacementError(f"cluster {base['name']}: {exc}") from None


def _preset_table() -> dict[str, ClusterSpec]:
    return {
        # DeepSeek's training/serving cluster (Insights into DeepSeek-V3): H800, 8 x CX7 400G per node,
        # multi-plane fat-tree. NVLink 200 GB/s per direction; efficiency 0.7 (140 GB/s between GPUs) was
        # set once by the simulator's DeepEP validation (docs/simulator.md): DeepEP's ~155 GB/s also counts
        # each GPU's copies to itself, 1/8 of the total. CX7 400 Gb/s at 0.92 (46 GB/s).
        "h800-mpft": ClusterSpec(
            name="h800-mpft",
            gpu=GPU_TYPES["H800"],
            num_nodes=8,
            gpus_per_node=8,
            nvlink_efficiency=0.7,
            nic_gbits_per_s=400.0,
            nic_efficiency=0.92,
            fabric="multi-plane",
            planes=8,
        ),
        "h100-multirail": ClusterSpec(
            name="h100-multirail",
            gpu=GPU_TYPES["H100"],
            num_nodes=8,
            gpus_per_node=8,
            nic_gbits_per_s=400.0,
            fabric="multi-rail",
        ),
        "h100-single-node": ClusterSpec(
            name="h100-single-node",
            gpu=GPU_TYPES["H100"],
            num_nodes=1,
            gpus_per_node=8,
            nics_per_gpu=1,
            fabric="none",
        ),
        "h200-multirail": ClusterSpec(
            name="h200-multirail",
            gpu=GPU_TYPES["H200"],
            num_nodes=8,
            gpus_per_node=8,
            nic_gbits_per_s=400.0,
            fabric="multi-rail",
            gpu_hour_usd=3.5,
        ),
        "b200-multirail": ClusterSpec(
            name="b200-multirail",
            gpu=GPU_TYPES["B200"],
            num_nodes=8,
            gpus_per_node=8,
            nic_gbits_per_s=400.0,
            fabric="multi-rail",
            gpu_hour_usd=5.0,
        ),
        # GB200 NVL72: 72 GPUs (18 compute trays of 4) in one flat NVLink domain through the NVLink
        # switch trays, so the simulator's "node" is the whole rack (gpus_per_node=72: every pair of
        # the 72 meets over NVLink at the full 900 GB/s per direction). Racks join over one CX7 400 Gb/s
        # NIC per GPU on a rail-optimised fabric. `--gpus 64` takes 64 GPUs of one rack.
        "gb200-nvl72": ClusterSpec(
            name="gb200-nvl72",
            gpu=GPU_TYPES["GB200"],
            num_nodes=1,
            gpus_per_node=72,
            nic_gbits_per_s=400.0,
            fabric="multi-rail",
            switch_radix=128,
            gpu_hour_usd=6.0,
        ),
        "a100-fat-tree": ClusterSpec(
            name="a100-fat-tree",
            gpu=GPU_TYPES["A100"],
            num_nodes=8,
            gpus_per_node=8,
            nic_gbits_per_s=200.0,
            fabric="three-tier",
            gpu_hour_usd=1.5,
            network_cost_per_endpoint_usd=7500.0,
        ),
        "h100-single-switch": ClusterSpec(
            name="h100-single-switch",
            gpu=GPU_TYPES["H100"],
            num_nodes=2,
            gpus_per_node=8,
            fabric="single-switch",
        ),
    }


PRESETS = _preset_table()
DEFAULT_CLUSTER = "h100-multirail"


def preset(name: str) -> ClusterSpec:
    if name not in PRESETS:
        raise PlacementError(f"unknown cluster preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def load_cluster(name_or_file: str | None) -> ClusterSpec:
    """A preset by name, or a YAML / TOML / JSON file (which may name a ``preset`` to start from)."""
    if name_or_file is None:
        return preset(DEFAULT_CLUSTER)
    if name_or_file in PRESETS:
        return PRESETS[name_or_file]
    path = Path(name_or_file)
    if not path.exists():
        raise PlacementError(
            f"cluster {name_or_file!r} is neither a preset ({', '.join(PRESETS)}) nor a file"
        )
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise PlacementError(f"cluster file {path}: not UTF-8 text") from None
    except OSError as exc:
        raise PlacementError(f"cluster file {path}: cannot read: {exc.strerror or exc}") from None
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PlacementError(f"cluster file {path}: cannot parse: {first}") from None
    if not isinstance(data, dict):
        raise PlacementError(f"cluster file {path}: expected a mapping at the top level")
    if "cluster" in data and isinstance(data["cluster"], dict):
        data = data["cluster"]
    return ClusterSpec.from_dict(data, name=path.stem)


def save_cluster(spec: ClusterSpec, path: str | Path) -> None:
    """Write a spec as YAML (or TOML-free JSON when the suffix is .json), atomically."""
    from moe_placement.atomic import atomic_open, write_json

    if str(path).endswith(".json"):
        write_json(path, spec.to_dict())
        return
    with atomic_open(path) as handle:
        yaml.safe_dump(spec.to_dict(), handle, sort_keys=False)
