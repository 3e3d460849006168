"""Trace analytics: load skew, co-activation, inter-layer affinity, local routing consistency,
per-domain expert preference and drift; optional PNG plots.

Normalised mutual information is ``2 I(X;Y) / (H(X) + H(Y))`` (the arithmetic normalisation), computed
from joint counts.

Local routing consistency (how much consecutive tokens of one sequence reuse experts, which is what
expert caching and prefetching exploit) is measured two ways per layer: ``repeat_share``, the share of a
token's experts that the previous token of the same sequence also chose; and ``window_coverage``, the
share of the expert assignments in a window of ``window`` consecutive tokens that the window's
``cache_experts`` most used experts serve. Each comes with the same figure on a seeded shuffle of the
tokens (``*_shuffled``): the consistency that global popularity alone would give.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from moe_placement.workload import Workload

# per-layer figures of token_level_stats that trace_stats copies into each layer's row and averages
_LOCAL_LAYER_KEYS = (
    "repeat_share",
    "repeat_share_shuffled",
    "window_coverage",
    "window_coverage_shuffled",
    "drift_js_halves",
)


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def nmi_from_joint(joint: np.ndarray) -> float:
    """Normalised mutual information of a joint count matrix ``[a, b]``."""
    total = joint.sum()
    if total <= 0:
        return 0.0
    pxy = joint / total
    hx, hy = _entropy(pxy.sum(axis=1)), _entropy(pxy.sum(axis=0))
    mi = hx + hy - _entropy(pxy.ravel())
    return 0.0 if hx + hy == 0 else float(2.0 * mi / (hx + hy))


def top_successor_share(joint: np.ndarray) -> float:
    """Share of tokens whose next expert is their current expert's most common successor."""
    total = joint.sum()
    return 0.0 if total <= 0 else float(joint.max(axis=1).sum() / total)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (natural log) between two count vectors."""
    p = p / max(p.sum(), 1e-12)
    q = q / max(q.sum(), 1e-12)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        mask = a > 0
        return float((a[mask] * np.log(a[mask] / b[mask])).sum())

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def _window_coverage(
    ids: np.ndarray, seq: np.ndarray, window: int, cache: int, experts: int
) -> tuple[float, float]:
    """(served assignments, all assignments) over the full windows of one chunk; ``ids[n, k]``."""
    n, k = ids.shape
    if n < window:
        return 0.0, 0.0
    starts = np.r_[0, np.flatnonzero(seq[1:] != seq[:-1]) + 1]
    run = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, n]))
    offset = np.arange(n) - starts[run]
    win = run * (n // window + 1) + offset // window
    full_ids, counts = np.unique(win, return_counts=True)
    full = np.isin(win, full_ids[counts == window])
    if not full.any():
        return 0.0, 0.0
    _, dense = np.unique(win[full], return_inverse=True)
    table = np.bincount(
        (np.repeat(dense, k) * experts + ids[full].ravel()), minlength=(dense.max() + 1) * experts
    ).reshape(-1, experts)
    served = np.sort(table, axis=1)[:, ::-1][:, :cache].sum()
    return float(served), float(table.sum())


def token_level_stats(
    workload: Workload, *, window: int = 16, cache_experts: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """One streaming pass over a per-token workload: local consistency, domains, drift over time.

    Returns per-layer lists ``repeat_share``, ``repeat_share_shuffled``, ``window_coverage``,
    ``window_coverage_shuffled``; ``drift_js_halves`` (JS divergence between the load of the first and
    the second half of the tokens, per layer); and, when the trace has a ``domain`` column,
    ``domains`` (name -> tokens), ``domain_load`` (name -> ``[layers, experts]`` assignment shares) and
    ``domain_nmi`` (per layer, NMI between a token's domain and its top-1 expert).
    """
    workload.require_per_token("local consistency")
    rng = np.random.default_rng(seed)
    layers, experts, k = workload.num_layers, workload.num_experts, workload.shape.top_k
    cache = min(experts, cache_experts if cache_experts is not None else 2 * k)
    repeat = np.zeros((2, layers))  # [real, shuffled] repeated assignments
    repeat_total = np.zeros(layers)
    cover = np.zeros((2, layers))
    cover_total = np.zeros((2, layers))
    halves = np.zeros((2, layers, experts))
    half_at = workload.num_tokens // 2
    seen = 0
    domain_counts: dict[str, np.ndarray] = {}
    domain_top1: dict[str, np.ndarray] = {}
    domain_tokens: dict[str, int] = {}
    prev: tuple[int, int, np.ndarray] | None = None  # last token of the previous chunk
    for chunk in workload.chunks():
        ids = np.asarray(chunk.expert_ids)
        seq, pos = np.asarray(chunk.seq_id), np.asarray(chunk.pos)
        n = ids.shape[1]
        # Pairs (t-1, t) of the same sequence at consecutive positions, including across chunks.
        same = (seq[1:] == seq[:-1]) & (pos[1:] == pos[:-1] + 1)
        perm = rng.permutation(n)
        for layer in range(layers):
            cur, before = ids[layer, 1:], ids[layer, :-1]
            hits = (cur[:, :, None] == before[:, None, :]).any(axis=2)
            repeat[0, layer] += hits[same].sum()
            shuffled = ids[layer, perm]
            hits_s = (shuffled[1:, :, None] == shuffled[:-1, None, :]).any(axis=2)
            repeat[1, layer] += hits_s[same].sum()
            repeat_total[layer] += same.sum() * k
            for which, arr in ((0, ids[layer]), (1, shuffled)):
                served, total = _window_coverage(arr, seq, window, cache, experts)
                cover[which, layer] += served
                cover_total[which, layer] += total
        if prev is not None and prev[0] == seq[0] and prev[1] + 1 == pos[0]:
            for layer in range(layers):
                repeat[0, layer] += np.isin(ids[layer, 0], prev[2][layer]).sum()
                repeat_total[layer] += k
                # The shuffled baseline gets the same pair count, drawn from this chunk.
                a, b = rng.integers(0, n, size=2)
                repeat[1, layer] += np.isin(ids[layer, a], ids[layer, b]).sum()
        prev = (int(seq[-1]), int(pos[-1]), ids[:, -1].copy())
        split = int(np.clip(half_at - seen, 0, n))
        for layer in range(layers):
            halves[0, layer] += np.bincount(ids[layer, :split].ravel(), minlength=experts)
            halves[1, layer] += np.bincount(ids[layer, split:].ravel(), minlength=experts)
        seen += n
        if chunk.domain is not None:
            for name in np.unique(chunk.domain):
                mask = chunk.domain == name
                key = str(name)
                counts = domain_counts.setdefault(key, np.zeros((layers, experts)))
                top1 = domain_top1.setdefault(key, np.zeros((layers, experts)))
                for layer in range(layers):
                    counts[layer] += np.bincount(ids[layer, mask].ravel(), minlength=experts)
                    top1[layer] += np.bincount(ids[layer, mask, 0], minlength=experts)
                domain_tokens[key] = domain_tokens.get(key, 0) + int(mask.sum())
    out: dict[str, Any] = {
        "window": window,
        "cache_experts": cache,
        "repeat_share": (repeat[0] / np.maximum(repeat_total, 1)).tolist(),
        "repeat_share_shuffled": (repeat[1] / np.maximum(repeat_total, 1)).tolist(),
        "window_coverage": (cover[0] / np.maximum(cover_total[0], 1)).tolist(),
        "window_coverage_shuffled": (cover[1] / np.maximum(cover_total[1], 1)).tolist(),
        "drift_js_halves": [js_divergence(halves[0, i], halves[1, i]) for i in range(layers)],
    }
    if domain_counts:
        names = sorted(domain_counts)
        out["domains"] = {name: domain_tokens[name] for name in names}
        out["domain_load"] = {
            name: (
                domain_counts[name] / np.maximum(domain_counts[name].sum(axis=1, keepdims=True), 1)
            ).tolist()
            for name in names
        }
        if len(names) > 1:
            out["domain_nmi"] = [
                nmi_from_joint(np.stack([domain_top1[name][layer] for name in names]))
                for layer in range(layers)
            ]
    return out


def trace_stats(
    workload: Workload,
    other: Workload | None = None,
    *,
    window: int = 16,
    cache_experts: int | None = None,
) -> dict[str, Any]:
    """Per-layer and overall statistics of a workload (and its drift against ``other``)."""
    load = workload.load
    layers = workload.num_layers
    mean = load.mean(axis=1)
    mom = load.max(axis=1) / np.maximum(mean, 1e-12)
    cv = load.std(axis=1) / np.maximum(mean, 1e-12)
    per_layer: list[dict[str, Any]] = []
    for layer in range(layers):
        row: dict[str, Any] = {
            "layer": layer,
            "max_over_mean": float(mom[layer]),
            "cv": float(cv[layer]),
        }
        if workload.coact is not None:
            row["coactivation_strength"] = nmi_from_joint(workload.coact[layer])
        if workload.top1_transitions is not None and layer + 1 < layers:
            row["nmi_next"] = nmi_from_joint(workload.top1_transitions[layer])
            row["top_successor_share"] = top_successor_share(workload.top1_transitions[layer])
        per_layer.append(row)
    out: dict[str, Any] = {
        "source": workload.source,
        "model": workload.shape.name,
        "tokens": workload.num_tokens,
        "layers": layers,
        "experts": workload.num_experts,
        "top_k": workload.shape.top_k,
        "per_token": workload.per_token,
        "mean_max_over_mean": float(mom.mean()),
        "mean_cv": float(cv.mean()),
        "per_layer": per_layer,
    }
    nmis = [r["nmi_next"] for r in per_layer if "nmi_next" in r]
    if nmis:
        out["mean_nmi"] = float(np.mean(nmis))
        out["mean_top_successor_share"] = float(
            np.mean([r["top_successor_share"] for r in per_layer if "top_successor_share" in r])
        )
    if workload.coact is not None:
        out["mean_coactivation_strength"] = float(
            np.mean([r["coactivation_strength"] for r in per_layer])
        )
    if other is not None and other.load.shape == load.shape:
        drift = [js_divergence(load[i], other.load[i]) for i in range(layers)]
        out["drift_js"] = float(np.mean(drift))
        out["drift_js_per_layer"] = drift
        if workload.top1_transitions is not None and other.top1_transitions is not None:
            trans = [
                js_divergence(
                    workload.top1_transitions[i].ravel(), other.top1_transitions[i].ravel()
                )
                for i in range(workload.top1_transitions.shape[0])
            ]
            if trans:
                out["drift_js_transitions"] = float(np.mean(trans))
    elif other is not None:
        out["drift_js"] = None
        out["drift_note"] = f"shapes differ: {list(load.shape)} vs {list(other.load.shape)}"
    if workload.per_token:
        local = token_level_stats(workload, window=window, cache_experts=cache_experts)
        for layer, row in enumerate(per_layer):
            for key in _LOCAL_LAYER_KEYS:
                row[key] = local[key][layer]
            if "domain_nmi" in local:
                row["domain_nmi"] = local["domain_nmi"][layer]
        out["window"] = local["window"]
        out["cache_experts"] = local["cache_experts"]
        for key in _LOCAL_LAYER_KEYS:
            out[f"mean_{key}"] = float(np.mean(local[key]))
        if "domains" in local:
            out["domains"] = local["domains"]
            out["domain_load"] = local["domain_load"]
        if "domain_nmi" in local:
            out["mean_domain_nmi"] = float(np.mean(local["domain_nmi"]))
    return out


def plot_stats(workload: Workload, stats: dict[str, Any], folder: str | Path) -> list[str]:
    """Write PNG plots (load heatmap, skew bars, affinity bars) into ``folder``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from moe_placement.atomic import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    for draw in _PLOTS:
        drawn = draw(plt, workload, stats)
        if drawn is None:  # the statistics this plot shows are absent from the trace
            continue
        fig, name = drawn
        target = folder / name
        with atomic_path(target, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        plt.close(fig)
        written.append(str(target))
    return written


# A drawn figure and its file name, or None when the trace lacks what the plot shows.
_Drawn = tuple[Any, str] | None


def _plot_load_heatmap(plt: Any, workload: Workload, stats: dict[str, Any]) -> _Drawn:
    """Share of each layer's assignments per expert, ``[layers, experts]``."""
    share = workload.load / np.maximum(workload.load.sum(axis=1, keepdims=True), 1e-12)
    fig, ax = plt.subplots(figsize=(9, 4))
    im = ax.imshow(share, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("expert id")
    ax.set_ylabel("MoE layer")
    ax.set_title("Share of each layer's tokens per expert")
    fig.colorbar(im, ax=ax, label="share of assignments")
    return fig, "load_heatmap.png"


def _plot_load_skew(plt: Any, workload: Workload, stats: dict[str, Any]) -> _Drawn:
    """Max over mean expert load per layer."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    rows = stats["per_layer"]
    ax.bar([r["layer"] for r in rows], [r["max_over_mean"] for r in rows], color="tab:orange")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("max / mean expert load")
    ax.set_title("Expert load skew per layer")
    return fig, "load_skew.png"


def _plot_affinity(plt: Any, workload: Workload, stats: dict[str, Any]) -> _Drawn:
    """Inter-layer affinity: NMI of consecutive top-1 experts and the top successor's share."""
    if "mean_nmi" not in stats:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.5))
    with_next = [r for r in stats["per_layer"] if "nmi_next" in r]
    ax.bar(
        [r["layer"] for r in with_next],
        [r["nmi_next"] for r in with_next],
        label="NMI(top-1, next top-1)",
    )
    ax.plot(
        [r["layer"] for r in with_next],
        [r["top_successor_share"] for r in with_next],
        "k.-",
        label="top successor share",
    )
    ax.set_xlabel("MoE layer l (to l+1)")
    ax.set_ylabel("affinity")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("Inter-layer affinity")
    return fig, "affinity.png"


def _plot_transitions(plt: Any, workload: Workload, stats: dict[str, Any]) -> _Drawn:
    """Joint share of top-1 experts at layers 0 and 1."""
    if workload.top1_transitions is None or workload.top1_transitions.shape[0] == 0:
        return None
    fig, ax = plt.subplots(figsize=(5, 4.5))
    joint = workload.top1_transitions[0]
    ax.imshow(joint / max(joint.sum(), 1), cmap="magma", interpolation="nearest")
    ax.set_xlabel("top-1 expert at layer 1")
    ax.set_ylabel("top-1 expert at layer 0")
    ax.set_title("Layer 0 -> 1 transitions")
    return fig, "transitions_l0.png"


def _plot_coactivation(plt: Any, workload: Workload, stats: dict[str, Any]) -> _Drawn:
    """Share of tokens choosing each pair of experts at layer 0."""
    if workload.coact is None:
        return None
    fig, ax = plt.subplots(figsize=(5, 4.5))
    coact = workload.coact[0]
    im = ax.imshow(coact / max(coact.sum(), 1), cmap="viridis", interpolation="nearest")
    ax.set_xlabel("expert")
    ax.set_ylabel("expert")
    ax.set_title("Co-activation at layer 0 (tokens choosing both)")
    fig.colorbar(im, ax=ax)
    return fig, "coactivation_l0.png"


def _plot_consistency(plt: Any, workload: Workload, stats: dict[str, Any]) -> _Drawn:
    """Local routing consistency per layer, each figure next to its shuffled-token baseline."""
    if "mean_window_coverage" not in stats:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.5))
    rows = stats["per_layer"]
    x = np.array([r["layer"] for r in rows])
    width = 0.2
    for i, (key, label) in enumerate(
        (
            (
                "window_coverage",
                f"window coverage (w={stats['window']}, top {stats['cache_experts']})",
            ),
            ("window_coverage_shuffled", "same, shuffled tokens"),
            ("repeat_share", "repeat share (t-1 -> t)"),
            ("repeat_share_shuffled", "same, shuffled tokens"),
        )
    ):
        ax.bar(x + (i - 1.5) * width, [r[key] for r in rows], width, label=label)
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("share of assignments")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("Local routing consistency")
    return fig, "consistency.png"


