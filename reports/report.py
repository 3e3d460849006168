"""The what-if report: a pure function of stored sweep results (``results.parquet``, ``layers.parquet``,
``sweep.json``) to one self-contained HTML file (plots embedded as base64 PNG) and a Markdown summary.

It answers, in order: tokens/s and per-layer latency versus GPU count; where the time goes; what placement
optimisation buys over the default layout (``contiguous``) and over EPLB; which topology and NIC bandwidth
are worth paying for (cost per million tokens); the smallest cluster meeting a stated target.

Every figure is per step of N tokens per GPU, and says whether it is per MoE layer or per model: the sweep
stores its scope (``sweep.json``: phase, tokens per GPU, whole-model figures). With a known model shape
tokens/s and $/M tokens are per model (every MoE layer plus the dense layers, attention included); without
one they count the MoE layers only, an upper bound. Cost per hour is
``GPUs x price per GPU-hour + network endpoints x cost per endpoint / amortisation hours``. A memory model
(:mod:`moe_placement.wholemodel`) says how many redundant experts fit beside the KV cache.

Where a plot fixes the axes it does not show, they sit at the sweep's reference point: the first value
given for each swept axis (the command line's value for the others).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moe_placement.atomic import atomic_open
from moe_placement.cluster import GPU_TYPES
from moe_placement.pipeline.results import load_results
from moe_placement.pipeline.scenario import AXES
from moe_placement.reports import plots
from moe_placement.wholemodel import GIB, MemoryModel, kv_tokens_per_gpu

HOURS_PER_YEAR = 8760.0
REFERENCE_SOLVERS = ("contiguous", "eplb")
MAX_BARS = 40


@dataclass(frozen=True)
class ReportOptions:
    """Targets and prices a report is built with (they can change without re-running the sweep).

    ``gpu_hour_usd`` overrides the price per GPU-hour by GPU type; ``endpoint_usd`` the network cost per
    endpoint by topology; the network is amortised over ``amortisation_years``.
    """

    target_tokens_per_s: float | None = None
    target_layer_us: float | None = None
    gpu_hour_usd: dict[str, float] = field(default_factory=dict)
    endpoint_usd: dict[str, float] = field(default_factory=dict)
    amortisation_years: float = 3.0


@dataclass
class Report:
    """The rendered report: HTML text, Markdown text, the headline findings as data, and what
    ``placement whatif`` prints: the scope, one row per scenario (text and JSON), the answers."""

    html: str
    markdown: str
    findings: dict[str, Any]
    scope: str = ""
    scenarios: list[dict[str, Any]] = field(default_factory=list)
    smallest_meeting_target: dict[str, Any] | None = None
    cheapest_meeting_target: dict[str, Any] | None = None
    advice: str = ""
    redundant_that_fit: list[dict[str, Any]] = field(default_factory=list)
    text_headers: list[str] = field(default_factory=list)
    text_rows: list[list[Any]] = field(default_factory=list)
    text_lines: list[str] = field(default_factory=list)


# ---- helpers ---------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "-"
        if math.isinf(v):
            return "inf"
        if v == 0:
            return "0"
        if v.is_integer() and abs(v) < 1e6:
            return f"{int(v):,}"
        if abs(v) >= 1e6:
            return f"{v:.3e}"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.3g}"
    return str(value)


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    if not rows:
        return "_(none)_\n"
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    if not rows:
        return "<p><em>(none)</em></p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Doc:
    """Builds the HTML and the Markdown side by side so both say the same things."""

    def __init__(self) -> None:
        self.html: list[str] = []
        self.md: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md.append(f"\n{'#' * level} {text}\n")

    def para(self, text: str) -> None:
        self.html.append(f"<p>{html.escape(text)}</p>")
        self.md.append(text + "\n")

    def finding(self, text: str) -> None:
        """A key result, set apart (bold in Markdown)."""
        self.html.append(f'<p class="finding">{html.escape(text)}</p>')
        self.md.append(f"**{text}**\n")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.html.append(_html_table(headers, rows))
        self.md.append(_md_table(headers, rows))

    def image(self, png_b64: str, alt: str) -> None:
        self.html.append(
            f'<figure><img src="data:image/png;base64,{png_b64}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(alt)}</figcaption></figure>"
        )
        self.md.append(f"_Figure (in report.html): {alt}_\n")


_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; }
figcaption { font-size: 0.85em; color: #555; }
img { max-width: 100%; }
.finding { background: #eef6ee; border-left: 4px solid #2ca02c; padding: 0.4em 0.8em; }
"""


# ---- the report ------------------------------------------------------------------------------------


def _field(axis: str) -> str:
    return str(AXES[axis][0])


