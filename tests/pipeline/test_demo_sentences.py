"""The demo (and any application) joins finals by ``continues`` into sentences."""

from __future__ import annotations

from engine import events as ev
from engine.demo import latency_table, sentence_text, sentences


def _final(uid: str, text: str, continues: str | None = None, total: float = 230.0) -> ev.TranscriptFinal:
    return ev.TranscriptFinal(call_sid="CA", stream_sid="MZ", utterance_id=uid, text=text, confidence=0.9,
                              start_ms=0.0, end_ms=1.0, words=None, source="finalize", pool_hit=True, replayed=False,
                              continues=continues,
                              latency=ev.Latency(endpoint_ms=80.0, lease_ms=0.0, stt_ms=150.0, total_ms=total))


def test_continuations_join_the_sentence_they_continue() -> None:
    finals = [_final("MZ:0", "안녕"), _final("MZ:1", "오늘", "MZ:0"), _final("MZ:2", "일지 쓰려", "MZ:1"),
              _final("MZ:3", "오늘 밤"), _final("MZ:4", "", "MZ:3"), _final("MZ:5", "먹었어")]
    groups = sentences(finals)
    assert [sentence_text(g) for g in groups] == ["안녕 오늘 일지 쓰려", "오늘 밤", "먹었어"]
    assert [len(g) for g in groups] == [3, 2, 1]


def test_a_continuation_of_an_unknown_utterance_starts_its_own_sentence() -> None:
    groups = sentences([_final("MZ:7", "뒷부분", "MZ:6")])  # its predecessor failed (an error, no final)
    assert [sentence_text(g) for g in groups] == ["뒷부분"]


def test_latency_table_reports_each_sentence_by_its_last_final() -> None:
    finals = [_final("MZ:0", "안녕", total=900.0), _final("MZ:1", "오늘", "MZ:0", total=231.0)]
    table = latency_table(finals, [{"text": "안녕 오늘"}])
    assert "yes" in table and "231ms" in table and "900" not in table
