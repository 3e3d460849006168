"""Calibration: microbenchmarks on the real workers fitted into a cluster spec the predictors load.

* all-to-all at several sizes (uniform, moved as the dispatch moves rows: gather, exchange, concatenate),
  fitted to the evaluator's and simulator's link model ``t = latency + busiest GPU's bytes / bandwidth``;
* expert SwiGLU compute, all ranks at once, over a grid of (experts, tokens per expert), fitted to the
  roofline ``t = max(FLOPs / peak, active experts' weight bytes / memory bandwidth)``.

On one host the ranks share one medium, so the NVLink and NIC figures get the same fitted bandwidth and
latency (efficiencies 1: the fitted figures are achieved ones) and the ranks form one "node".

On CPU ranks it also fits the host-sharing model (:mod:`moe_placement.executor.hostmodel`) from per-rank
patterns (balanced, lone, half busy, skewed compute; skewed all-to-alls), which validate predicts with;
it is written next to the spec as ``<spec>.host.json``. The benchmarks run the replay's own kernels.
The fits are pure functions (tested without workers); :func:`run_calibration` runs the benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from moe_placement.atomic import atomic_open
from moe_placement.cluster import ClusterSpec, GPUSpec
from moe_placement.errors import PlacementError
from moe_placement.executor.driver import DTYPE_BYTES
from moe_placement.executor.group import WorkerGroup
from moe_placement.executor.hostmodel import (
    HostModel,
    fit_host_comm,
    fit_host_compute,
    save_host_model,
    sidecar_path,
)
from moe_placement.executor.timing import across_ranks, central_us, share_clock

# Dense in the band replays move (about 100-500 rows per peer at 1-4k tokens on 4 ranks), where a
# misfit costs the prediction most; the line fitted there need not hold for much larger transfers.
DEFAULT_ROWS_PER_PEER = (16, 64, 128, 256, 512, 1024)
DEFAULT_GEMM_GRID = ((1, 64), (4, 32), (4, 128), (2, 512), (4, 512), (4, 1024))


def host_gemm_patterns(world: int) -> list[list[tuple[int, int]]]:
    """Per-rank (experts, tokens per expert) for the host model's fit, at the per-rank sizes replays
    produce (512-4096 rows): balanced points, many small experts (the per-expert cost), one rank or half
    the ranks busy alone (how fast a rank runs when the others idle) and skewed loads (how the sharing
    plays out), as imbalanced plans produce."""
    half = max(1, world // 2)
    idle = [(0, 0)] * (world - 1)
    pats: list[list[tuple[int, int]]] = [
        [p] * world for p in ((4, 256), (4, 512), (4, 1024), (16, 128), (2, 1024))
    ]
    # The low end of the band (512 rows per rank, 1k-token replays on 4 ranks): phases this short
    # share the cores better than the longer ones (less than a scheduler slice each), so without
    # points here the fit extrapolates the long phases' contention down and overpredicts them.
    pats += [[p] * world for p in ((4, 128), (8, 64))]
    pats += [[(4, 512), *idle], [(4, 1024), *idle], [(16, 128), *idle]]
    pats += [[(4, 512)] * half + [(0, 0)] * (world - half)]
    pats += [[(4, 1024)] * half + [(0, 0)] * (world - half)]
    pats += [[(4, 512)] * (world - 1) + [(0, 0)]]
    pats += [[(4, max(16, 1024 >> r)) for r in range(world)]]
    pats += [[(4, 1024)] + [(4, 128)] * (world - 1)]
    pats += [[(4, 1024)] * half + [(4, 64)] * (world - half)]
    pats += [[(2, 1024)] + [(8, 64)] * (world - 1)]
    return pats


def host_a2a_patterns(world: int) -> list[np.ndarray]:
    """Skewed all-to-alls (rows ``[src, dst]``) for the host model: one heavy sender, one heavy
    receiver, half the ranks heavy, and a graded skew, as imbalanced plans produce."""
    half = max(1, world // 2)
    heavy_src = np.full((world, world), 32)
    heavy_src[0] = 1024
    heavy_dst = np.full((world, world), 32)
    heavy_dst[:, 0] = 1024
    halves = np.full((world, world), 16)
    halves[:half] = 512
    graded = np.array([[64 * (d + 1) ** 2 for d in range(world)] for _ in range(world)])
    mats = [heavy_src, heavy_dst, halves, graded]
    for m in mats:
        np.fill_diagonal(m, 0)
    return mats


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
    host: HostModel | None = None  # CPU ranks sharing a host (gloo); None on GPUs
    host_points: dict[str, Any] | None = None  # the host fit's benchmark points, for the report

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
            "host": None
            if self.host is None
            else {**self.host.to_dict(), **(self.host_points or {})},
        }


@dataclass(frozen=True)
class CalibrationSamples:
    """Raw benchmark times (slowest rank per repetition, us): ``[points, reps]`` per benchmark.

    Kept raw so samples taken at different moments pool (:meth:`merge`) before the fit takes trimmed means:
    a bench that alternates calibration rounds with the replays it predicts then exposes both to the
    same drift of the host's load, instead of fitting on one quiet (or busy) minute."""

    a2a_us: np.ndarray
    gemm_us: np.ndarray
    host_gemm_us: np.ndarray | None = None
    host_a2a_us: np.ndarray | None = None

    def merge(self, other: CalibrationSamples) -> CalibrationSamples:
        def cat(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
            return None if a is None or b is None else np.concatenate([a, b], axis=1)

        return CalibrationSamples(
            np.concatenate([self.a2a_us, other.a2a_us], axis=1),
            np.concatenate([self.gemm_us, other.gemm_us], axis=1),
            cat(self.host_gemm_us, other.host_gemm_us),
            cat(self.host_a2a_us, other.host_a2a_us),
        )


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
    """Benchmark on the group's workers and fit (phase times as in :mod:`moe_placement.executor.timing`)."""
    samples = collect_calibration(
        group,
        hidden=hidden,
        inter=inter,
        dtype=dtype,
        rows_per_peer=rows_per_peer,
        gemm_grid=gemm_grid,
        warmup=warmup,
        reps=reps,
    )
    return fit_calibration(
        group,
        samples,
        hidden=hidden,
        inter=inter,
        dtype=dtype,
        rows_per_peer=rows_per_peer,
        gemm_grid=gemm_grid,
    )


def _is_cpu(group: WorkerGroup) -> bool:
    info: dict[str, Any] = group.info[0] if group.info else {"device": "cpu"}
    return info.get("device") == "cpu"


def collect_calibration(
    group: WorkerGroup,
    *,
    hidden: int,
    inter: int,
    dtype: str,
    rows_per_peer: tuple[int, ...] = DEFAULT_ROWS_PER_PEER,
    gemm_grid: tuple[tuple[int, int], ...] = DEFAULT_GEMM_GRID,
    warmup: int = 2,
    reps: int = 7,
) -> CalibrationSamples:
    """Run the calibration benchmarks once (``reps`` repetitions each) and return the raw times."""
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
    )  # [ranks, sizes, reps, 2] (start, end)
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
    shared = share_clock(group.info)
    if not _is_cpu(group):
        return CalibrationSamples(across_ranks(a2a, shared), across_ranks(gemm, shared))
    pats = host_gemm_patterns(world)
    per_rank = [[[list(p[r]) for p in pats]] for r in range(world)]
    host_gemm = np.stack(
        group.call(
            "bench_gemm",
            hidden,
            inter,
            dtype,
            warmup,
            reps,
            per_rank=per_rank,
            what="benchmarking expert GEMMs on shared cores",
        )
    )  # [ranks, points, reps, 2]
    host_a2a = np.stack(
        group.call(
            "bench_all_to_all",
            [m.tolist() for m in host_a2a_patterns(world)],
            hidden,
            dtype,
            warmup,
            reps,
            what="benchmarking skewed all-to-alls",
        )
    )
    return CalibrationSamples(*(across_ranks(t, shared) for t in (a2a, gemm, host_gemm, host_a2a)))


