"""A real browser (headless Chromium, Debian's package; ``make test`` installs it) loads the HTML report and the
live /status page of a test engine, and takes screenshots.

The screenshots are checked to be real renderings (a PNG of the window's size with varied pixels). With
``SORI_SCREENSHOTS=DIR`` they are also copied there (``docs/report.png``, ``docs/report-ko.png``,
``docs/status.png`` come from ``SORI_SCREENSHOTS=docs``).
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import trio

from engine import events as ev
from engine.report import analyse
from engine.report.html import render_html
from engine.twilio.simulator import simulate_call
from tests.pipeline.test_pipeline_e2e import make_config, phrase_call, running_engine

from .helpers import DEMO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (make test installs "
                                "Debian's chromium package; apt-get install chromium)")
WIDTH, HEIGHT = 1200, 1500


def _chromium(profile: Path, *args: str) -> list[str]:
    assert CHROMIUM is not None
    return [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
            f"--user-data-dir={profile}", *args]


async def rendered_dom(url: str, profile: Path) -> str:
    """The page as the browser built it (so a browser error page cannot pass for the report)."""
    with trio.fail_after(120):
        done = await trio.run_process(_chromium(profile, "--dump-dom", url), capture_stdout=True,
                                      capture_stderr=True)
    return done.stdout.decode(errors="replace")


async def screenshot(url: str, out: Path, profile: Path, height: int = HEIGHT) -> None:
    cmd = _chromium(profile, f"--screenshot={out}", f"--window-size={WIDTH},{height}", url)
    with trio.fail_after(120):
        await trio.run_process(cmd, capture_stdout=True, capture_stderr=True)
    check_png(out, WIDTH, height)
    keep = os.environ.get("SORI_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, Path(keep) / out.name)


def check_png(path: Path, width: int, height: int) -> None:
    """A PNG of the window's size whose pixels are not all one colour (the page rendered)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    assert (w, h) == (width, height)
    idat, pos = b"", 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    pixels = zlib.decompress(idat)
    assert len(set(pixels)) > 16, "a blank screenshot"


async def test_html_report_in_a_browser(tmp_path: Path) -> None:
    report = analyse(str(DEMO))
    report.source = "tests/report/data/demo_call.jsonl"
    for lang, name in (("en", "report.png"), ("ko", "report-ko.png")):
        page = tmp_path / f"report-{lang}.html"
        page.write_text(render_html(report, lang), encoding="utf-8")
        await screenshot(page.as_uri(), tmp_path / name, tmp_path / f"profile-{lang}")
        dom = await rendered_dom(page.as_uri(), tmp_path / f"profile-{lang}")
        assert report.calls and report.calls[0].call_sid in dom and "일지 쓰려" in dom and "<svg" in dom


async def test_live_status_page_in_a_browser(tmp_path: Path) -> None:
    audio, _ = phrase_call(["diary", "tonight", "ate", "thanks"], gap_ms=700)
    with trio.fail_after(180):
        async with running_engine(make_config()) as (engine, got):
            # one call finished (latencies in the window), another in progress while the page is shot
            await simulate_call(engine.twilio_url, audio, speed="fast", trailing_silence_ms=300)
            await got.wait_ended(1)
            async with trio.open_nursery() as nursery:
                # The second call stays in progress until the page has been read, however slow Chromium is
                # on a loaded machine: its trailing silence outlasts the test, which cancels it.
                nursery.start_soon(lambda: simulate_call(engine.twilio_url, audio, speed="realtime",
                                                         trailing_silence_ms=170_000))
                while len(got.of(ev.CallStarted)) < 2:
                    await trio.sleep(0.01)
                second = got.of(ev.CallStarted)[1].call_sid
                while not [f for f in got.of(ev.TranscriptFinal) if f.call_sid == second]:  # its first words are in
                    await trio.sleep(0.01)
                await screenshot(f"http://127.0.0.1:{engine.admin.bound_port}/status", tmp_path / "status.png",
                                 tmp_path / "profile", height=900)
                dom = await rendered_dom(f"http://127.0.0.1:{engine.admin.bound_port}/status", tmp_path / "profile")
                assert "Calls in progress" in dom and second in dom
                nursery.cancel_scope.cancel()
