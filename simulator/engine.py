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


def _plain(*args: Any, **kwargs: Any) -> Any:
    """Stand-in for ``numba.njit`` when numba is absent: the kernels run as plain Python (slow)."""
    if args and callable(args[0]):
        return args[0]
    return lambda fn: fn


try:  # compiled kernels when numba is present
    from numba import njit

    _njit: Any = njit
    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    _njit = _plain
    HAVE_NUMBA = False


# Relative tolerance under which two finish times count as simultaneous (batched into one event).
FINISH_TOL = 1e-9


@_njit(cache=True)
def _link_index(
    act: np.ndarray, fl_ptr: np.ndarray, fl_link: np.ndarray, num_links: int
) -> tuple[np.ndarray, np.ndarray]:
    """Link -> active flows CSR ``(lk_ptr[links + 1], lk_flow[nnz])``, flows in ``act`` order per link."""
    counts = np.zeros(num_links + 1, dtype=np.int64)
    for f in act:
        for j in range(fl_ptr[f], fl_ptr[f + 1]):
            counts[fl_link[j] + 1] += 1
    lk_ptr = np.cumsum(counts)
    fill = lk_ptr[:-1].copy()
    lk_flow = np.empty(lk_ptr[-1], dtype=np.int64)
    for f in act:
        for j in range(fl_ptr[f], fl_ptr[f + 1]):
            m = fl_link[j]
            lk_flow[fill[m]] = f
            fill[m] += 1
    return lk_ptr, lk_flow


@_njit(cache=True)
def _fill(
    act: np.ndarray,
    fl_ptr: np.ndarray,
    fl_link: np.ndarray,
    fl_coef: np.ndarray,
    lk_ptr: np.ndarray,
    lk_flow: np.ndarray,
    cap: np.ndarray,
    rate: np.ndarray,
    keep_below: float,
    changed: np.ndarray,
) -> tuple[int, float]:
    """Max-min fair rates of the active flows ``act`` by progressive filling, in place in ``rate``.

    Flows with ``rate < keep_below`` keep their rate (their usage is subtracted first); every other
    active flow is refilled. ``changed[f]`` is set to 1 where a flow's rate changed. Returns (number of
    refilled flows, the highest link utilisation reached, for the capacity check).
    """
    num_links = cap.shape[0]
    used = np.zeros(num_links)
    unfrozen_coef = np.zeros(num_links)
    unfrozen_cnt = np.zeros(num_links, dtype=np.int64)
    version = np.zeros(num_links, dtype=np.int64)
    frozen = np.ones(
        rate.shape[0], dtype=np.bool_
    )  # flows not in ``act`` (stale index entries) stay out
    refill = 0
    for f in act:
        if rate[f] < keep_below:
            for j in range(fl_ptr[f], fl_ptr[f + 1]):
                used[fl_link[j]] += fl_coef[j] * rate[f]
        else:
            refill += 1
            frozen[f] = False
            for j in range(fl_ptr[f], fl_ptr[f + 1]):
                unfrozen_coef[fl_link[j]] += fl_coef[j]
                unfrozen_cnt[fl_link[j]] += 1
    heap = [(0.0, np.int64(0), np.int64(0))]
    heap.pop()
    for link in range(num_links):
        if unfrozen_cnt[link] > 0:
            heap.append(
                (
                    max(cap[link] - used[link], 0.0) / unfrozen_coef[link],
                    np.int64(link),
                    np.int64(0),
                )
            )
    heapq.heapify(heap)
    remaining = refill
    touched = np.zeros(num_links, dtype=np.int64)
    mark = np.zeros(num_links, dtype=np.bool_)
    while remaining > 0 and len(heap) > 0:
        level, top, ver = heapq.heappop(heap)
        if ver != version[top] or unfrozen_cnt[top] == 0:
            continue
        ntouched = 0
        for j in range(lk_ptr[top], lk_ptr[top + 1]):
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
                if not mark[m]:
                    mark[m] = True
                    touched[ntouched] = m
                    ntouched += 1
        # one heap entry per link whose level moved, not one per flow crossing it
        for t in range(ntouched):
            m = touched[t]
            mark[m] = False
            version[m] += 1
            if unfrozen_cnt[m] > 0:
                heapq.heappush(
                    heap,
                    (max(cap[m] - used[m], 0.0) / max(unfrozen_coef[m], 1e-300), m, version[m]),
                )
    worst = 0.0
    for link in range(num_links):
        if cap[link] > 0:
            worst = max(worst, used[link] / cap[link])
    return refill, worst