def fit_calibration(
    group: WorkerGroup,
    samples: CalibrationSamples,
    *,
    hidden: int,
    inter: int,
    dtype: str,
    rows_per_peer: tuple[int, ...] = DEFAULT_ROWS_PER_PEER,
    gemm_grid: tuple[tuple[int, int], ...] = DEFAULT_GEMM_GRID,
) -> Calibration:
    """Fit the spec (and on CPU ranks the host model) to the trimmed means of (pooled) samples
    (:func:`moe_placement.executor.timing.central_us`, the statistic measurements report too)."""
    elem = DTYPE_BYTES[dtype]
    world = group.world
    a2a_us = central_us(samples.a2a_us, axis=1)
    # The busiest GPU's bytes over the link: what it sends to its peers (its own rows stay local).
    sent_bytes = np.array(rows_per_peer, dtype=float) * hidden * elem * max(world - 1, 1)
    link = fit_link(sent_bytes, a2a_us)
    gemm_us = central_us(samples.gemm_us, axis=1)
    flops = np.array([e * t * 6.0 * hidden * inter for e, t in gemm_grid])
    wbytes = np.array([e * 3.0 * hidden * inter * elem for e, _ in gemm_grid])
    comp = fit_compute(flops, wbytes, gemm_us)
    info: dict[str, Any] = group.info[0] if group.info else {"device": "cpu", "total_bytes": 0}
    memory_gib = float(info.get("total_bytes", 0)) / 2**30 / (world if _is_cpu(group) else 1)
    spec = calibrated_spec(
        link,
        comp,
        world=world,
        device=str(info.get("device", "cpu")).replace(" ", "-"),
        memory_gib=memory_gib,
        name=f"calibrated-{group.backend}-{world}",
    )
    if samples.host_gemm_us is not None and samples.host_a2a_us is not None:
        host, host_points = fit_host(
            world,
            a2a_us,
            central_us(samples.host_gemm_us, axis=1),
            central_us(samples.host_a2a_us, axis=1),
            rows_per_peer,
            hidden,
            inter,
            dtype,
        )
        return Calibration(spec, link, comp, hidden, inter, dtype, host, host_points)
    return Calibration(spec, link, comp, hidden, inter, dtype)


