"""Flow-level (fluid) network engine on SimPy with exact max-min fair bandwidth sharing.

A flow is ``bytes_`` moving over a path: a list of directed links, each with a coefficient (1 for a plain
hop, ``1/n`` when the flow is sprayed evenly over ``n`` equal paths). Between events every active flow has
a constant rate; rates are the max-min fair allocation (progressive filling) and are recomputed when flows
arrive or finish. A flow's ``sent`` event fires when its last byte has left (the fluid finish), its ``done``
event one path latency later (delivery).

Why this is fast enough for real sizes (DOMAIN.md section 4):

* the progressive filling runs in compiled code (numba) with a heap of link levels, O(nnz log links);
* after *completions only*, flows whose rate is below the smallest rate among the finished flows keep
  their rate exactly (in progressive filling every level below that is reached the same way), so only the
  flows at or above that level are refilled;
* flow state is updated lazily: a flow's remaining bytes are brought up to date only when its rate
  changes, and the next completion comes from a per-flow finish time scan in compiled code;
* simultaneous arrivals (same simulated time) and completions within a tiny tolerance are batched into
  one recomputation.

Deterministic: no randomness, ties broken by flow id and link id.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import simpy

from placement.errors import PlacementError

try:  # compiled kernels when numba is present; the same code runs as plain Python otherwise (slow)
    from numba import njit as _njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    HAVE_NUMBA = False

    def _njit(*args: Any, **kwargs: Any) -> Any:
        if args and callable(args[0]):
            return args[0]
        return lambda fn: fn


# Relative tolerance under which two finish times count as simultaneous (batched into one event).
FINISH_TOL = 1e-9


@_njit(cache=True)
def _fill(
    fl_ptr: np.ndarray,
    fl_link: np.ndarray,
    fl_coef: np.ndarray,
    lk_ptr: np.ndarray,
    lk_flow: np.ndarray,
    cap: np.ndarray,
    active: np.ndarray,
    rate: np.ndarray,
    keep_below: float,
    changed: np.ndarray,
) -> tuple[int, float]:
    """Max-min fair rates by progressive filling, in place in ``rate``.

    Flows with ``active`` and ``rate < keep_below`` keep their rate (their usage is subtracted first);
    every other active flow is refilled. ``changed[f]`` is set to 1 where a flow's rate changed.
    Returns (number of refilled flows, the highest link utilisation reached, for the capacity check).
    """
    num_links = cap.shape[0]
    num_flows = active.shape[0]
    used = np.zeros(num_links)
    unfrozen_coef = np.zeros(num_links)
    unfrozen_cnt = np.zeros(num_links, dtype=np.int64)
    frozen = np.ones(num_flows, dtype=np.bool_)
    version = np.zeros(num_links, dtype=np.int64)
    refill = 0
    for f in range(num_flows):
        if not active[f]:
            continue
        if rate[f] < keep_below:
            for j in range(fl_ptr[f], fl_ptr[f + 1]):
                used[fl_link[j]] += fl_coef[j] * rate[f]
        else:
            frozen[f] = False
            refill += 1
            for j in range(fl_ptr[f], fl_ptr[f + 1]):
                unfrozen_coef[fl_link[j]] += fl_coef[j]
                unfrozen_cnt[fl_link[j]] += 1
    heap = [(0.0, np.int64(0), np.int64(0))]
    heap.pop()
    for link in range(num_links):
        if unfrozen_cnt[link] > 0:
            heap.append((max(cap[link] - used[link], 0.0) / unfrozen_coef[link], np.int64(link), np.int64(0)))
    heapq.heapify(heap)
    remaining = refill
    while remaining > 0 and len(heap) > 0:
        level, link, ver = heapq.heappop(heap)
        if ver != version[link] or unfrozen_cnt[link] == 0:
            continue
        for j in range(lk_ptr[link], lk_ptr[link + 1]):
            f = lk_flow[j]
            if frozen[f]:
                continue
            frozen[f] = True
            remaining -= 1
            if rate[f] != level:
                changed[f] = 1
            rate[f] = level
            for i in range(fl_ptr[f], fl_ptr[f + 1]):
                m = fl_link[i]
                used[m] += fl_coef[i] * level
                unfrozen_coef[m] -= fl_coef[i]
                unfrozen_cnt[m] -= 1
                version[m] += 1
                if unfrozen_cnt[m] > 0:
                    heapq.heappush(heap, (max(cap[m] - used[m], 0.0) / max(unfrozen_coef[m], 1e-300), m, version[m]))
    worst = 0.0
    for link in range(num_links):
        if cap[link] > 0:
            worst = max(worst, used[link] / cap[link])
    return refill, worst


@_njit(cache=True)
def _advance(
    now: float,
    active: np.ndarray,
    rate: np.ndarray,
    changed: np.ndarray,
    remaining: np.ndarray,
    t_upd: np.ndarray,
    old_rate: np.ndarray,
    finish: np.ndarray,
) -> float:
    """Bring flows whose rate changed up to date (lazily) and return the earliest finish time."""
    best = np.inf
    for f in range(active.shape[0]):
        if not active[f]:
            continue
        if changed[f]:
            remaining[f] -= old_rate[f] * (now - t_upd[f])
            if remaining[f] < 0.0:
                remaining[f] = 0.0
            t_upd[f] = now
            old_rate[f] = rate[f]
            finish[f] = now + remaining[f] / rate[f] if rate[f] > 0 else np.inf
            changed[f] = 0
        if finish[f] < best:
            best = finish[f]
    return best


@_njit(cache=True)
def _finished(now: float, active: np.ndarray, finish: np.ndarray, tol: float) -> np.ndarray:
    """Ids of active flows finishing by ``now`` (within the relative tolerance)."""
    out = []
    for f in range(active.shape[0]):
        if active[f] and finish[f] <= now + tol * max(now, 1.0):
            out.append(f)
    return np.array(out, dtype=np.int64)


class FluidNetwork:
    """Links of fixed capacity (bytes per us) shared max-min fairly by flows, driven by a SimPy process.

    Call :meth:`transfer` from SimPy processes; it returns ``(sent, done)`` events. The network keeps
    per-link byte counters (``link_bytes``), the number of rate recomputations (``recomputes``) and the
    highest link utilisation any allocation reached (``worst_utilisation``, must stay <= 1).
    """

    def __init__(self, env: simpy.Environment, capacity_bytes_per_us: Sequence[float], *,
                 max_flows: int = 1024) -> None:
        self.env = env
        self.cap = np.asarray(capacity_bytes_per_us, dtype=np.float64)
        if (self.cap <= 0).any():
            raise PlacementError("every link needs a capacity > 0")
        self.num_links = int(self.cap.shape[0])
        self.link_bytes = np.zeros(self.num_links)
        self._grow(max(16, max_flows))
        self.num_flows = 0
        self._paths: list[tuple[np.ndarray, np.ndarray]] = []
        self._csr_dirty = True
        self._pending: list[int] = []
        self._wakeup: simpy.Event | None = None
        self._callbacks: list[tuple[simpy.Event, simpy.Event, float]] = []
        self.recomputes = 0
        self.events = 0
        self.worst_utilisation = 0.0
        self.flows_done = 0
        self.on_done: Callable[[int, float], None] | None = None
        env.process(self._run())

    # -- flow storage -------------------------------------------------------------------------------
    def _grow(self, size: int) -> None:
        old = getattr(self, "_size", 0)
        self._size = size

        def grown(arr: np.ndarray | None, dtype: Any) -> np.ndarray:
            new = np.zeros(size, dtype=dtype)
            if arr is not None and old:
                new[:old] = arr[:old]
            return new

        self.active = grown(getattr(self, "active", None), np.bool_)
        self.rate = grown(getattr(self, "rate", None), np.float64)
        self.old_rate = grown(getattr(self, "old_rate", None), np.float64)
        self.changed = grown(getattr(self, "changed", None), np.int8)
        self.remaining = grown(getattr(self, "remaining", None), np.float64)
        self.size_bytes = grown(getattr(self, "size_bytes", None), np.float64)
        self.t_upd = grown(getattr(self, "t_upd", None), np.float64)
        self.finish = grown(getattr(self, "finish", None), np.float64)
        self.latency_us = grown(getattr(self, "latency_us", None), np.float64)
        self.start_us = grown(getattr(self, "start_us", None), np.float64)
        self.end_us = grown(getattr(self, "end_us", None), np.float64)

    def _build_csr(self) -> None:
        n = self.num_flows
        lens = np.array([len(p[0]) for p in self._paths[:n]], dtype=np.int64)
        self.fl_ptr = np.zeros(self._size + 1, dtype=np.int64)
        self.fl_ptr[1 : n + 1] = np.cumsum(lens)
        self.fl_ptr[n + 1 :] = self.fl_ptr[n]
        if n:
            self.fl_link = np.concatenate([p[0] for p in self._paths[:n]]).astype(np.int64)
            self.fl_coef = np.concatenate([p[1] for p in self._paths[:n]]).astype(np.float64)
        else:
            self.fl_link = np.zeros(0, dtype=np.int64)
            self.fl_coef = np.zeros(0)
        flow_of = np.repeat(np.arange(n, dtype=np.int64), lens)
        order = np.lexsort((flow_of, self.fl_link))  # by link, then flow id: deterministic tie order
        self.lk_flow = flow_of[order]
        counts = np.bincount(self.fl_link, minlength=self.num_links)
        self.lk_ptr = np.zeros(self.num_links + 1, dtype=np.int64)
        self.lk_ptr[1:] = np.cumsum(counts)
        self._csr_dirty = False

    def transfer(self, links: Sequence[int] | np.ndarray, bytes_: float, *, coefs: Sequence[float] | None = None,
                 latency_us: float = 0.0) -> tuple[simpy.Event, simpy.Event]:
        """Start a flow of ``bytes_`` over ``links`` now; returns ``(sent, done)`` events (value: flow id)."""
        sent, done = self.env.event(), self.env.event()
        link_arr = np.asarray(links, dtype=np.int64)
        if bytes_ <= 0 or link_arr.size == 0:
            # Nothing to move (or a GPU-local copy): delivered after the latency alone.
            self.env.timeout(0).callbacks.append(lambda _e: sent.succeed(-1))
            self.env.timeout(latency_us).callbacks.append(lambda _e: done.succeed(-1))
            return sent, done
        coef_arr = np.ones(link_arr.size) if coefs is None else np.asarray(coefs, dtype=np.float64)
        fid = self.num_flows
        if fid >= self._size:
            self._grow(2 * self._size)
        self.num_flows += 1
        self._paths.append((link_arr, coef_arr))
        self._csr_dirty = True
        self.size_bytes[fid] = bytes_
        self.remaining[fid] = bytes_
        self.latency_us[fid] = latency_us
        self.start_us[fid] = self.env.now
        self._callbacks.append((sent, done, latency_us))
        self._pending.append(fid)
        if self._wakeup is not None and not self._wakeup.triggered:
            self._wakeup.succeed()
        return sent, done

    # -- the SimPy process --------------------------------------------------------------------------
    def _run(self) -> Any:
        env = self.env
        next_finish = np.inf
        while True:
            self._wakeup = env.event()
            if np.isfinite(next_finish):
                yield env.any_of([env.timeout(max(next_finish - env.now, 0.0)), self._wakeup])
            else:
                yield self._wakeup
            # let every process acting at this instant post its flows first: one recompute for all
            yield env.timeout(0)
            self._wakeup = None
            self.events += 1
            now = env.now
            done_ids = _finished(now, self.active, self.finish, FINISH_TOL)
            keep_below = np.inf
            if done_ids.size:
                keep_below = float(self.rate[done_ids].min())
                self._complete(done_ids, now)
            if self._pending:
                for fid in self._pending:
                    self.active[fid] = True
                    self.t_upd[fid] = now
                    self.rate[fid] = np.inf  # refill it
                    self.old_rate[fid] = 0.0
                    self.changed[fid] = 1
                self._pending.clear()
                keep_below = -np.inf  # an arrival can lower rates at any level: refill all
            if self._csr_dirty:
                self._build_csr()
            if done_ids.size or keep_below == -np.inf:
                # flows just under the finished flow's level are refilled too (float ties)
                threshold = keep_below * (1.0 - 1e-12) if np.isfinite(keep_below) else keep_below
                n = self.num_flows
                _, worst = _fill(self.fl_ptr, self.fl_link, self.fl_coef, self.lk_ptr, self.lk_flow, self.cap,
                                 self.active[:n], self.rate[:n], threshold, self.changed[:n])
                self.recomputes += 1
                self.worst_utilisation = max(self.worst_utilisation, worst)
            next_finish = _advance(now, self.active, self.rate, self.changed, self.remaining, self.t_upd,
                                   self.old_rate, self.finish)

    def _complete(self, done_ids: np.ndarray, now: float) -> None:
        self.active[done_ids] = False
        self.rate[done_ids] = 0.0
        self.remaining[done_ids] = 0.0
        for fid in done_ids.tolist():
            links, coefs = self._paths[fid]
            np.add.at(self.link_bytes, links, coefs * self.size_bytes[fid])
            self.end_us[fid] = now
            self.flows_done += 1
            sent, done, lat = self._callbacks[fid]
            sent.succeed(fid)
            if lat > 0:
                self.env.timeout(lat).callbacks.append(lambda _e, d=done, f=fid: d.succeed(f))
            else:
                done.succeed(fid)
