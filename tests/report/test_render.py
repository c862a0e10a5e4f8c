"""The terminal and HTML renderings, and the ``sori report`` command."""

from __future__ import annotations

import json
import re

import pytest

from engine.cli import main
from engine.report import analyse
from engine.report.html import render_html
from engine.report.text import clip, render, width

from .helpers import DATA, DEMO, TWO


def test_display_width():
    assert width("안녕") == 4 and width("abc") == 3 and width("일지 쓰려") == 9
    assert width("e\u0301") == 1  # a combining accent takes no column
    assert width(clip("안녕하세요 반갑습니다", 9)) <= 9


@pytest.mark.parametrize("lang", ["en", "ko"])
def test_korean_columns_line_up_in_the_terminal(lang):
    text = render(analyse(str(DEMO)), lang)
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("-  -"))  # the utterance table's rule
    header, body = lines[rule - 1], [line for line in lines[rule + 1:] if line[:1].isdigit()]
    assert len(body) == 6
    # every column starts at the same display column in every row: the rule's dashes mark them
    starts = [m.start() for m in re.finditer(r"-+", lines[rule])]

    def columns_at(line: str) -> list[int]:
        return [width(line[:i]) for i in range(len(line) + 1)]

    for line in [header, *body]:
        cols = columns_at(line)
        for start in starts[1:]:
            if start >= width(line):  # an empty last cell (rstripped)
                continue
            # the character at each column start follows a separator: find its index by display width
            index = cols.index(start) if start in cols else None
            assert index is not None, (line, start)
            assert line[index - 1] == " ", (line, start)
    assert "안녕" in text


def test_korean_labels():
    text = render(analyse(str(DEMO)), "ko")
    assert "요약" in text and "단순 브리지와 비교" in text and "끝점 대기" in text


def test_many_calls_list_the_slowest_and_hide_details():
    report = analyse(str(TWO))
    text = render(report, "en", details=False)
    assert "Calls by p50 total" not in text  # two calls: listed only past three
    assert "Call CA" not in text
    assert text.count("Call CA") == 0 and "vs a naive bridge" in text


def test_html_is_self_contained_and_escaped():
    report = analyse(str(DEMO))
    report.details[0].utterances[0].text = '<script>alert("x")</script>'
    page = render_html(report, "ko")
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page and "&lt;script&gt;" in page
    assert not re.search(r"(src|href)\s*=", page) and "http://" not in page and "https://" not in page
    assert page.count("<svg") >= 3  # naive comparison, distribution, the call's timeline
    assert "일지 쓰려" in page and "타임라인" in page


def test_cli_json_html_and_exit_codes(tmp_path, capsys):
    html = tmp_path / "r.html"
    assert main(["report", str(TWO), "--json", "--html", str(html)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["calls"] == 2 and len(data["calls"]) == 2
    assert html.read_text().count("<h2 id=") == 2
    assert main(["report", str(TWO), "--call", "CAnobody"]) == 1
    assert main(["report", str(tmp_path / "missing.jsonl")]) == 2
    assert main(["report", str(DATA / "malformed.jsonl"), "--since", "2026-11-29T22:48:10"]) == 0
    out = capsys.readouterr().out
    assert "4 malformed and 4 non-event lines skipped" in out
    with pytest.raises(SystemExit):
        main(["report", str(TWO), "--since", "yesterday-ish"])
