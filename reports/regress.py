"""Regression checks of placement quality against a stored baseline, for CI: pure functions of numbers.

The measuring (solve or load a plan, evaluate, simulate) is the pipeline's
(:func:`moe_placement.pipeline.regress.measure`); this module holds what the metrics mean and their
default tolerances, the baseline file's I/O, the comparison and the JUnit output. Metrics: load balance
(``max_load``: busiest GPU's (token, expert) assignments, mean over layers; ``max_over_mean``: max/mean GPU
load, mean over layers), deduplicated inter-node bytes (``inter_node_bytes``, for the trace as given), the
simulated MoE layer time (``layer_us``, mean over layers) and the solve time (``solve_s``). Every metric is
lower-is-better; a metric regresses when ``current > baseline * (1 + rel) + abs`` with per-metric
tolerances stored in the baseline file. Results print as a table with the change of each metric, and
optionally as JUnit XML.

Baseline file (JSON): ``schema_version``, ``config`` (the solve options), ``engine`` (what timed it),
``tolerances`` (metric -> ``{"rel", "abs"}``) and ``traces`` (trace file name -> ``path``,
``fingerprint``, ``metrics``). The file name is only a label: an entry belongs to the trace whose routing
fingerprint (:func:`moe_placement.pipeline.regress.routing_fingerprint`) it stores
(:func:`match_entry`); baselines written before that stored a hash of the file's bytes, still accepted.
"""

from __future__ import annotations

import json
import math
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moe_placement.atomic import atomic_open, write_json
from moe_placement.errors import PlacementError

BASELINE_SCHEMA_VERSION = 1

# metric -> (description, default relative tolerance, default absolute tolerance)
METRICS: dict[str, tuple[str, float, float]] = {
    "max_load": ("busiest GPU's assignments, mean over layers", 0.02, 0.0),
    "max_over_mean": ("max/mean GPU load, mean over layers", 0.02, 0.0),
    "inter_node_bytes": ("deduplicated inter-node bytes, dispatch + combine", 0.02, 0.0),
    "layer_us": ("simulated MoE layer time (us), mean over layers", 0.05, 0.0),
    # Wall-clock time on shared CI machines is noisy: only a several-fold slowdown fails.
    "solve_s": ("solver wall time (s)", 3.0, 2.0),
}

DEFAULT_CONFIG: dict[str, Any] = {
    "cluster": "h100-multirail",
    "gpus": 8,
    "gpus_per_node": 4,
    "solver": None,
    "redundant": 0,
    "mode": "standard",
    "tokens_per_gpu": 4096,
    "overlap": "none",
    "algo": "deepep",
    "seed": 0,
    "time_limit_s": 10.0,
    # A wall-clock limit makes the plan depend on machine load (a loaded CI machine saw +24% inter-node
    # bytes from `best`); a deterministic limit gives the same plan everywhere.
    "deterministic": True,
}

# Options a baseline written before they had a default of their own was measured under, when it does
# not store them (wall-clock solves were the default then).
LEGACY_CONFIG: dict[str, Any] = {"deterministic": False}


@dataclass(frozen=True)
class EntryMatch:
    """The baseline entry a trace is checked against: its label (``key``) and contents; ``how`` says
    why it matched (``fingerprint``, ``file fingerprint`` of an older baseline, or ``name`` for an entry
    that stores no fingerprint)."""

    key: str
    entry: dict[str, Any]
    how: str


def match_entry(
    traces: dict[str, Any], name: str, fingerprint: str, file_fingerprint: str = ""
) -> EntryMatch | None:
    """The entry of ``traces`` (a baseline's) recorded on this trace: the one storing its routing
    ``fingerprint`` under any name (the label of the trace's own name first), else one storing
    ``file_fingerprint`` (older baselines hashed the file's bytes), else an entry named ``name`` that
    stores no fingerprint at all. ``None``: the baseline holds nothing for this trace."""
    ordered = sorted(traces.items(), key=lambda item: item[0] != name)
    for wanted, how in ((fingerprint, "fingerprint"), (file_fingerprint, "file fingerprint")):
        for key, entry in ordered:
            if wanted and isinstance(entry, dict) and entry.get("fingerprint") == wanted:
                return EntryMatch(key, entry, how)
    entry = traces.get(name)
    if isinstance(entry, dict) and not entry.get("fingerprint"):
        return EntryMatch(name, entry, "name")
    return None


def no_entry_reason(baseline_path: str, traces: dict[str, Any], name: str, fingerprint: str) -> str:
    """One line saying why a baseline cannot check this trace, and what to do."""
    entry = traces.get(name)
    if isinstance(entry, dict):
        return (
            f"baseline {baseline_path} was recorded on another trace: its entry {name} has routing "
            f"fingerprint {entry.get('fingerprint')}, this {name} has {fingerprint} (same name, "
            "different routing); give the baseline of this trace, or re-record with --update-baseline"
        )
    held = ", ".join(f"{k} ({v.get('fingerprint')})" for k, v in sorted(traces.items())) or "none"
    return (
        f"baseline {baseline_path} holds no trace with the routing of {name} (fingerprint "
        f"{fingerprint}; it holds {held}); give the baseline of this trace, or record it with "
        "--update-baseline"
    )


