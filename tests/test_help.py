"""Help that teaches: every default shown, names listed, ``--version``, units on the solve figures, and a
bare ``placement solve`` that runs on the bundled trace."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from moe_placement.cli.commands._help import HelpFormatter, version
from moe_placement.cli.main import build_parser, main
from moe_placement.cluster import PRESETS
from moe_placement.solvers import REGISTRY


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"placement {version()}"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", version())


def test_every_default_is_shown() -> None:
    missing = []
    for name, sub in _subparsers().items():
        assert isinstance(sub.formatter_class, type) and issubclass(
            sub.formatter_class, HelpFormatter
        ), name
        formatter = HelpFormatter(prog=name)
        for action in sub._actions:
            if not action.option_strings or action.nargs == 0 or action.default in (None, []):
                continue
            formatter.add_argument(action)  # gives a help-less option its default line
            if "default" not in formatter._expand_help(action):
                missing.append(f"{name} {action.option_strings[0]}")
    assert not missing, f"options whose help hides their default: {missing}"


def test_names_are_listed() -> None:
    subs = _subparsers()
    solve_help = " ".join(subs["solve"].format_help().split())
    assert all(name in solve_help for name in REGISTRY), solve_help
    assert all(name in solve_help for name in PRESETS), solve_help
    assert "{standard,coherent}" in solve_help  # choices appear as argparse lists them
    regress_help = " ".join(subs["regress"].format_help().split())
    assert all(name in regress_help for name in REGISTRY)


def test_bare_solve_runs_on_the_bundled_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["solve", "--time-limit", "0.5"]) == 0  # the time limit only keeps the test short
    captured = capsys.readouterr()
    assert "the bundled trace" in captured.err and "16 GPUs" in captured.err
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["num_gpus"] == 16
    head = captured.out.splitlines()[0]
    # units on the headline figures: times and bound in us, gap in %
    assert re.search(r"MoE time [\d.]+ us, bound [\d.]+ us, gap [\d.]+%", head), head


def test_compare_gap_is_in_percent(tiny_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compare", "--trace", str(tiny_trace), "--gpus", "4", "--solvers", "greedy,contiguous"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("solver"))
    gap_at = header.split().index("gap") - len(
        header.split()
    )  # from the right: the method may hold spaces
    rows = [line for line in lines if line.split()[:1] in (["greedy"], ["contiguous"])]
    assert len(rows) == 2
    for row in rows:
        cells = re.split(r"\s{2,}", row.strip())
        assert cells[gap_at].endswith("%"), row