def add_costs(frame: pd.DataFrame, options: ReportOptions) -> pd.DataFrame:
    """Add ``usd_per_hour`` and ``usd_per_million_tokens`` from the stored prices and any overrides."""
    out = frame.copy()
    gpu_price = out["gpu_hour_usd"].astype(float)
    for gpu, price in options.gpu_hour_usd.items():
        gpu_price = gpu_price.where(out["gpu"].str.upper() != gpu.upper(), float(price))
    endpoint = out["endpoint_usd"].astype(float)
    for topo, price in options.endpoint_usd.items():
        endpoint = endpoint.where(out["topology"] != topo, float(price))
    hours = options.amortisation_years * HOURS_PER_YEAR
    out["gpu_hour_usd"] = gpu_price
    out["endpoint_usd"] = endpoint
    out["usd_per_hour"] = out["gpus"] * gpu_price + out["network_endpoints"] * endpoint / hours
    out["usd_per_million_tokens"] = out["usd_per_hour"] / (out["tokens_per_s"] * 3600.0) * 1e6
    return out


class _Slicer:
    """Rows of a results frame at the sweep's reference point, except on the axes left free."""

    def __init__(self, reference: dict[str, Any]) -> None:
        self.reference = reference

    def __call__(self, frame: pd.DataFrame, free: Sequence[str], **fixed: Any) -> pd.DataFrame:
        mask = pd.Series(True, index=frame.index)
        for axis in AXES:
            if axis in free:
                continue
            col = _field(axis)
            value = fixed.get(axis, self.reference.get(axis))
            if value is None or col not in frame:
                continue
            if axis == "gpus_per_node":
                # The sweep caps GPUs per node at the GPU count; follow that cap here.
                mask &= frame[col] == np.minimum(int(value), frame["gpus"])
            else:
                mask &= frame[col] == value
        return frame[mask]


def _chosen_solver(solvers: Sequence[str]) -> str:
    """The placement the report recommends: CP-SAT ``best`` when present, else the first non-reference."""
    if "best" in solvers:
        return "best"
    others = [s for s in solvers if s not in REFERENCE_SOLVERS]
    return others[0] if others else solvers[0]


def build_report(out_dir: str | Path, options: ReportOptions | None = None) -> Report:
    """Build ``report.html`` and ``summary.md`` in ``out_dir`` from the results stored there."""
    options = options or ReportOptions()
    out = Path(out_dir)
    results, layers, meta = load_results(out)
    report = render(results, layers, meta, options)
    with atomic_open(out / "report.html") as handle:
        handle.write(report.html)
    with atomic_open(out / "summary.md") as handle:
        handle.write(report.markdown)
    return report


def render(
    results: pd.DataFrame, layers: pd.DataFrame, meta: dict[str, Any], options: ReportOptions
) -> Report:
    """The report as text, from the stored tables (no file access, no computation of new scenarios)."""
    doc = _Doc()
    findings: dict[str, Any] = {}
    axes: dict[str, list[Any]] = meta.get("axes", {})
    reference: dict[str, Any] = meta.get("reference", {})
    ok = results[results["status"] == "ok"] if "status" in results else results.iloc[0:0]
    bad = results[results["status"] != "ok"] if "status" in results else results
    ok = add_costs(ok, options) if len(ok) else ok
    varying = [a for a in AXES if _field(a) in ok and ok[_field(a)].nunique() > 1]
    slicer = _Slicer(reference)
    solvers = list(dict.fromkeys(ok["solver"])) if len(ok) else []
    chosen = _chosen_solver(solvers) if solvers else ""
    findings["chosen_solver"] = chosen

    results = _with_model_columns(results, meta)
    ok = _with_model_columns(ok, meta)
    memory = _memory_model_of(meta)
    if memory is not None and len(ok):
        ok = _with_memory(ok, memory, meta)
    scope = str(meta.get("scope") or _OLD_SCOPE)
    answers = _Answers.of(results, ok, varying, options, meta, memory)
    findings["smallest_cluster_gpus"] = (
        answers.smallest["gpus"] if answers.smallest is not None else None
    )

    doc.heading("What-if capacity report", 1)
    doc.para(
        f"Trace {meta.get('trace', '?')} ({meta.get('trace_shape', '')}); base cluster "
        f"{meta.get('base_cluster', {}).get('name', '?')}; timing engine {meta.get('engine', '?')}; "
        f"{len(results)} scenarios, {len(ok)} solved, {len(bad)} infeasible"
        + (
            f"; solver time limit {_fmt(meta['time_limit_s'])} s per scenario (CP-SAT "
            "deterministic time)."
            if meta.get("time_limit_s")
            else "."
        )
    )
    doc.para(
        scope + " Axes a plot does not show sit at the reference point: the first value of each "
        "swept axis."
    )
    doc.table(
        ["axis", "values swept", "reference"],
        [
            [a, ", ".join(_fmt(v) for v in vals), _fmt(reference.get(a, ""))]
            for a, vals in axes.items()
        ],
    )
    if meta.get("engine") == "analytic":
        doc.para(
            "Timing engine: analytic fallback (busiest-link communication + roofline compute; overlap "
            "modelled as a pipeline of 2 or 4 pieces; the all-to-all algorithm axis has no effect). The "
            "network simulator was not importable when these results were computed."
        )
    if "code_version" in results and results["code_version"].nunique() > 1:
        doc.para(
            f"Note: these results come from {results['code_version'].nunique()} versions of the solver "
            "and simulator source (it changed while the sweep ran); re-run the sweep to recompute the "
            "stale ones."
        )
    if not len(ok):
        doc.para("No scenario could be solved; see the infeasible list below.")
        _infeasible(doc, bad)
        return _finish(doc, findings, scope, answers)

    _throughput_section(doc, ok, layers, slicer, solvers, varying, findings)
    _breakdown_section(doc, ok, slicer, varying)
    _placement_section(doc, ok, varying, chosen, findings)
    _network_section(doc, ok, slicer, varying, chosen, options, findings)
    _target_section(doc, ok, varying, answers, findings)
    _memory_section(doc, meta, answers)
    doc.heading("All scenarios")
    doc.para(scope)
    cols = [_field(a) for a in AXES if a in varying] or ["solver"]
    headers = [
        *cols,
        "tokens/s (model)",
        "step ms (model)",
        "layer us",
        "exposed comm us (layer)",
        "max/mean",
        "inter-node B (layer)",
        "$/M tok",
    ]
    rows = [
        [
            *(r[c] for c in cols),
            r["tokens_per_s"],
            r["step_us"] / 1e3,
            r["layer_us"],
            r["exposed_comm_us"],
            r["mean_max_over_mean"],
            r["inter_node_bytes_per_layer_step"],
            r["usd_per_million_tokens"],
        ]
        for _, r in ok.iterrows()
    ]
    doc.table(headers, rows)
    _infeasible(doc, bad)
    return _finish(doc, findings, scope, answers)


