"""``validate``: replay a plan (and a baseline) on real collectives, predict the same run, compare.

The prediction uses the cluster spec fitted on the same workers (calibrated first unless one is given),
the executed shape (hidden size scaled, the run's dtype) and exactly the replayed tokens, so measured and
simulated times describe one run. The rows the workers moved are checked against the evaluator's
deduplicated copies pair by pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from moe_placement import progress
from moe_placement.cluster import ClusterSpec, load_cluster
from moe_placement.errors import PlacementError
from moe_placement.executor.calibrate import (
    Calibration,
    CalibrationSamples,
    collect_calibration,
    fit_calibration,
)
from moe_placement.executor.driver import (
    ExecConfig,
    Measurement,
    ReplayInput,
    load_replay_input,
    measure,
    pool_measurements,
    preflight,
    relative_error,
    worker_group,
)
from moe_placement.executor.hostmodel import HostModel, load_host_model
from moe_placement.executor.predict import predict_layers
from moe_placement.metrics import evaluate
from moe_placement.plan import Plan
from moe_placement.timing import LayerTime, StepTime

# The times a report compares, measured against predicted (its JSON keys).
COMPARED_KEYS = ("dispatch_us", "compute_us", "combine_us", "layer_us")


def _compared(t: LayerTime) -> dict[str, float]:
    """A layer's compared times as the report's JSON row."""
    return {k: float(getattr(t, k)) for k in COMPARED_KEYS}


def _check_plan(plan: Plan, data: ReplayInput, what: str) -> None:
    if plan.num_layers != data.workload.num_layers or plan.num_experts != data.workload.num_experts:
        raise PlacementError(
            f"{what} covers {plan.num_layers} layers x {plan.num_experts} experts but the trace has "
            f"{data.workload.num_layers} x {data.workload.num_experts}"
        )


def plan_cluster(spec: ClusterSpec, plan: Plan) -> ClusterSpec:
    """The calibrated hardware with the plan's GPU and node counts."""
    return spec.with_counts(plan.num_gpus, plan.gpus_per_node)


def compare(
    plan: Plan,
    meas: Measurement,
    spec: ClusterSpec,
    data: ReplayInput,
    chunks: int,
    host: HostModel | None = None,
) -> dict[str, Any]:
    """Per-layer measured vs simulated times and errors, and the copies check; with a ``host`` model
    (CPU ranks sharing cores) it predicts instead of the simulator."""
    cluster = plan_cluster(spec, plan)
    predicted = predict_layers(plan, cluster, data.workload, host=host)
    predicted_over = None
    if meas.overlap_us is not None:
        predicted_over = predict_layers(
            plan, cluster, data.workload, overlap="chunked", chunks=chunks, host=host
        )
    ev = evaluate(plan, cluster, data.workload, mode="standard", tokens_per_gpu=None)
    copies_ok = all(
        np.array_equal(
            meas.sent_copies[layer],
            (ev.dispatch[layer].nvlink + ev.dispatch[layer].nic).astype(np.int64),
        )
        for layer in range(plan.num_layers)
    )
    layers = [
        _layer_row(meas, predicted, predicted_over, layer) for layer in range(plan.num_layers)
    ]
    err = np.array([row["error"]["layer_us"] for row in layers])
    total_m, total_s = meas.step.moe_time_us, predicted.moe_time_us
    out: dict[str, Any] = {
        "fingerprint": plan.fingerprint(),
        "solver": plan.provenance.solver,
        "gpus_per_node": plan.gpus_per_node,
        "slots_per_gpu": plan.slots_per_gpu,
        "predictor": predicted.source,
        "copies_match_evaluator": bool(copies_ok),
        "layers": layers,
        "measured_us": total_m,
        "simulated_us": total_s,
        "error": relative_error(total_s, total_m),
        "mean_abs_layer_error": float(np.nanmean(np.abs(err))) if err.size else math.nan,
        "max_abs_layer_error": float(np.nanmax(np.abs(err))) if err.size else math.nan,
        "weight_bytes_per_rank": meas.weight_bytes,
    }
    if meas.overlap_us is not None and predicted_over is not None:
        over = float(meas.overlap_us.sum())
        out["measured_overlap_us"] = over
        out["overlap_speedup"] = total_m / over if over > 0 else math.nan
        out["simulated_overlap_us"] = predicted_over.moe_time_us
    return out


def _layer_row(
    meas: Measurement,
    predicted: StepTime,
    predicted_over: StepTime | None,
    layer: int,
) -> dict[str, Any]:
    """One layer of the report: measured, predicted ("simulated") and relative error of each time."""
    measured = {"notify_us": float(meas.notify_us[layer]), **_compared(meas.step.layers[layer])}
    simulated = _compared(predicted.layers[layer])
    error = {k: relative_error(simulated[k], measured[k]) for k in COMPARED_KEYS}
    if meas.overlap_us is not None and predicted_over is not None:
        measured["overlap_layer_us"] = float(meas.overlap_us[layer])
        simulated["overlap_layer_us"] = predicted_over.layers[layer].layer_us
        error["overlap_layer_us"] = relative_error(
            simulated["overlap_layer_us"], measured["overlap_layer_us"]
        )
    return {
        "layer": layer,
        "measured": measured,
        "simulated": simulated,
        "error": error,
        "moved_rows": int(meas.sent_copies[layer].sum()),
    }


