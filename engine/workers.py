"""``sori serve --workers N``: N engine processes behind one Twilio port, supervised by a parent.

Why a parent that owns the listener and hands connections over (not SO_REUSEPORT, not a shared accept):
the parent binds the Twilio port once, accepts every connection itself and passes its file descriptor
(SCM_RIGHTS over a per-worker Unix socketpair) to the **least-loaded** ready worker (fewest live
connections, ties round-robin: :class:`Balancer`). Workers never accept. Measured (BENCHMARKS.md, Workers):
when every worker accepted on one inherited socket, the kernel's shared accept queue spread calls unevenly
(40:12 and 2:42 at the same load; an idle worker does *not* reliably win ``accept``), so 2 workers carried
only 1.29-1.76x one worker. A worker that dies, restarts or drains loses no connection waiting in the
backlog (the parent accepts only while some worker is ready), port 0 works, and a restart never rebinds.
A dead worker's connections die with it; the parent sends nothing to it until its successor is ready.

The parent (plain Trio, no engine of its own):

- spawns each worker as ``sori serve`` with ``server.handoff_fd`` (its end of the hand-off socketpair:
  connections in, one byte per ended connection back), an admin port on loopback chosen by the worker, and
  a status socket: the worker writes its admin port on it once started, and drains by itself if the parent
  dies (EOF);
- restarts a worker that exits unexpectedly, with capped exponential backoff (a worker that fails before
  its first start stops everything: a config or credential problem is not fixed by restarting);
- on SIGTERM/SIGINT stops choosing by load and forwards SIGTERM to every worker (connections that still
  arrive go to a live worker, which answers 503 draining, until the last worker exits and the listener
  closes); (each drains its calls within ``budgets.drain``; a
  second signal is forwarded too and cancels at once) and waits for all, killing what outlives
  ``budgets.drain`` + :data:`KILL_GRACE_S`;
- serves the admin endpoint: ``/metrics`` is every worker's metrics with a ``worker`` label plus the
  parent's own; ``/readyz`` is ready only when **every** worker is running and ready (the capacity a load
  balancer plans for is N workers'), else 503 with the first reason, e.g. ``worker 1: draining``.

Without ``redis.url`` the workers cannot share a session budget, so ``rtzr.pool.max_sessions`` is split
between them (each gets ``max_sessions // N``): one host never exceeds the organisation's limit.
"""

from __future__ import annotations

import array
import errno
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import trio

from engine.admin import AdminServer
from engine.config import Config, ConfigError
from engine.listeners import accept_or_pause
from engine.log import get_logger
from engine.metrics import Registry
from engine.nursery import Backoff, StartupError

log = get_logger(__name__)

KILL_GRACE_S = 10.0  # beyond budgets.drain, before a worker that has not exited is killed
SCRAPE_TIMEOUT_S = 2.0
LISTEN_BACKLOG = 1024
STABLE_AFTER_S = 60.0  # a worker up this long has its restart backoff reset
HANDOFF_TIMEOUT_S = 2.0  # a worker that takes no connection this long (socket buffer full): the call is dropped
_GONE_ERRNOS = {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF}


def resolve_workers(value: int | Literal["auto"], cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """``auto`` = the cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota
    (a container limited to 2 CPUs on a 64-core node gets 2 workers, not 64)."""
    if value != "auto":
        return value
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cpu_max)
    if quota is not None:
        cores = min(cores, quota)
    return max(1, cores)