_OLD_SCOPE = (
    "Throughput counts the MoE layers only (dispatch, expert compute, combine); attention and dense "
    "layers are not modelled, so tokens/s is an upper bound for the whole model."
)


def _with_model_columns(frame: pd.DataFrame, meta: dict[str, Any]) -> pd.DataFrame:
    """Results stored before the whole-model columns existed read as MoE-only figures."""
    if not len(frame) or "moe_layers" in frame:
        return frame
    out = frame.copy()
    if "num_layers" in out:
        out["moe_layers"] = out["num_layers"]
    if "inter_node_bytes_per_step" in out and "num_layers" in out:
        out["inter_node_bytes_per_layer_step"] = out["inter_node_bytes_per_step"] / out[
            "num_layers"
        ].clip(lower=1)
    return out


def _memory_model_of(meta: dict[str, Any]) -> dict[str, float] | None:
    """The memory model's figures stored with the sweep, or None (the model is not known)."""
    whole = meta.get("whole_model")
    if not isinstance(whole, dict) or "expert_slot_bytes" not in whole:
        return None
    return {
        k: float(whole[k])
        for k in (
            "non_expert_weight_bytes",
            "expert_slot_bytes",
            "kv_bytes_per_token",
            "kv_tokens_per_gpu",
            "reserve_fraction",
        )
    }


def memory_for_gpu(
    figures: dict[str, float], gpu: str, kv_tokens: float | None = None
) -> MemoryModel:
    """The memory model on one GPU type from the stored figures (``kv_tokens``: the KV cache's tokens
    per GPU, when not the stored ones)."""
    memory = GPU_TYPES[gpu].memory_gib * GIB if gpu in GPU_TYPES else float("nan")
    kv = figures["kv_tokens_per_gpu"] if kv_tokens is None else kv_tokens
    return MemoryModel(
        gpu_memory_bytes=memory,
        reserve_bytes=memory * figures["reserve_fraction"],
        non_expert_weight_bytes=figures["non_expert_weight_bytes"],
        expert_slot_bytes=figures["expert_slot_bytes"],
        kv_cache_bytes=kv * figures["kv_bytes_per_token"],
    )


def _with_memory(ok: pd.DataFrame, figures: dict[str, float], meta: dict[str, Any]) -> pd.DataFrame:
    """Add ``memory_per_gpu_gib`` (weights, expert slots, KV cache, reserve) and ``fits_memory``; the
    KV cache follows each scenario's tokens per GPU unless ``--kv-tokens-per-gpu`` fixed it."""
    out = ok.copy()
    used, fits = [], []
    given = bool((meta.get("whole_model") or {}).get("kv_tokens_given", True))
    context = int(meta.get("context_tokens") or 1)
    for _, r in out.iterrows():
        kv = None
        if not given and "phase" in r.index:
            kv = kv_tokens_per_gpu(str(r["phase"]), int(r["tokens_per_gpu"]), context)
        model = memory_for_gpu(figures, str(r["gpu"]), kv)
        need = model.used_bytes(int(r["slots_per_gpu"]))
        used.append(need / GIB)
        fits.append(bool(need <= model.gpu_memory_bytes))
    out["memory_per_gpu_gib"] = used
    out["fits_memory"] = fits
    return out


# Keys of one scenario in ``placement whatif --json`` (the contract: gpus, moe_layers, layer_us,
# tokens_per_s, usd_per_m_tokens), from the result columns of the same meaning.
_JSON_KEYS = {
    "gpus": "gpus",
    "gpus_per_node": "gpus_per_node",
    "nodes": "num_nodes",
    "gpu": "gpu",
    "topology": "topology",
    "nic_gbps": "nic_gbps",
    "redundant": "redundant",
    "solver": "solver",
    "overlap": "overlap",
    "tokens_per_gpu": "tokens_per_gpu",
    "phase": "phase",
    "moe_layers": "moe_layers",
    "dense_layers": "dense_layers",
    "timed_layers": "timed_layers",
    "layer_us": "layer_us",
    "attention_us": "attention_us",
    "moe_step_us": "moe_step_us",
    "step_us": "step_us",
    "tokens_per_s": "tokens_per_s",
    "usd_per_hour": "usd_per_hour",
    "usd_per_m_tokens": "usd_per_million_tokens",
    "mean_max_over_mean": "mean_max_over_mean",
    "inter_node_bytes_per_layer_step": "inter_node_bytes_per_layer_step",
    "memory_per_gpu_gib": "memory_per_gpu_gib",
    "fits_memory": "fits_memory",
    "solve_s": "solve_s",
}


