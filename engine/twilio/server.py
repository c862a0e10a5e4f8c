"""The Twilio Media Streams WebSocket endpoint: admission, every call's receive side, the outbound API.

Thin Trio shell around :class:`~engine.twilio.protocol.TwilioStream` on our own wsproto connection
(:mod:`engine.twilio.wsconn`). The accept loop hands each TCP connection to the supervisor's calls
nursery; there every connection gets its own nursery (its task + the call's handler task), so
cancelling :meth:`TwilioServer.run` stops accepting without touching live calls, and one failing call
is logged and contained. A worker of ``sori serve --workers`` accepts nothing: its parent hands it connections
over a Unix socket (``server.handoff_fd``), each then served exactly as an accepted one.

Admission happens before the upgrade, on the request h11 parsed (:class:`~engine.twilio.wsconn.UpgradeHandshake`):
400/426/431 for what is not a WebSocket upgrade, 404 wrong path, 503 draining or at ``max_calls``, 403
missing or bad ``X-Twilio-Signature`` (logged with the URLs compared and the proxy headers' standing).
After the upgrade the call's task waits for ``start`` under ``budgets.twilio_start``, then registers the
socket with the server's :class:`~engine.twilio.reactor.Reactor`: one task reads every call's socket,
many per wake-up, and runs each call's per-frame work (:class:`_CallReader`) without blocking (a stalled
reader stops answering pings and makes Twilio drop audio). The call's task sleeps under its idle
deadline until the reactor hands the call back (stop, close, a control frame to answer, an exception).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import socket
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol, cast

import numpy as np
import numpy.typing as npt
import trio

from engine.audio import mulaw
from engine.budgets import BudgetExpired, Budgets
from engine.config import Config
from engine.endpointing.batch import FrameBatch
from engine.listeners import accept_or_pause
from engine.log import get_logger
from engine.media import AudioReceived, MediaEvent, StreamStarted, StreamStopped
from engine.metrics import Counter, Histogram, Registry
from engine.twilio.late import LATE_FRAME_MS, LateFrames
from engine.twilio.protocol import (
    FRAME_BYTES,
    SILENCE,
    Connected,
    Started,
    StreamStats,
    TwilioEvent,
    TwilioProtocolError,
    TwilioStream,
    encode_clear,
    encode_mark,
    encode_media,
)
from engine.twilio.reactor import KEEP, PAUSE, Reactor
from engine.twilio.signature import candidate_urls, mismatch_details, validate
from engine.twilio.wsconn import ConnectionClosed, HandshakeFailed, UpgradeRequest, WsServerConnection

log = get_logger(__name__)

IDLE_SLACK_S = 0.5

MAX_OUTBOUND_PAYLOAD = 50 * FRAME_BYTES  # one outbound media message carries at most 1 s
_STATS_FLUSH_EVERY = 50  # messages (≈1 s of audio) between metric updates
HANDOFF_MSG_BYTES = 64  # one byte per handed connection (and per ended one, reported back)
HANDOFF_MAX_FDS = 16
PASS_BUCKETS_MS = (0.1, 0.2, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 25, 30, 40, 50, 75, 100, 200, 500)
FRAME_LAG_BUCKETS_MS = (1, 2, 5, 10, 15, 20, 25, 30, 40, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000)


def handed_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """The file descriptors in a ``recvmsg`` ancillary list (SCM_RIGHTS), as ``socket.recv_fds`` parses them."""
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(int.from_bytes(data[i:i + 4], sys.byteorder, signed=True) for i in range(0, usable, 4))
    return fds


class CallHostLike(Protocol):
    """The supervisor as the server sees it (``engine.nursery.CallHost`` satisfies it)."""

    @property
    def calls_nursery(self) -> trio.Nursery: ...

    @property
    def draining(self) -> trio.Event: ...

    @property
    def live_calls(self) -> int: ...

    def track_call(self, key: str) -> AbstractContextManager[None]: ...


class CallHandler(Protocol):
    """The per-call pipeline as the server drives it.

    ``on_event`` is called synchronously from the reader with every vendor-neutral event (:mod:`engine.media`)
    the stream hands out after ``start`` (``StreamStopped`` included) and must not block. ``run`` runs next to
    the reader and returns once it has seen ``StreamStopped`` or ``on_close``. ``on_close(reason)`` is called exactly once.
    """

    def on_event(self, event: MediaEvent) -> None: ...

    async def run(self) -> None: ...

    def on_close(self, reason: str) -> None: ...


class _EndCall(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TwilioSession:
    """One accepted stream: the ``start`` information and the outbound (bidirectional) API.

    Sends never raise: they return False when the socket is closed or a send exceeded
    ``budgets.send`` (after which the session stops sending; a half-written frame is unrecoverable).
    """

    def __init__(self, started: Started, ws: WsServerConnection, budgets: Budgets, *, stats: StreamStats,
                 send_timeouts: Counter, remote: str = "") -> None:
        self.started = started
        self.stats = stats
        self.remote = remote
        self._ws = ws
        self._budgets = budgets
        self._send_timeouts = send_timeouts
        self._usable = True
        self.ended_by: str | None = None  # set by end(): why the application ended the stream
        self._end_scope: trio.CancelScope | None = None  # the reader's idle scope, while it reads (_read)

    @property
    def stream_sid(self) -> str:
        return self.started.stream_sid

    @property
    def call_sid(self) -> str:
        return self.started.call_sid

    @property
    def custom_parameters(self) -> dict[str, str]:
        return self.started.custom_parameters

    @property
    def can_send(self) -> bool:
        return self._usable and self._ws.closed is None

    async def send_media(self, audio: bytes | bytearray | memoryview | npt.NDArray[np.int16]) -> bool:
        """Queue audio for playback: μ-law bytes, or int16 PCM at 8 kHz (encoded here).

        Padded with silence to whole 20 ms frames, as Twilio expects; long audio is split into
        messages of at most one second.
        """
        data = mulaw.encode(audio) if isinstance(audio, np.ndarray) else bytes(audio)
        if rest := len(data) % FRAME_BYTES:
            data += bytes([SILENCE]) * (FRAME_BYTES - rest)
        for start in range(0, len(data), MAX_OUTBOUND_PAYLOAD):
            if not await self._send(encode_media(self.stream_sid, data[start:start + MAX_OUTBOUND_PAYLOAD])):
                return False
        return True

    async def send_mark(self, name: str) -> bool:
        """Ask Twilio to echo ``name`` once the audio queued before it has played."""
        return await self._send(encode_mark(self.stream_sid, name))

    async def clear(self) -> bool:
        """Drop audio Twilio has queued (barge-in); Twilio echoes every pending mark."""
        return await self._send(encode_clear(self.stream_sid))

    def send_media_nowait(self, audio: bytes) -> bool:
        """:meth:`send_media` of whole μ-law frames from synchronous code, with no task wake-up (an answer's
        first frames): True when written (or its tail left in :attr:`send_pending`); False: nothing was sent,
        await :meth:`send_media` (another send is in flight, or the connection is not usable)."""
        if not self._usable or len(audio) % FRAME_BYTES or len(audio) > MAX_OUTBOUND_PAYLOAD:
            return False
        return self._ws.send_text_nowait(encode_media(self.stream_sid, audio).encode())

    def send_mark_nowait(self, name: str) -> bool:
        """:meth:`send_mark` from synchronous code, as :meth:`send_media_nowait`."""
        return self._usable and self._ws.send_text_nowait(encode_mark(self.stream_sid, name).encode())

    @property
    def send_pending(self) -> bool:
        """A ``*_nowait`` send is partly written: :meth:`flush` completes it."""
        return self._ws.pending

    async def flush(self) -> bool:
        """Complete a ``*_nowait`` send; False as for :meth:`send_media`."""
        return await self._send(None)

    def end(self, reason: str = "app_stop") -> None:
        """End the media stream from our side (the application's ``stop``): the reader stops, the WebSocket is
        closed with 1000, and the call finishes as on Twilio's ``stop``."""
        if self.ended_by is None:
            self.ended_by = reason
        if self._end_scope is not None:
            self._end_scope.cancel()

    async def _send(self, text: str | None) -> bool:
        """Send ``text`` (None: only what a ``*_nowait`` send left)."""
        if not self._usable:
            return False
        try:
            with self._budgets.send():
                await (self._ws.flush() if text is None else self._ws.send_text(text))
        except ConnectionClosed:
            self._usable = False
            return False
        except BudgetExpired as exc:
            self._usable = False
            self._send_timeouts.inc()
            log.warning("twilio_send_timeout", stream_sid=self.stream_sid, budget=exc.budget, ms=exc.ms)
            return False
        return True


HandlerFactory = Callable[[TwilioSession], CallHandler]


class _Metrics:
    """The server's metrics, resolved once (label children are cached per value)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.accepted = registry.counter("twilio_calls_accepted_total", "Twilio streams upgraded")
        self.live = registry.gauge("twilio_streams_live", "Twilio streams currently open")
        self.start_timeouts = registry.counter("twilio_start_timeouts_total", "streams without start in time")
        self.send_timeouts = registry.counter("twilio_send_timeouts_total", "outbound sends over budgets.send")
        self.failures = registry.counter("twilio_connection_failures_total", "connections ended by an exception")
        self.frames = registry.counter("twilio_frames_total", "media frames accepted")
        self.filled = registry.counter("twilio_frames_filled_total", "timeline gaps filled with silence")
        self.filled_bytes = registry.counter("twilio_filled_bytes_total", "bytes of silence filled into gaps")
        self.duplicates = registry.counter("twilio_frames_duplicate_total", "duplicate messages dropped")
        self.reordered = registry.counter("twilio_frames_reordered_total", "late messages (reordered)")
        self.ingest_passes = registry.counter(
            "twilio_ingest_passes_total", "ingest reactor passes (each reads every ready Twilio socket)")
        self.ingest_reads = registry.counter("twilio_ingest_reads_total", "Twilio socket reads by the ingest reactor")
        self.origin_skipped = registry.counter(
            "twilio_frame_origin_skipped_total", "frames that would have moved their stream's frame-lag origin earlier "
            "but were not its first in a reactor read (they may have arrived after the pass polled)")
        # Why frames are late (engine/twilio/reactor.py): pass durations, gaps between passes, GC pauses.
        self.ingest_pass_ms = registry.histogram("twilio_ingest_pass_ms", "ingest reactor pass duration",
                                                 buckets=PASS_BUCKETS_MS)
        self.ingest_gap_ms = registry.histogram("twilio_ingest_gap_ms", "ingest reactor: a pass's end to the next "
                                                "pass's start (other tasks, or idle)", buckets=PASS_BUCKETS_MS)
        self.gc_ms = lambda gen: registry.histogram("gc_pause_ms", "garbage collections while the ingest reactor "
                                                    "runs", f"generation={gen}", buckets=PASS_BUCKETS_MS)
        self.frame_lag = registry.histogram(
            "twilio_frame_lag_ms", "media frame handled (after the endpointer) minus its due time; due = the "
            "stream's least-delayed frame + its audio offset", buckets=FRAME_LAG_BUCKETS_MS)
        # Where late frames waited (engine/twilio/late.py): per batch whose latest frame is later than LATE_FRAME_MS,
        # that frame's parts, one value each.
        self.late_part = lambda part: registry.histogram(
            "twilio_late_frame_part_ms", f"per pass (or batch) whose latest frame is later than {LATE_FRAME_MS:g} ms, "
            "where that frame waited (missed: not "
            "yet readable when the previous pass polled; prev_pass; between: passes; interval: the min pass "
            "interval's sleep; pass: the reading pass)", f"part={part}", buckets=PASS_BUCKETS_MS)

    def rejected(self, status: int) -> None:
        self.registry.counter("twilio_calls_rejected_total", "upgrades rejected", f"status={status}").inc()

    def protocol_error(self, kind: str) -> None:
        self.registry.counter("twilio_protocol_errors_total", "malformed messages", f"kind={kind}").inc()

    def ended(self, reason: str) -> None:
        self.registry.counter("twilio_calls_ended_total", "streams ended", f"reason={reason}").inc()


class _StatsReporter:
    """Adds a stream's counter deltas to the process metrics now and then (cheap per frame)."""

    _FIELDS = ("frames", "filled_frames", "filled_bytes", "duplicates", "reordered")

    def __init__(self, stats: StreamStats, metrics: _Metrics) -> None:
        self.stats = stats
        self.metrics = metrics
        self.last = dict.fromkeys(self._FIELDS, 0)
        self.counters = {
            "frames": metrics.frames, "filled_frames": metrics.filled, "filled_bytes": metrics.filled_bytes,
            "duplicates": metrics.duplicates, "reordered": metrics.reordered,
        }
        self.unknown_seen = 0

    def flush(self, stream_sid: str | None) -> None:
        for name in self._FIELDS:
            value = getattr(self.stats, name)
            if value != self.last[name]:
                self.counters[name].inc(value - self.last[name])
                self.last[name] = value
        unknown = len(self.stats.unknown_event_names) + len(self.stats.unknown_fields)
        if unknown != self.unknown_seen:
            self.unknown_seen = unknown
            log.info("twilio_unknown_ignored", stream_sid=stream_sid,
                     events=",".join(sorted(self.stats.unknown_event_names)),
                     fields=",".join(sorted(self.stats.unknown_fields)))


class TwilioServer:
    """The ``/twilio/media`` WebSocket endpoint; a supervisor service (``name``, ``run``)."""

    name = "twilio"

    def __init__(self, config: Config, *, host: CallHostLike, handler_factory: HandlerFactory,
                 metrics: Registry, budgets: Budgets | None = None) -> None:
        self.config = config
        self.host = host
        self.handler_factory = handler_factory
        self.budgets = budgets or Budgets(config.budgets)
        self.metrics = _Metrics(metrics)
        self.port: int | None = None
        self._ids = itertools.count(1)
        # Replaced in run(): live calls keep the one they registered with. Its pass hook classifies the
        # frames of every call read in one wake-up together (FrameBatch, issue 13).
        self._reactor = self._new_reactor()
        self._ended = 0  # handed-over connections ended, not yet reported to the parent
        self._ended_changed = trio.Event()
        if not config.twilio.auth_token and not config.server.allow_unsigned:
            log.warning("twilio_no_auth_token", hint="every upgrade will be rejected with 403; set "
                        "TWILIO_AUTH_TOKEN or server.allow_unsigned for development")

    def _new_reactor(self) -> Reactor:
        """The ingest reactor, its pass hook classifying the frames of every call read in one pass together
        and then observing their frame lag (:class:`IngestPass`)."""
        ingest = IngestPass(self.metrics.frame_lag, LateFrames(self.metrics.late_part),
                            batch_frames=self.config.twilio.pass_batch_frames, origin_skipped=self.metrics.origin_skipped)
        reactor = Reactor(ingest, min_pass_interval=self.config.twilio.pass_interval_ms / 1000.0,
                          passes=self.metrics.ingest_passes, reads=self.metrics.ingest_reads,
                          pass_ms=self.metrics.ingest_pass_ms, gap_ms=self.metrics.ingest_gap_ms, gc_ms=self.metrics.gc_ms,
                          delayed_ack=self.config.twilio.delayed_ack)
        ingest.reactor = reactor
        return reactor

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report the bound port, accept until cancelled (live calls keep running).

        A worker of ``sori serve --workers`` binds nothing: it serves the connections its parent accepted
        and handed over ``server.handoff_fd`` (:meth:`_receive_handoffs`)."""
        self._reactor = self._new_reactor()
        if self.config.server.handoff_fd is not None:
            self.port = self.config.server.port
            log.info("twilio_listening", host=self.config.server.host, port=self.port, path=self.config.twilio.path,
                     handoff=True)
            # A dup: a restart of this service reuses the parent's socket (which this process never closes).
            chan = trio.socket.from_stdlib_socket(socket.socket(fileno=os.dup(self.config.server.handoff_fd)))
            with chan:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._report_ends, chan)
                    task_status.started(self.port)
                    await self._receive_handoffs(chan)
            return
        listeners = await trio.open_tcp_listeners(self.config.server.port, host=self.config.server.host)
        self.port = listeners[0].socket.getsockname()[1]
        log.info("twilio_listening", host=self.config.server.host, port=self.port, path=self.config.twilio.path)
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener)
            task_status.started(self.port)

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        """Like ``trio.serve_listeners``, but a connection arriving after the calls nursery closed
        (the end of a drain, before this service is cancelled) is dropped instead of crashing us."""
        async with listener:
            while True:
                stream = await accept_or_pause(listener.accept, "twilio_accept_failed")
                if stream is None:
                    continue
                try:
                    self.host.calls_nursery.start_soon(self._on_connection, stream)
                except RuntimeError:  # "Nursery is closed to new arrivals"
                    await trio.aclose_forcefully(stream)

    # -- the worker side of the parent's hand-off (engine/workers.py): one accepted TCP socket per message --

    async def _receive_handoffs(self, chan: trio.socket.SocketType) -> None:
        """Serve every connection the parent hands over, exactly as an accepted one. At EOF the parent is
        gone: nothing more comes, and the worker drains by itself (engine.workers.report_and_watch_parent)."""
        ancbufsize = socket.CMSG_SPACE(HANDOFF_MAX_FDS * 4)
        while True:
            data, ancdata, _flags, _addr = await chan.recvmsg(HANDOFF_MSG_BYTES, ancbufsize)
            fds = handed_fds(ancdata)
            if not data and not fds:
                log.warning("twilio_handoff_closed")
                await trio.sleep_forever()
            for fd in fds:
                try:
                    sock = trio.socket.from_stdlib_socket(socket.socket(fileno=fd))
                except OSError as exc:  # not a socket: nothing to serve, but the parent counted it
                    os.close(fd)
                    log.error("twilio_handoff_bad_fd", error=f"{type(exc).__name__}: {exc}")
                    self._connection_ended()
                    continue
                stream = trio.SocketStream(sock)
                try:
                    self.host.calls_nursery.start_soon(self._on_handed_connection, stream)
                except RuntimeError:  # "Nursery is closed to new arrivals"
                    await trio.aclose_forcefully(stream)
                    self._connection_ended()

    async def _on_handed_connection(self, stream: trio.SocketStream) -> None:
        try:
            await self._on_connection(stream)
        finally:
            self._connection_ended()

    def _connection_ended(self) -> None:
        self._ended += 1
        self._ended_changed.set()

    async def _report_ends(self, chan: trio.socket.SocketType) -> None:
        """One byte per connection that ended, so the parent's live count per worker stays right."""
        while True:
            await self._ended_changed.wait()
            self._ended_changed = trio.Event()
            while self._ended:
                n, self._ended = min(self._ended, HANDOFF_MSG_BYTES), max(0, self._ended - HANDOFF_MSG_BYTES)
                try:
                    await chan.send(b"." * n)
                except OSError:  # the parent is gone: nobody to count for
                    return

    async def _on_connection(self, stream: trio.SocketStream) -> None:
        conn = f"ws-{next(self._ids)}"
        try:
            await self._serve(stream, conn)
        except Exception as exc:
            self.metrics.failures.inc()
            log.error("twilio_connection_failed", conn=conn, exc=exc)
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.SocketStream, conn: str) -> None:
        ws = WsServerConnection(stream, send_budget=self.budgets.send,
                                max_message_size=max(self.config.server.max_message_bytes * 4, 1 << 20))
        try:
            with self.budgets.twilio_start():  # a slowloris request head is cut here
                request = await ws.read_request()
        except BudgetExpired:
            log.info("twilio_handshake_timeout", conn=conn)
            return
        except HandshakeFailed as exc:
            if exc.status:
                log.info("twilio_bad_handshake", conn=conn, status=exc.status, reason=exc.why[:200])
                await self._reject(ws, exc.status, "bad request")
            return
        status, why, details = self._admit(request, conn)
        if status:
            log.info("twilio_rejected", conn=conn, status=status, reason=why, path=request.target[:200], **details)
            await self._reject(ws, status, why)
            return
        del request  # not kept for the call's life (its headers: issue 13, memory per call)
        # Counted before the first checkpoint after admission, so concurrent upgrades cannot overshoot.
        with self.host.track_call(conn):
            try:
                with self.budgets.send():
                    await ws.accept()
            except (BudgetExpired, ConnectionClosed):
                log.info("twilio_upgrade_failed", conn=conn)
                return
            self.metrics.accepted.inc()
            self.metrics.live.inc()
            try:
                await self._run_call(ws, conn, stream.socket.fileno())
            finally:
                self.metrics.live.dec()

    async def _reject(self, ws: WsServerConnection, status: int, why: str) -> None:
        self.metrics.rejected(status)
        try:
            with self.budgets.send(shield=True):
                await ws.reject(status, f"{why}\n".encode())
        except (BudgetExpired, ConnectionClosed):
            pass  # the client left or stalled; the connection is closed either way

    def _admit(self, request: UpgradeRequest, conn: str) -> tuple[int, str, dict[str, str | bool]]:
        """(0, "", {}) to accept, else the HTTP status, a short reason (sent as the body) and log fields."""
        cfg = self.config
        target = request.target
        if target.partition("?")[0] != cfg.twilio.path:
            return 404, "not found", {}
        if self.host.draining.is_set():
            return 503, "draining", {}
        raw_signature = request.header(b"x-twilio-signature")
        signature = raw_signature.decode("latin-1") if raw_signature is not None else None
        urls = candidate_urls(target, request.headers, trust_proxy_headers=cfg.server.trust_proxy_headers,
                              host_header=request.host, public_url_override=cfg.twilio.public_url)
        if not (cfg.twilio.auth_token and validate(cfg.twilio.auth_token, signature, urls)):
            if not cfg.server.allow_unsigned:
                if not signature:
                    return 403, "missing signature", {}
                # What was compared, so a proxy or public_url misconfiguration can be seen (no signature, no token).
                details = mismatch_details(urls, request.headers, trust_proxy_headers=cfg.server.trust_proxy_headers,
                                           public_url_override=cfg.twilio.public_url)
                if not cfg.twilio.auth_token:
                    details["auth_token_set"] = False
                return 403, "bad signature", details
            log.warning("twilio_unsigned_accepted", conn=conn, signed=signature is not None)
        if self.host.live_calls >= cfg.server.max_calls:
            return 503, "at capacity", {}
        return 0, "", {}

    async def _run_call(self, ws: WsServerConnection, conn: str, fd: int) -> None:
        cfg = self.config
        proto = TwilioStream(cfg.server.max_message_bytes, cfg.twilio.track, max_gap_ms=cfg.twilio.max_gap_ms)
        reporter = _StatsReporter(proto.stats, self.metrics)
        errors = _ErrorPolicy(cfg.server.protocol_error_budget, self.metrics, conn)
        debug = log.enabled("debug")  # the per-message debug hook costs one bool test when off
        try:
            with self.budgets.twilio_start():
                started, pending = await self._wait_start(ws, proto, errors)
        except BudgetExpired:
            self.metrics.start_timeouts.inc()
            self.metrics.ended("start_timeout")
            log.warning("twilio_start_timeout", conn=conn, budget="twilio_start", ms=self.budgets.twilio_start.ms)
            await self._close(ws, 1008, "no start")
            return
        except _EndCall as end:
            self.metrics.ended(end.reason)
            log.warning("twilio_call_ended", conn=conn, reason=end.reason)
            await self._close(ws, 1008, end.reason)
            return
        if started is None:
            self.metrics.ended("closed")
            log.info("twilio_closed_before_start", conn=conn)
            return
        remote = ws.remote
        log.info("twilio_call_started", conn=conn, stream_sid=started.stream_sid, call_sid=started.call_sid,
                 tracks=",".join(started.tracks), remote=remote)
        session = TwilioSession(started, ws, self.budgets, stats=proto.stats, send_timeouts=self.metrics.send_timeouts,
                                remote=remote)
        handler = self.handler_factory(session)
        closed = False
        reason = "cancelled"

        def close_once(why: str) -> None:
            nonlocal closed
            if closed:
                return
            closed = True
            try:
                handler.on_close(why)
            except Exception as exc:
                log.error("twilio_handler_on_close_failed", stream_sid=started.stream_sid, exc=exc)

        # Scopes per call (issue 13: a cancel scope is ≈ 0.6 KiB): the drain deadline is the call nursery's own
        # scope (it covered exactly that nursery), and session.end() cancels the reader's idle scope (_read).
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._run_handler, handler, started.stream_sid)
                reason = await self._read(ws, proto, handler, session, fd=fd, pending=pending, errors=errors,
                                          reporter=reporter, debug=debug)
                if reason == "cancelled" and session.ended_by is not None:
                    reason = session.ended_by
                close_once(reason)
                await self._close(ws, 1000 if reason in ("stop", "closed", "app_stop") else 1008, reason)
                # The handler finishes its work (last finals) on its own, within the drain budget.
                nursery.cancel_scope.deadline = trio.current_time() + self.budgets.drain.seconds
            if nursery.cancel_scope.cancelled_caught:
                log.warning("twilio_handler_slow", stream_sid=started.stream_sid, budget="drain")
        except Exception:
            reason = "handler_error"
            raise
        finally:
            close_once(reason)
            reporter.flush(started.stream_sid)
            self.metrics.ended(reason)
            log.info("twilio_call_ended", stream_sid=started.stream_sid, reason=reason, frames=proto.stats.frames,
                     filled_bytes=proto.stats.filled_bytes, duplicates=proto.stats.duplicates,
                     reordered=proto.stats.reordered, errors=proto.stats.errors)

    async def _run_handler(self, handler: CallHandler, stream_sid: str) -> None:
        await handler.run()
        log.debug("twilio_handler_done", stream_sid=stream_sid)

    async def _wait_start(self, ws: WsServerConnection, proto: TwilioStream, errors: _ErrorPolicy
                          ) -> tuple[Started | None, list[TwilioEvent]]:
        while True:
            try:
                message = await ws.receive_message()
            except ConnectionClosed:
                return None, []
            events = errors.feed(proto, message)
            for i, event in enumerate(events):
                if isinstance(event, Started):
                    return event, events[i + 1:]

    async def _read(self, ws: WsServerConnection, proto: TwilioStream, handler: CallHandler, session: TwilioSession,
                    *, fd: int, pending: list[TwilioEvent], errors: _ErrorPolicy, reporter: _StatsReporter,
                    debug: bool) -> str:
        """Deliver events until stop, close, the idle deadline, ``session.end()`` ("cancelled"), or too many
        protocol errors.

        The frames are read and processed by the server's :class:`~engine.twilio.reactor.Reactor` (many
        calls per wake-up); this task sleeps until the reactor hands the call back: the stream ended, a
        control frame or a close needs this task's writes, or processing raised (raised here, so the
        call ends as any failing call does, and no other call notices).
        """
        for event in pending:
            neutral = media_event(event)
            if neutral is not None:
                handler.on_event(neutral)
            if type(event) is StreamStopped:
                return "stop"
        reactor = self._reactor
        ingest = cast("IngestPass", reactor.hook)  # _new_reactor's
        reader = _CallReader(ws, proto, handler, errors=errors, reporter=reporter, ingest=ingest,
                             idle_s=self.config.twilio.read_idle_ms / 1000, debug=debug)
        reason = reader.deliver()  # messages that came with `start`
        if reason is not None:
            return reason
        if ws.closed is not None:  # a close that came with `start` (answered): no bytes may follow it
            return "closed"
        attach = getattr(handler, "attach_batch", None)  # a handler that can classify in the wake-up's batch
        with reader.scope:
            # One scope, two causes: the idle deadline, and session.end() (which sets ended_by before it cancels).
            session._end_scope = reader.scope
            if session.ended_by is not None:  # ended from the handler before the read began
                reader.scope.cancel()
            reader.push_deadline(trio.current_time())
            reactor.register(fd, reader, self.host.calls_nursery)
            if attach is not None and isinstance(reactor.hook, FrameBatch):
                attach(reactor.hook, functools.partial(reactor.fail, fd))
            try:
                while True:
                    await reader.wake.wait()
                    reader.wake = trio.Event()
                    if reader.error is not None:
                        raise reader.error
                    if reader.reason is not None:
                        return reader.reason
                    # A control frame, a close or EOF: this task's writes (pong, close reply), then on.
                    await ws.process_events()
                    reason = reader.deliver()
                    if reason is not None:
                        return reason
                    if ws.closed is not None:
                        return "closed"
                    reactor.resume(fd)
            finally:
                session._end_scope = None
                if attach is not None:
                    attach(None)  # from now on (on_close, the end of the call) at once, in this task
                reactor.unregister(fd)  # before the socket is closed
        if session.ended_by is not None:  # session.end() cancelled the scope (first, or with the idle deadline)
            return "cancelled"
        log.warning("twilio_read_idle", stream_sid=proto.stream_sid, ms=self.config.twilio.read_idle_ms)
        return "idle_timeout"

    async def _close(self, ws: WsServerConnection, code: int, reason: str) -> None:
        """Close politely within ``budgets.send`` (shielded: this is cleanup)."""
        try:
            with self.budgets.send(shield=True):
                await ws.aclose(code, reason[:100])
        except BudgetExpired:
            log.info("twilio_close_timeout", code=code)


