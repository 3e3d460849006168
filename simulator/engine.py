"""Flow-level (fluid) network engine on SimPy with exact max-min fair bandwidth sharing.

A flow is ``bytes_`` moving over a path: a list of directed links, each with a coefficient (1 for a plain
hop, ``1/n`` when the flow is sprayed evenly over ``n`` equal paths). Between events every active flow has
a constant rate; rates are the max-min fair allocation (progressive filling) and are recomputed when flows
arrive or finish. A flow's ``sent`` event fires when its last byte has left (the fluid finish), its ``done``
event one path latency later (delivery).

Why this is fast enough for real sizes (DOMAIN.md section 4):

* flows are solved as *classes*: flows whose solver links coincide get the same max-min rate, so one
  class stands for all of them (coefficients times its member count; a member finishing lowers the count
  and is still an exact event). Links with clear slack leave the solver (*lazy* links, their load still
  tracked); a lazy link that would be overloaded rejoins it with a full recomputation. Once NVLink has
  slack, the eight flows of a PXN node pair on one rail are one class behind their NIC pair;
* the progressive filling runs in compiled code (numba, cached on disk) with a heap of link levels;
* after completions only the classes bounded by the saturated links they left are refilled, then the
  max-min condition is checked around every class that moved, widening the refill until it holds;
* class state is updated lazily: progress is brought up to date only when a rate changes, and the next
  completion comes from a per-class finish time scan in compiled code;
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

from moe_placement.errors import PlacementError


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

# Solver links loaded below this fraction of their capacity leave the solver at a regrouping (lazy).
# Any value is exact (a lazy link that would overload rejoins); a clear margin keeps links whose load
# is about to grow back (NVLink while intra-node flows drain) from flapping in and out.
LAZY_BELOW = 0.9


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
    prog: np.ndarray,
    t_upd: np.ndarray,
    old_rate: np.ndarray,
    next_target: np.ndarray,
    finish: np.ndarray,
) -> float:
    """Bring classes whose rate changed up to date (lazily); return the earliest finish time.

    ``prog[c]``: bytes each member of class ``c`` has moved since the class was formed, as of ``t_upd``;
    the class's next member finishes when ``prog`` reaches ``next_target``."""
    best = np.inf
    for c in act:
        if changed[c]:
            prog[c] += old_rate[c] * (now - t_upd[c])
            t_upd[c] = now
            old_rate[c] = rate[c]
            left = next_target[c] - prog[c]
            if left < 0.0:
                left = 0.0
            finish[c] = now + left / rate[c] if rate[c] > 0 else np.inf
            changed[c] = 0
        if finish[c] < best:
            best = finish[c]
    return best


@_njit(cache=True)
def _finished(now: float, act: np.ndarray, finish: np.ndarray, tol: float) -> np.ndarray:
    """Mask over ``act`` of the classes whose next member finishes by ``now`` (relative tolerance)."""
    out = np.zeros(act.shape[0], dtype=np.bool_)
    limit = now + tol * max(now, 1.0)
    for i in range(act.shape[0]):
        out[i] = finish[act[i]] <= limit
    return out