def _scenario_json(r: pd.Series) -> dict[str, Any]:
    out: dict[str, Any] = {"status": r.get("status", "ok")}
    for key, col in _JSON_KEYS.items():
        if col in r.index:
            value = r[col]
            if isinstance(value, (np.generic,)):
                value = value.item()
            out[key] = None if isinstance(value, float) and math.isnan(value) else value
    if out["status"] != "ok":
        out["error"] = r.get("error", "")
    return out


@dataclass
class _Answers:
    """The capacity answers: every scenario as JSON, the smallest and the cheapest meeting the
    target, the advice (which follows the table), the redundant experts that fit, the text table."""

    scenarios: list[dict[str, Any]]
    smallest: dict[str, Any] | None
    cheapest: dict[str, Any] | None
    advice: str
    fit: list[dict[str, Any]]
    headers: list[str]
    rows: list[list[Any]]

    @classmethod
    def of(
        cls,
        results: pd.DataFrame,
        ok: pd.DataFrame,
        varying: list[str],
        options: ReportOptions,
        meta: dict[str, Any],
        memory: dict[str, float] | None,
    ) -> _Answers:
        by_key = {r["key"]: r for _, r in ok.iterrows()} if len(ok) else {}
        # swept axes the fixed columns do not show (topology, engine, ...): without them two
        # scenarios that differ only there would print as identical rows
        extra_axes = [a for a in varying if a not in _FIXED_AXES and _field(a) in results.columns]
        scenarios, rows = [], []
        for _, raw in results.iterrows():
            r = by_key.get(raw["key"], raw)
            scenarios.append(_scenario_json(r))
            rows.append(
                [raw.get(_field(a), "-") for a in extra_axes] + _text_row(r, memory is not None)
            )
        smallest = cheapest = None
        meets = target_mask(ok, options) if len(ok) else None
        if meets is not None:
            if "fits_memory" in ok:
                meets &= ok["fits_memory"].astype(bool)
            hits = ok[meets]
            if len(hits):
                smallest = _scenario_json(
                    hits.sort_values(["gpus", "usd_per_million_tokens"]).iloc[0]
                )
                cheapest = _scenario_json(
                    hits.sort_values(["usd_per_million_tokens", "gpus"]).iloc[0]
                )
        advice = target_advice(ok, options, smallest)
        if cheapest is not None and cheapest != smallest:
            advice += (
                f" The cheapest meeting it: {cheapest['gpus']} GPUs (redundant "
                f"{cheapest['redundant']}, solver {cheapest['solver']}), "
                f"{_fmt(cheapest['usd_per_m_tokens'])} $/M tokens."
            )
        fit = _redundant_that_fit(ok, meta, memory)
        headers = (
            extra_axes
            + [
                "gpus",
                "nodes",
                "redundant",
                "solver",
                "status",
                "MoE layers",
                "layer us",
                "step ms (model)",
                "tokens/s (model)",
                "$/M tok",
            ]
            + (["GiB/GPU", "fits"] if memory is not None else [])
        )
        return cls(scenarios, smallest, cheapest, advice, fit, headers, rows)


# scenario axes the what-if table always shows as columns of their own
_FIXED_AXES = ("gpus", "redundant", "solver")


def _text_row(r: pd.Series, with_memory: bool) -> list[Any]:
    if r.get("status", "ok") != "ok":
        blank = ["-"] * (7 if with_memory else 5)
        return [r["gpus"], "-", r["redundant"], r["solver"], "infeasible", *blank]
    row = [
        int(r["gpus"]),
        int(r["num_nodes"]),
        int(r["redundant"]),
        r["solver"],
        "ok",
        int(r["moe_layers"]),
        float(r["layer_us"]),
        float(r["step_us"]) / 1e3,
        float(r["tokens_per_s"]),
        float(r["usd_per_million_tokens"]),
    ]
    if with_memory:
        row += [float(r["memory_per_gpu_gib"]), "yes" if r["fits_memory"] else "no"]
    return row


def target_mask(ok: pd.DataFrame, options: ReportOptions) -> pd.Series | None:
    """Rows meeting every stated target (None when no target is stated)."""
    if options.target_tokens_per_s is None and options.target_layer_us is None:
        return None
    meets = pd.Series(True, index=ok.index)
    if options.target_tokens_per_s is not None:
        meets &= ok["tokens_per_s"] >= options.target_tokens_per_s
    if options.target_layer_us is not None:
        meets &= ok["layer_us"] <= options.target_layer_us
    return meets