@_njit(cache=True)
def _fill_set(
    members: np.ndarray,
    fl_ptr: np.ndarray,
    fl_link: np.ndarray,
    fl_coef: np.ndarray,
    lk_ptr: np.ndarray,
    lk_flow: np.ndarray,
    in_set: np.ndarray,
    cap: np.ndarray,
    used: np.ndarray,
    rate: np.ndarray,
    changed: np.ndarray,
    bottleneck: np.ndarray,
) -> None:
    """Progressive filling of the flows ``members`` (``in_set`` marks them) on the capacity left by the
    other flows (``used`` excludes the members on entry and includes them on exit)."""
    num_links = cap.shape[0]
    unfrozen_coef = np.zeros(num_links)
    unfrozen_cnt = np.zeros(num_links, dtype=np.int64)
    version = np.zeros(num_links, dtype=np.int64)
    frozen = np.zeros(rate.shape[0], dtype=np.bool_)
    links_seen = np.zeros(num_links, dtype=np.bool_)
    seen: list[int] = [0]
    seen.pop()
    for f in members:
        for j in range(fl_ptr[f], fl_ptr[f + 1]):
            m = fl_link[j]
            unfrozen_coef[m] += fl_coef[j]
            unfrozen_cnt[m] += 1
            if not links_seen[m]:
                links_seen[m] = True
                seen.append(m)
    heap = [(0.0, np.int64(0), np.int64(0))]
    heap.pop()
    for m in seen:
        heap.append((max(cap[m] - used[m], 0.0) / unfrozen_coef[m], np.int64(m), np.int64(0)))
    heapq.heapify(heap)
    remaining = members.shape[0]
    touched = np.zeros(num_links, dtype=np.int64)
    mark = np.zeros(num_links, dtype=np.bool_)
    while remaining > 0 and len(heap) > 0:
        level, link, ver = heapq.heappop(heap)
        if ver != version[link] or unfrozen_cnt[link] == 0:
            continue
        ntouched = 0
        for j in range(lk_ptr[link], lk_ptr[link + 1]):
            f = lk_flow[j]
            if not in_set[f] or frozen[f]:
                continue
            frozen[f] = True
            remaining -= 1
            if rate[f] != level:
                changed[f] = 1
                # a provisional bottleneck; the check that follows confirms or replaces it (an unchanged
                # rate keeps its verified one)
                bottleneck[f] = link
            rate[f] = level
            for i in range(fl_ptr[f], fl_ptr[f + 1]):
                m = fl_link[i]
                used[m] += fl_coef[i] * level
                unfrozen_coef[m] -= fl_coef[i]
                unfrozen_cnt[m] -= 1
                if not mark[m]:
                    mark[m] = True
                    touched[ntouched] = m
                    ntouched += 1
        for t in range(ntouched):
            m = touched[t]
            mark[m] = False
            version[m] += 1
            if unfrozen_cnt[m] > 0:
                heapq.heappush(
                    heap,
                    (max(cap[m] - used[m], 0.0) / max(unfrozen_coef[m], 1e-300), m, version[m]),
                )


