"""Capture from a tiny random config of every supported architecture: the recorded expert ids must be
the selection the model really used.

The independent check is a forward *pre*-hook on each MoE layer's fused experts module, which reads the
``top_k_index`` the experts were actually called with (for DBRX that is also the capture point, so its
check is the gate-weight sum instead). JetMoE's experts never receive the ids; its gate is a plain
top-k of its logits, which the check recomputes from the logits the gate returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from moe_placement.traces.capture import (  # noqa: E402
    TINY_CONFIGS,
    CaptureOptions,
    capture,
    find_router_sites,
    load_model,
)
from moe_placement.traces.capture.inputs import make_sequences, read_documents  # noqa: E402
from moe_placement.traces.reader import TraceFile  # noqa: E402
from moe_placement.traces.tinymoe import CHECKPOINT_DIR  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (CHECKPOINT_DIR / "tokenizer.json").exists(), reason="bundled tokenizer absent"
)

TEXT = {
    "plays": "Kent. I thought the King had more affected the Duke of Albany than Cornwall.\n"
    "Glou. It did always seem so to us; but now, in the division of the kingdom, it appears not "
    "which of the Dukes he values most.\n" * 3,
    "code": "def mean(values):\n    total = 0\n    for v in values:\n        total += v\n"
    "    return total / len(values)\n\nclass Box:\n    def __init__(self, size):\n        self.size = size\n"
    * 3,
}
OPTIONS = CaptureOptions(tokens=160, batch=3, seq_len=40)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("capture_text")
    for name, text in TEXT.items():
        (folder / f"{name}.txt").write_text(text)
    return folder


def _experts_module_path(site_path: str, kind: str) -> str:
    return site_path if kind == "experts_pre" else site_path.rsplit(".", 1)[0] + ".experts"


def _independent_selection(loaded: Any, text_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Replay the capture's batches; return (ids[layers, tokens, k], weight sums[layers, tokens])."""
    model = loaded.model
    sites = find_router_sites(model)
    modules = dict(model.named_modules())
    seen: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {i: [] for i in range(len(sites))}
    handles = []
    for index, site in enumerate(sites):
        if site.kind == "jetmoe":

            def jet(_m: Any, _i: Any, out: Any, index: int = index) -> None:
                logits = out[4]
                top = logits.topk(int(_m.top_k), dim=1)
                gates = torch.softmax(top.values, dim=1)
                seen[index].append((top.indices.numpy(), gates.sum(dim=1).numpy()))

            handles.append(modules[site.path].register_forward_hook(jet))
        else:

            def pre(_m: Any, args: Any, index: int = index) -> None:
                seen[index].append(
                    (
                        args[1].reshape(-1, args[1].shape[-1]).numpy(),
                        args[2].reshape(-1, args[2].shape[-1]).float().sum(dim=1).numpy(),
                    )
                )

            handles.append(
                modules[_experts_module_path(site.path, site.kind)].register_forward_pre_hook(pre)
            )
    seqs = make_sequences(
        read_documents([text_dir]), loaded.tokenizer, OPTIONS.seq_len, OPTIONS.tokens
    )
    pad = loaded.tokenizer.pad_token_id
    masks = []
    try:
        for start in range(0, len(seqs), OPTIONS.batch):
            batch = seqs[start : start + OPTIONS.batch]
            width = max(len(s.ids) for s in batch)
            ids = np.full((len(batch), width), pad)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for row, s in enumerate(batch):
                ids[row, : len(s.ids)] = s.ids
                mask[row, : len(s.ids)] = 1
            with torch.inference_mode():
                model(
                    input_ids=torch.from_numpy(ids),
                    attention_mask=torch.from_numpy(mask),
                    use_cache=False,
                )
            masks.append(mask.ravel().astype(bool))
    finally:
        for handle in handles:
            handle.remove()
    keep = np.concatenate(masks)
    ids = np.stack([np.concatenate([c[0] for c in seen[i]])[keep] for i in range(len(sites))])
    sums = np.stack([np.concatenate([c[1] for c in seen[i]])[keep] for i in range(len(sites))])
    return ids[:, : OPTIONS.tokens], sums[:, : OPTIONS.tokens]


@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
def test_recorded_ids_are_the_routers_selection(arch: str, text_dir: Path, tmp_path: Path) -> None:
    loaded = load_model(arch=arch, seed=1, device="cpu")
    result = capture(loaded, [text_dir], tmp_path / "t.parquet", OPTIONS, progress=False)
    assert result.tokens == OPTIONS.tokens
    trace = TraceFile(result.path)
    chunk = trace.read_all()
    expected_ids, expected_sums = _independent_selection(loaded, text_dir)
    assert chunk.expert_ids.shape == expected_ids.shape
    np.testing.assert_array_equal(np.sort(chunk.expert_ids, axis=2), np.sort(expected_ids, axis=2))
    np.testing.assert_allclose(chunk.weights.sum(axis=2), expected_sums, rtol=1e-4, atol=1e-5)
    assert set(np.unique(chunk.domain)) == {"plays", "code"}
    assert trace.meta.num_experts == find_router_sites(loaded.model)[0].num_experts


