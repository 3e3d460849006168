"""Calibration: microbenchmarks on the real workers fitted into a cluster spec the predictors load.

* all-to-all at several sizes (uniform, moved as the dispatch moves rows: gather, exchange, concatenate),
  fitted to the evaluator's and simulator's link model ``t = latency + busiest GPU's bytes / bandwidth``;
* expert SwiGLU compute, all ranks at once, over a grid of (experts, tokens per expert), fitted to the
  roofline ``t = max(FLOPs / peak, active experts' weight bytes / memory bandwidth)``.

On one host the ranks share one medium, so the NVLink and NIC figures get the same fitted bandwidth and
latency (efficiencies 1: the fitted figures are achieved ones) and the ranks form one "node". The fits
are pure functions (tested without workers); :func:`run_calibration` runs the benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from placement.atomic import atomic_open
from placement.cluster import ClusterSpec, GPUSpec
from placement.errors import PlacementError
from placement.executor.group import WorkerGroup

DEFAULT_ROWS_PER_PEER = (8, 64, 256, 1024, 2048)
DEFAULT_GEMM_GRID = ((1, 64), (4, 32), (4, 128), (2, 512), (4, 512), (4, 1024))


@dataclass(frozen=True)
class LinkFit:
    """``t_us = latency_us + bytes / (gbytes_per_s * 1e3)`` fitted over ``points`` (bytes, us)."""

    latency_us: float
    gbytes_per_s: float
    points: list[tuple[float, float]]

    def predict_us(self, nbytes: float) -> float:
        return self.latency_us + nbytes / (self.gbytes_per_s * 1e3)


@dataclass(frozen=True)
class ComputeFit:
    """``t_us = max(flops / (tflops * 1e6), weight_bytes / (mem_gbytes_per_s * 1e3))`` over ``points``
    (flops, weight bytes, us)."""

    tflops: float
    mem_gbytes_per_s: float
    points: list[tuple[float, float, float]]

    def predict_us(self, flops: float, weight_bytes: float) -> float:
        return max(flops / (self.tflops * 1e6), weight_bytes / (self.mem_gbytes_per_s * 1e3))


def fit_link(nbytes: np.ndarray, times_us: np.ndarray) -> LinkFit:
    """Least squares on relative error (each point weighted by 1/t), latency and bandwidth kept > 0."""
    x = np.asarray(nbytes, dtype=float)
    t = np.asarray(times_us, dtype=float)
    if x.size < 2 or np.unique(x).size < 2:
        raise PlacementError("calibration needs all-to-all times at two sizes at least")
    w = 1.0 / np.maximum(t, 1e-9)
    A = np.stack([np.ones_like(x), x], axis=1) * w[:, None]
    (lat, inv_bw), *_ = np.linalg.lstsq(A, t * w, rcond=None)
    if inv_bw <= 0:  # time did not grow with size (noise): fall back to the two extremes
        inv_bw = max((t[np.argmax(x)] - t[np.argmin(x)]) / max(x.max() - x.min(), 1.0), 1e-12)
    lat = max(float(lat), 0.0)
    return LinkFit(
        latency_us=lat,
        gbytes_per_s=1.0 / (float(inv_bw) * 1e3),
        points=[(float(a), float(b)) for a, b in zip(x, t, strict=True)],
    )


def fit_compute(flops: np.ndarray, weight_bytes: np.ndarray, times_us: np.ndarray) -> ComputeFit:
    """The roofline pair minimising the squared log error; candidates are the points' own ratios."""
    f = np.asarray(flops, dtype=float)
    b = np.asarray(weight_bytes, dtype=float)
    t = np.asarray(times_us, dtype=float)
    if f.size < 1:
        raise PlacementError("calibration needs GEMM times")
    peak_cands = f / t  # FLOP/us
    mem_cands = np.concatenate([b / t, [np.inf]])  # bytes/us; inf: the memory term never binds
    best = (np.inf, float(peak_cands.max()), np.inf)
    for peak in peak_cands:
        for mem in mem_cands:
            pred = np.maximum(f / peak, b / mem)
            err = float(np.sum(np.log(pred / t) ** 2))
            if err < best[0]:
                best = (err, float(peak), float(mem))
    _, peak, mem = best
    mem_gb = 1e9 if not np.isfinite(mem) else mem / 1e3  # bytes/us -> GB/s
    return ComputeFit(
        tflops=peak / 1e6,
        mem_gbytes_per_s=mem_gb,
        points=[(float(a), float(c), float(d)) for a, c, d in zip(f, b, t, strict=True)],
    )


def calibrated_spec(
    link: LinkFit,
    comp: ComputeFit,
    *,
    world: int,
    device: str,
    memory_gib: float,
    name: str = "calibrated",
) -> ClusterSpec:
    """A one-node cluster of ``world`` ranks with the fitted figures."""
    gpu = GPUSpec(
        name=f"{device}-calibrated",
        bf16_tflops=comp.tflops,
        fp8_tflops=comp.tflops,
        hbm_gbytes_per_s=comp.mem_gbytes_per_s,
        memory_gib=max(memory_gib, 1e-3),
        nvlink_gbytes_per_s=link.gbytes_per_s,
    )
    return ClusterSpec(
        name=name,
        gpu=gpu,
        num_nodes=1,
        gpus_per_node=world,
        nvlink_gbytes_per_s=link.gbytes_per_s,
        nvlink_latency_us=link.latency_us,
        nvlink_efficiency=1.0,
        nics_per_gpu=1,
        nic_gbits_per_s=link.gbytes_per_s * 8.0,
        nic_latency_us=link.latency_us,
        nic_efficiency=1.0,
        pcie_gbytes_per_s=link.gbytes_per_s,
        fabric="none",
        switch_latency_us=0.0,
        compute_efficiency=1.0,
        comm_sm_fraction=0.0,
    )