@_njit(cache=True)
def _refill(
    seed_flows: np.ndarray,
    seed_links: np.ndarray,
    keep_below: float,
    is_active: np.ndarray,
    fl_ptr: np.ndarray,
    fl_link: np.ndarray,
    fl_coef: np.ndarray,
    lk_ptr: np.ndarray,
    lk_flow: np.ndarray,
    cap: np.ndarray,
    used: np.ndarray,
    rate: np.ndarray,
    changed: np.ndarray,
    bottleneck: np.ndarray,
) -> tuple[int, int]:
    """Exact local recomputation of the max-min fair rates after flows arrived or finished.

    Start from the new flows and the flows bounded by (``bottleneck``) the saturated links that finished
    flows left (``seed_links``; only flows at or above ``keep_below`` can change at all);
    refill that set on the capacity the others leave, then check the max-min condition (every flow has
    a saturated link on which no flow is faster) for every flow sharing a link with the set. Flows that
    fail join the set and it is refilled, until all pass: the result is then *the* max-min fair
    allocation (Bertsekas and Gallager, Data Networks, 6.5.2), found without touching the rest.
    ``used[link]`` (load of the active flows) is kept up to date. Returns (flows refilled, rounds).
    """
    num_links = cap.shape[0]
    in_set = np.zeros(rate.shape[0], dtype=np.bool_)
    members: list[int] = [0]
    members.pop()
    for f in seed_flows:
        if not in_set[f]:
            in_set[f] = True
            members.append(f)
    for link in seed_links:
        for j in range(lk_ptr[link], lk_ptr[link + 1]):
            f = lk_flow[j]
            if is_active[f] and not in_set[f] and rate[f] >= keep_below and bottleneck[f] == link:
                in_set[f] = True
                members.append(f)
    stamp = np.zeros(num_links, dtype=np.int64)
    max_rate = np.zeros(num_links)
    visit = np.zeros(num_links, dtype=np.int64)
    it = 0
    last_count = 0
    while True:
        it += 1
        arr = np.array(members, dtype=np.int64)
        before = rate[arr].copy()
        for f in arr:
            if rate[f] > 0 and np.isfinite(rate[f]):
                for j in range(fl_ptr[f], fl_ptr[f + 1]):
                    used[fl_link[j]] -= fl_coef[j] * rate[f]
        _fill_set(
            arr,
            fl_ptr,
            fl_link,
            fl_coef,
            lk_ptr,
            lk_flow,
            in_set,
            cap,
            used,
            rate,
            changed,
            bottleneck,
        )
        verified = last_count  # members [0, verified) were checked in the previous round
        last_count = arr.shape[0]
        added = 0
        for k in range(arr.shape[0]):
            f = arr[k]
            if rate[f] == before[k] and k < verified:
                continue  # a member checked last round whose rate did not move changes nothing around it
            for j in range(fl_ptr[f], fl_ptr[f + 1]):
                link = fl_link[j]
                if visit[link] == it:
                    continue
                visit[link] = it
                for q in range(lk_ptr[link], lk_ptr[link + 1]):
                    g = lk_flow[q]
                    if not is_active[g]:
                        continue
                    if not in_set[g] and visit[bottleneck[g]] != it:
                        continue  # nothing moved on the link that bounds g: it still does
                    # does g have a bottleneck: a saturated link where no flow is faster than g?
                    ok = False
                    for i in range(fl_ptr[g], fl_ptr[g + 1]):
                        m = fl_link[i]
                        if used[m] < cap[m] * (1.0 - 1e-9):
                            continue
                        if stamp[m] != it:
                            stamp[m] = it
                            best = 0.0
                            for r in range(lk_ptr[m], lk_ptr[m + 1]):
                                h = lk_flow[r]
                                if is_active[h] and rate[h] > best:
                                    best = rate[h]
                            max_rate[m] = best
                        if rate[g] >= max_rate[m] * (1.0 - 1e-9):
                            ok = True
                            bottleneck[g] = m
                            break
                    if ok:
                        continue
                    if not in_set[g]:
                        in_set[g] = True
                        members.append(g)
                        added += 1
                    else:
                        # a member beaten on its saturated links: the faster flows there must be refilled too
                        for i in range(fl_ptr[g], fl_ptr[g + 1]):
                            m = fl_link[i]
                            if used[m] < cap[m] * (1.0 - 1e-9):
                                continue  # an unsaturated link bounds nobody
                            for r in range(lk_ptr[m], lk_ptr[m + 1]):
                                h = lk_flow[r]
                                if is_active[h] and not in_set[h] and rate[h] > rate[g]:
                                    in_set[h] = True
                                    members.append(h)
                                    added += 1
        if added == 0:
            return len(members), it


