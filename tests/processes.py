"""Finding the processes of a fit, to kill them for real in fault tests and the fault matrix
(``benchmarks/fault_matrix.py``). Linux only: it reads ``/proc``."""

import contextlib
import os
import signal
import threading
import time


def processes():
    """``{pid: (parent pid, command line, cpu ticks)}`` of every process we can read."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            table[int(name)] = (int(fields[1]), command, int(fields[11]) + int(fields[12]))
    return table


def busiest(is_worker):
    """The pid of the worker process (``is_worker(pid, table)``) that used most CPU over the
    last 0.3 s: one that is running a task, not an idle one."""
    before = processes()
    time.sleep(0.3)
    after = processes()
    busy = {pid: after[pid][2] - before[pid][2] for pid in after
            if pid in before and is_worker(pid, after)}
    pid = max(busy, key=busy.get, default=None)
    return pid if pid is not None and busy[pid] > 0 else None


def loky_worker(pid, table):
    parent, command, _ = table[pid]
    return (parent == os.getpid() and "loky" in command
            and "resource_tracker" not in command and "semaphore" not in command)


def spark_python_worker(pid, table):
    # Spark's Python daemon forks one worker per task; kill a forked worker, not the daemon.
    parent, command, _ = table[pid]
    return "pyspark.daemon" in command and parent in table and \
        "pyspark.daemon" in table[parent][1]


class _DuringFirstPhase:
    """Wraps ``engine_class.run_phase`` (through ``patch(object, name, value)``, e.g.
    pytest's ``monkeypatch.setattr``): once the fit's first phase has run for ``delay``
    seconds, ``self._hit(pid)`` runs on the busiest worker process, from a thread."""

    def __init__(self, patch, engine_class, is_worker, delay):
        self._started = threading.Event()
        original = engine_class.run_phase

        def run_phase(engine, *args):
            self._started.set()
            return original(engine, *args)

        patch(engine_class, "run_phase", run_phase)
        self._thread = threading.Thread(target=self._run, args=(is_worker, delay), daemon=True)
        self._thread.start()

    def _run(self, is_worker, delay):
        if not self._started.wait(120):
            return
        time.sleep(delay)
        pid = busiest(is_worker)
        if pid is not None:
            self._hit(pid)


class KillDuringFirstPhase(_DuringFirstPhase):
    """SIGKILL the busiest worker process once the first phase has run ``delay`` seconds;
    ``killed`` lists its pid."""

    def __init__(self, patch, engine_class, is_worker, delay=1.0):
        self.killed = []
        super().__init__(patch, engine_class, is_worker, delay)

    def _hit(self, pid):
        os.kill(pid, signal.SIGKILL)
        self.killed.append(pid)

    def join(self):
        self._thread.join(10)


class StopDuringFirstPhase(_DuringFirstPhase):
    """SIGSTOP the busiest worker process once the first phase has run ``delay`` seconds,
    and SIGCONT it ``seconds`` later; ``stopped`` lists ``(pid, time.monotonic())`` of the
    stop."""

    def __init__(self, patch, engine_class, is_worker, seconds, delay=0.5):
        self.stopped = []
        self.seconds = seconds
        self._released = threading.Event()
        super().__init__(patch, engine_class, is_worker, delay)

    def _hit(self, pid):
        os.kill(pid, signal.SIGSTOP)
        self.stopped.append((pid, time.monotonic()))
        self._released.wait(self.seconds)
        with contextlib.suppress(ProcessLookupError):  # Spark may have killed it
            os.kill(pid, signal.SIGCONT)

    def join(self):
        """End the stop now if it still lasts (the fit is over); leave no process stopped."""
        self._released.set()
        self._thread.join(10)
        for pid, _ in self.stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def executor_pids():
    """Process ids of Spark executor JVMs (of a standalone cluster) on this machine."""
    pids = []
    for pid, (_, command, _) in processes().items():
        if "CoarseGrainedExecutorBackend" in command:
            pids.append(pid)
    return pids


def kill_standalone_worker(work_dir):
    """SIGKILL the standalone Worker daemon started with ``--work-dir work_dir`` and the
    executors it launched: its cores leave the cluster for good. Returns the pids killed."""
    table = processes()
    workers = [pid for pid, (_, command, _) in table.items()
               if "deploy.worker.Worker" in command and str(work_dir) in command]
    executors = [pid for pid, (parent, command, _) in table.items()
                 if parent in workers and "CoarseGrainedExecutorBackend" in command]
    for pid in executors + workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return executors + workers