class _ErrorPolicy:
    """Protocol errors: count, log once per kind, drop the message; end the call past the budget."""

    def __init__(self, budget: int, metrics: _Metrics, conn: str) -> None:
        self.budget = budget
        self.metrics = metrics
        self.conn = conn
        self.count = 0
        self.logged: set[str] | None = None  # kinds logged; a set from the first error (issue 13: 216 B a call)

    def feed(self, proto: TwilioStream, message: str | bytes) -> list[TwilioEvent]:
        try:
            return proto.receive_text(message)
        except TwilioProtocolError as exc:
            self.failed(proto, exc)
            return []

    def failed(self, proto: TwilioStream, exc: TwilioProtocolError) -> None:
        """``proto`` rejected a message: count and log it; raises :class:`_EndCall` when the call must end."""
        self.count += 1
        self.metrics.protocol_error(exc.kind)
        if self.logged is None:
            self.logged = set()
        if exc.kind not in self.logged:
            self.logged.add(exc.kind)
            log.warning("twilio_protocol_error", conn=self.conn, stream_sid=proto.stream_sid, kind=exc.kind,
                        error=str(exc)[:300])
        if exc.fatal:
            raise _EndCall(f"protocol_{exc.kind}") from None
        if self.count >= self.budget:
            raise _EndCall("protocol_errors") from None