def _target_words(options: ReportOptions) -> str:
    want = []
    if options.target_tokens_per_s is not None:
        want.append(f"at least {_fmt(options.target_tokens_per_s)} tokens/s (model)")
    if options.target_layer_us is not None:
        want.append(f"at most {_fmt(options.target_layer_us)} us per MoE layer")
    return " and ".join(want)


def target_advice(ok: pd.DataFrame, options: ReportOptions, smallest: dict[str, Any] | None) -> str:
    """What to do about the target, read off the table itself: more GPUs are advised only where the
    table shows the missed figure improving with the GPU count."""
    if options.target_tokens_per_s is None and options.target_layer_us is None:
        return "No target stated (--target-tokens-per-s, --target-layer-us)."
    words = _target_words(options)
    if smallest is not None:
        return (
            f"Target ({words}): the smallest cluster meeting it has {smallest['gpus']} GPUs "
            f"(redundant {smallest['redundant']}, solver {smallest['solver']}): "
            f"{_fmt(smallest['tokens_per_s'])} tokens/s, {_fmt(smallest['layer_us'])} us per MoE "
            f"layer, {_fmt(smallest['usd_per_m_tokens'])} $/M tokens."
        )
    if not len(ok):
        return f"Target ({words}): no scenario could be solved."
    parts = [f"Target ({words}): no swept scenario meets it."]
    trends = []
    if options.target_layer_us is not None:
        trends.append(
            _trend(ok.groupby("gpus")["layer_us"].min(), "lowest us per MoE layer", False)
        )
    if options.target_tokens_per_s is not None:
        trends.append(_trend(ok.groupby("gpus")["tokens_per_s"].max(), "highest tokens/s", True))
    improving = all(t[0] for t in trends)
    parts += [t[1] for t in trends]
    if improving:
        parts.append("Sweep larger clusters (--sweep gpus=...).")
    else:
        parts.append(
            "More GPUs will not meet it on this table; try fewer tokens per GPU, overlap "
            "(--overlap two-batch), faster NICs (--sweep nic_gbps=...), or a looser target."
        )
    return " ".join(parts)


def _trend(best: pd.Series, what: str, higher_is_better: bool) -> tuple[bool, str]:
    """(whether ``best`` improves from the fewest to the most GPUs, the sentence saying how it moves)."""
    best = best.sort_index()
    if len(best) < 2:
        return False, f"Only {int(best.index[0])} GPUs swept ({what} {_fmt(best.iloc[0])})."
    first, last = float(best.iloc[0]), float(best.iloc[-1])
    better = last > first if higher_is_better else last < first
    moves = " -> ".join(
        f"{_fmt(v)} at {g}" for g, v in zip(best.index.tolist(), best.tolist(), strict=True)
    )
    direction = "improves" if better else "gets worse"
    return better, f"The {what} {direction} with GPU count ({moves} GPUs)."


def _redundant_that_fit(
    ok: pd.DataFrame, meta: dict[str, Any], memory: dict[str, float] | None
) -> list[dict[str, Any]]:
    """Per GPU type and GPU count: the most redundant experts per layer that fit beside the weights
    and the KV cache (equal slots on every GPU)."""
    if memory is None or not len(ok):
        return []
    out = []
    experts = int(ok["num_experts"].iloc[0])
    pairs = ok[["gpu", "gpus"]].drop_duplicates().sort_values(["gpu", "gpus"])
    for gpu, gpus in zip(pairs["gpu"].tolist(), pairs["gpus"].astype(int).tolist(), strict=True):
        model = memory_for_gpu(memory, str(gpu))
        out.append(
            {
                "gpu": gpu,
                "gpus": int(gpus),
                "gpu_memory_gib": model.gpu_memory_bytes / GIB,
                "non_expert_weights_gib": model.non_expert_weight_bytes / GIB,
                "kv_cache_gib": model.kv_cache_bytes / GIB,
                "free_for_experts_gib": model.free_for_slots_bytes / GIB,
                "expert_slots_per_gpu": model.max_slots_per_gpu(),
                "max_redundant": model.max_redundant(experts, int(gpus)),
            }
        )
    return out


def _memory_section(doc: _Doc, meta: dict[str, Any], answers: _Answers) -> None:
    doc.heading("6. How many redundant experts fit beside the KV cache")
    whole = meta.get("whole_model")
    if not answers.fit or not isinstance(whole, dict):
        doc.para("No whole-model shape is known for this input (--model NAME): no memory model.")
        return
    doc.para(
        f"Memory model per GPU ({whole['name']}, expert parallelism with data-parallel attention): "
        f"non-expert weights {whole['non_expert_weight_bytes'] / GIB:.1f} GiB on every GPU; one "
        f"expert slot {whole['expert_slot_bytes'] / GIB:.3f} GiB over {whole['num_moe_layers']} MoE "
        f"layers ({whole['expert_bytes'] / 1e6:.1f} MB per expert per layer); KV cache "
        f"{_fmt(whole['kv_bytes_per_token'])} B per token x {_fmt(whole['kv_tokens_per_gpu'])} "
        f"tokens per GPU; {whole['reserve_fraction']:.0%} of memory kept free for activations. "
        "Redundant experts keep every GPU's slot count equal."
    )
    doc.table(
        [
            "gpu",
            "gpus",
            "GiB",
            "weights GiB",
            "KV GiB",
            "free for experts GiB",
            "slots/GPU",
            "max redundant",
        ],
        [
            [
                f["gpu"],
                f["gpus"],
                f["gpu_memory_gib"],
                f["non_expert_weights_gib"],
                f["kv_cache_gib"],
                f["free_for_experts_gib"],
                f["expert_slots_per_gpu"],
                "does not fit" if f["max_redundant"] is None else f["max_redundant"],
            ]
            for f in answers.fit
        ],
    )


