"""Capture routing traces from real transformers MoE forward passes (hooks on the router modules).

``load_model`` gives the bundled tiny MoE, a local checkpoint, or a tiny random config of a named
architecture; ``capture`` runs it on text files, folders or JSONL prompts (prefill or decode) and streams
every token's real top-k expert ids and gate weights per MoE layer into a trace. torch and transformers
are imported lazily, so this package imports without them.
"""

from moe_placement.traces.capture.archs import (
    ROUTER_PATTERNS,
    TINY_CONFIGS,
    RouterSite,
    find_router_sites,
    tiny_config,
)
from moe_placement.traces.capture.run import (
    MODES,
    CaptureOptions,
    CaptureResult,
    LoadedModel,
    capture,
    load_model,
)

__all__ = [
    "MODES",
    "ROUTER_PATTERNS",
    "TINY_CONFIGS",
    "CaptureOptions",
    "CaptureResult",
    "LoadedModel",
    "RouterSite",
    "capture",
    "find_router_sites",
    "load_model",
    "tiny_config",
]