def host_cores() -> float:
    """Cores this process may run on (the ranks inherit it)."""
    import os

    try:
        return float(len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return float(os.cpu_count() or 1)


def _points_by_reps(times_us: np.ndarray) -> np.ndarray:
    t = np.asarray(times_us, float)
    return t[:, None] if t.ndim == 1 else t


def fit_host(
    world: int,
    a2a_us: np.ndarray,
    wall_us: np.ndarray,
    skew_us: np.ndarray,
    rows_per_peer: tuple[int, ...],
    hidden: int,
    inter: int,
    dtype: str,
) -> tuple[HostModel, dict[str, Any]]:
    """Expert compute with balanced, lone and skewed ranks (``wall_us`` per pattern of
    :func:`host_gemm_patterns`) fitted to the host-sharing model, and the uniform (``a2a_us``) and
    skewed (``skew_us``) all-to-alls (``[points]`` medians, or ``[points, reps]`` every repetition, which
    the all-to-all fit pools) fitted with the sharing rate that fit found."""
    pats = host_gemm_patterns(world)
    experts = np.array([[e for e, _ in p] for p in pats], dtype=float)
    flops = np.array([[e * t * 6.0 * hidden * inter for e, t in p] for p in pats])
    fit = fit_host_compute(experts, flops, wall_us, host_cores())
    elem = DTYPE_BYTES[dtype]
    mats = host_a2a_patterns(world)
    # One row per point, one column per repetition (a single column when given medians).
    comm_us = np.concatenate([_points_by_reps(a2a_us), _points_by_reps(skew_us)])
    uniform = []
    for rows in rows_per_peer:
        m = np.full((world, world), rows)
        np.fill_diagonal(m, 0)
        uniform.append(m)
    # Loopback "links" are CPU copies too: a rank's work is the rows it sends plus those it receives.
    rank_bytes = np.array([(m.sum(axis=0) + m.sum(axis=1)) * hidden * elem for m in uniform + mats])
    lat, per_kbyte, comm_err = fit_host_comm(
        rank_bytes,
        comm_us,
        fit["cores"],
        fit["external_threads"],
        fit["thrash_exponent"],
    )
    model = HostModel(
        cores=float(fit["cores"]),
        external_threads=float(fit["external_threads"]),
        expert_us=float(fit["expert_us"]),
        us_per_mflop=float(fit["us_per_mflop"]),
        compute_fixed_us=float(fit["compute_fixed_us"]),
        comm_latency_us=float(lat),
        comm_us_per_kbyte=float(per_kbyte),
        thrash_exponent=float(fit["thrash_exponent"]),
        compute_fit_error=float(fit["fit_error"]),
        comm_fit_error=float(comm_err),
    )
    points = {
        "compute_points": [
            {
                "experts_tokens_per_rank": [list(p) for p in pat],
                "measured_us": float(t),
                "fitted_us": model.compute_us(e, f),
            }
            for pat, e, f, t in zip(pats, experts, flops, wall_us, strict=True)
        ],
        "all_to_all_points": [
            {"rank_bytes": b.tolist(), "measured_us": float(t), "fitted_us": model.comm_us(b)}
            for b, t in zip(rank_bytes, central_us(comm_us, axis=1), strict=True)
        ],
    }
    return model, points


def save_calibrated(cal: Calibration, path: str) -> None:
    """Write the spec as YAML that :func:`moe_placement.cluster.load_cluster` reads, with the fit as comments."""
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
    if cal.host is not None:
        h = cal.host
        header.append(
            f"# host model (CPU ranks sharing {h.cores:g} cores, {h.external_threads:g} busy threads of "
            f"other jobs): {path}.host.json"
        )
    with atomic_open(path) as handle:
        handle.write("\n".join(header) + "\n")
        yaml.safe_dump(cal.spec.to_dict(), handle, sort_keys=False)
    if cal.host is not None:
        save_host_model(cal.host, path)
    else:  # a GPU calibration over an older CPU one: its host model no longer applies
        sidecar_path(path).unlink(missing_ok=True)
