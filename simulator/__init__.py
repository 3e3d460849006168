"""Discrete-event network simulator (SimPy, fluid max-min fair flows) of MoE all-to-all on real topologies.

Abbreviations used across the package: EP expert parallelism; NVL NVLink; NIC network card (one per rail or
plane); PXN NCCL's cross-rail relay over NVLink; MPFT multi-plane fat-tree; 2DH Tutel's two-level
hierarchical all-to-all; DeepEP the hierarchical, node-deduplicated dispatch/combine of deepseek-ai/DeepEP.

Public API: :func:`simulate_moe` (a plan on a trace, layer by layer, with overlap modes),
:func:`simulate_uniform` (DeepEP-style microbenchmark), :class:`SimResult`; the building blocks are
:mod:`moe_placement.simulator.topology`, :mod:`moe_placement.simulator.engine` and :mod:`moe_placement.simulator.collectives`.
"""

from moe_placement.simulator.moe import OVERLAPS, SimResult, simulate_moe, simulate_uniform

__all__ = ["OVERLAPS", "SimResult", "simulate_moe", "simulate_uniform"]