@_njit(cache=True)
def _advance(
    now: float,
    act: np.ndarray,
    rate: np.ndarray,
    changed: np.ndarray,
    remaining: np.ndarray,
    t_upd: np.ndarray,
    old_rate: np.ndarray,
    finish: np.ndarray,
) -> float:
    """Bring active flows whose rate changed up to date (lazily); return the earliest finish time."""
    best = np.inf
    for f in act:
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
def _finished(now: float, act: np.ndarray, finish: np.ndarray, tol: float) -> np.ndarray:
    """Mask over ``act`` of the flows finishing by ``now`` (within the relative tolerance)."""
    out = np.zeros(act.shape[0], dtype=np.bool_)
    limit = now + tol * max(now, 1.0)
    for i in range(act.shape[0]):
        out[i] = finish[act[i]] <= limit
    return out


class FluidNetwork:
    """Links of fixed capacity (bytes per us) shared max-min fairly by flows, driven by a SimPy process.

    Call :meth:`transfer` from SimPy processes; it returns ``(sent, done)`` events. The network keeps
    per-link byte counters (``link_bytes``), the number of rate recomputations (``recomputes``) and the
    highest link utilisation any allocation reached (``worst_utilisation``, must stay <= 1).
    """

    # per-flow state, indexed by flow id (grown by doubling)
    is_active: np.ndarray
    bottleneck: np.ndarray
    rate: np.ndarray
    old_rate: np.ndarray
    changed: np.ndarray
    remaining: np.ndarray
    size_bytes: np.ndarray
    t_upd: np.ndarray
    finish: np.ndarray
    latency_us: np.ndarray
    start_us: np.ndarray
    end_us: np.ndarray

    def __init__(
        self,
        env: simpy.Environment,
        capacity_bytes_per_us: Sequence[float] | np.ndarray,
        *,
        max_flows: int = 1024,
        binding: Sequence[bool] | np.ndarray | None = None,
        incremental: bool = True,
    ) -> None:
        self.env = env
        self.cap = np.asarray(capacity_bytes_per_us, dtype=np.float64)
        if self.cap.size == 0 or (self.cap <= 0).any():
            raise PlacementError("a network needs links, each with a capacity > 0")
        # Links that can never saturate (their load is bounded by other links' capacity) are left out of
        # the rate computation - exactly, since they never freeze a flow - but still count bytes.
        self.binding = (
            np.ones(self.cap.size, dtype=bool)
            if binding is None
            else np.asarray(binding, dtype=bool)
        )
        self._paths: list[tuple[np.ndarray, np.ndarray]] = []
        self._path_cache: dict[
            int, tuple[Any, Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
        ] = {}
        # incremental: local refill checked against the max-min condition; otherwise refill every flow
        # at or above the finished flows' level (both exact; the second is the reference in tests)
        self.incremental = incremental
        self.used = np.zeros(self.cap.size)  # load of the active flows per link, bytes per us
        self.num_links = int(self.cap.shape[0])
        self.link_bytes = np.zeros(self.num_links)
        self._size = 0
        self._grow(max(16, max_flows))
        self.num_flows = 0
        # flow -> links CSR, append-only: flow f uses fl_link[fl_ptr[f]:fl_ptr[f + 1]]
        self.fl_ptr = np.zeros(self._size + 1, dtype=np.int64)
        self.fl_link = np.zeros(8 * self._size, dtype=np.int64)
        self.fl_coef = np.zeros(8 * self._size)
        self.act = np.zeros(0, dtype=np.int64)  # active flow ids, in arrival order
        self._pending: list[int] = []
        self._wakeup: simpy.Event | None = None
        self._callbacks: list[tuple[simpy.Event, simpy.Event, float]] = []
        self.recomputes = 0
        self.refilled = 0  # flows whose rate was recomputed, summed over recomputes
        self.rounds = 0  # refill-and-check rounds of the incremental solver
        self.events = 0
        self._index: tuple[np.ndarray, np.ndarray] | None = None
        self._index_size = 0
        self.worst_utilisation = 0.0
        env.process(self._run())

    def _grow(self, size: int) -> None:
        old = self._size
        self._size = size

        def grown(name: str, dtype: Any) -> None:
            new = np.zeros(size, dtype=dtype)
            if old:
                new[:old] = getattr(self, name)[:old]
            setattr(self, name, new)

        for name, dtype in (
            ("is_active", np.bool_),
            ("bottleneck", np.int64),
            ("rate", np.float64),
            ("old_rate", np.float64),
            ("changed", np.int8),
            ("remaining", np.float64),
            ("size_bytes", np.float64),
            ("t_upd", np.float64),
            ("finish", np.float64),
            ("latency_us", np.float64),
            ("start_us", np.float64),
            ("end_us", np.float64),
        ):
            grown(name, dtype)
        if old:
            ptr = np.full(size + 1, self.fl_ptr[old], dtype=np.int64)
            ptr[: old + 1] = self.fl_ptr[: old + 1]
            self.fl_ptr = ptr

    def transfer(
        self,
        links: Sequence[int] | np.ndarray,
        bytes_: float,
        *,
        coefs: Sequence[float] | np.ndarray | None = None,
        latency_us: float = 0.0,
    ) -> tuple[simpy.Event, simpy.Event]:
        """Start a flow of ``bytes_`` over ``links`` now; returns ``(sent, done)`` events (value: flow id)."""
        sent, done = self.env.event(), self.env.event()
        key = id(links)
        hit = self._path_cache.get(key)
        if hit is not None and hit[0] is links and hit[1] is coefs:
            _, _, full_links, full_coefs, link_arr, coef_arr = hit
        else:
            full_links = np.asarray(links, dtype=np.int64)
            if full_links.size and (full_links.min() < 0 or full_links.max() >= self.num_links):
                raise PlacementError(f"flow uses a link outside 0..{self.num_links - 1}")
            full_coefs = (
                np.ones(full_links.size) if coefs is None else np.asarray(coefs, dtype=np.float64)
            )
            keep = self.binding[full_links]
            if not keep.any():
                keep[:] = True  # an unconstrained flow still needs a rate limit
            link_arr, coef_arr = full_links[keep], full_coefs[keep]
            if isinstance(
                links, np.ndarray
            ):  # routes are reused arrays: remember their solver path
                self._path_cache[key] = (links, coefs, full_links, full_coefs, link_arr, coef_arr)
        if bytes_ <= 0 or full_links.size == 0:
            # Nothing to move over the network (a GPU-local copy): delivered after the latency alone.
            self.env.timeout(0).callbacks.append(_succeed_later(sent, -1))
            self.env.timeout(latency_us).callbacks.append(_succeed_later(done, -1))
            return sent, done
        fid = self.num_flows
        self._paths.append((full_links, full_coefs))
        if fid >= self._size:
            self._grow(2 * self._size)
        start = self.fl_ptr[fid]
        end = start + link_arr.size
        if end > self.fl_link.size:
            self.fl_link = np.concatenate(
                [self.fl_link, np.zeros(max(end, self.fl_link.size), dtype=np.int64)]
            )
            self.fl_coef = np.concatenate([self.fl_coef, np.zeros(max(end, self.fl_coef.size))])
        self.fl_link[start:end] = link_arr
        self.fl_coef[start:end] = coef_arr
        self.fl_ptr[fid + 1] = end
        self.num_flows += 1
        self.size_bytes[fid] = bytes_
        self.remaining[fid] = bytes_
        self.latency_us[fid] = latency_us
        self.start_us[fid] = self.env.now
        self._callbacks.append((sent, done, latency_us))
        self._pending.append(fid)
        if self._wakeup is not None and not self._wakeup.triggered:
            self._wakeup.succeed()
        return sent, done

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
            done_mask = _finished(now, self.act, self.finish, FINISH_TOL)
            keep_below = np.inf
            seed_links = np.zeros(0, dtype=np.int64)
            new = np.zeros(0, dtype=np.int64)
            if done_mask.any():
                done_ids = self.act[done_mask]
                keep_below = float(self.rate[done_ids].min())
                self.act = self.act[~done_mask]
                self.is_active[done_ids] = False
                seed_links = self._drop_usage(done_ids)
                self._complete(done_ids, now)
            if self._pending:
                new = np.asarray(self._pending, dtype=np.int64)
                self._pending.clear()
                self.t_upd[new] = now
                self.rate[new] = 0.0 if self.incremental else np.inf  # refilled below
                self.is_active[new] = True
                self.old_rate[new] = 0.0
                self.changed[new] = 1
                self.act = np.concatenate([self.act, new])
                self._index = None
                keep_below = -np.inf  # an arrival can lower rates at any level: refill all
            if keep_below < np.inf and self.act.size:
                # flows just under the finished flow's level are refilled too (float ties)
                threshold = keep_below * (1.0 - 1e-12) if np.isfinite(keep_below) else keep_below
                if self._index is None or self.act.size * 2 < self._index_size:
                    # rebuilt on arrivals (or when mostly stale); finished flows in it are skipped
                    self._index = _link_index(self.act, self.fl_ptr, self.fl_link, self.num_links)
                    self._index_size = self.act.size
                lk_ptr, lk_flow = self._index
                if self.incremental:
                    refilled, rounds = _refill(
                        new,
                        seed_links,
                        threshold,
                        self.is_active,
                        self.fl_ptr,
                        self.fl_link,
                        self.fl_coef,
                        lk_ptr,
                        lk_flow,
                        self.cap,
                        self.used,
                        self.rate,
                        self.changed,
                        self.bottleneck,
                    )
                    worst = float((self.used / self.cap).max())
                    self.rounds += rounds
                else:
                    refilled, worst = _fill(
                        self.act,
                        self.fl_ptr,
                        self.fl_link,
                        self.fl_coef,
                        lk_ptr,
                        lk_flow,
                        self.cap,
                        self.rate,
                        threshold,
                        self.changed,
                    )
                self.refilled += refilled
                self.recomputes += 1
                self.worst_utilisation = max(self.worst_utilisation, worst)
            next_finish = _advance(
                now,
                self.act,
                self.rate,
                self.changed,
                self.remaining,
                self.t_upd,
                self.old_rate,
                self.finish,
            )

    def _drop_usage(self, done_ids: np.ndarray) -> np.ndarray:
        """Remove finished flows' load from ``used``; return the saturated links they crossed: only a
        bottleneck that gains capacity can change other flows' rates."""
        starts, ends = self.fl_ptr[done_ids], self.fl_ptr[done_ids + 1]
        lens = ends - starts
        idx = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
        links = self.fl_link[idx]
        seeds = np.unique(links[self.used[links] >= self.cap[links] * (1.0 - 1e-9)])
        np.subtract.at(self.used, links, self.fl_coef[idx] * np.repeat(self.rate[done_ids], lens))
        np.maximum(self.used, 0.0, out=self.used)
        return seeds

    def _complete(self, done_ids: np.ndarray, now: float) -> None:
        self.rate[done_ids] = 0.0
        self.remaining[done_ids] = 0.0
        for fid in done_ids.tolist():
            links, coefs = self._paths[fid]
            np.add.at(self.link_bytes, links, coefs * self.size_bytes[fid])
            self.end_us[fid] = now
            sent, done, lat = self._callbacks[fid]
            sent.succeed(fid)
            if lat > 0:
                self.env.timeout(lat).callbacks.append(_succeed_later(done, fid))
            else:
                done.succeed(fid)


def _succeed_later(event: simpy.Event, value: int) -> Callable[[simpy.Event], None]:
    def fire(_e: simpy.Event) -> None:
        event.succeed(value)

    return fire
