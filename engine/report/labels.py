"""The report's words in English and Korean (``--lang``), shared by the terminal and HTML renderings."""

from __future__ import annotations

from datetime import UTC, datetime

EN: dict[str, str] = {
    "title": "sori call report",
    "source": "source",
    "lines": "{lines} lines: {events} events, {partials} partials, {malformed} malformed and {not_events} "
             "non-event lines skipped",
    "period": "period",
    "summary": "Summary",
    "calls": "calls",
    "incomplete": "without call.ended",
    "utterances": "utterances",
    "finals": "finals",
    "errors": "errors",
    "metric": "ms",
    "endpoint": "endpoint wait",
    "lease": "lease wait",
    "stt": "STT",
    "total": "total",
    "pool": "pool",
    "pool_line": "{hits}/{leases} leases from the pool ({rate}); {reused} on a reused socket; {sockets} sockets, "
                 "connect (handshake) p50 {connect}",
    "tokens_line": "tokens used: {tokens}, refreshes: {refreshes}",
    "errors_by_kind": "errors by kind",
    "naive": "vs a naive bridge",
    "naive_line": "a new socket per utterance ({connect} ms, {where}) + {silence:.0f} ms silence wait + the same STT: "
                  "p50 {naive} → sori {sori}: {saved} saved per utterance (mean {saved_mean})",
    "naive_unknown": "no connect time in the log (events without socket fields): pass --connect-ms to compare",
    "seed": "the seed's Google path for reference: 500 ms silence + 650 ms STT = 1,150 ms",
    "measured": "measured",
    "given": "given",
    "slowest": "Calls by p50 total (slowest first, {shown} of {n}); details: --call SID",
    "call": "Call",
    "started": "started",
    "duration": "duration",
    "ended": "ended",
    "in_progress": "no call.ended in the log",
    "began_before": "call.started before the log",
    "col_n": "#",
    "col_turn": "turn",
    "col_text": "text",
    "col_speech": "speech (s)",
    "col_endpoint": "endpoint",
    "col_lease": "lease",
    "col_socket": "socket",
    "col_stt": "STT",
    "col_total": "total",
    "col_naive": "naive",
    "col_note": "note",
    "col_call": "call",
    "col_utts": "utts",
    "col_p50": "p50 total",
    "col_max": "max total",
    "hit": "hit",
    "reused": "reused ×{uses}",
    "opened": "opened {connect} ms",
    "replayed": "replayed",
    "cont": "continues #{n}",
    "server_cut": "{finals} finals (server cuts)",
    "turns": "turns",
    "timeline": "Timeline",
    "legend_speech": "speech",
    "legend_endpoint": "endpoint wait",
    "legend_lease": "lease wait (overlaps speech)",
    "legend_stt": "after the endpoint: STT and delivery",
    "distribution": "Distribution of total latency (all utterances)",
    "no_calls": "no calls in this log (or in the window)",
    "call_errors": "call errors",
    "empty": "(nothing heard)",
}

KO: dict[str, str] = {
    "title": "sori 통화 분석",
    "source": "파일",
    "lines": "{lines}줄: 이벤트 {events}, 부분 결과 {partials}, 손상된 줄 {malformed}, 이벤트가 아닌 줄 {not_events} (건너뜀)",
    "period": "기간",
    "summary": "요약",
    "calls": "통화",
    "incomplete": "call.ended 없음",
    "utterances": "발화",
    "finals": "최종 결과",
    "errors": "오류",
    "metric": "ms",
    "endpoint": "끝점 대기",
    "lease": "소켓 대기",
    "stt": "STT",
    "total": "전체",
    "pool": "풀",
    "pool_line": "{leases}건 중 {hits}건 풀에서 바로 ({rate}); 재사용 소켓 {reused}건; "
                 "소켓 {sockets}개, 연결(핸드셰이크) p50 {connect}",
    "tokens_line": "토큰 {tokens}개 사용, 갱신 {refreshes}회",
    "errors_by_kind": "종류별 오류",
    "naive": "단순 브리지와 비교",
    "naive_line": "발화마다 새 소켓 ({connect} ms, {where}) + 무음 대기 {silence:.0f} ms + 같은 STT: "
                  "p50 {naive} → sori {sori}: 발화당 {saved} 절약 (평균 {saved_mean})",
    "naive_unknown": "로그에 연결 시간이 없습니다 (socket 필드가 없는 이벤트): 비교하려면 --connect-ms 를 주세요",
    "seed": "참고: 기존 Google 경로 = 무음 500 ms + STT 650 ms = 1,150 ms",
    "measured": "측정값",
    "given": "지정값",
    "slowest": "p50 전체 지연 순 통화 (느린 순, {n}개 중 {shown}개); 자세히: --call SID",
    "call": "통화",
    "started": "시작",
    "duration": "길이",
    "ended": "종료",
    "in_progress": "로그에 call.ended 없음",
    "began_before": "로그 이전에 시작",
    "col_n": "#",
    "col_turn": "턴",
    "col_text": "텍스트",
    "col_speech": "발화 (초)",
    "col_endpoint": "끝점",
    "col_lease": "대기",
    "col_socket": "소켓",
    "col_stt": "STT",
    "col_total": "전체",
    "col_naive": "단순",
    "col_note": "비고",
    "col_call": "통화",
    "col_utts": "발화",
    "col_p50": "p50 전체",
    "col_max": "최대 전체",
    "hit": "풀",
    "reused": "재사용 ×{uses}",
    "opened": "새로 연결 {connect} ms",
    "replayed": "재전송",
    "cont": "#{n} 이어짐",
    "server_cut": "최종 {finals}개 (서버 분할)",
    "turns": "턴",
    "timeline": "타임라인",
    "legend_speech": "발화",
    "legend_endpoint": "끝점 대기",
    "legend_lease": "소켓 대기 (발화와 겹침)",
    "legend_stt": "끝점 이후: STT와 전달",
    "distribution": "전체 지연 분포 (모든 발화)",
    "no_calls": "이 로그(또는 기간)에 통화가 없습니다",
    "call_errors": "통화 오류",
    "empty": "(들린 것 없음)",
}


def labels(lang: str) -> dict[str, str]:
    return KO if lang == "ko" else EN


def when(ts: float | None) -> str:
    """Event time as UTC, to the second."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"
