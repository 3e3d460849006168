"""Forward hooks that record each MoE layer's real top-k selection during a forward pass.

Use as a context manager around forward calls; :meth:`RouterRecorder.pop` returns what the last pass
recorded as ``expert_ids[moe_layers, tokens, k]`` and ``weights[moe_layers, tokens, k]`` over the flattened
``batch * seq`` tokens of that pass (the order the routers see them in).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import numpy as np

from moe_placement.errors import PlacementError
from moe_placement.traces.capture.archs import RouterSite, find_router_sites


def _jetmoe_selection(output: tuple[Any, ...], top_k: int) -> tuple[Any, Any]:
    """Per-token ``(ids[T, k], gates[T, k])`` from JetMoE's grouped gate output.

    ``index_sorted_experts[j]`` is the flat (token * k + slot) position of the j-th entry after sorting
    by expert, and the first ``expert_size[0]`` entries belong to expert 0, and so on: scattering back
    through the permutation gives exactly the per-token selection the experts computed.
    """
    import torch

    index_sorted, _batch_index, batch_gates, expert_size, _logits = output
    sizes = torch.as_tensor(expert_size, device=index_sorted.device)
    expert_of_sorted = torch.repeat_interleave(
        torch.arange(len(expert_size), device=sizes.device), sizes
    )
    flat_ids = torch.empty_like(index_sorted)
    flat_ids[index_sorted] = expert_of_sorted
    flat_gates = torch.empty_like(batch_gates)
    flat_gates[index_sorted] = batch_gates
    return flat_ids.view(-1, top_k), flat_gates.view(-1, top_k)


class RouterRecorder:
    """Hooks on every router of ``model``; collects ids and weights per forward pass."""

    def __init__(self, model: Any, sites: list[RouterSite] | None = None) -> None:
        self.model = model
        self.sites = sites if sites is not None else find_router_sites(model)
        self.num_experts = self.sites[0].num_experts
        self.top_k: int | None = None
        self._records: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._handles: list[Any] = []

    def _store(self, index: int, ids: Any, weights: Any) -> None:
        k = int(ids.shape[-1])
        ids_np = ids.detach().reshape(-1, k).to("cpu").numpy().astype(np.int64, copy=False)
        w_np = weights.detach().reshape(-1, k).float().to("cpu").numpy()
        if self.top_k is None:
            self.top_k = k
        elif self.top_k != k:
            raise PlacementError(
                f"router {self.sites[index].path}: top-k {k} differs from {self.top_k}"
            )
        self._records.setdefault(index, []).append((ids_np, w_np))

    def _make_hook(self, index: int, site: RouterSite) -> Any:
        if site.kind == "tuple3":

            def hook(_module: Any, _inputs: Any, output: Any) -> None:
                if not isinstance(output, tuple) or len(output) < 3:
                    raise PlacementError(
                        f"router {site.path} did not return (logits, weights, indices)"
                    )
                self._store(index, output[2], output[1])

            return hook
        if site.kind == "jetmoe":

            def jet_hook(module: Any, _inputs: Any, output: Any) -> None:
                ids, gates = _jetmoe_selection(output, int(module.top_k))
                self._store(index, ids, gates)

            return jet_hook

        def pre_hook(_module: Any, args: Any, kwargs: Any) -> None:
            ids = kwargs.get("top_k_index", args[1] if len(args) > 1 else None)
            weights = kwargs.get("top_k_weights", args[2] if len(args) > 2 else None)
            if ids is None or weights is None:
                raise PlacementError(
                    f"experts module {site.path} called without (top_k_index, top_k_weights)"
                )
            self._store(index, ids, weights)

        return pre_hook

    def __enter__(self) -> RouterRecorder:
        modules = dict(self.model.named_modules())
        for index, site in enumerate(self.sites):
            module = modules[site.path]
            hook = self._make_hook(index, site)
            if site.kind == "experts_pre":
                self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            else:
                self._handles.append(module.register_forward_hook(hook))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def pop(self) -> tuple[np.ndarray, np.ndarray]:
        """``(expert_ids[layers, T, k], weights[layers, T, k])`` of the calls since the last pop."""
        if len(self._records) != len(self.sites) or any(
            len(v) != 1 for v in self._records.values()
        ):
            got = {self.sites[i].path: len(v) for i, v in self._records.items()}
            self._records.clear()
            raise PlacementError(
                f"expected one router call per MoE layer in this forward pass, got {got or 'none'}"
            )
        ids = np.stack([self._records[i][0][0] for i in range(len(self.sites))])
        weights = np.stack([self._records[i][0][1] for i in range(len(self.sites))])
        self._records.clear()
        return ids, weights
