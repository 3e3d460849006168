"""moe-placement: where the experts of a Mixture-of-Experts model should live on a GPU cluster.

Abbreviations used across the packages (defined once, here):

- ``log`` / logical expert: one of the model's routed experts, ``0 .. num_experts-1``.
- ``phy`` / physical slot: a place on a GPU that holds one copy (replica) of a logical expert.
  Slot ``s`` lives on GPU ``s // slots_per_gpu``.
- ``cnt``: number of replicas of a logical expert.
- ``phy2log[layers, slots]``, ``log2phy[layers, experts, max_replicas]`` (-1 padded) and
  ``logcnt[layers, experts]``: DeepSeek EPLB's three maps, used by SGLang and vLLM.
- ``EP``: expert parallelism; ``DP``: data parallelism (attention runs data-parallel, so each token has a
  *home* GPU, its DP rank).
- ``dispatch`` / ``combine``: the two all-to-alls of a standard EP MoE layer.
- ``coherent``: context-coherent EP (ExFlow): a token continues on the GPU of its top-1 expert.

Package layering (imports only go downwards): ``placement`` core (cluster, plan, metrics) <-
``traces`` <- ``solvers`` / ``simulator`` <- executor, ``reports`` and the CLI.
"""

from moe_placement.errors import PlacementError

__all__ = ["PlacementError", "__version__"]
__version__ = "0.1.0"
