"""``placement capture`` end to end: the bundled model, JSONL prompts, decode, and clear errors; and the
shipped default trace's learned structure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from moe_placement.cli.main import main
from moe_placement.traces.data import DEFAULT_TRACE, HELDOUT_DIR
from moe_placement.traces.reader import TraceFile
from moe_placement.traces.tinymoe import CHECKPOINT_DIR

needs_bundled = pytest.mark.skipif(
    not (CHECKPOINT_DIR / "model.safetensors").exists(), reason="bundled tiny MoE absent"
)


@needs_bundled
def test_default_capture_uses_the_bundled_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "t.parquet"
    assert main(["capture", "--out", str(out), "--tokens", "600", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tokens"] == 600 and summary["model"] == "tiny-moe"
    trace = TraceFile(out)
    assert trace.validate() == 600
    assert trace.meta.num_moe_layers == 4 and trace.meta.num_experts == 16 and trace.meta.top_k == 2
    assert set(np.unique(trace.read_all().domain)) == {p.stem for p in HELDOUT_DIR.iterdir()}


@needs_bundled
def test_jsonl_prompts_and_decode(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "\n".join(
            json.dumps(x)
            for x in [
                {"text": "To be, or not to be, that is the question:", "domain": "verse"},
                {"prompt": "def fib(n):\n    return n if n < 2 else", "domain": "code"},
                "A plain string prompt about the weather in Paris.",
            ]
        )
        + "\n"
    )
    out = tmp_path / "d.parquet"
    assert (
        main(
            [
                "capture",
                "--input",
                str(prompts),
                "--mode",
                "decode",
                "--new-tokens",
                "5",
                "--tokens",
                "200",
                "--batch",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    chunk = TraceFile(out).read_all()
    assert set(np.unique(chunk.domain)) == {"verse", "code", "prompts"}
    assert chunk.step.max() == 4


def test_arch_capture_from_cli(tmp_path: Path) -> None:
    if not (CHECKPOINT_DIR / "tokenizer.json").exists():
        pytest.skip("bundled tokenizer absent")
    text = tmp_path / "in.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    out = tmp_path / "g.parquet"
    assert (
        main(
            [
                "capture",
                "--arch",
                "gpt-oss",
                "--input",
                str(text),
                "--tokens",
                "100",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert TraceFile(out).meta.model_name == "tiny-gpt-oss"


def test_capture_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "x.parquet")
    assert main(["capture", "--arch", "nosuch", "--out", out]) == 2
    assert "unknown architecture" in capsys.readouterr().err
    assert main(["capture", "--model", str(tmp_path / "missing"), "--out", out]) == 2
    assert "not found" in capsys.readouterr().err
    if (CHECKPOINT_DIR / "tokenizer.json").exists():
        assert (
            main(
                [
                    "capture",
                    "--arch",
                    "mixtral",
                    "--input",
                    str(tmp_path / "nope.txt"),
                    "--out",
                    out,
                ]
            )
            == 2
        )
        assert "input not found" in capsys.readouterr().err
    assert main(["capture", "--tokens", "0", "--out", out]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["capture", "--model", "a", "--arch", "mixtral", "--out", out])
    assert exc.value.code == 2
    assert not Path(out).exists()


def test_model_without_moe_layers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not (CHECKPOINT_DIR / "tokenizer.json").exists():
        pytest.skip("bundled tokenizer absent")
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "dense"
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=1024,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    ).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(CHECKPOINT_DIR / name, folder / name)
    assert main(["capture", "--model", str(folder), "--out", str(tmp_path / "x.parquet")]) == 2
    assert "no MoE layers" in capsys.readouterr().err


@pytest.mark.skipif(not DEFAULT_TRACE.exists(), reason="default trace absent")
def test_default_trace_has_learned_structure() -> None:
    """The shipped trace: inter-layer NMI >= 0.2 and domain-dependent routing."""
    from moe_placement.cli.commands._common import load_workload
    from moe_placement.traces.analytics import trace_stats

    trace = TraceFile(DEFAULT_TRACE)
    assert trace.meta.model_name == "tiny-moe" and trace.has_domain
    stats = trace_stats(load_workload(str(DEFAULT_TRACE), None, progress=False))
    assert stats["mean_nmi"] >= 0.2
    assert len(stats["domains"]) >= 2
    assert stats["mean_domain_nmi"] >= 0.1