@dataclass(frozen=True)
class Calibration:
    spec: ClusterSpec
    link: LinkFit
    compute: ComputeFit
    hidden_size: int
    intermediate_size: int
    dtype: str

    def report(self) -> dict[str, Any]:
        link_err = [abs(self.link.predict_us(x) - t) / t for x, t in self.link.points]
        comp_err = [abs(self.compute.predict_us(f, b) - t) / t for f, b, t in self.compute.points]
        return {
            "cluster": self.spec.to_dict(),
            "all_to_all": {
                "latency_us": self.link.latency_us,
                "gbytes_per_s": self.link.gbytes_per_s,
                "points": [
                    {"bytes": x, "measured_us": t, "fitted_us": self.link.predict_us(x)}
                    for x, t in self.link.points
                ],
                "mean_abs_rel_error": float(np.mean(link_err)),
            },
            "gemm": {
                "tflops": self.compute.tflops,
                "mem_gbytes_per_s": self.compute.mem_gbytes_per_s,
                "points": [
                    {
                        "flops": f,
                        "weight_bytes": b,
                        "measured_us": t,
                        "fitted_us": self.compute.predict_us(f, b),
                    }
                    for f, b, t in self.compute.points
                ],
                "mean_abs_rel_error": float(np.mean(comp_err)),
            },
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "dtype": self.dtype,
        }


def run_calibration(
    group: WorkerGroup,
    *,
    hidden: int,
    inter: int,
    dtype: str,
    rows_per_peer: tuple[int, ...] = DEFAULT_ROWS_PER_PEER,
    gemm_grid: tuple[tuple[int, int], ...] = DEFAULT_GEMM_GRID,
    warmup: int = 2,
    reps: int = 7,
) -> Calibration:
    """Benchmark on the group's workers and fit. Times are the slowest rank's, median over repetitions."""
    from placement.executor.driver import DTYPE_BYTES

    elem = DTYPE_BYTES[dtype]
    world = group.world
    a2a = np.stack(
        group.call(
            "bench_all_to_all",
            list(rows_per_peer),
            hidden,
            dtype,
            warmup,
            reps,
            what="benchmarking all-to-all",
        )
    )  # [ranks, sizes, reps]
    a2a_us = np.median(a2a.max(axis=0), axis=1)
    # The busiest GPU's bytes over the link: what it sends to its peers (its own rows stay local).
    sent_bytes = np.array(rows_per_peer, dtype=float) * hidden * elem * max(world - 1, 1)
    link = fit_link(sent_bytes, a2a_us)
    gemm = np.stack(
        group.call(
            "bench_gemm",
            [list(p) for p in gemm_grid],
            hidden,
            inter,
            dtype,
            warmup,
            reps,
            what="benchmarking expert GEMMs",
        )
    )
    gemm_us = np.median(gemm.max(axis=0), axis=1)
    flops = np.array([e * t * 6.0 * hidden * inter for e, t in gemm_grid])
    wbytes = np.array([e * 3.0 * hidden * inter * elem for e, _ in gemm_grid])
    comp = fit_compute(flops, wbytes, gemm_us)
    info: dict[str, Any] = group.info[0] if group.info else {"device": "cpu", "total_bytes": 0}
    memory_gib = (
        float(info.get("total_bytes", 0)) / 2**30 / (world if info.get("device") == "cpu" else 1)
    )
    spec = calibrated_spec(
        link,
        comp,
        world=world,
        device=str(info.get("device", "cpu")).replace(" ", "-"),
        memory_gib=memory_gib,
        name=f"calibrated-{group.backend}-{world}",
    )
    return Calibration(spec, link, comp, hidden, inter, dtype)


def save_calibrated(cal: Calibration, path: str) -> None:
    """Write the spec as YAML that :func:`placement.cluster.load_cluster` reads, with the fit as comments."""
    import yaml

    rep = cal.report()
    header = [
        "# Cluster spec fitted by `placement calibrate` on the executor's workers.",
        f"# all-to-all: latency {cal.link.latency_us:.1f} us, {cal.link.gbytes_per_s:.3f} GB/s per rank "
        f"(mean fit error {rep['all_to_all']['mean_abs_rel_error']:.1%})",
        f"# expert GEMMs: {cal.compute.tflops * 1e3:.2f} GFLOP/s per rank, weights at "
        f"{cal.compute.mem_gbytes_per_s:.2f} GB/s (mean fit error {rep['gemm']['mean_abs_rel_error']:.1%})",
        f"# shapes: hidden {cal.hidden_size}, intermediate {cal.intermediate_size}, {cal.dtype}",
    ]
    with atomic_open(path) as handle:
        handle.write("\n".join(header) + "\n")
        yaml.safe_dump(cal.spec.to_dict(), handle, sort_keys=False)
