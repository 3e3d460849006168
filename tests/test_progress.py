"""Progress and quiet: long steps say what they do on stderr (on a terminal, or when asked), never on
stdout, and third-party noise is filtered by logger name."""

from __future__ import annotations

import logging
import time

import pytest

from moe_placement import progress


def test_step_says_what_it_does_when_asked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(progress.ENV, "1")
    with progress.step("calibrating"):
        pass
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "placement: calibrating...\n"  # quick steps add no time line


def test_a_slow_step_says_its_time(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(progress.ENV, "1")
    clock = iter([100.0, 103.5])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    with progress.step("starting a local Ray"):
        pass
    assert capsys.readouterr().err.splitlines()[-1] == "placement: starting a local Ray: 3.5 s"


def test_silent_when_off_or_piped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(progress.ENV, "0")
    progress.say("anything")
    monkeypatch.delenv(progress.ENV)
    progress.say(
        "anything"
    )  # stderr captured here is no terminal: the one-line error contract holds
    assert capsys.readouterr().err == ""


def test_ray_token_notice_is_dropped_and_other_warnings_stay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    progress.quiet_ray_token_notice()
    progress.quiet_ray_token_notice()  # idempotent
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING):
        logger.warning(
            "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled ..."
        )
        logger.warning("Token authentication is disabled for this Ray cluster. Anyone ...")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and messages[0].startswith("Token authentication is disabled")
