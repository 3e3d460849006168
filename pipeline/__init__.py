"""The pipeline floor: trace -> solve -> evaluate -> simulate for one scenario, and sweeps of scenarios.

What-if, regress, the demo and the benchmarks run scenarios through here, so one scenario gives one set
of numbers everywhere. It sits above traces, solvers, simulator and executor, below reports and the CLI;
Ray appears only in :mod:`moe_placement.pipeline.sweep`, with a serial fallback.
"""