class IngestPass(FrameBatch):
    """The reactor's pass hook: the frames of every call read in one pass classified together (FrameBatch),
    then their frame lag observed, all at the pass's end.

    Frame lag is "handled minus due": a frame is handled once the endpointer has taken it, which for a frame
    read by the reactor is the end of its batch (the batch decides it there). So the readers only note each
    frame's due time (:attr:`dues`, Trio time) and the clock is read once per batch: no clock read per message
    (issue 13), and the lag includes the batched classification.

    Batches of ``batch_frames`` (``twilio.pass_batch_frames``; 0: the whole pass): under load passes run back to
    back, and a frame that arrived just after one pass polled waits for that pass and then, handled only at the
    end of the next, for all of it too (about twice a pass: the frame-lag tail at 300 calls, issue 13). The
    reader compares the pass's frames so far with ``batch_frames`` after each read (a compare per frame): once
    that many wait, they are decided (:meth:`flush`) and the pass goes on with a new batch. The sockets a pass
    reads come roughly in the order they became readable (epoll's ready list), so the frames that waited longest
    are mostly in its first batches. Decisions do not depend on how frames are batched (tests/endpointing,
    batched == alone; tests/twilio/test_twilio_late_frames.py).
    """

    __slots__ = ("batch_frames", "dues", "lag", "late", "origin_skipped", "prev", "reactor", "start", "woke")

    def __init__(self, lag: Histogram, late: LateFrames | None = None, *, batch_frames: int = 0,
                 origin_skipped: Counter | None = None) -> None:
        super().__init__()
        self.lag = lag
        # frames not taken as their stream's origin (not first in their read): _CallReader._handle
        self.origin_skipped = origin_skipped if origin_skipped is not None else Counter()
        self.batch_frames = batch_frames if batch_frames > 0 else math.inf  # a frame count or inf: a compare per frame
        self.dues: list[float] = []  # the due times of the frames read in this pass
        # Why a late frame waited (engine/twilio/late.py): the reactor's wake-up and start of this pass (read from
        # ``reactor`` when the server wired one, else this pass's begin()), and the previous pass's start and end.
        self.late = late
        self.reactor: Reactor | None = None
        self.woke = self.start = -math.inf
        self.prev = (-math.inf, -math.inf)

    def begin(self) -> None:
        super().begin()
        reactor = self.reactor
        if reactor is not None:
            self.woke, self.start = reactor.woke, reactor.started
        else:
            self.woke = self.start = trio.current_time()

    def end(self) -> None:
        try:
            super().end()
        finally:
            handled = trio.current_time()
            if self.dues:
                self.observe(self.dues, handled)
            self.prev = (self.start, handled)

    def flush(self) -> None:
        """Mid-pass: decide the frames waiting so far and observe their lag, then collect the pass's next batch."""
        try:
            super().end()  # its streams' failures are theirs (FrameBatch hands them over, see Reactor.fail)
        except Exception as bug:  # the batch's own bug: logged, as the reactor does at a pass's end, never the
            log.error("ingest_batch_failed", exc=bug)  # failure of the call whose read filled the batch
        finally:
            self.observe(self.dues, trio.current_time())
            super().begin()

    def observe(self, dues: list[float], handled: float) -> None:
        """Each frame due at ``dues[i]`` was handled at ``handled`` (the list is cleared); for a pass's batch
        (``dues`` is the pass's own list) its latest frame is split too if late (:class:`LateFrames`)."""
        pending = self.lag.pending  # folded into the histogram per FOLD_AT values (engine/metrics.py)
        lags = [(handled - due) * 1000 for due in dues]
        pending.extend(lags)
        late = self.late
        if late is not None and dues is self.dues:
            worst = max(lags)
            if worst > late.late_ms:  # the batch's latest frame: where it waited (engine/twilio/late.py)
                late.split(handled - worst / 1000, prev=self.prev, woke=self.woke, start=self.start, end=handled)
        dues.clear()
        if len(pending) >= Histogram.FOLD_AT:
            self.lag.fold()


