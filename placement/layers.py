"""Layer identity: which of a model's layers are MoE layers, and how many layers the model has.

Traces and plans number MoE layers 0..L-1 (the rows of ``load`` and ``phy2log``). Serving engines index
their expert maps differently: SGLang and TensorRT-LLM by *model* layer (DeepSeek-V3: 61 layers, the
first 3 dense), vLLM and DeepSeek EPLB by MoE layer. A :class:`LayerIdentity` carries the mapping from
one to the other, so that an export lands each MoE layer's placement on the model layer it was fitted to.

Where it comes from (each input that says so): a ``logical_count`` with all-zero dense rows, a captured
Hugging Face config (:func:`layers_from_hf_config`), a named model shape, or a flag.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from moe_placement.errors import PlacementError


@dataclass(frozen=True)
class LayerIdentity:
    """``moe_layer_ids[i]``: the model layer of MoE layer ``i`` (strictly increasing);
    ``total_layers``: every decoder layer of the model, dense ones included."""

    moe_layer_ids: tuple[int, ...]
    total_layers: int

    def __post_init__(self) -> None:
        ids = self.moe_layer_ids
        if not ids:
            raise PlacementError("layer identity: no MoE layer ids")
        if min(ids) < 0:
            raise PlacementError(f"layer identity: negative layer id {min(ids)}")
        if any(b <= a for a, b in pairwise(ids)):
            raise PlacementError("layer identity: MoE layer ids must be strictly increasing")
        if max(ids) >= self.total_layers:
            raise PlacementError(
                f"layer identity: MoE layer id {max(ids)} does not fit a model of "
                f"{self.total_layers} layers"
            )

    @classmethod
    def of(cls, moe_layer_ids: Iterable[int], total_layers: int | None = None) -> LayerIdentity:
        """From ids and a total (default: the last id + 1, i.e. no dense layers after the last MoE one)."""
        ids = tuple(int(i) for i in moe_layer_ids)
        if not ids:
            raise PlacementError("layer identity: no MoE layer ids")
        total = max(ids) + 1 if total_layers is None else int(total_layers)
        return cls(ids, total)

    @classmethod
    def contiguous(
        cls, first_moe_layer: int, num_moe_layers: int, total_layers: int | None = None
    ) -> LayerIdentity:
        """MoE layers ``first .. first + num - 1`` (dense layers first, as DeepSeek and GLM do)."""
        return cls.of(range(first_moe_layer, first_moe_layer + num_moe_layers), total_layers)

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layer_ids)

    @property
    def first_moe_layer(self) -> int:
        return self.moe_layer_ids[0]

    @property
    def dense_layer_ids(self) -> tuple[int, ...]:
        moe = set(self.moe_layer_ids)
        return tuple(i for i in range(self.total_layers) if i not in moe)

    def check_fits(self, num_moe_layers: int, what: str = "plan") -> LayerIdentity:
        """Raise unless this identity names exactly ``num_moe_layers`` MoE layers; return self."""
        if self.num_moe_layers != num_moe_layers:
            raise PlacementError(
                f"layer ids name {self.num_moe_layers} MoE layers but the {what} has {num_moe_layers}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "moe_layer_ids": list(self.moe_layer_ids),
            "total_layers": self.total_layers,
            "first_moe_layer": self.first_moe_layer,
        }


def _get(config: Any, name: str) -> Any:
    """A config attribute, looked up on the config and on its ``text_config`` (multimodal wrappers)."""
    value = getattr(config, name, None)
    if value is None:
        value = getattr(getattr(config, "text_config", None), name, None)
    return value


def layers_from_hf_config(config: Any) -> LayerIdentity | None:
    """The MoE layers a Hugging Face config declares, from the fields its model classes read.

    - DeepSeek V2/V3, GLM-4 MoE, Kimi: ``first_k_dense_replace`` (dense layers first) and
      ``moe_layer_freq`` (every n-th layer after them);
    - Qwen2/Qwen3 MoE: ``mlp_only_layers`` (dense by list) and ``decoder_sparse_step`` (layer i is MoE
      when ``(i + 1) % step == 0``);
    - others (Mixtral, OLMoE, gpt-oss, ...): every layer.

    None when the config has no ``num_hidden_layers`` or declares no MoE layer.
    """
    total = _get(config, "num_hidden_layers")
    if not isinstance(total, int) or total < 1:
        return None
    first_dense = _get(config, "first_k_dense_replace")
    sparse_step = _get(config, "decoder_sparse_step")
    mlp_only = _get(config, "mlp_only_layers")
    if isinstance(first_dense, int):
        freq = _get(config, "moe_layer_freq")
        freq = freq if isinstance(freq, int) and freq >= 1 else 1
        ids = [i for i in range(total) if i >= first_dense and i % freq == 0]
    elif isinstance(sparse_step, int) or mlp_only is not None:
        step = sparse_step if isinstance(sparse_step, int) and sparse_step >= 1 else 1
        dense = {int(i) for i in (mlp_only or [])}
        ids = [i for i in range(total) if i not in dense and (i + 1) % step == 0]
    else:
        ids = list(range(total))
    return LayerIdentity.of(ids, total) if ids else None


def resolve_layers(
    num_moe_layers: int,
    known: LayerIdentity | None,
    *,
    first_moe_layer: int | None = None,
    total_layers: int | None = None,
    what: str = "plan",
) -> LayerIdentity:
    """The layer identity an export or import uses: flags over what the input knows.

    ``first_moe_layer`` places the MoE layers contiguously from that model layer; ``total_layers`` sets
    the model's layer count. With neither flag, ``known`` (else MoE layer i is model layer i, no dense
    layers). ``total_layers`` alone on an input that does not know its ids is refused: which of the
    model's layers are dense cannot be guessed, and guessing wrong shifts every layer.
    """
    for flag, value in (("--first-moe-layer", first_moe_layer), ("--total-layers", total_layers)):
        if value is not None and value < 0:
            raise PlacementError(f"{flag} must be >= 0, got {value}")
    if first_moe_layer is not None:
        total = total_layers
        if total is None and known is not None and known.first_moe_layer == first_moe_layer:
            total = known.total_layers
        if total is not None and first_moe_layer + num_moe_layers > total:
            raise PlacementError(
                f"layer ids do not fit the model: {num_moe_layers} MoE layers from layer "
                f"{first_moe_layer} need {first_moe_layer + num_moe_layers} layers, the model has {total}"
            )
        return LayerIdentity.contiguous(first_moe_layer, num_moe_layers, total)
    if known is not None:
        known.check_fits(num_moe_layers, what)
        if total_layers is None:
            return known
        if known.moe_layer_ids[-1] >= total_layers:
            raise PlacementError(
                f"layer ids do not fit the model: MoE layer id {known.moe_layer_ids[-1]} in a model of "
                f"{total_layers} layers (--total-layers)"
            )
        return LayerIdentity(known.moe_layer_ids, total_layers)
    if total_layers is not None and total_layers != num_moe_layers:
        if total_layers < num_moe_layers:
            raise PlacementError(
                f"layer ids do not fit the model: {num_moe_layers} MoE layers in a model of "
                f"{total_layers} layers (--total-layers)"
            )
        raise PlacementError(
            f"the {what} does not record which of the {total_layers} model layers are its "
            f"{num_moe_layers} MoE layers: pass --first-moe-layer too"
        )
    return LayerIdentity.contiguous(0, num_moe_layers)
