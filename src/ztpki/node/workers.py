"""`node serve --workers N`: one supervisor process and N worker processes on one address.

A pre-forking supervisor: it loads the node (keys decrypted once), binds every listening
socket (ztpki.node.listeners), then forks the workers, which serve on the inherited sockets.
It serves nothing itself and runs no event loop, so that a fork never copies a loop, a
thread or a database connection (each worker opens its own). It

- restarts a worker that dies (killed, crashed), in the same slot, after a back-off that
  doubles with each death in a row (0.5 s up to 30 s; a worker that served 30 s resets it),
  logging why it died; the other workers serve on meanwhile, on the same sockets, so no
  connection is refused while one is replaced;
- forwards SIGHUP to every worker (each reloads node.toml and fetches the factory CRLs; a
  worker that was still starting gets it once ready), after reloading its own copy of the
  configuration, so that a worker started later starts with the reloaded one;
- on SIGTERM or SIGINT closes its own copies of the listening sockets and sends SIGTERM to
  every worker: each closes its copies at once (once all are closed the kernel refuses new
  connections), lets its requests in flight finish within the drain timeout, and exits; the
  supervisor waits for them (killing any still there after the drain timeout and a grace),
  then exits 0.

Workers die with their supervisor (Linux PR_SET_PDEATHSIG): a supervisor killed -9 leaves no
worker serving on the address.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import selectors
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from ztpki.errors import ZtpkiError

log = logging.getLogger(__name__)

RESTART_FIRST = 0.5  # seconds before the first restart of a worker that died
RESTART_MAX = 30.0
HEALTHY_AFTER = 30.0  # a worker that served this long before dying restarts at once again
STOP_GRACE = 10.0  # beyond the drain timeout, before a worker still there is killed
READY = b"R"

# Runs in the forked child: serve as worker `slot`, write READY to the fd once serving, and
# return the exit status.
RunWorker = Callable[[int, int], int]


class WorkersFailed(ZtpkiError):
    """A worker could not start: the node is not served."""

    code = "workers-failed"


def default_worker_count() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def restart_delay(deaths_in_a_row: int) -> float:
    """Seconds before starting again a worker that died ``deaths_in_a_row`` times in a row."""
    return min(RESTART_MAX, RESTART_FIRST * 2.0 ** min(16, max(0, deaths_in_a_row - 1)))


def describe_exit(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


@dataclass
class _Worker:
    slot: int
    pid: int
    ready_fd: int | None
    started: float
    generation: int  # the last reload this worker has (or was told of)
    ready: bool = False


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


class Supervisor:
    """Starts, watches, restarts, reloads and stops the workers; see the module's text."""

    def __init__(
        self,
        count: int,
        *,
        run_worker: RunWorker,
        reload: Callable[[], None],
        close_listeners: Callable[[], None],
        drain_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if count < 1:
            raise ValueError("a supervisor needs at least one worker")
        self.count = count
        self._run_worker = run_worker
        self._reload = reload
        self._close_listeners = close_listeners
        self.drain_timeout = drain_timeout
        self._clock = clock
        self.workers: dict[int, _Worker] = {}
        self._deaths: dict[int, int] = {}  # per slot: deaths in a row
        self._due: dict[int, float] = {}  # per slot: when to start it again
        self._signals: list[int] = []
        self._generation = 0
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._pid = os.getpid()

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Fork every worker; return once all serve, or raise WorkersFailed (none left)."""
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._note_signal)
        for slot in range(self.count):
            self._spawn(slot)
        while not all(w.ready for w in self.workers.values()):
            self._wait(None)
            for worker, status in self._reap():
                self._stop_all()
                raise WorkersFailed(
                    f"worker {worker.slot} {describe_exit(status)} before it served; the node "
                    "log says why"
                )
            if any(s in (signal.SIGTERM, signal.SIGINT) for s in self._signals):
                self._stop_all()
                raise WorkersFailed("stopped while the workers were starting")

    def run(self) -> int:
        """Watch the workers until SIGTERM or SIGINT; the exit status of the drain."""
        while True:
            self._wait(self._next_restart())
            signals, self._signals = self._signals, []
            if signal.SIGTERM in signals or signal.SIGINT in signals:
                # Before reaping: a Ctrl-C reaches the workers too, and those that already
                # drained and exited are the drain's, not deaths to restart.
                return self._drain()
            for worker, status in self._reap():
                self._died(worker, status)
            if signal.SIGHUP in signals:
                self._forward_reload()
            now = self._clock()
            for slot, due in sorted(self._due.items()):
                if due <= now:
                    del self._due[slot]
                    self._respawn(slot)

    def _respawn(self, slot: int) -> None:
        try:
            self._spawn(slot)
        except OSError as exc:  # out of processes or memory: try again later
            deaths = self._deaths.get(slot, 0) + 1
            self._deaths[slot] = deaths
            self._due[slot] = self._clock() + restart_delay(deaths)
            log.error("cannot start worker %d: %s; trying again later", slot, exc.strerror)

    # ------------------------------------------------------------------ workers
    def _spawn(self, slot: int) -> None:
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError:
            os.close(ready_r)
            os.close(ready_w)
            raise
        if pid == 0:
            self._become_worker(slot, ready_r, ready_w)
        os.close(ready_w)
        self.workers[slot] = _Worker(slot, pid, ready_r, self._clock(), self._generation)
        self._selector.register(ready_r, selectors.EVENT_READ, slot)
        log.info("worker %d (pid %d) starting", slot, pid)

    def _become_worker(self, slot: int, ready_r: int, ready_w: int) -> None:
        """In the child: shed the supervisor's signal handling and descriptors, serve, exit."""
        status = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            # Until the worker's loop takes SIGHUP; a reload sent before is sent again.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            _die_with_parent()
            if os.getppid() != self._pid:  # the supervisor died before prctl
                os._exit(1)
            self._selector.close()
            for fd in (ready_r, self._wake_r, self._wake_w):
                os.close(fd)
            for worker in self.workers.values():
                if worker.ready_fd is not None:
                    os.close(worker.ready_fd)
            status = self._run_worker(slot, ready_w)
        except ZtpkiError as exc:
            log.error("worker %d (pid %d) cannot serve: %s", slot, os.getpid(), exc.message)
        except BaseException:
            log.exception("worker %d (pid %d) failed", slot, os.getpid())
        finally:
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)

    def _note_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)

    def _wait(self, timeout: float | None) -> None:
        for key, _ in self._selector.select(timeout):
            if key.fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 512):
                        pass
                continue
            self._ready_message(key.data, key.fd)

    def _ready_message(self, slot: int, fd: int) -> None:
        try:
            data = os.read(fd, 16)
        except OSError:
            data = b""
        self._selector.unregister(fd)
        os.close(fd)
        worker = self.workers[slot]
        worker.ready_fd = None
        if data != READY:
            return  # it exits; _reap tells why
        worker.ready = True
        log.info("worker %d (pid %d) serving", slot, worker.pid)
        if worker.generation < self._generation:
            worker.generation = self._generation
            self._signal(worker, signal.SIGHUP)

    def _reap(self) -> list[tuple[_Worker, int]]:
        """Every worker that has exited, with its wait status."""
        gone = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            for slot, worker in list(self.workers.items()):
                if worker.pid == pid:
                    if worker.ready_fd is not None:
                        self._selector.unregister(worker.ready_fd)
                        os.close(worker.ready_fd)
                    del self.workers[slot]
                    gone.append((worker, status))
        return gone

    def _died(self, worker: _Worker, status: int) -> None:
        now, slot = self._clock(), worker.slot
        lived = now - worker.started
        deaths = 1 if lived >= HEALTHY_AFTER else self._deaths.get(slot, 0) + 1
        self._deaths[slot] = deaths
        delay = restart_delay(deaths)
        self._due[slot] = now + delay
        log.warning(
            "worker %d (pid %d) %s; starting another in %.1f s (%d death%s in a row)",
            slot,
            worker.pid,
            describe_exit(status),
            delay,
            deaths,
            "" if deaths == 1 else "s",
        )

    def _next_restart(self) -> float | None:
        if not self._due:
            return None
        return max(0.0, min(self._due.values()) - self._clock())

    def _signal(self, worker: _Worker, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, sig)

    # ------------------------------------------------------------------ reload and stop
    def _forward_reload(self) -> None:
        try:
            self._reload()
        except Exception:
            log.exception("SIGHUP: the supervisor could not reload; the workers still do")
        self._generation += 1
        for worker in self.workers.values():
            if worker.ready:
                worker.generation = self._generation
                self._signal(worker, signal.SIGHUP)
        log.info("SIGHUP: told %d workers to reload", len(self.workers))

    def _drain(self) -> int:
        self._close_listeners()
        self._due.clear()
        log.info(
            "stopping: %d workers finish their requests in flight (at most %.0f s)",
            len(self.workers),
            self.drain_timeout,
        )
        for worker in self.workers.values():
            self._signal(worker, signal.SIGTERM)
        failed = self._wait_for_all(self.drain_timeout + STOP_GRACE)
        return 1 if failed else 0

    def _stop_all(self) -> None:
        self._close_listeners()
        for worker in self.workers.values():
            self._signal(worker, signal.SIGTERM)
        self._wait_for_all(self.drain_timeout + STOP_GRACE)

    def _wait_for_all(self, timeout: float) -> bool:
        """Wait for every worker to exit (kill those left at the deadline); True if any
        failed."""
        deadline = self._clock() + timeout
        failed = False
        while self.workers:
            for worker, status in self._reap():
                if os.waitstatus_to_exitcode(status) != 0:
                    failed = True
                    log.warning("worker %d %s while stopping", worker.slot, describe_exit(status))
            remaining = deadline - self._clock()
            if not self.workers:
                break
            if remaining <= 0:
                for worker in self.workers.values():
                    log.error("worker %d (pid %d) still running: killed", worker.slot, worker.pid)
                    self._signal(worker, signal.SIGKILL)
                deadline = self._clock() + STOP_GRACE
                failed = True
                continue
            self._wait(remaining)
        return failed