def _finish(
    doc: _Doc, findings: dict[str, Any], scope: str = "", answers: _Answers | None = None
) -> Report:
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>What-if capacity report</title>"
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(doc.html) + "\n</body></html>\n"
    )
    report = Report(page, "\n".join(doc.md), findings, scope=scope)
    if answers is not None:
        report.scenarios = answers.scenarios
        report.smallest_meeting_target = answers.smallest
        report.cheapest_meeting_target = answers.cheapest
        report.advice = answers.advice
        report.redundant_that_fit = answers.fit
        report.text_headers = answers.headers
        report.text_rows = answers.rows
        report.text_lines = [answers.advice] + [
            f"{f['gpus']} x {f['gpu']}: {f['expert_slots_per_gpu']} expert slots per GPU fit beside "
            f"{f['kv_cache_gib']:.1f} GiB of KV cache and {f['non_expert_weights_gib']:.1f} GiB of "
            "other weights: at most "
            + (
                "none (not even the experts fit)"
                if f["max_redundant"] is None
                else f"{f['max_redundant']} redundant experts per layer"
            )
            for f in answers.fit
        ]
    return report


def _infeasible(doc: _Doc, bad: pd.DataFrame) -> None:
    if not len(bad):
        return
    doc.heading("Infeasible scenarios")
    rows = [
        [r["gpus"], r["gpus_per_node"], r["redundant"], r["solver"], r["error"]]
        for _, r in bad.iterrows()
    ]
    doc.table(["gpus", "per node", "redundant", "solver", "reason"], rows)


def _row_of_max(frame: pd.DataFrame, column: str, *, lowest: bool = False) -> pd.Series:
    """The row with the largest (or smallest) ``column``; the first such row on ties."""
    values = frame[column].to_numpy(dtype=float)
    return frame.iloc[int(np.argmin(values) if lowest else np.argmax(values))]


def _label(row: pd.Series, axes: Sequence[str]) -> str:
    parts = []
    for axis in axes:
        value = row[_field(axis)]
        parts.append(f"{axis}={_fmt(value)}")
    return " ".join(parts) or str(row["solver"])


def _throughput_section(
    doc: _Doc,
    ok: pd.DataFrame,
    layers: pd.DataFrame,
    slicer: _Slicer,
    solvers: list[str],
    varying: list[str],
    findings: dict[str, Any],
) -> None:
    """Section 1: throughput and layer latency versus GPU count; records ``max_tokens_per_s``."""
    doc.heading("1. Throughput and per-layer latency versus GPU count")
    if "gpus" not in varying:
        _throughput_per_scenario(doc, ok, varying)
        return
    part = slicer(ok, ["gpus", "gpus_per_node", "solver"])
    _scaling_curves(doc, part, solvers)
    _layer_profile(doc, part, layers, _chosen_solver(solvers))
    best = _row_of_max(ok, "tokens_per_s")
    findings["max_tokens_per_s"] = float(best["tokens_per_s"])
    doc.html.append(
        f'<p class="finding">Highest throughput: {_fmt(best["tokens_per_s"])} tokens/s at '
        f"{html.escape(_label(best, varying))}.</p>"
    )
    doc.md.append(
        f"**Highest throughput:** {_fmt(best['tokens_per_s'])} tokens/s at {_label(best, varying)}.\n"
    )


def _throughput_per_scenario(doc: _Doc, ok: pd.DataFrame, varying: list[str]) -> None:
    """Without a GPU-count axis there is no curve: one table row per scenario."""
    doc.para("The GPU count was not swept (add --sweep gpus=...); throughput per scenario:")
    rows = [
        [_label(r, varying), r["gpus"], r["tokens_per_s"], r["layer_us"]] for _, r in ok.iterrows()
    ]
    doc.table(["scenario", "gpus", "tokens/s", "layer us"], rows)


# Columns of the scaling table, one row per (solver, GPU count).
_SCALING_HEADERS = [
    "solver",
    "gpus",
    "nodes",
    "tokens/s",
    "tokens/s per GPU",
    "layer us (mean)",
    "layer us (worst)",
    "$/M tok",
]


