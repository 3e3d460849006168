"""The placement plan: one type used by solvers, evaluator, simulator, executor, reports and disk.

Per MoE layer, ``phy2log[layer, slot]`` names the logical expert held by physical slot ``slot``; slot
``s`` lives on GPU ``s // slots_per_gpu``. Replicas are allowed (an expert in several slots, never twice
on one GPU). ``replica_share[layer, slot]`` is the share of its expert's tokens a slot takes (absent: an
even split over the expert's replicas). ``layers`` (optional) names the model layer of each MoE layer and
the model's layer count, so that exports to engines that index by model layer need no flag
(:mod:`moe_placement.layers`, :mod:`moe_placement.exporters`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moe_placement.atomic import write_json
from moe_placement.errors import PlacementError
from moe_placement.layers import LayerIdentity

PLAN_SCHEMA_VERSION = 1


class PlanInvariantError(PlacementError):
    """A plan breaks one of its invariants; the message names which."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_plan_document(data: dict[str, Any], where: str) -> None:
    """Types of a plan file's fields, checked as it is read, so that a hand-edited or foreign file is
    refused naming the field (a float count, a string provenance, an empty map) rather than failing
    deep inside a solver or exporter."""

    def bad(msg: str) -> PlacementError:
        return PlacementError(f"{where}: {msg}")

    for key in ("num_gpus", "gpus_per_node", "slots_per_gpu"):
        if key in data and not (_is_int(data[key]) and data[key] >= 1):
            raise bad(f"{key} must be an integer >= 1, got {data[key]!r}")
    for key in ("schema_version", "num_experts", "num_layers"):
        if key in data and not _is_int(data[key]):
            raise bad(f"{key} must be an integer, got {data[key]!r}")
    phy2log = data.get("phy2log")
    if phy2log is not None:
        if not isinstance(phy2log, list) or not phy2log:
            raise bad("phy2log must be a non-empty list of MoE layers (the plan has none)")
        if not all(isinstance(row, list) and row and all(map(_is_int, row)) for row in phy2log):
            raise bad("phy2log must hold one non-empty list of integer expert ids per MoE layer")
    share = data.get("replica_share")
    if share is not None and not (
        isinstance(share, list)
        and all(isinstance(row, list) and all(map(_is_number, row)) for row in share)
    ):
        raise bad("replica_share must be a list of lists of numbers")
    provenance = data.get("provenance")
    if provenance is not None:
        if not isinstance(provenance, dict):
            raise bad(f"provenance must be an object, got {type(provenance).__name__}")
        if provenance.get("extra") is not None and not isinstance(provenance["extra"], dict):
            raise bad("provenance extra must be an object")
        for key in ("objective", "bound", "gap", "seconds"):
            value = provenance.get(key)
            if value is not None and not _is_number(value):
                raise bad(f"provenance {key} must be a number, got {value!r}")


