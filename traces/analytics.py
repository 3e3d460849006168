"""Trace analytics: load skew, co-activation, inter-layer affinity, drift; optional PNG plots.

Normalised mutual information is ``2 I(X;Y) / (H(X) + H(Y))`` (the arithmetic normalisation), computed
from joint counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from placement.workload import Workload


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


def trace_stats(workload: Workload, other: Workload | None = None) -> dict[str, Any]:
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
    return out


def plot_stats(workload: Workload, stats: dict[str, Any], folder: str | Path) -> list[str]:
    """Write PNG plots (load heatmap, skew bars, affinity bars) into ``folder``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from placement.atomic import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[str] = []

    def save(fig: Any, name: str) -> None:
        target = folder / name
        with atomic_path(target, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        plt.close(fig)
        written.append(str(target))

    share = workload.load / np.maximum(workload.load.sum(axis=1, keepdims=True), 1e-12)
    fig, ax = plt.subplots(figsize=(9, 4))
    im = ax.imshow(share, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("expert id")
    ax.set_ylabel("MoE layer")
    ax.set_title("Share of each layer's tokens per expert")
    fig.colorbar(im, ax=ax, label="share of assignments")
    save(fig, "load_heatmap.png")

    fig, ax = plt.subplots(figsize=(8, 3.5))
    rows = stats["per_layer"]
    ax.bar([r["layer"] for r in rows], [r["max_over_mean"] for r in rows], color="tab:orange")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("max / mean expert load")
    ax.set_title("Expert load skew per layer")
    save(fig, "load_skew.png")

    if "mean_nmi" in stats:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        with_next = [r for r in rows if "nmi_next" in r]
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
        save(fig, "affinity.png")
    if workload.top1_transitions is not None and workload.top1_transitions.shape[0] > 0:
        fig, ax = plt.subplots(figsize=(5, 4.5))
        joint = workload.top1_transitions[0]
        ax.imshow(joint / max(joint.sum(), 1), cmap="magma", interpolation="nearest")
        ax.set_xlabel("top-1 expert at layer 1")
        ax.set_ylabel("top-1 expert at layer 0")
        ax.set_title("Layer 0 -> 1 transitions")
        save(fig, "transitions_l0.png")
    return written