def _scaling_curves(doc: _Doc, part: pd.DataFrame, solvers: list[str]) -> None:
    """Throughput and mean layer latency versus GPU count, one line per solver, and their table."""
    tps: dict[str, tuple[list[float], list[float]]] = {}
    lat: dict[str, tuple[list[float], list[float]]] = {}
    rows: list[list[Any]] = []
    for solver in solvers:
        sub = part[part["solver"] == solver].sort_values("gpus")
        if not len(sub):
            continue
        tps[solver] = (sub["gpus"].tolist(), sub["tokens_per_s"].tolist())
        lat[solver] = (sub["gpus"].tolist(), sub["layer_us"].tolist())
        rows += [_scaling_row(solver, r) for _, r in sub.iterrows()]
    doc.image(
        plots.line_plot(
            tps,
            title="Throughput versus GPU count",
            xlabel="GPUs",
            ylabel="tokens/s (per model when its shape is known)",
            logx=True,
        ),
        "Throughput (tokens/s) versus GPU count, one line per solver",
    )
    doc.image(
        plots.line_plot(
            lat,
            title="MoE layer latency versus GPU count",
            xlabel="GPUs",
            ylabel="latency per MoE layer (us, mean)",
            logx=True,
        ),
        "Mean MoE layer latency (us) versus GPU count, one line per solver",
    )
    doc.table(_SCALING_HEADERS, rows)


def _scaling_row(solver: str, r: pd.Series) -> list[Any]:
    """One scenario's row of the scaling table (columns as in ``_SCALING_HEADERS``)."""
    return [
        solver,
        r["gpus"],
        r["num_nodes"],
        r["tokens_per_s"],
        r["tokens_per_s"] / r["gpus"],
        r["layer_us"],
        r["worst_layer_us"],
        r["usd_per_million_tokens"],
    ]


def _layer_profile(doc: _Doc, part: pd.DataFrame, layers: pd.DataFrame, chosen: str) -> None:
    """Per-layer latency of the chosen solver, one line per GPU count (nothing if no layer rows)."""
    sub = part[part["solver"] == chosen].sort_values("gpus")
    profile: dict[str, tuple[list[float], list[float]]] = {}
    for _, r in sub.iterrows():
        lay = layers[layers["key"] == r["key"]].sort_values("layer")
        if len(lay):
            profile[f"{r['gpus']} GPUs"] = (lay["layer"].tolist(), lay["layer_us"].tolist())
    if profile:
        doc.image(
            plots.line_plot(
                profile,
                title=f"Per-layer latency ({chosen})",
                xlabel="MoE layer index",
                ylabel="layer latency (us)",
            ),
            f"Latency of each MoE layer (us) at each GPU count, solver {chosen}",
        )


def _breakdown_section(doc: _Doc, ok: pd.DataFrame, slicer: _Slicer, varying: list[str]) -> None:
    doc.heading("2. Where the time goes")
    frame = ok
    note = ""
    if len(frame) > MAX_BARS:
        # Too many bars to read: keep the two most informative axes free, the rest at the reference.
        free = [a for a in ("gpus", "gpus_per_node", "solver", "overlap") if a in varying][:3]
        frame = slicer(ok, free)
        note = f" (axes other than {', '.join(free)} at the reference point)"
    frame = frame.head(MAX_BARS)
    labels = [_label(r, varying) for _, r in frame.iterrows()]
    doc.image(
        plots.breakdown_plot(
            labels,
            frame["compute_us"],
            frame["dispatch_us"],
            frame["combine_us"],
            frame["exposed_comm_us"],
            frame["layer_us"],
            title="Time per MoE layer by phase" + note,
        ),
        "Per scenario: compute, exposed dispatch and combine, communication hidden by overlap; "
        "the black tick is the layer time" + note,
    )
    share = (frame["exposed_comm_us"] / frame["layer_us"]).replace([np.inf, -np.inf], np.nan)
    rows = [
        [
            lab,
            r["compute_us"],
            r["dispatch_us"],
            r["combine_us"],
            r["exposed_comm_us"],
            r["layer_us"],
            s,
        ]
        for lab, (_, r), s in zip(labels, frame.iterrows(), share, strict=True)
    ]
    doc.table(
        [
            "scenario",
            "compute us",
            "dispatch us",
            "combine us",
            "exposed comm us",
            "layer us",
            "exposed share",
        ],
        rows,
    )