def cgroup_cpu_quota(path: str) -> int | None:
    """Whole CPUs allowed by cgroup v2 ``cpu.max`` (``"200000 100000"`` -> 2, rounded up), None if unlimited."""
    try:
        with open(path) as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, -(-int(quota) // int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def worker_overrides(config: Config, n: int) -> list[str]:
    """``--set`` assignments every worker gets on top of the parent's configuration."""
    sets = ["server.workers=1", "server.admin_host=127.0.0.1", "server.admin_port=0"]
    if not config.redis.url:
        share = config.rtzr.pool.max_sessions // n
        if share < 1:
            raise ConfigError(
                f"server.workers: {n} workers cannot share rtzr.pool.max_sessions={config.rtzr.pool.max_sessions} "
                "without a shared budget; set SORI_REDIS_URL (redis.url) or use fewer workers")
        sets.append(f"rtzr.pool.max_sessions={share}")
    return sets


# ---------------------------------------------------------------------------------------- aggregation (sans-IO)

def merge_metrics(texts: Mapping[str, str], own: str = "") -> str:
    """Prometheus texts by worker id -> one exposition: each family once, each sample with ``worker="<id>"``."""
    merged = _MetricsMerger()
    for line in own.splitlines():  # the parent's own metrics, unlabelled
        merged.add(line, None)
    for worker, text in texts.items():
        for line in text.splitlines():
            merged.add(line, worker)
    return merged.render()


class _MetricsMerger:
    """Groups samples by family (the exposition format wants each family's lines together)."""

    _SUFFIXES = ("_bucket", "_sum", "_count")

    def __init__(self) -> None:
        self.families: dict[str, tuple[list[str], list[str]]] = {}  # name -> (HELP/TYPE lines, samples)

    def add(self, line: str, worker: str | None) -> None:
        line = line.strip()
        if not line:
            return
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                head, _ = self.families.setdefault(parts[2], ([], []))
                if not any(h.split(None, 2)[1] == parts[1] for h in head):
                    head.append(line)
            return
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=len(line))
        name = line[:name_end]
        base = next((name[: -len(s)] for s in self._SUFFIXES if name.endswith(s)), name)
        _, samples = self.families.setdefault(base if base in self.families else name, ([], []))
        if worker is None:
            samples.append(line)
            return
        label = f'worker="{worker}"'
        rest = line[name_end:]
        if rest.startswith("{"):
            inner = rest[1:]
            samples.append(f"{name}{{{label}{'' if inner.startswith('}') else ','}{inner}")
        else:
            samples.append(f"{name}{{{label}}}{rest}")

    def render(self) -> str:
        out: list[str] = []
        for head, samples in self.families.values():
            out.extend(head)
            out.extend(samples)
        return "\n".join(out) + "\n"


def ready_reason(states: Sequence[WorkerState], draining: bool) -> str | None:
    """All workers running and ready, else the first reason (the parent's readiness rule)."""
    if draining:
        return "draining"
    for w in states:
        if w.admin_port is None:
            return f"worker {w.index}: {'starting' if w.pid else 'not running (restarting)'}"
        if w.not_ready is not None:
            return f"worker {w.index}: {w.not_ready}"
    return None


class Balancer:
    """Which worker gets the next connection (sans-IO): the fewest live connections among the ready workers,
    ties broken round-robin (so sequential short calls alternate too).

    ``live`` counts connections handed over and not yet reported ended; a worker going down (exit, restart)
    forgets its count, as its connections died with it.
    """

    def __init__(self, n: int) -> None:
        self.live = [0] * n
        self.ready = [False] * n
        self.handed = [0] * n  # totals, for logs and tests
        self._next = 0

    def up(self, index: int) -> None:
        self.ready[index] = True
        self.live[index] = 0

    def down(self, index: int) -> None:
        self.ready[index] = False
        self.live[index] = 0

    @property
    def any_ready(self) -> bool:
        return any(self.ready)

    def pick(self) -> int | None:
        n = len(self.live)
        best: int | None = None
        for k in range(n):
            i = (self._next + k) % n
            if self.ready[i] and (best is None or self.live[i] < self.live[best]):
                best = i
        return best

    def handed_to(self, index: int) -> None:
        self.live[index] += 1
        self.handed[index] += 1
        self._next = (index + 1) % len(self.live)

    def ended(self, index: int, count: int) -> None:
        self.live[index] = max(0, self.live[index] - count)


# ---------------------------------------------------------------------------------------- the parent

@dataclass
class WorkerState:
    index: int
    pid: int | None = None
    admin_port: int | None = None
    not_ready: str | None = "not checked yet"
    starts: int = 0
    exit_codes: list[int] = field(default_factory=list)


