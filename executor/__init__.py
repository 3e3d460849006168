"""Ray executor: run a placement plan on real collectives, calibrate the simulator, measure against it.

Layout (Ray only in :mod:`~moe_placement.executor.group`; nothing in the core, solvers or simulator imports
this package):

* :mod:`~moe_placement.executor.routing` per-rank replay instructions from a plan and a trace (NumPy);
* :mod:`~moe_placement.executor.kernels` dispatch / SwiGLU expert GEMMs / combine on torch.distributed;
* :mod:`~moe_placement.executor.worker` one rank (a Ray actor); :mod:`~moe_placement.executor.group` the actors,
  the process group, deadlines and fault reporting;
* :mod:`~moe_placement.executor.driver` token selection, preflight checks, timing collection;
* :mod:`~moe_placement.executor.calibrate` microbenchmarks fitted into a cluster spec;
* :mod:`~moe_placement.executor.predict` / :mod:`~moe_placement.executor.validate` the simulator's prediction
  for the same run and the comparison.

Abbreviations: D1/D2 the two dispatch stages (direct or to the forwarder / forwarder fan-out), spg slots
per GPU, G ranks.
"""