def _placement_section(
    doc: _Doc, ok: pd.DataFrame, varying: list[str], chosen: str, findings: dict[str, Any]
) -> None:
    doc.heading("3. What placement optimisation buys")
    refs = [s for s in REFERENCE_SOLVERS if s in set(ok["solver"])]
    others = [s for s in dict.fromkeys(ok["solver"]) if s not in REFERENCE_SOLVERS]
    if not refs or not others:
        doc.para("Needs an optimising solver and a reference (contiguous or eplb) in the sweep.")
        return
    group_axes = [a for a in varying if a != "solver"]
    group_cols = [_field(a) for a in group_axes]
    rows = []
    bars: dict[str, list[float]] = {f"{s} vs {r}": [] for s in others for r in refs}
    groups: list[str] = []
    grouped = ok.groupby(group_cols, sort=False) if group_cols else [((), ok)]
    for _, sub in grouped:
        by_solver = {r["solver"]: r for _, r in sub.iterrows()}
        if not any(r in by_solver for r in refs):
            continue
        first = next(iter(by_solver.values()))
        groups.append(_label(first, group_axes) or "all")
        for s in others:
            for r in refs:
                if s in by_solver and r in by_solver:
                    a, b = by_solver[s], by_solver[r]
                    speedup = b["step_us"] / a["step_us"]
                    bytes_saved = (
                        1 - a["inter_node_bytes"] / b["inter_node_bytes"]
                        if b["inter_node_bytes"]
                        else 0.0
                    )
                    rows.append(
                        [
                            groups[-1],
                            s,
                            r,
                            speedup,
                            bytes_saved,
                            a["mean_max_over_mean"],
                            b["mean_max_over_mean"],
                        ]
                    )
                    bars[f"{s} vs {r}"].append(speedup)
                else:
                    bars[f"{s} vs {r}"].append(float("nan"))
    if len(groups) <= MAX_BARS:
        doc.image(
            plots.grouped_bars(
                groups,
                bars,
                title="Speedup of the MoE layers over the reference layouts",
                ylabel="speedup (reference step time / solver step time)",
                reference_line=1.0,
            ),
            "Speedup of each solver over contiguous (the engines' default) and EPLB; above 1 is faster",
        )
    doc.table(
        [
            "scenario",
            "solver",
            "versus",
            "speedup",
            "inter-node bytes saved",
            "max/mean",
            "max/mean (versus)",
        ],
        rows,
    )
    for r in refs:
        vals = [row[3] for row in rows if row[1] == chosen and row[2] == r]
        if vals:
            findings[f"speedup_vs_{r}"] = float(np.median(vals))
            text = (
                f"{chosen} versus {r}: median speedup {np.median(vals):.3f}x "
                f"(range {min(vals):.3f}-{max(vals):.3f}x over {len(vals)} scenarios)."
            )
            doc.finding(text)


def _network_section(
    doc: _Doc,
    ok: pd.DataFrame,
    slicer: _Slicer,
    varying: list[str],
    chosen: str,
    options: ReportOptions,
    findings: dict[str, Any],
) -> None:
    doc.heading("4. Which topology and NIC bandwidth are worth paying for")
    doc.para(
        f"Cost per hour = GPUs x price per GPU-hour + network endpoints x cost per endpoint / "
        f"({options.amortisation_years:g} years x {HOURS_PER_YEAR:g} h). Endpoint costs from the "
        "Insights into DeepSeek-V3 paper (two-tier fat-tree, multi-plane 4.39 k$, three-tier 7.5 k$) "
        "unless overridden; a one-node cluster has no scale-out endpoints."
    )
    free: list[str] = [a for a in ("topology", "nic_gbps", "gpu") if a in varying]
    if not free:
        doc.para(
            "Neither topology, NIC bandwidth nor GPU type was swept (add --sweep topology=... "
            "or nic_gbps=...)."
        )
        return
    # The network only matters across nodes: compare at every swept GPU count that spans nodes.
    free += [a for a in ("gpus", "gpus_per_node") if a in varying]
    part = slicer(ok, free, solver=chosen)
    if not len(part):
        part = slicer(ok, [*free, "solver"])
    if (part["num_nodes"] > 1).any():
        part = part[part["num_nodes"] > 1]
    part = part.sort_values("usd_per_million_tokens")
    points = [
        (_label(r, free), r["usd_per_million_tokens"], r["tokens_per_s"])
        for _, r in part.iterrows()
    ]
    doc.image(
        plots.cost_scatter(points, title=f"Cost against throughput ({chosen})"),
        "Cost per million tokens against throughput, one point per topology / NIC / GPU choice; "
        "lower right is better",
    )
    rows = [
        [
            _label(r, free),
            r["tokens_per_s"],
            r["layer_us"],
            r["exposed_comm_us"],
            r["usd_per_hour"],
            r["usd_per_million_tokens"],
        ]
        for _, r in part.iterrows()
    ]
    doc.table(
        ["configuration", "tokens/s", "layer us", "exposed comm us", "$/hour", "$/M tok"], rows
    )
    if len(part):
        cheapest = part.iloc[0]
        fastest = _row_of_max(part, "tokens_per_s")
        findings["cheapest_network"] = _label(cheapest, free)
        text = (
            f"Cheapest per token: {_label(cheapest, free)} at "
            f"{_fmt(cheapest['usd_per_million_tokens'])} $/M tokens; fastest: {_label(fastest, free)} "
            f"at {_fmt(fastest['tokens_per_s'])} tokens/s "
            f"({_fmt(fastest['usd_per_million_tokens'])} $/M tokens)."
        )
        doc.finding(text)


def _target_section(
    doc: _Doc,
    ok: pd.DataFrame,
    varying: list[str],
    answers: _Answers,
    findings: dict[str, Any],
) -> None:
    doc.heading("5. Smallest cluster meeting the target")
    frontier = []
    for gpus, sub in ok.groupby("gpus"):
        best = _row_of_max(sub, "tokens_per_s")
        fastest = _row_of_max(sub, "layer_us", lowest=True)
        frontier.append(
            [
                gpus,
                best["tokens_per_s"],
                _label(best, varying),
                fastest["layer_us"],
                best["usd_per_million_tokens"],
            ]
        )
    if answers.smallest is not None:
        findings["smallest_cluster"] = answers.smallest
    doc.finding(answers.advice)
    doc.table(
        ["gpus", "best tokens/s (model)", "at", "lowest us per MoE layer", "$/M tok (best)"],
        frontier,
    )