def _plot_domain_preference(plt: Any, workload: Workload, stats: dict[str, Any]) -> _Drawn:
    """Each domain's expert share at the middle MoE layer (only with two or more domains)."""
    if "domain_load" not in stats or len(stats["domain_load"]) <= 1:
        return None
    names = sorted(stats["domain_load"])
    layer = workload.num_layers // 2
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.5 * len(names)))
    grid = np.array([stats["domain_load"][n][layer] for n in names])
    im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("expert id")
    ax.set_title(f"Per-domain expert share at MoE layer {layer}")
    fig.colorbar(im, ax=ax, label="share of the domain's assignments")
    return fig, "domain_preference.png"


def _plot_drift(plt: Any, workload: Workload, stats: dict[str, Any]) -> _Drawn:
    """JS divergence of each layer's expert load against the compared trace."""
    if "drift_js_per_layer" not in stats:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(range(len(stats["drift_js_per_layer"])), stats["drift_js_per_layer"], color="tab:red")
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("JS divergence of expert load")
    ax.set_title("Drift against the compared trace")
    return fig, "drift.png"


# In the order the files are written (and listed in the stats JSON).
_PLOTS = (
    _plot_load_heatmap,
    _plot_load_skew,
    _plot_affinity,
    _plot_transitions,
    _plot_coactivation,
    _plot_consistency,
    _plot_domain_preference,
    _plot_drift,
)
