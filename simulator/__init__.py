"""Discrete-event network simulator (SimPy) of MoE all-to-all on real topologies (work in progress)."""