class WorkerPool:
    """The parent process: listener, workers, supervision, signals, aggregated admin."""

    def __init__(self, config: Config, n: int, child_args: list[str], *, handle_signals: bool = True) -> None:
        self.config = config
        self.n = n
        self.child_args = child_args  # ``serve`` arguments every worker gets (config sources, --stt, ...)
        self.handle_signals = handle_signals
        self.metrics = Registry()
        self.workers = [WorkerState(i) for i in range(n)]
        self.stopping = trio.Event()
        self.signals = 0
        self.exit_code = 0
        self.port: int | None = None
        self.admin_port: int | None = None
        self._procs: dict[int, trio.Process] = {}
        self.balancer = Balancer(n)
        self._chans: dict[int, trio.socket.SocketType] = {}  # hand-off socket of each running worker
        self._ready_changed = trio.Event()
        self._conn_ids = itertools.count(1)
        self._restarts = self.metrics.counter("worker_restarts_total", "workers restarted after an unexpected exit")
        self._g_running = self.metrics.gauge("workers_running", "worker processes up (admin port reported)")
        self.metrics.gauge("workers_configured", "worker processes configured").set(n)

    def bind(self) -> socket.socket:
        """The Twilio listening socket (bound before anything else: fail fast); only the parent accepts on it."""
        host, port = self.config.server.host, self.config.server.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise StartupError("twilio", exc, (host, port)) from exc
        sock.listen(LISTEN_BACKLOG)
        self.port = sock.getsockname()[1]
        return sock

    async def run(self, *, task_status: trio.TaskStatus[WorkerPool] = trio.TASK_STATUS_IGNORED) -> int:
        listener = trio.socket.from_stdlib_socket(self.bind())
        try:
            async with trio.open_nursery() as nursery:
                admin = _AggregatingAdmin(self)
                try:
                    self.admin_port = await nursery.start(admin.run)
                except OSError as exc:
                    raise StartupError("admin", exc, (self.config.server.admin_host, self.config.server.admin_port)
                                       ) from exc
                if self.handle_signals:
                    nursery.start_soon(self._watch_signals)
                log.info("workers_starting", workers=self.n, port=self.port, admin_port=self.admin_port)
                nursery.start_soon(self._accept_loop, listener)
                async with trio.open_nursery() as workers:
                    for w in self.workers:
                        workers.start_soon(self._supervise, w)
                    task_status.started(self)
                log.info("workers_stopped", exit_code=self.exit_code)
                nursery.cancel_scope.cancel()
        finally:
            listener.close()
        return self.exit_code

    def request_shutdown(self) -> None:
        """First call: every worker drains. Second: forwarded too (the workers cancel at once)."""
        self.signals += 1
        self.stopping.set()
        for pid_proc in list(self._procs.values()):
            if pid_proc.returncode is None:
                pid_proc.send_signal(signal.SIGTERM)

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("signal", signal=signal.Signals(signum).name, workers=len(self._procs))
                self.request_shutdown()

    # -- accept and hand over ------------------------------------------------------------------------------

    def _set_ready(self, index: int, ready: bool) -> None:
        if ready:
            self.balancer.up(index)
        else:
            self.balancer.down(index)
        self._ready_changed.set()
        self._ready_changed = trio.Event()

    async def _accept_loop(self, listener: trio.socket.SocketType) -> None:
        """Accept only while some worker is ready (until then connections wait in the kernel's backlog), and
        hand each connection to the least-loaded worker."""
        while True:
            while not self.balancer.any_ready:
                await self._ready_changed.wait()
            accepted = await accept_or_pause(listener.accept, "twilio_accept_failed")
            if accepted is None:
                continue
            conn, _ = accepted
            with conn:  # our copy is closed once handed over (the worker holds its own)
                await self._hand_over(conn)

    async def _hand_over(self, conn: trio.socket.SocketType) -> None:
        fds = array.array("i", [conn.fileno()])
        while True:
            index = self.balancer.pick()
            if index is None:  # every worker went down after the accept: wait for one
                await self._ready_changed.wait()
                continue
            chan = self._chans.get(index)
            if chan is None:
                self._set_ready(index, False)
                continue
            try:
                with trio.fail_after(HANDOFF_TIMEOUT_S):
                    await chan.sendmsg([b"c"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
            except trio.TooSlowError:
                log.error("worker_handoff_timeout", worker=index, action="connection dropped")
                return
            except OSError as exc:
                if exc.errno not in _GONE_ERRNOS:
                    raise
                self._set_ready(index, False)  # it is exiting: its supervisor restarts it
                continue
            self.balancer.handed_to(index)
            log.debug("worker_handoff", worker=index, conn=next(self._conn_ids), live=self.balancer.live[index])
            return

    async def _read_ends(self, w: WorkerState, chan: trio.socket.SocketType) -> None:
        """The worker's one byte per ended connection keeps its live count right."""
        try:
            while data := await chan.recv(4096):
                self.balancer.ended(w.index, len(data))
        except OSError as exc:  # the worker is gone; its supervisor sees the exit
            log.debug("worker_handoff_read_failed", worker=w.index, error=type(exc).__name__)

    async def _supervise(self, w: WorkerState) -> None:
        backoff = Backoff(0.5, 30.0)
        while not self.stopping.is_set():
            started_at = trio.current_time()
            code = await self._run_once(w)
            if self.stopping.is_set():
                break
            if not w.starts:  # failed before it ever started: restarting cannot help
                log.error("worker_failed_to_start", worker=w.index, exit_code=code)
                self.exit_code = code or 1
                self.request_shutdown()
                break
            self._restarts.inc()
            if trio.current_time() - started_at >= STABLE_AFTER_S:
                backoff.reset()
            delay = backoff.next_delay()
            log.error("worker_exited", worker=w.index, exit_code=code, restart_in_s=round(delay, 3))
            with trio.move_on_after(delay):
                await self.stopping.wait()

    async def _run_once(self, w: WorkerState) -> int:
        parent_end, child_end = socket.socketpair()
        # SEQPACKET: one message per handed connection, never glued to the next one's
        hand_parent, hand_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cmd = [sys.executable, "-m", "engine", "serve", *self.child_args,
               *[a for s in worker_overrides(self.config, self.n) for a in ("--set", s)],
               "--set", f"server.handoff_fd={hand_child.fileno()}", "--set", f"server.port={self.port}",
               "--worker-index", str(w.index), "--worker-status-fd", str(child_end.fileno())]
        try:
            proc = await trio.lowlevel.open_process(
                cmd, pass_fds=(hand_child.fileno(), child_end.fileno()), stdin=subprocess.DEVNULL,
                start_new_session=True)  # a terminal's Ctrl-C reaches the parent only: it forwards one SIGTERM
        except OSError as exc:  # cannot exec the interpreter (permissions, resources): as a worker that failed
            parent_end.close()
            hand_parent.close()
            log.error("worker_spawn_failed", worker=w.index, error=f"{type(exc).__name__}: {exc}")
            return 127
        finally:
            child_end.close()
            hand_child.close()
        w.pid = proc.pid
        self._procs[w.index] = proc
        log.info("worker_spawned", worker=w.index, pid=proc.pid)
        if self.stopping.is_set():  # the shutdown came while it was being spawned
            proc.send_signal(signal.SIGTERM)
        status = trio.socket.from_stdlib_socket(parent_end)
        hand = trio.socket.from_stdlib_socket(hand_parent)
        self._chans[w.index] = hand
        try:
            async with trio.open_nursery() as n:
                n.start_soon(self._read_status, w, status)
                n.start_soon(self._read_ends, w, hand)
                n.start_soon(self._kill_if_late, w, proc)
                code = await proc.wait()
                n.cancel_scope.cancel()
        finally:
            self._chans.pop(w.index, None)
            self._set_ready(w.index, False)
            status.close()
            hand.close()
            w.admin_port = None
            w.not_ready = "not running"
            w.pid = None
            self._procs.pop(w.index, None)
            self._g_running.set(sum(1 for x in self.workers if x.admin_port is not None))
        w.exit_codes.append(code)
        log.info("worker_exit", worker=w.index, pid=proc.pid, exit_code=code)
        return code

    async def _kill_if_late(self, w: WorkerState, proc: trio.Process) -> None:
        """A worker still running ``budgets.drain`` + KILL_GRACE_S after the shutdown began is killed."""
        await self.stopping.wait()
        await trio.sleep(self.config.budgets.drain / 1000.0 + KILL_GRACE_S)
        log.error("worker_killed", worker=w.index, pid=proc.pid, reason="did not exit after the drain budget")
        proc.kill()

    async def _read_status(self, w: WorkerState, status: trio.socket.SocketType) -> None:
        buf = b""
        while True:
            data = await status.recv(4096)
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                    port = int(msg["admin_port"])
                except (ValueError, KeyError, TypeError):
                    log.warning("worker_status_garbled", worker=w.index)
                    continue
                w.admin_port = port
                w.starts += 1
                self._set_ready(w.index, True)
                self._g_running.set(sum(1 for x in self.workers if x.admin_port is not None))
                log.info("worker_started", worker=w.index, pid=w.pid, admin_port=port)

    # -- aggregation I/O ---------------------------------------------------------------------------------

    async def scrape(self, path: str) -> dict[int, tuple[int, str]]:
        """GET ``path`` from every running worker's admin: index -> (status, body); unreachable ones left out."""
        results: dict[int, tuple[int, str]] = {}
        async with httpx.AsyncClient(timeout=SCRAPE_TIMEOUT_S) as client:

            async def one(w: WorkerState, port: int) -> None:
                try:
                    r = await client.get(f"http://127.0.0.1:{port}{path}")
                    results[w.index] = (r.status_code, r.text)
                except httpx.HTTPError as exc:
                    log.debug("worker_scrape_failed", worker=w.index, error=type(exc).__name__)

            async with trio.open_nursery() as n:
                for w in self.workers:
                    if w.admin_port is not None:
                        n.start_soon(one, w, w.admin_port)
        return results

    async def refresh_readiness(self) -> str | None:
        got = await self.scrape("/readyz")
        for w in self.workers:
            if w.admin_port is None:
                continue
            status, body = got.get(w.index, (0, "admin not answering"))
            w.not_ready = None if status == 200 else (body.strip() or f"HTTP {status}")
        return ready_reason(self.workers, self.stopping.is_set())

    async def metrics_text(self) -> str:
        got = await self.scrape("/metrics")
        return merge_metrics({str(i): body for i, (status, body) in sorted(got.items()) if status == 200},
                             self.metrics.render())


class _AggregatingAdmin(AdminServer):
    """The parent's admin: the same routes, answered from the workers."""

    def __init__(self, pool: WorkerPool) -> None:
        cfg = pool.config.server
        super().__init__(cfg.admin_host, cfg.admin_port, pool.metrics, lambda: None)
        self.pool = pool

    async def respond_async(self, method: str, target: str) -> tuple[int, str, bytes]:
        path = target.split("?", 1)[0]
        if method in ("GET", "HEAD") and path in ("/readyz", "/healthz"):
            reason = await self.pool.refresh_readiness()
            self.not_ready = lambda: reason
        elif method in ("GET", "HEAD") and path == "/metrics":
            return 200, "text/plain; version=0.0.4", (await self.pool.metrics_text()).encode()
        return self.respond(method, target)


# ---------------------------------------------------------------------------------------- the worker side

class _WorkerTag(logging.Filter):
    """Adds ``worker=<index>`` to every log line of a worker process."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            fields.setdefault("worker", self.index)
        else:
            record.fields = {"worker": self.index}
        return True


def tag_worker_logs(index: int) -> None:
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerTag(index))


async def report_and_watch_parent(status_fd: int, admin_port: int, shutdown: Any) -> None:
    """Worker side of the status socket: report the admin port, then drain if the parent goes away."""
    sock = trio.socket.from_stdlib_socket(socket.socket(fileno=status_fd))
    with sock:
        await sock.send(json.dumps({"admin_port": admin_port}).encode() + b"\n")
        while await sock.recv(1024):
            pass
    log.warning("worker_parent_gone", action="drain")
    shutdown()
