"""Render the what-if report in headless Chromium: every plot loads, the page logs no errors.

Needs the Debian packages ``chromium`` (and ``chromium-driver`` for interactive use); skipped when no
Chromium binary is on the PATH. The check script is injected into a copy of the report: it records
``error`` events (a broken image fires one) and ``console.error`` calls, and after ``load`` writes the
image count, the broken-image count and the errors into the DOM, which ``--dump-dom`` prints.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from moe_placement.cli.main import main
from moe_placement.traces.data import DEFAULT_TRACE

CHROMIUM = next(
    (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p),
    None,
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium not on the PATH (to run it: install chromium, e.g. apt-get install chromium)",
)

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--enable-logging=stderr",
    "--v=0",
]

CHECK_SCRIPT = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  var what = e.message || (e.target && e.target.tagName ? 'failed to load ' + e.target.tagName : 'error');
  window.__errors.push(what);
}, true);
var __consoleError = console.error;
console.error = function () { window.__errors.push('console.error: ' + Array.from(arguments).join(' '));
                              __consoleError.apply(console, arguments); };
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0); });
  var div = document.createElement('div');
  div.id = '__check';
  div.setAttribute('data-images', String(imgs.length));
  div.setAttribute('data-broken', String(broken.length));
  div.setAttribute('data-widths', imgs.map(function (i) { return i.naturalWidth; }).join(','));
  div.setAttribute('data-errors', JSON.stringify(window.__errors));
  document.body.appendChild(div);
});
</script>"""


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_report_renders_in_headless_chromium(tiny_trace: Path, tmp_path: Path) -> None:
    trace = DEFAULT_TRACE if DEFAULT_TRACE.exists() else tiny_trace
    out = tmp_path / "whatif"
    argv = [
        "whatif",
        "--trace",
        str(trace),
        "--gpus-per-node",
        "2",
        "--solver",
        "greedy",
        "--sweep",
        "gpus=2,4",
        "--sweep",
        "nic_gbps=200,400",
        "--sweep",
        "overlap=none,two-batch",
        "--serial",
        "--out",
        str(out),
        "--target-tokens-per-s",
        "1e6",
    ]
    assert main(argv) == 0
    report = out / "report.html"
    page = report.read_text()
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("<head>", "<head>" + CHECK_SCRIPT, 1))

    dom = _chromium(
        ["--virtual-time-budget=10000", "--dump-dom", checked.as_uri()], tmp_path / "p1"
    )
    match = re.search(
        r'id="__check" data-images="(\d+)" data-broken="(\d+)" data-widths="([^"]*)" '
        r'data-errors="([^"]*)"',
        dom.stdout,
    )
    assert match, f"check script did not run; stderr: {dom.stderr[-2000:]}"
    images, broken, widths = int(match[1]), int(match[2]), match[3]
    errors = json.loads(match[4].replace("&quot;", '"'))
    assert images == page.count("<img ") and images >= 5
    assert broken == 0, f"{broken} of {images} images did not load (widths {widths})"
    assert errors == []
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console

    shot = tmp_path / "report.png"
    res = _chromium(
        ["--window-size=1200,3000", f"--screenshot={shot}", report.as_uri()], tmp_path / "p2"
    )
    assert shot.exists() and shot.stat().st_size > 50_000, res.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_check_script_catches_a_broken_image(tmp_path: Path) -> None:
    """Negative control: the same check reports a broken image and a console error."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>bad</title></head><body>"
        "<img src='data:image/png;base64,AAAA' alt='broken'><script>console.error('boom')</script>"
        "</body></html>".replace("<head>", "<head>" + CHECK_SCRIPT, 1)
    )
    dom = _chromium(["--virtual-time-budget=5000", "--dump-dom", page.as_uri()], tmp_path / "p")
    match = re.search(r'id="__check" data-images="(\d+)" data-broken="(\d+)"', dom.stdout)
    assert match and match[1] == "1" and match[2] == "1"
    assert "boom" in dom.stdout and any("CONSOLE" in line for line in dom.stderr.splitlines())