@dataclass(frozen=True)
class Check:
    """One (trace, metric) comparison. ``status``: ``pass``, ``fail``, ``new`` or ``skipped``."""

    trace: str
    metric: str
    baseline: float | None
    current: float
    limit: float | None
    status: str
    message: str

    @property
    def change(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.current / self.baseline - 1.0


def default_tolerances() -> dict[str, dict[str, float]]:
    return {m: {"rel": rel, "abs": abs_} for m, (_, rel, abs_) in METRICS.items()}


def load_baseline(path: str | Path) -> dict[str, Any] | None:
    """The baseline file's contents, or ``None`` if it does not exist; malformed -> PlacementError."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlacementError(f"baseline {path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("schema_version") != BASELINE_SCHEMA_VERSION:
        raise PlacementError(
            f"baseline {path}: expected a JSON object with schema_version {BASELINE_SCHEMA_VERSION}"
        )
    if not isinstance(data.get("traces"), dict):
        raise PlacementError(f"baseline {path}: missing 'traces'")
    if "config" in data and not isinstance(data["config"], dict):
        raise PlacementError(f"baseline {path}: config must be an object")
    if data.get("tolerances") is not None and not isinstance(data["tolerances"], dict):
        raise PlacementError(f"baseline {path}: tolerances must be an object")
    if data.get("engine") is not None and not isinstance(data["engine"], str):
        raise PlacementError(f"baseline {path}: engine must be a string")
    for name, entry in data["traces"].items():
        metrics = entry.get("metrics") if isinstance(entry, dict) else None
        if not isinstance(metrics, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()
        ):
            raise PlacementError(f"baseline {path}: trace {name!r} needs metrics of numbers")
    return data


def compare(
    name: str,
    current: dict[str, float],
    entry: dict[str, Any] | None,
    tolerances: dict[str, dict[str, float]],
    *,
    engine_changed: bool,
) -> list[Check]:
    """Checks of ``current`` against a baseline ``entry`` (``None``: every metric is new)."""
    checks = []
    stored = (entry or {}).get("metrics", {})
    defaults = default_tolerances()
    for metric, value in current.items():
        base = stored.get(metric)
        tol = tolerances.get(metric, defaults[metric])
        if base is None:
            checks.append(Check(name, metric, None, value, None, "new", "not in the baseline"))
            continue
        base = float(base)
        rel, abs_ = float(tol.get("rel", 0.0)), float(tol.get("abs", 0.0))
        limit = base * (1.0 + rel) + abs_
        if metric == "layer_us" and engine_changed:
            status = "skipped"
            message = "timing engine differs from the baseline's; run --update-baseline"
        elif not math.isfinite(limit):
            # A NaN or infinite limit would pass every value: fail closed instead.
            status, message = "fail", f"{metric}: tolerance gives a non-finite limit ({limit})"
        elif not value <= limit:  # written so that a NaN measurement fails too
            status = "fail"
            message = (
                f"{metric} regressed: {value:.6g} > limit {limit:.6g} (baseline {base:.6g}, "
                f"{(value / base - 1) * 100 if base else float('inf'):+.2f}%, tolerance "
                f"{rel * 100:g}% + {abs_:g})"
            )
        else:
            status, message = "pass", ""
        checks.append(Check(name, metric, base, value, limit, status, message))
    return checks


def write_junit(path: str | Path, checks: list[Check], seconds: float) -> None:
    """JUnit XML: one test case per (trace, metric), a ``failure`` element for each regression."""
    suites = ET.Element("testsuites")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name="moe_placement.regress",
        tests=str(len(checks)),
        failures=str(sum(c.status == "fail" for c in checks)),
        skipped=str(sum(c.status == "skipped" for c in checks)),
        errors="0",
        time=f"{seconds:.3f}",
    )
    for c in checks:
        case = ET.SubElement(
            suite, "testcase", classname=f"regress.{c.trace}", name=c.metric, time="0"
        )
        props = f"baseline={c.baseline} current={c.current} limit={c.limit}"
        if c.status == "fail":
            failure = ET.SubElement(case, "failure", message=c.message, type="regression")
            failure.text = props
        elif c.status == "skipped":
            ET.SubElement(case, "skipped", message=c.message)
        else:
            ET.SubElement(case, "system-out").text = props + (
                f" ({c.message})" if c.message else ""
            )
    ET.indent(suites)
    with atomic_open(path) as handle:
        handle.write('<?xml version="1.0" encoding="utf-8"?>\n')
        handle.write(ET.tostring(suites, encoding="unicode"))
        handle.write("\n")


def write_baseline(
    path: str | Path,
    previous: dict[str, Any] | None,
    config: dict[str, Any],
    engine: str,
    tolerances: dict[str, dict[str, float]],
    measured: dict[str, tuple[str, str, dict[str, float]]],
) -> None:
    """Write (or update) a baseline file: traces measured now replace their entries (an entry of the
    same routing under another name too: the trace was renamed), others stay."""
    traces = dict((previous or {}).get("traces", {}))
    for name, (trace_path, fingerprint, metrics) in measured.items():
        for key in [
            k for k, v in traces.items() if k != name and v.get("fingerprint") == fingerprint
        ]:
            del traces[key]
        traces[name] = {"path": trace_path, "fingerprint": fingerprint, "metrics": metrics}
    write_json(
        path,
        {
            "schema_version": BASELINE_SCHEMA_VERSION,
            "config": config,
            "engine": engine,
            "tolerances": tolerances,
            "traces": dict(sorted(traces.items())),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