@_njit(cache=True)
def _pop_members(
    now: float,
    tol: float,
    done_cls: np.ndarray,
    rate: np.ndarray,
    prog: np.ndarray,
    t_upd: np.ndarray,
    next_target: np.ndarray,
    changed: np.ndarray,
    c_head: np.ndarray,
    c_end: np.ndarray,
    cm_flow: np.ndarray,
    target: np.ndarray,
    cl_ptr: np.ndarray,
    cl_link: np.ndarray,
    cl_coef: np.ndarray,
    cl_unit: np.ndarray,
    fl_ptr: np.ndarray,
    fl_link: np.ndarray,
    fl_coef: np.ndarray,
    lazy: np.ndarray,
    cap: np.ndarray,
    used: np.ndarray,
    lazy_used: np.ndarray,
    lazy_rate: np.ndarray,
    cz_ptr: np.ndarray,
    cz_link: np.ndarray,
    cz_coef: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Finish the members of ``done_cls`` whose finish time is within the tolerance of ``now``.

    A member leaving takes its share off the class's coefficients and its load off ``used`` (solver
    links) and ``lazy_used`` (lazy links). Returns (finished flow ids, the saturated solver links they
    left - only there can other rates change -, the classes now empty, the lowest rate that finished).
    """
    limit = now + tol * max(now, 1.0)
    out: list[int] = [0]
    out.pop()
    empty: list[int] = [0]
    empty.pop()
    num_links = cap.shape[0]
    seed_mark = np.zeros(num_links, dtype=np.bool_)
    seeds: list[int] = [0]
    seeds.pop()
    low = np.inf
    for c in done_cls:
        r = rate[c]
        p0, t0 = prog[c], t_upd[c]  # the member finish times below use the values _advance used
        k = c_head[c]
        while k < c_end[c]:
            f = cm_flow[k]
            if r <= 0 or t0 + (target[f] - p0) / r > limit:
                break
            out.append(f)
            k += 1
            for i in range(fl_ptr[f], fl_ptr[f + 1]):
                m = fl_link[i]
                if lazy[m]:
                    lazy_used[m] -= fl_coef[i] * lazy_rate[c]
                    if lazy_used[m] < 0.0:
                        lazy_used[m] = 0.0
                    for z in range(cz_ptr[c], cz_ptr[c + 1]):
                        if cz_link[z] == m:
                            cz_coef[z] -= fl_coef[i]
                            break
        gone = k - c_head[c]
        if gone == 0:
            continue
        low = min(low, r)
        c_head[c] = k
        for j in range(cl_ptr[c], cl_ptr[c + 1]):
            m = cl_link[j]
            if used[m] >= cap[m] * (1.0 - 1e-9) and not seed_mark[m]:
                seed_mark[m] = True
                seeds.append(m)
            used[m] -= cl_unit[j] * gone * r
            if used[m] < 0.0:
                used[m] = 0.0
            cl_coef[j] = cl_unit[j] * (c_end[c] - k)
        prog[c] = p0 + r * (now - t0)
        t_upd[c] = now
        if k == c_end[c]:
            empty.append(c)
            rate[c] = 0.0
        else:
            next_target[c] = target[cm_flow[k]]
            changed[c] = 1
    return (
        np.array(out, dtype=np.int64),
        np.array(seeds, dtype=np.int64),
        np.array(empty, dtype=np.int64),
        low,
    )


@_njit(cache=True)
def _lazy_update(
    act: np.ndarray,
    changed: np.ndarray,
    rate: np.ndarray,
    lazy_rate: np.ndarray,
    cz_ptr: np.ndarray,
    cz_link: np.ndarray,
    cz_coef: np.ndarray,
    lazy_used: np.ndarray,
) -> None:
    """Carry the classes' rate changes into the loads of the lazy links their members cross
    (``lazy_rate[c]``: the rate ``lazy_used`` holds for class ``c``; ``cz_*``: the class's lazy links,
    coefficients summed over its members)."""
    for c in act:
        if not changed[c]:
            continue  # a rate change always sets ``changed`` (cleared only by _advance, after this)
        delta = rate[c] - lazy_rate[c]
        if delta == 0.0:
            continue
        lazy_rate[c] = rate[c]
        for j in range(cz_ptr[c], cz_ptr[c + 1]):
            lazy_used[cz_link[j]] += cz_coef[j] * delta


@_njit(cache=True)
def _orphans(
    flows: np.ndarray, fl_ptr: np.ndarray, fl_link: np.ndarray, lazy: np.ndarray, cap: np.ndarray
) -> bool:
    """Every flow needs a solver link: for flows whose links are all lazy, the lowest-capacity one
    rejoins the solver (in place). Returns whether any did."""
    any_ = False
    for f in flows:
        orphan = True
        best = -1
        for j in range(fl_ptr[f], fl_ptr[f + 1]):
            m = fl_link[j]
            if not lazy[m]:
                orphan = False
                break
            if best < 0 or cap[m] < cap[best]:
                best = m
        if orphan and best >= 0:
            lazy[best] = False
            any_ = True
    return any_


@_njit(cache=True)
def _build_classes(
    first_class: int,
    members: np.ndarray,
    bounds: np.ndarray,
    target: np.ndarray,
    fl_ptr: np.ndarray,
    fl_link: np.ndarray,
    fl_coef: np.ndarray,
    lazy: np.ndarray,
    cl_ptr: np.ndarray,
    cl_link: np.ndarray,
    cl_unit: np.ndarray,
    cl_coef: np.ndarray,
    cm_flow: np.ndarray,
    cm_start: int,
    c_head: np.ndarray,
    c_end: np.ndarray,
    cls: np.ndarray,
    next_target: np.ndarray,
    cz_ptr: np.ndarray,
    cz_link: np.ndarray,
    cz_coef: np.ndarray,
) -> None:
    """Classes ``first_class + i`` from ``members[bounds[i]:bounds[i + 1]]`` (already ordered by finish
    target): solver links and coefficients from the first member, times the member count."""
    for i in range(bounds.shape[0] - 1):
        c = first_class + i
        lo, hi = bounds[i], bounds[i + 1]
        n = hi - lo
        first = members[lo]
        pos = cl_ptr[c]
        for j in range(fl_ptr[first], fl_ptr[first + 1]):
            m = fl_link[j]
            if lazy[m]:
                continue
            cl_link[pos] = m
            cl_unit[pos] = fl_coef[j]
            cl_coef[pos] = fl_coef[j] * n
            pos += 1
        cl_ptr[c + 1] = pos
        c_head[c] = cm_start + lo
        c_end[c] = cm_start + hi
        for k in range(lo, hi):
            cm_flow[cm_start + k] = members[k]
            cls[members[k]] = c
        next_target[c] = target[first]
        # the members' lazy links, coefficients summed per link
        z0 = cz_ptr[c]
        zpos = z0
        for k in range(lo, hi):
            f = members[k]
            for j in range(fl_ptr[f], fl_ptr[f + 1]):
                m = fl_link[j]
                if not lazy[m]:
                    continue
                found = False
                for z in range(z0, zpos):
                    if cz_link[z] == m:
                        cz_coef[z] += fl_coef[j]
                        found = True
                        break
                if not found:
                    cz_link[zpos] = m
                    cz_coef[zpos] = fl_coef[j]
                    zpos += 1
        cz_ptr[c + 1] = zpos


@_njit(cache=True)
def _group(
    flows: np.ndarray,
    fl_ptr: np.ndarray,
    fl_link: np.ndarray,
    fl_coef: np.ndarray,
    lazy: np.ndarray,
) -> np.ndarray:
    """Class index (0, 1, ... in order of first appearance) of each of ``flows``: flows whose solver
    links (not ``lazy``) and coefficients are identical, in the same order, share a class."""
    n = flows.shape[0]
    h = np.empty(n, dtype=np.uint64)
    for i in range(n):
        f = flows[i]
        x = np.uint64(1469598103934665603)
        for j in range(fl_ptr[f], fl_ptr[f + 1]):
            m = fl_link[j]
            if lazy[m]:
                continue
            x = (x ^ np.uint64(m + 1)) * np.uint64(1099511628211)
            x = (x ^ np.uint64(np.int64(fl_coef[j] * 1e9))) * np.uint64(1099511628211)
        h[i] = x
    order = np.argsort(h, kind="mergesort")  # stable: equal hashes stay in flow order
    group = np.empty(n, dtype=np.int64)
    ngroups = 0
    prev = -1
    for idx in range(n):
        i = order[idx]
        same = prev >= 0 and h[i] == h[prev]
        if same:  # confirm (hash collisions start a new group: a missed merge, never a wrong one)
            a, b = flows[i], flows[prev]
            ja, jb = fl_ptr[a], fl_ptr[b]
            while same:
                while ja < fl_ptr[a + 1] and lazy[fl_link[ja]]:
                    ja += 1
                while jb < fl_ptr[b + 1] and lazy[fl_link[jb]]:
                    jb += 1
                end_a, end_b = ja >= fl_ptr[a + 1], jb >= fl_ptr[b + 1]
                if end_a or end_b:
                    same = end_a and end_b
                    break
                if fl_link[ja] != fl_link[jb] or fl_coef[ja] != fl_coef[jb]:
                    same = False
                ja += 1
                jb += 1
        if not same:
            ngroups += 1
        group[i] = ngroups - 1
        prev = i
    # renumber by first appearance in ``flows`` (deterministic, independent of hash values)
    first = np.full(ngroups, n, dtype=np.int64)
    for i in range(n):
        if i < first[group[i]]:
            first[group[i]] = i
    rank = np.empty(ngroups, dtype=np.int64)
    rank[np.argsort(first, kind="mergesort")] = np.arange(ngroups)
    for i in range(n):
        group[i] = rank[group[i]]
    return group


class FluidNetwork:
    """Links of fixed capacity (bytes per us) shared max-min fairly by flows, driven by a SimPy process.

    Call :meth:`transfer` from SimPy processes; it returns ``(sent, done)`` events. The network keeps
    per-link byte counters (``link_bytes``), the number of rate recomputations (``recomputes``) and the
    highest link utilisation any allocation reached (``worst_utilisation``, must stay <= 1).

    Flows are solved as *classes*: flows whose solver links (and coefficients) coincide get the same
    max-min rate, so the solver sees one entity per class, with coefficients times its member count; a
    member finishing lowers the count. With ``aggregate`` the network also takes links that are not
    saturated out of the solver (*lazy* links; their load is still tracked and a lazy link that would be
    overloaded joins the solver again, with a full recomputation), which makes more flows share a class
    - e.g. the eight PXN flows of a node pair behind one NIC pair once NVLink is no longer the bottleneck.
    Both keep the allocation the exact max-min one: a feasible allocation in which every flow has a
    bottleneck among the solver links is *the* max-min fair allocation of the whole network.
    """

    # per flow (id = arrival order) and per class, grown by doubling (see _grow_flows, _grow_classes)
    target: np.ndarray
    size_bytes: np.ndarray
    latency_us: np.ndarray
    start_us: np.ndarray
    end_us: np.ndarray
    cls: np.ndarray
    is_active: np.ndarray
    bottleneck: np.ndarray
    rate: np.ndarray
    old_rate: np.ndarray
    lazy_rate: np.ndarray
    changed: np.ndarray
    prog: np.ndarray
    t_upd: np.ndarray
    next_target: np.ndarray
    finish: np.ndarray
    c_head: np.ndarray
    c_end: np.ndarray

    def __init__(
        self,
        env: simpy.Environment,
        capacity_bytes_per_us: Sequence[float] | np.ndarray,
        *,
        max_flows: int = 1024,
        binding: Sequence[bool] | np.ndarray | None = None,
        incremental: bool = True,
        aggregate: bool = True,
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
        # incremental: local refill checked against the max-min condition; otherwise refill every class
        # at or above the finished flows' level (both exact; the second is the reference in tests)
        self.incremental = incremental
        self.aggregate = aggregate
        self.num_links = int(self.cap.shape[0])
        self.used = np.zeros(self.num_links)  # load of the active classes per solver link, bytes/us
        self.lazy = np.zeros(
            self.num_links, dtype=np.bool_
        )  # links out of the solver (unsaturated)
        self.lazy_used = np.zeros(self.num_links)  # load of the active flows per lazy link
        self._strikes = np.zeros(self.num_links, dtype=np.int64)  # times a lazy link overloaded
        self._barred_until = np.zeros(self.num_links, dtype=np.int64)  # no lazy before this regroup
        self.link_bytes = np.zeros(self.num_links)
        # per flow (id = arrival order), grown by doubling
        self._fsize = 0
        self.num_flows = 0
        self._grow_flows(max(16, max_flows))
        # flow -> binding links CSR, append-only: flow f uses fl_link[fl_ptr[f]:fl_ptr[f + 1]]
        self.fl_ptr = np.zeros(self._fsize + 1, dtype=np.int64)
        self.fl_link = np.zeros(8 * self._fsize, dtype=np.int64)
        self.fl_coef = np.zeros(8 * self._fsize)
        # per class, append-only (a class is formed at an arrival or a regrouping and only shrinks)
        self._csize = 0
        self.num_classes = 0
        self._grow_classes(max(16, max_flows))
        self.cl_ptr = np.zeros(self._csize + 1, dtype=np.int64)  # class -> solver links CSR
        self.cl_link = np.zeros(4 * self._csize, dtype=np.int64)
        self.cl_unit = np.zeros(4 * self._csize)  # one member's coefficient
        self.cl_coef = np.zeros(4 * self._csize)  # times the members left
        self.cz_ptr = np.zeros(self._csize + 1, dtype=np.int64)  # class -> lazy links CSR
        self.cz_link = np.zeros(4 * self._csize, dtype=np.int64)
        self.cz_coef = np.zeros(4 * self._csize)  # summed over the members left
        self.cm_flow = np.zeros(self._fsize, dtype=np.int64)  # members, by finish target
        self._cm_used = 0
        self.act = np.zeros(0, dtype=np.int64)  # active class ids, in creation order
        self._pending: list[int] = []
        self._wakeup: simpy.Event | None = None
        self._callbacks: list[tuple[simpy.Event, simpy.Event, float]] = []
        self.recomputes = 0
        self.refilled = 0  # classes whose rate was recomputed, summed over recomputes
        self.rounds = 0  # refill-and-check rounds of the incremental solver
        self.events = 0
        self._active_count = 0  # flows in flight
        self.regroups = 0  # full regroupings of the active flows into classes
        self._since_regroup = 0
        self._new_since_regroup = 0
        # regroup cadence: at least this many events apart, and at least active flows / this many
        self.regroup_min_events = 64
        self.regroup_flows_per_event = 32
        self._index: tuple[np.ndarray, np.ndarray] | None = None
        self._index_size = 0
        self.worst_utilisation = 0.0
        env.process(self._run())

    # -- storage ------------------------------------------------------------------------------------
    def _grow_flows(self, size: int) -> None:
        old = self._fsize
        self._fsize = size
        for name, dtype in (
            ("target", np.float64),
            ("size_bytes", np.float64),
            ("latency_us", np.float64),
            ("start_us", np.float64),
            ("end_us", np.float64),
            ("cls", np.int64),
        ):
            new = np.zeros(size, dtype=dtype)
            if old:
                new[:old] = getattr(self, name)[:old]
            setattr(self, name, new)
        if old:
            ptr = np.full(size + 1, self.fl_ptr[old], dtype=np.int64)
            ptr[: old + 1] = self.fl_ptr[: old + 1]
            self.fl_ptr = ptr

    def _grow_classes(self, size: int) -> None:
        old = self._csize
        self._csize = size
        for name, dtype in (
            ("is_active", np.bool_),
            ("bottleneck", np.int64),
            ("rate", np.float64),
            ("old_rate", np.float64),
            ("lazy_rate", np.float64),
            ("changed", np.int8),
            ("prog", np.float64),
            ("t_upd", np.float64),
            ("next_target", np.float64),
            ("finish", np.float64),
            ("c_head", np.int64),
            ("c_end", np.int64),
        ):
            new = np.zeros(size, dtype=dtype)
            if old:
                new[:old] = getattr(self, name)[:old]
            setattr(self, name, new)
        if old:
            for name in ("cl_ptr", "cz_ptr"):
                cur = getattr(self, name)
                ptr = np.full(size + 1, cur[old], dtype=np.int64)
                ptr[: old + 1] = cur[: old + 1]
                setattr(self, name, ptr)

    @staticmethod
    def _ensure(arr: np.ndarray, size: int) -> np.ndarray:
        if size <= arr.size:
            return arr
        return np.concatenate([arr, np.zeros(max(size, arr.size), dtype=arr.dtype)])

    def _new_classes(self, flows: np.ndarray, groups: np.ndarray, now: float) -> np.ndarray:
        """Form one class per group of ``flows`` (``groups[i]``: 0, 1, ...); returns the class ids."""
        order = np.lexsort((flows, self.target[flows], groups))  # members by finish target, then id
        members = flows[order]
        bounds = np.concatenate(
            [[0], np.flatnonzero(np.diff(groups[order])) + 1, [members.size]]
        ).astype(np.int64)
        count = bounds.size - 1
        first = self.num_classes
        while first + count >= self._csize:
            self._grow_classes(2 * self._csize)
        # room for the solver links (at most the members' own) and the member list
        heads = members[bounds[:-1]]
        need = self.cl_ptr[first] + int((self.fl_ptr[heads + 1] - self.fl_ptr[heads]).sum())
        self.cl_link = self._ensure(self.cl_link, need)
        self.cl_unit = self._ensure(self.cl_unit, need)
        self.cl_coef = self._ensure(self.cl_coef, need)
        self.cm_flow = self._ensure(self.cm_flow, self._cm_used + members.size)
        zneed = self.cz_ptr[first] + int((self.fl_ptr[members + 1] - self.fl_ptr[members]).sum())
        self.cz_link = self._ensure(self.cz_link, zneed)
        self.cz_coef = self._ensure(self.cz_coef, zneed)
        _build_classes(
            first,
            members,
            bounds,
            self.target,
            self.fl_ptr,
            self.fl_link,
            self.fl_coef,
            self.lazy,
            self.cl_ptr,
            self.cl_link,
            self.cl_unit,
            self.cl_coef,
            self.cm_flow,
            self._cm_used,
            self.c_head,
            self.c_end,
            self.cls,
            self.next_target,
            self.cz_ptr,
            self.cz_link,
            self.cz_coef,
        )
        self._cm_used += members.size
        self.num_classes += count
        ids = np.arange(first, first + count, dtype=np.int64)
        self.is_active[ids] = True
        self.rate[ids] = 0.0 if self.incremental else np.inf  # filled by the next recompute
        self.old_rate[ids] = 0.0
        self.lazy_rate[ids] = 0.0
        self.changed[ids] = 1
        self.prog[ids] = 0.0
        self.t_upd[ids] = now
        self.bottleneck[ids] = 0
        return ids

    def _classes_for(self, flows: np.ndarray) -> np.ndarray:
        """Class index of each flow: identical solver paths share one when aggregating."""
        if not self.aggregate:
            return np.arange(flows.size, dtype=np.int64)
        return _group(flows, self.fl_ptr, self.fl_link, self.fl_coef, self.lazy)

    # -- flows --------------------------------------------------------------------------------------
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
        if fid >= self._fsize:
            self._grow_flows(2 * self._fsize)
        start = self.fl_ptr[fid]
        end = start + link_arr.size
        self.fl_link = self._ensure(self.fl_link, end)
        self.fl_coef = self._ensure(self.fl_coef, end)
        self.fl_link[start:end] = link_arr
        self.fl_coef[start:end] = coef_arr
        self.fl_ptr[fid + 1] = end
        self.num_flows += 1
        self.size_bytes[fid] = bytes_
        self.latency_us[fid] = latency_us
        self.start_us[fid] = self.env.now
        self._callbacks.append((sent, done, latency_us))
        self._pending.append(fid)
        if self._wakeup is not None and not self._wakeup.triggered:
            self._wakeup.succeed()
        return sent, done

    # -- the event loop -----------------------------------------------------------------------------
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
            self._since_regroup += 1
            next_finish = self._step(env.now)

    def _step(self, now: float) -> float:
        keep_below = np.inf
        seed_links = np.zeros(0, dtype=np.int64)
        seed_cls: list[np.ndarray] = []
        done_mask = _finished(now, self.act, self.finish, FINISH_TOL)
        if done_mask.any():
            done_cls = self.act[done_mask]
            done_ids, seed_links, empty, low = _pop_members(
                now,
                FINISH_TOL,
                done_cls,
                self.rate,
                self.prog,
                self.t_upd,
                self.next_target,
                self.changed,
                self.c_head,
                self.c_end,
                self.cm_flow,
                self.target,
                self.cl_ptr,
                self.cl_link,
                self.cl_coef,
                self.cl_unit,
                self.fl_ptr,
                self.fl_link,
                self.fl_coef,
                self.lazy,
                self.cap,
                self.used,
                self.lazy_used,
                self.lazy_rate,
                self.cz_ptr,
                self.cz_link,
                self.cz_coef,
            )
            keep_below = low
            self._active_count -= done_ids.size
            if empty.size:
                self.is_active[empty] = False
                self.act = self.act[self.is_active[self.act]]
            # classes that lost members but go on: their coefficients changed, refill them
            shrunk = done_cls[self.is_active[done_cls]]
            seed_cls.append(shrunk)
            self._complete(done_ids, now)
        if self._pending:
            new = np.asarray(self._pending, dtype=np.int64)
            self._pending.clear()
            self.target[new] = self.size_bytes[new]
            self._active_count += new.size
            # a new flow whose links are all lazy would have no rate limit: one rejoins the solver
            if self.lazy.any() and _orphans(new, self.fl_ptr, self.fl_link, self.lazy, self.cap):
                self._regroup(now, extra=new)
                return self._settle(now)
            # arrivals form classes of their own (with each other when their paths coincide)
            ids = self._new_classes(new, self._classes_for(new), now)
            self.act = np.concatenate([self.act, ids])
            seed_cls.append(ids)
            self._new_since_regroup += new.size
            self._index = None
            keep_below = -np.inf  # an arrival can lower rates at any level: refill all
        if keep_below < np.inf and self.act.size:
            self._solve(now, keep_below, seed_cls, seed_links)
            if self.aggregate and self._lazy_overloaded():
                self._regroup(now)
        if self.aggregate and self._regroup_due():
            self._lazify()
            self._regroup(now)
        return self._settle(now)

    def _settle(self, now: float) -> float:
        return _advance(
            now,
            self.act,
            self.rate,
            self.changed,
            self.prog,
            self.t_upd,
            self.old_rate,
            self.next_target,
            self.finish,
        )

    def _solve(
        self, now: float, keep_below: float, seed_cls: list[np.ndarray], seed_links: np.ndarray
    ) -> None:
        # classes just under the finished flow's level are refilled too (float ties)
        threshold = keep_below * (1.0 - 1e-12) if np.isfinite(keep_below) else keep_below
        if self._index is None or self.act.size * 2 < self._index_size:
            # rebuilt on arrivals (or when mostly stale); finished classes in it are skipped
            self._index = _link_index(self.act, self.cl_ptr, self.cl_link, self.num_links)
            self._index_size = self.act.size
        lk_ptr, lk_flow = self._index
        if self.incremental:
            seeds = np.concatenate(seed_cls) if seed_cls else np.zeros(0, dtype=np.int64)
            refilled, rounds = _refill(
                seeds,
                seed_links,
                threshold,
                self.is_active,
                self.cl_ptr,
                self.cl_link,
                self.cl_coef,
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
                self.cl_ptr,
                self.cl_link,
                self.cl_coef,
                lk_ptr,
                lk_flow,
                self.cap,
                self.rate,
                threshold,
                self.changed,
            )
        if self.aggregate:
            _lazy_update(
                self.act,
                self.changed,
                self.rate,
                self.lazy_rate,
                self.cz_ptr,
                self.cz_link,
                self.cz_coef,
                self.lazy_used,
            )
        self.refilled += refilled
        self.recomputes += 1
        self.worst_utilisation = max(self.worst_utilisation, worst)

    # -- lazy links and regrouping ------------------------------------------------------------------
    def _lazy_overloaded(self) -> bool:
        """A lazy link over its capacity rejoins the solver (the caller then regroups and re-solves).
        The allocation is not kept: no time passes before the re-solve."""
        if not self.lazy.any():
            return False
        over = self.lazy & (self.lazy_used > self.cap * (1.0 + 1e-9))
        if not over.any():
            worst = float((self.lazy_used[self.lazy] / self.cap[self.lazy]).max())
            self.worst_utilisation = max(self.worst_utilisation, worst)
            return False
        self.lazy[over] = False
        # back off: a link that came back stays in the solver for 2, 4, 8, ... regroupings
        self._strikes[over] += 1
        self._barred_until[over] = self.regroups + 2 ** np.minimum(self._strikes[over], 20)
        return True

    def _regroup_due(self) -> bool:
        """Regroup when it pays (its cost ~ the flows in flight, so at most every ``in flight /
        regroup_flows_per_event`` events and ``regroup_min_events`` apart):
        solver links left with clear slack, or many arrivals in classes of their own."""
        if (
            self._since_regroup < self.regroup_min_events
            or self._since_regroup * self.regroup_flows_per_event < self._active_count
        ):
            return False
        if not self.act.size:
            return False
        if self._new_since_regroup * 4 > self.act.size:
            return True
        slack = ~self.lazy & (self.used > 0.0) & (self.used < self.cap * LAZY_BELOW)
        return bool(slack.any())

    def _lazify(self) -> None:
        """Solver links with clear slack leave the solver; every flow keeps at least one solver link."""
        self.lazy |= (self.used < self.cap * LAZY_BELOW) & (self._barred_until <= self.regroups)
        _orphans(self._active_flows(), self.fl_ptr, self.fl_link, self.lazy, self.cap)

    def _active_flows(self) -> np.ndarray:
        if not self.act.size:
            return np.zeros(0, dtype=np.int64)
        heads, ends = self.c_head[self.act], self.c_end[self.act]
        lens = ends - heads
        idx = np.repeat(heads - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
        return np.sort(self.cm_flow[idx])

    def _regroup(self, now: float, extra: np.ndarray | None = None) -> None:
        """Re-form all classes from the active flows (plus ``extra`` new ones) under the current lazy
        set, and solve from scratch."""
        self.regroups += 1
        self._since_regroup = 0
        self._new_since_regroup = 0
        flows = self._active_flows()
        if flows.size:
            # bring members up to date: what is left of each is its target in a fresh class
            c = self.cls[flows]
            prog_now = self.prog[c] + self.old_rate[c] * (now - self.t_upd[c])
            self.target[flows] = np.maximum(self.target[flows] - prog_now, 0.0)
        if extra is not None and extra.size:
            flows = np.sort(np.concatenate([flows, extra]))
        # all classes are re-formed: their storage starts over
        self.is_active[: self.num_classes] = False
        self.num_classes = 0
        self._cm_used = 0
        self.act = np.zeros(0, dtype=np.int64)
        self.used[:] = 0.0
        self.lazy_used[:] = 0.0
        self._index = None
        if not flows.size:
            return
        self.act = self._new_classes(flows, self._classes_for(flows), now)
        self._solve(now, -np.inf, [self.act], np.zeros(0, dtype=np.int64))
        if self._lazy_overloaded():  # the new rates overload a lazy link: it rejoins, solve again
            self._regroup(now)

    def _complete(self, done_ids: np.ndarray, now: float) -> None:
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
