"""The bundled pretrained tiny MoE: a 4-layer, 16-expert, top-2 Qwen3-MoE trained on CPU in minutes.

``CHECKPOINT_DIR`` holds ``config.json``, ``model.safetensors`` and the locally trained tokenizer; any
transformers 5.x loads it offline (``AutoModelForCausalLM.from_pretrained(CHECKPOINT_DIR)``). It is what
``placement capture`` runs when given no model. Retrain with ``python -m traces.tinymoe.train`` (seeded;
see ``MODEL_CARD.md`` for the data, the steps, the loss curve and the routing statistics).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKPOINT_DIR = PACKAGE_DIR / "checkpoint"
MODEL_CARD = PACKAGE_DIR / "MODEL_CARD.md"

__all__ = ["CHECKPOINT_DIR", "MODEL_CARD", "PACKAGE_DIR"]