class _CallReader:
    """One call's receive side as the reactor drives it (a :class:`~engine.twilio.reactor.Reader`).

    :meth:`readable` runs in the reactor's task: a read that is one whole frame (each Twilio message) goes
    straight to :meth:`_message`, any other read is fed to the call's WebSocket and :meth:`deliver` takes
    every complete message to :meth:`_message`, which parses it and runs the call's per-frame work
    (``handler.on_event``) synchronously. Whatever needs the call's own task — the end of the stream,
    a frame wsproto must handle (control, close, EOF), an exception — is left in ``reason`` /
    ``error`` and ``wake`` is set; the reactor pauses the socket until the task resumes it.

    Time: the reactor hands each read the pass's ``now`` (read right after the pass's poll), and nothing here
    reads the clock per message. ``now`` is at most one pass old (a few ms; the pass's work), which is safe for
    both of its uses: the idle deadline (pushed from ``now``, so it may fire up to one pass early, within its
    documented slack of ``slack_s``) and the frame lag's origin (the least-delayed frame's ``now`` minus its audio
    offset). Every frame a pass reads was in its socket when the pass polled, so ``now`` is never before the frame
    arrived and the origin never earlier than the least-delayed frame's arrival (issue 13, r7-tail: with ``now``
    read before the poll, a task preempted in between gave a stream an origin too early for the rest of the call;
    the one exception left, a second frame that reached an already-ready socket during the pass, is off by at most
    that pass). The lag's "handled" time is not ``now`` (that would hide the pass's work): it is the end of the
    frame's batch (:class:`IngestPass`).
    """

    __slots__ = ("batch_frames", "count", "debug", "dues", "error", "errors", "frame", "frame_nowait", "handler", "idle_s",
                 "ingest", "on_event", "origin", "origin_provisional", "proto", "pushed_at", "queue", "reason", "receive",
                 "receive_full", "reporter", "scope", "slack_s", "wake", "ws")

    def __init__(self, ws: WsServerConnection, proto: TwilioStream, handler: CallHandler, *, errors: _ErrorPolicy,
                 reporter: _StatsReporter, ingest: IngestPass, idle_s: float, debug: bool) -> None:
        self.ws = ws
        self.queue = ws.received  # the connection's one list of complete messages, for its whole life
        self.proto = proto
        self.receive = proto.receive_one
        self.frame = proto.receive_frame  # the per-message path: a frame's bytes, parsed as they are
        self.receive_full = proto.receive_full
        self.frame_nowait = ws.frame_nowait
        self.handler = handler
        self.on_event = handler.on_event
        self.errors = errors
        self.reporter = reporter
        self.ingest = ingest
        self.dues = ingest.dues  # the pass's list: readable() runs only within a pass
        self.batch_frames = ingest.batch_frames
        self.idle_s = idle_s
        self.debug = debug
        self.wake = trio.Event()
        self.reason: str | None = None
        self.error: Exception | None = None
        # One scope for the whole call (the idle deadline); its deadline is pushed forward at most every
        # ``slack_s`` = max(IDLE_SLACK_S, read_idle_ms / 8) (moving a deadline reorders Trio's deadline heap:
        # per 20 ms message that was ~4 % of the engine at 50 calls; every 0.5 s still 1.6 % at 200 calls,
        # BENCHMARKS.md § Capacity, issue 13). The idle timeout therefore fires after between
        # read_idle_ms − slack_s and read_idle_ms of silence (13.1–15 s at the default 15 s).
        self.slack_s = max(IDLE_SLACK_S, idle_s / 8)
        self.scope = trio.CancelScope()
        self.pushed_at = -math.inf
        # Frame lag: a frame of audio offset o (s) is due at origin + o, the origin being the earliest
        # (now - o) seen on this stream; lag = handled time - due.
        #
        # Only a frame that was surely in the socket when its pass polled may move the origin (issue 13, r8): the
        # first complete message of a reactor read (it made the socket readable), or any message read by the call's
        # own task (``now`` read then). A later message of the same read may have arrived while the pass ran, after
        # its ``now``: taken as the origin, it would make the origin too early by up to a pass, and every later frame
        # of the call look that much later for the rest of the call. Such a frame is due by the origin as it is;
        # before any origin, by a provisional one (``origin_provisional``) that the next safe frame replaces.
        self.origin = math.inf
        self.origin_provisional = math.inf
        self.count = 0

    def push_deadline(self, now: float) -> None:
        self.scope.deadline = now + self.idle_s
        self.pushed_at = now

    def readable(self, data: bytes, now: float) -> bool:
        if self.error is not None:  # failed earlier in this pass (a batch decided mid-pass): its task ends it
            return PAUSE
        if now - self.pushed_at >= self.slack_s:
            self.push_deadline(now)
        # The per-message path (issue 13): a read that is one whole text frame, as Twilio sends each message, is
        # parsed from its unmasked bytes (no str built); any other read through the connection's general
        # decoder and its queue.
        raw = self.frame_nowait(data)
        if raw is not None:
            if not self.debug:
                got = self.frame(raw)
                if got is not None:  # the fixed-layout parse's frame: real audio, in step (issue 13: no other call)
                    self.on_event(got)
                    offset = got.timestamp_ms / 1000
                    base = now - offset
                    if base < self.origin:  # noqa: PLR1730 (per frame: a compare, not a call to min())
                        self.origin = base
                    dues = self.dues
                    dues.append(self.origin + offset)
                    if len(dues) >= self.batch_frames:  # the pass's batch is full: decided now (IngestPass)
                        self.ingest.flush()
                    count = self.count = self.count + 1
                    if count % _STATS_FLUSH_EVERY == 0:
                        self.reporter.flush(self.proto.stream_sid)
                    return KEEP
            try:
                message = raw.decode()
            except UnicodeDecodeError:  # not a frame one() takes: wsproto reports it (1007), below
                pass
            else:
                # receive_full when the fixed-layout parse has just refused these bytes (receive_one would try it
                # again); with debug (which skipped it), receive_one.
                return self._paused(self._message(message, now, self.dues,
                                                  self.receive if self.debug else self.receive_full))
        if self.ws.feed_nowait(data):
            self.wake.set()
            return PAUSE
        return self._paused(self._deliver(now, self.dues))

    def _paused(self, reason: str | None) -> bool:
        """:meth:`readable`'s answer once a read's messages are handled (off the per-message path): PAUSE (the
        call's task woken) when the stream ended (``reason``), else KEEP; the pass's batch decided if full."""
        if len(self.dues) >= self.batch_frames:
            self.ingest.flush()
        if reason is not None:
            self.reason = reason
            self.wake.set()
            return PAUSE
        return KEEP

    def _due(self, offset: float, now: float, safe: bool) -> float:
        """The due time of the frame at audio ``offset`` read at ``now``, the origin moved by it if ``safe`` (the
        origin rule, ``__init__``; the per-message fast path in :meth:`readable` inlines the safe case)."""
        base = now - offset
        if safe:
            if base < self.origin:  # noqa: PLR1730
                self.origin = base
            return self.origin + offset
        if base < self.origin:
            self.ingest.origin_skipped.value += 1
        if self.origin != math.inf:
            return self.origin + offset
        if base < self.origin_provisional:  # noqa: PLR1730
            self.origin_provisional = base
        return self.origin_provisional + offset

    def failed(self, exc: Exception) -> None:
        self.error = exc
        self.wake.set()

    def deliver(self) -> str | None:
        """Process every complete message received, from the call's own task (outside a reactor pass); the
        reason the stream ended (stop, protocol errors) or None."""
        now = trio.current_time()
        dues: list[float] = []
        try:
            return self._deliver(now, dues, polled=False)
        finally:
            if dues:
                self.ingest.observe(dues, trio.current_time())

    def _deliver(self, now: float, dues: list[float], *, polled: bool = True) -> str | None:
        """Every queued message, read at ``now``. ``polled``: ``now`` is a reactor pass's (read after its poll), so
        only the first message was surely there by then (the frame-lag origin rule, ``__init__``)."""
        messages = self.queue
        safe = True
        while messages:
            reason = self._message(messages.pop(0), now, dues, safe=safe)
            if reason is not None:
                return reason
            safe = not polled
        return None

    def _message(self, message: str | bytes, now: float, dues: list[float],
                 receive: Callable[[str | bytes], AudioReceived | list[TwilioEvent]] | None = None,
                 *, safe: bool = True) -> str | None:
        """One message through the stream (``receive``: :meth:`TwilioStream.receive_one` unless given) and to the
        call, read at ``now``; each real frame's due time goes to ``dues``. The reason the stream ended, or None.
        ``safe``: the message was in the socket by ``now`` (it may set the frame-lag origin)."""
        if self.debug:
            log.debug("twilio_message", stream_sid=self.proto.stream_sid, size=len(message))
        try:
            got = (self.receive if receive is None else receive)(message)
        except TwilioProtocolError as exc:
            reason = self._rejected(exc)
            if reason is not None:
                return reason
            got = []
        return self._handle(got, now, dues, safe)

    def _rejected(self, exc: TwilioProtocolError) -> str | None:
        """A message the stream refused: the error policy's verdict, the reason the call ends or None."""
        try:
            self.errors.failed(self.proto, exc)
        except _EndCall as end:
            return end.reason
        return None

    def _handle(self, got: AudioReceived | list[TwilioEvent], now: float, dues: list[float], safe: bool = True) -> str | None:
        """A message's events to the call (:meth:`_message`'s second half); the reason the stream ended or None."""
        if isinstance(got, AudioReceived):  # the media fast path's frame: real audio, in step
            self.on_event(got)
            dues.append(self._due(got.timestamp_ms / 1000, now, safe))
        else:
            for event in got:
                if type(event) is AudioReceived:
                    self.on_event(event)
                    if not event.filled:
                        dues.append(self._due(event.timestamp_ms / 1000, now, safe))
                elif not isinstance(event, (Connected, Started)):  # neither comes after start (an order error)
                    self.on_event(event)
                    if type(event) is StreamStopped:
                        return "stop"
        self.count += 1
        if self.count % _STATS_FLUSH_EVERY == 0:
            self.reporter.flush(self.proto.stream_sid)
        return None


# -- Twilio → vendor-neutral media events (engine/media.py): all a call sees of Twilio's messages ----------


def stream_started(started: Started) -> StreamStarted:
    """Twilio's ``start`` as the neutral stream description the call is built from."""
    fmt = started.media_format  # TwilioStream accepted only audio/x-mulaw 8000 Hz mono
    return StreamStarted(stream_id=started.stream_sid, call_id=started.call_sid, encoding="mulaw",
                         sample_rate=fmt.sample_rate, channels=fmt.channels,
                         custom_parameters=dict(started.custom_parameters), provider="twilio",
                         account_id=started.account_sid, tracks=started.tracks)


def media_event(event: TwilioEvent) -> MediaEvent | None:
    """One event of a started Twilio stream as the call sees it: the neutral events pass as they are
    (:class:`TwilioStream` hands them out itself), ``start`` becomes :class:`StreamStarted`, ``None`` for
    ``connected`` (before start, nothing to tell the call)."""
    if isinstance(event, Connected):
        return None
    if isinstance(event, Started):
        return stream_started(event)
    return event