@dataclass(frozen=True)
class Provenance:
    """How a plan was made: which solver, what it reached, what it proved, how long it took."""

    solver: str
    objective: float | None = None
    bound: float | None = None
    gap: float | None = None
    seconds: float = 0.0
    method: str = ""
    objective_name: str = ""
    trace_fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # the serving engine whose replica dispatch the plan was solved for (moe_placement.dispatch);
    # None: the project's share-aware router, which no engine serves today
    engine: str | None = None

    def to_dict(self) -> dict[str, Any]:
        engine = (
            {} if self.engine is None else {"engine": self.engine}
        )  # old files stay byte-identical
        return {
            "solver": self.solver,
            "objective": self.objective,
            "bound": self.bound,
            "gap": self.gap,
            "seconds": self.seconds,
            "method": self.method,
            "objective_name": self.objective_name,
            "trace_fingerprint": self.trace_fingerprint,
            "extra": self.extra,
            **engine,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Provenance:
        return cls(
            solver=str(data.get("solver", "unknown")),
            objective=data.get("objective"),
            bound=data.get("bound"),
            gap=data.get("gap"),
            seconds=float(data.get("seconds", 0.0) or 0.0),
            method=str(data.get("method", "")),
            objective_name=str(data.get("objective_name", "")),
            trace_fingerprint=str(data.get("trace_fingerprint", "")),
            extra=dict(data.get("extra", {}) or {}),
            engine=data.get("engine"),
        )


@dataclass(frozen=True, eq=False)
class Plan:
    """Expert placement for every MoE layer. Arrays: ``phy2log[layers, slots]`` (int),
    ``replica_share[layers, slots]`` (float, optional).

    The number of logical experts is not stored: every expert holds at least one slot (``validate``
    checks it), so it is the largest id in ``phy2log`` plus one.
    """

    num_gpus: int
    gpus_per_node: int
    slots_per_gpu: int
    phy2log: np.ndarray
    replica_share: np.ndarray | None = None
    provenance: Provenance = field(default_factory=lambda: Provenance(solver="unknown"))
    layers: LayerIdentity | None = None

    @property
    def num_layers(self) -> int:
        return int(self.phy2log.shape[0])

    @property
    def num_experts(self) -> int:
        """Logical experts: ids run 0..max and each is placed at least once."""
        return int(self.phy2log.max()) + 1 if self.phy2log.size else 0

    @property
    def num_slots(self) -> int:
        return self.num_gpus * self.slots_per_gpu

    @property
    def num_nodes(self) -> int:
        return self.num_gpus // self.gpus_per_node

    @property
    def num_redundant(self) -> int:
        return self.num_slots - self.num_experts

    def slot_gpu(self) -> np.ndarray:
        """GPU of each slot, ``[slots]``."""
        return np.arange(self.num_slots) // self.slots_per_gpu

    def logcnt(self) -> np.ndarray:
        """Replica count per logical expert, ``[layers, experts]``."""
        out = np.zeros((self.num_layers, self.num_experts), dtype=np.int64)
        for layer in range(self.num_layers):
            out[layer] = np.bincount(self.phy2log[layer], minlength=self.num_experts)
        return out

    def log2phy(self) -> np.ndarray:
        """Physical slots of each logical expert, ``[layers, experts, max_replicas]``, -1 padded."""
        cnt = self.logcnt()
        width = max(1, int(cnt.max()))
        out = np.full((self.num_layers, self.num_experts, width), -1, dtype=np.int64)
        for layer in range(self.num_layers):
            order = np.argsort(self.phy2log[layer], kind="stable")
            experts = self.phy2log[layer][order]
            starts = np.searchsorted(experts, np.arange(self.num_experts))
            rank = np.arange(order.size) - starts[experts]
            out[layer, experts, rank] = order
        return out

    def shares(self) -> np.ndarray:
        """Share of its expert's tokens each slot takes, ``[layers, slots]`` (even split if unset)."""
        if self.replica_share is not None:
            return np.asarray(self.replica_share, dtype=np.float64)
        cnt = self.logcnt()
        return 1.0 / np.take_along_axis(cnt, self.phy2log.astype(np.int64), axis=1)

    def validate(self) -> Plan:
        """Raise :class:`PlanInvariantError` naming the first invariant that fails; return self."""

        def fail(msg: str) -> PlanInvariantError:
            return PlanInvariantError(f"plan invalid: {msg}")

        if self.num_gpus < 1 or self.gpus_per_node < 1 or self.slots_per_gpu < 1:
            raise fail("num_gpus, gpus_per_node and slots_per_gpu must be >= 1")
        if self.num_gpus % self.gpus_per_node:
            raise fail(
                f"num_gpus ({self.num_gpus}) not a multiple of gpus_per_node ({self.gpus_per_node})"
            )
        p2l = self.phy2log
        if p2l.ndim != 2 or p2l.shape[0] < 1:
            raise fail(f"phy2log must be [layers, slots], got shape {p2l.shape}")
        if p2l.shape[1] != self.num_slots:
            raise fail(
                f"phy2log has {p2l.shape[1]} slots per layer, expected num_gpus*slots_per_gpu = {self.num_slots}"
            )
        if not np.issubdtype(p2l.dtype, np.integer):
            raise fail("phy2log must hold integers")
        if p2l.min() < 0:
            raise fail("phy2log holds a negative expert id")
        cnt = self.logcnt()
        missing = np.argwhere(cnt == 0)
        if missing.size:
            layer, expert = missing[0]
            raise fail(f"every expert placed: layer {layer} has no slot for expert {expert}")
        per_gpu = p2l.reshape(self.num_layers, self.num_gpus, self.slots_per_gpu)
        sorted_ids = np.sort(per_gpu, axis=2)
        dup = np.argwhere(sorted_ids[:, :, 1:] == sorted_ids[:, :, :-1])
        if dup.size:
            layer, gpu, _ = dup[0]
            raise fail(f"no two replicas of one expert on one GPU: layer {layer} GPU {gpu}")
        if self.layers is not None and self.layers.num_moe_layers != self.num_layers:
            raise fail(
                f"moe_layer_ids name {self.layers.num_moe_layers} layers but phy2log has {self.num_layers}"
            )
        if self.replica_share is not None:
            share = np.asarray(self.replica_share, dtype=np.float64)
            if share.shape != p2l.shape:
                raise fail(f"replica_share shape {share.shape} differs from phy2log {p2l.shape}")
            if not np.all(np.isfinite(share)) or share.min() < 0:
                raise fail("replica_share must be finite and >= 0")
            for layer in range(self.num_layers):
                sums = np.bincount(p2l[layer], weights=share[layer], minlength=self.num_experts)
                worst = int(np.argmax(np.abs(sums - 1.0)))
                if abs(sums[worst] - 1.0) > 1e-6:
                    raise fail(
                        f"replica shares of an expert sum to 1: layer {layer} expert {worst} sums to {sums[worst]:.6f}"
                    )
        return self

    # ---- disk -------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema_version": PLAN_SCHEMA_VERSION,
            "num_gpus": self.num_gpus,
            "gpus_per_node": self.gpus_per_node,
            "slots_per_gpu": self.slots_per_gpu,
            "num_experts": self.num_experts,
            "num_layers": self.num_layers,
            "phy2log": self.phy2log.astype(int).tolist(),
        }
        if self.replica_share is not None:
            out["replica_share"] = np.round(np.asarray(self.replica_share, dtype=float), 9).tolist()
        if self.layers is not None:  # written only when known, so older plans keep their JSON
            out.update(self.layers.to_dict())
        out["provenance"] = self.provenance.to_dict()
        return out

    def fingerprint(self) -> str:
        """Short hash of the placement itself (maps and shares, not provenance)."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.phy2log, dtype=np.int64).tobytes())
        digest.update(f"{self.num_gpus}/{self.gpus_per_node}/{self.slots_per_gpu}".encode())
        if self.replica_share is not None:
            digest.update(np.round(np.asarray(self.replica_share, dtype=float), 9).tobytes())
        return digest.hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        try:
            version = int(data.get("schema_version", 0))
            if version != PLAN_SCHEMA_VERSION:
                raise PlacementError(
                    f"plan schema_version {version} is not supported (expected {PLAN_SCHEMA_VERSION})"
                )
            phy2log = np.asarray(data["phy2log"], dtype=np.int64)
            share = data.get("replica_share")
            plan = cls(
                num_gpus=int(data["num_gpus"]),
                gpus_per_node=int(data["gpus_per_node"]),
                slots_per_gpu=int(data["slots_per_gpu"]),
                phy2log=phy2log,
                replica_share=None if share is None else np.asarray(share, dtype=np.float64),
                provenance=Provenance.from_dict(data.get("provenance", {}) or {}),
                layers=_layers_from_dict(data, int(phy2log.shape[0]) if phy2log.ndim == 2 else 0),
            )
        except KeyError as exc:
            raise PlacementError(f"plan is missing key {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, PlacementError):
                raise
            raise PlacementError(f"plan is malformed: {exc}") from None
        plan.validate()
        _check_stored_count(data, "num_experts", plan.num_experts)
        _check_stored_count(data, "num_layers", plan.num_layers)
        return plan

    def save(self, path: str | Path) -> None:
        self.validate()
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        if not path.exists():
            raise PlacementError(f"plan file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PlacementError(f"plan file {path} is not JSON: {exc}") from None
        except OSError as exc:
            raise PlacementError(f"plan file {path}: cannot read: {exc.strerror or exc}") from None
        if not isinstance(data, dict):
            raise PlacementError(f"plan file {path}: expected a JSON object")
        _check_plan_document(data, f"plan file {path}")
        return cls.from_dict(data)


def _check_stored_count(data: dict[str, Any], key: str, derived: int) -> None:
    """Plan files carry counts the maps already imply (``num_experts``, ``num_layers``) for readers
    outside this package; a file whose count disagrees with its maps was edited by hand or truncated."""
    if key not in data:
        return
    try:
        stored = int(data[key])
    except (TypeError, ValueError):
        raise PlacementError(f"plan is malformed: {key} {data[key]!r} is not an integer") from None
    if stored != derived:
        raise PlacementError(f"plan {key} is {stored} but its phy2log implies {derived}")


def _layers_from_dict(data: dict[str, Any], num_moe_layers: int) -> LayerIdentity | None:
    """The plan's layer identity: ``moe_layer_ids`` (with ``total_layers``), or ``first_moe_layer``
    alone (MoE layers contiguous from it); None for plans that record neither (older files)."""
    ids, total, first = (data.get(k) for k in ("moe_layer_ids", "total_layers", "first_moe_layer"))
    if ids is None and first is None:
        return None
    if not (total is None or isinstance(total, int)) or not (
        first is None or isinstance(first, int)
    ):
        raise PlacementError("plan is malformed: total_layers and first_moe_layer must be integers")
    if ids is None:
        assert first is not None
        return LayerIdentity.contiguous(first, num_moe_layers, total)
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise PlacementError("plan is malformed: moe_layer_ids must be a list of integers")
    layers = LayerIdentity.of(ids, total)
    if first is not None and first != layers.first_moe_layer:
        raise PlacementError(
            f"plan first_moe_layer {first} disagrees with its moe_layer_ids (first {layers.first_moe_layer})"
        )
    return layers