def test_deepseek_v3_selection_is_biased_and_group_limited(text_dir: Path, tmp_path: Path) -> None:
    """The hooked ids follow the bias and the group limit: they differ from a plain top-k of the
    scores, and every token's experts lie in at most topk_group groups."""
    loaded = load_model(arch="deepseek-v3", seed=1, device="cpu")
    config = loaded.model.config
    result = capture(loaded, [text_dir], tmp_path / "t.parquet", OPTIONS, progress=False)
    ids = TraceFile(result.path).read_all().expert_ids
    group_size = config.n_routed_experts // config.n_group
    groups_used = np.array(
        [[len(set((row // group_size).tolist())) for row in layer] for layer in ids]
    )
    assert groups_used.max() <= config.topk_group
    logits: list[np.ndarray] = []
    sites = find_router_sites(loaded.model)
    modules = dict(loaded.model.named_modules())
    handle = modules[sites[0].path].register_forward_hook(
        lambda _m, _i, out: logits.append(out[0].numpy())
    )
    seqs = make_sequences(
        read_documents([text_dir]), loaded.tokenizer, OPTIONS.seq_len, OPTIONS.tokens
    )
    try:
        with torch.inference_mode():
            loaded.model(input_ids=torch.from_numpy(seqs[0].ids[None, :]))
    finally:
        handle.remove()
    plain = np.argsort(-logits[0], axis=1)[:, : config.num_experts_per_tok]
    hooked = ids[0, : len(seqs[0].ids)]
    differs = [set(a.tolist()) != set(b.tolist()) for a, b in zip(plain, hooked, strict=True)]
    assert any(differs), "biased, group-limited routing should differ from a plain top-k somewhere"


def test_decode_mode_records_steps(text_dir: Path, tmp_path: Path) -> None:
    loaded = load_model(arch="qwen3-moe", seed=2, device="cpu")
    options = CaptureOptions(tokens=120, batch=2, mode="decode", prompt_len=8, new_tokens=6)
    result = capture(loaded, [text_dir], tmp_path / "d.parquet", options, progress=False)
    chunk = TraceFile(result.path).read_all()
    assert result.tokens == 120
    assert (
        chunk.step.max() == 5
    )  # the prompt pass is step 0; new tokens 2..6 are forwarded as steps 1..5
    for seq in np.unique(chunk.seq_id):
        rows = chunk.seq_id == seq
        pos, step = chunk.pos[rows], chunk.step[rows]
        assert np.array_equal(np.sort(pos), np.arange(len(pos)))
        prompt_len = int((step == 0).sum())
        assert np.array_equal(pos[step > 0], prompt_len + step[step > 0] - 1)


def test_unlisted_architecture_from_a_checkpoint_folder(text_dir: Path, tmp_path: Path) -> None:
    """GLM-4-MoE is not in the router table: the generic router-class match finds its gates, and a
    checkpoint folder loads through ``--model PATH``; the ids still equal the experts' inputs."""
    import shutil

    from transformers import AutoModelForCausalLM, Glm4MoeConfig

    config = Glm4MoeConfig(
        vocab_size=1024,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=1,
        moe_intermediate_size=16,
        intermediate_size=32,
    )
    torch.manual_seed(0)
    folder = tmp_path / "glm"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(CHECKPOINT_DIR / name, folder / name)
    loaded = load_model(folder, device="cpu")
    result = capture(loaded, [text_dir], tmp_path / "t.parquet", OPTIONS, progress=False)
    trace = TraceFile(result.path)
    assert trace.meta.moe_layer_ids == [1, 2] and trace.meta.model_name == "glm"
    expected_ids, _ = _independent_selection(loaded, text_dir)
    np.testing.assert_array_equal(
        np.sort(trace.read_all().expert_ids, axis=2), np.sort(expected_ids, axis=2)
    )


def test_streaming_writes_bounded_row_groups(text_dir: Path, tmp_path: Path) -> None:
    loaded = load_model(arch="mixtral", seed=0, device="cpu")
    options = CaptureOptions(tokens=160, batch=1, seq_len=40, row_group_tokens=32)
    trace = TraceFile(
        capture(loaded, [text_dir], tmp_path / "s.parquet", options, progress=False).path
    )
    assert trace.num_row_groups >= 5
    assert trace.validate() == 160
