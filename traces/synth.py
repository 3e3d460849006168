"""Seeded synthetic routing traces with controllable skew, co-activation and inter-layer affinity.

Each layer has its own expert popularity, Zipf(``zipf_s``) over a random permutation of the experts. A
token's k experts are drawn without replacement by the Gumbel-top-k trick on log-popularity, with two
biases: with probability ``affinity`` its top-1 expert follows a fixed per-layer successor of its top-1 at
the previous layer (inter-layer affinity, as ExFlow observes), and experts in the same hidden group as its
top-1 get ``coactivation`` extra logit (co-activation). Sequences may belong to ``domains`` with their own
popularity tilt. ``drift`` moves the popularity over time: token ``t`` of ``N`` draws from log-popularity
``(1 - a) p0 + a p1`` with ``a = drift * t / N`` and ``p1`` another random permutation (0: stationary).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from moe_placement.errors import PlacementError
from moe_placement.traces.schema import TraceMeta
from moe_placement.traces.writer import TraceWriter


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the generator. ``group_size`` is the size of co-activation groups."""

    num_layers: int = 4
    num_experts: int = 16
    top_k: int = 2
    num_tokens: int = 4096
    seq_len: int = 256
    zipf_s: float = 0.8
    coactivation: float = 2.0
    group_size: int = 4
    affinity: float = 0.6
    domains: int = 1
    drift: float = 0.0
    hidden_size: int = 1024
    expert_intermediate_size: int = 512
    model_name: str = "synthetic"

    def validate(self) -> None:
        if min(self.num_layers, self.num_experts, self.top_k, self.num_tokens, self.seq_len) < 1:
            raise PlacementError("synth: layers, experts, top-k, tokens and seq-len must be >= 1")
        if self.top_k > self.num_experts:
            raise PlacementError(f"synth: top-k ({self.top_k}) > experts ({self.num_experts})")
        if not 0 <= self.affinity <= 1:
            raise PlacementError("synth: affinity must be in [0, 1]")
        if not 0 <= self.drift <= 1:
            raise PlacementError("synth: drift must be in [0, 1]")
        if self.zipf_s < 0 or self.coactivation < 0 or self.group_size < 1 or self.domains < 1:
            raise PlacementError("synth: zipf, coactivation must be >= 0; group size, domains >= 1")


def generate(
    config: SynthConfig, out: str | os.PathLike[str], seed: int = 0, progress: bool = False
) -> int:
    """Write a synthetic trace to ``out``; return the number of tokens written."""
    config.validate()
    rng = np.random.default_rng(seed)
    layers, experts, k = config.num_layers, config.num_experts, config.top_k
    ranks = np.arange(1, experts + 1, dtype=np.float64)
    base = -config.zipf_s * np.log(ranks)
    logp = np.stack([base[rng.permutation(experts)] for _ in range(layers)])  # [layers, experts]
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    drift_to = None
    if config.drift > 0:  # its own generator: drift 0 writes exactly the trace it always did
        drift_rng = np.random.default_rng([seed, 1])
        drift_to = np.stack([base[drift_rng.permutation(experts)] for _ in range(layers)])
        drift_to -= np.log(np.exp(drift_to).sum(axis=1, keepdims=True))
    tilt = (
        rng.normal(0.0, 0.7, size=(config.domains, layers, experts)) if config.domains > 1 else None
    )
    groups = np.stack([rng.permutation(experts) // config.group_size for _ in range(layers)])
    successor = np.stack([rng.permutation(experts) for _ in range(max(layers - 1, 1))])
    meta = TraceMeta(
        model_name=config.model_name,
        num_moe_layers=layers,
        num_experts=experts,
        top_k=k,
        hidden_size=config.hidden_size,
        expert_intermediate_size=config.expert_intermediate_size,
        source=(
            f"synthetic(seed={seed}, zipf={config.zipf_s}, coact={config.coactivation}, "
            f"group={config.group_size}, affinity={config.affinity}, domains={config.domains}"
            + (f", drift={config.drift})" if config.drift > 0 else ")")
        ),
    )
    chunk_tokens = max(1, min(config.num_tokens, max(256, 2_000_000 // (experts * layers))))
    domain_names = np.array([f"domain{d}" for d in range(config.domains)], dtype=object)
    with TraceWriter(out, meta, with_domain=config.domains > 1) as writer:
        bar = tqdm(
            total=config.num_tokens,
            desc="synth",
            unit="tok",
            disable=None if progress else True,
            leave=False,
        )
        for start in range(0, config.num_tokens, chunk_tokens):
            n = min(chunk_tokens, config.num_tokens - start)
            token = np.arange(start, start + n)
            seq_id = token // config.seq_len
            pos = token % config.seq_len
            dom = seq_id % config.domains
            ids = np.empty((layers, n, k), dtype=np.int64)
            wts = np.empty((layers, n, k), dtype=np.float32)
            prev_top1: np.ndarray | None = None
            for layer in range(layers):
                logits = logp[layer][None, :] + rng.gumbel(size=(n, experts))
                if drift_to is not None:
                    a = (config.drift * token / config.num_tokens)[:, None]
                    logits += a * (drift_to[layer] - logp[layer])[None, :]
                if tilt is not None:
                    logits += tilt[dom, layer]
                if prev_top1 is not None and config.affinity > 0:
                    follow = rng.random(n) < config.affinity
                    rows = np.flatnonzero(follow)
                    logits[rows, successor[layer - 1][prev_top1[rows]]] += 1e3
                top1 = np.argmax(logits, axis=1)
                if config.coactivation > 0 and k > 1:
                    same = groups[layer][None, :] == groups[layer][top1][:, None]
                    logits += config.coactivation * same
                chosen = np.argpartition(-logits, k - 1, axis=1)[:, :k]
                chosen_logits = np.take_along_axis(logits, chosen, axis=1)
                order = np.argsort(-chosen_logits, axis=1, kind="stable")
                chosen = np.take_along_axis(chosen, order, axis=1)
                # Gate weights: softmax over the chosen experts' (unbiased) log-popularity.
                raw = logp[layer][chosen]
                weight = np.exp(raw - raw.max(axis=1, keepdims=True))
                weight /= weight.sum(axis=1, keepdims=True)
                weight = np.sort(weight, axis=1)[:, ::-1]
                ids[layer] = chosen
                wts[layer] = weight
                prev_top1 = chosen[:, 0]
            writer.write(
                np.zeros(n, dtype=np.int32),
                seq_id,
                pos,
                ids,
                wts,
                domain_names[dom] if config.domains > 1 else None,
            )
            bar.update(n)
        bar.close()
    return config.num_tokens