def run_validate(
    trace: str,
    plan_path: str,
    baseline_path: str | None,
    config: ExecConfig,
    *,
    cluster: str | None = None,
    fault: dict[str, Any] | None = None,
    rounds: int = 1,
) -> dict[str, Any]:
    """Measure the plan (and the baseline) and the prediction; the whole report as a dict.

    ``rounds`` > 1 interleaves: each round runs the calibration benchmarks once (unless a spec is
    given) and replays every plan once, in a fresh order; the fit and every layer's time pool all
    rounds' repetitions, so a change in the host's load hits calibration, plan and baseline alike
    (on shared CPU hosts this, not the model, set most of the per-layer error)."""
    if rounds < 1:
        raise PlacementError("--rounds must be >= 1")
    plans = _load_plans(plan_path, baseline_path)
    spec = load_cluster(cluster) if cluster else None
    # A spec calibrated on CPU ranks carries its host-sharing model next to it.
    host = load_host_model(cluster) if cluster and config.backend == "gloo" else None
    with progress.step("reading the trace"):
        data = load_replay_input(trace, plans[0][1].num_gpus, config)
    for what, p in plans:
        _check_plan(p, data, what)
        preflight(p, config, data.shape, data.workload.num_tokens)
    run = _run_rounds(plans, data, config, calibrate=spec is None, fault=fault, rounds=rounds)
    if run.calibration is not None:
        spec = run.calibration.spec
        host = run.calibration.host if config.backend == "gloo" else None
    if spec is None:  # unreachable: rounds >= 1 calibrated at least once
        raise PlacementError("no cluster spec to predict with")
    report = _report_header(trace, data, config, rounds, run, spec)
    with progress.step("predicting the layer times with the calibrated simulator"):
        report["plans"] = {
            what: compare(p, run.measured[what], spec, data, config.chunks, host)
            for what, p in plans
        }
    if "baseline" in report["plans"]:
        report["speedup"] = _speedup(report["plans"]["plan"], report["plans"]["baseline"])
    return report


def _load_plans(plan_path: str, baseline_path: str | None) -> list[tuple[str, Plan]]:
    """``[("plan", plan)]``, then ``("baseline", baseline)`` when one is given (same GPU count)."""
    plan = Plan.load(plan_path)
    baseline = Plan.load(baseline_path) if baseline_path else None
    if baseline is None:
        return [("plan", plan)]
    if baseline.num_gpus != plan.num_gpus:
        raise PlacementError(
            f"the baseline plan is for {baseline.num_gpus} GPUs but the plan for {plan.num_gpus}"
        )
    return [("plan", plan), ("baseline", baseline)]


@dataclass(frozen=True)
class _Run:
    """What the workers gave: each plan's measurement pooled over the rounds, the calibration fitted
    on them (None when a spec was given) and the devices the ranks ran on."""

    measured: dict[str, Measurement]
    calibration: Calibration | None
    devices: list[str]


def _run_rounds(
    plans: list[tuple[str, Plan]],
    data: ReplayInput,
    config: ExecConfig,
    *,
    calibrate: bool,
    fault: dict[str, Any] | None,
    rounds: int,
) -> _Run:
    """All rounds on one worker group; the fault is injected into the plan's first replay only."""
    calibration: Calibration | None = None
    with worker_group(config) as group:
        hidden, inter = data.shape.hidden_size, data.shape.expert_intermediate_size
        samples: CalibrationSamples | None = None
        parts: dict[str, list[Measurement]] = {what: [] for what, _ in plans}
        order = np.random.default_rng(config.seed)
        for round_ in range(rounds):
            of = f"round {round_ + 1} of {rounds}"
            if calibrate:
                with progress.step(f"calibrating the links and experts on the workers ({of})"):
                    got = collect_calibration(
                        group, hidden=hidden, inter=inter, dtype=config.torch_dtype
                    )
                samples = got if samples is None else samples.merge(got)
            for j in order.permutation(len(plans)) if round_ else range(len(plans)):
                what, p = plans[j]
                injected = fault if what == "plan" and round_ == 0 else None
                with progress.step(f"replaying the {what} ({of})"):
                    parts[what].append(measure(group, p, data, config, fault=injected))
        if samples is not None:
            with progress.step("fitting the calibration"):
                calibration = fit_calibration(
                    group, samples, hidden=hidden, inter=inter, dtype=config.torch_dtype
                )
        measured = {what: pool_measurements(got) for what, got in parts.items()}
        devices = sorted({str(i["device"]) for i in group.info})
    return _Run(measured=measured, calibration=calibration, devices=devices)


def _report_header(
    trace: str, data: ReplayInput, config: ExecConfig, rounds: int, run: _Run, spec: ClusterSpec
) -> dict[str, Any]:
    """The report's keys that describe the run (everything before ``plans``)."""
    return {
        "trace": trace,
        "tokens": data.workload.num_tokens,
        "workers": config.workers,
        "backend": config.backend,
        "devices": run.devices,
        "dtype": config.torch_dtype,
        "hidden_size": data.shape.hidden_size,
        "intermediate_size": data.shape.expert_intermediate_size,
        "top_k": data.shape.top_k,
        "warmup": config.warmup,
        "reps": config.reps,
        "rounds": rounds,
        "chunks": config.chunks,
        "cluster": spec.name,
        "calibration": run.calibration.report() if run.calibration is not None else None,
    }


def _speedup(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """Baseline time over plan time (> 1: the plan is faster), measured and simulated, from the two
    plans' report entries ``a`` (plan) and ``b`` (baseline)."""
    speedup = {
        "measured": b["measured_us"] / a["measured_us"] if a["measured_us"] > 0 else math.nan,
        "simulated": b["simulated_us"] / a["simulated_us"] if a["simulated_us"] > 0 else math.nan,
    }
    if "measured_overlap_us" in a and "measured_overlap_us" in b:
        speedup["measured_overlap"] = b["measured_overlap_us"] / a["measured_overlap_us"]
    return speedup
