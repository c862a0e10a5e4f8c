"""``sori demo`` ends by pointing at the report of the call it just made, and that report is of that call."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

from engine.cli import main
from engine.report import analyse


def test_demo_writes_and_names_its_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["demo", "--speed", "fast"]) == 0
    out = capsys.readouterr().out
    match = re.search(r"Report of this call: (\S+\.html)\n  \(in a terminal: sori report (\S+\.jsonl) --call (CA\w+)\)", out)
    assert match, out[-800:]
    page, jsonl, sid = Path(match[1]), Path(match[2]), match[3]
    assert page.parent == jsonl.parent == tmp_path / "sori-demo"
    report = analyse(str(jsonl), call=sid)
    assert [c.call_sid for c in report.calls] == [sid] and report.malformed == 0
    finals = re.findall(r"FINAL  «([^»]*)»", out)
    assert " ".join(r.text for r in report.details[0].utterances if r.text) == " ".join(finals)
    assert sid in page.read_text(encoding="utf-8")
