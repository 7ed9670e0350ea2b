"""What only a classic SparkSession can tell: the scheduler's slots and task status.

The one module that touches the SparkContext. Spark Connect has none, so the functions here
are called on classic sessions only (the callers fall back to plain DataFrame jobs, or do
without, on Connect), except the job tags, which use Connect's own tags there.
"""

import contextlib
import secrets
import threading
import time

from .._sync import straggler_allowance
from .session import is_connect_session


def free_scheduler_slots(spark):
    """Task slots of the executors registered now that no task holds, as the scheduler
    counts them for barrier stages (``spark.task.cpus`` taken into account); never waits for
    executors to come.

    A task the scheduler still counts as running holds its slot: one of a cancelled job on
    an executor that cannot be reached, whose end is never reported, holds it until Spark
    declares the executor lost (``spark.network.timeout`` without heartbeats).
    """
    context = spark.sparkContext._jsc.sc()
    profile = context.resourceProfileManager().defaultResourceProfile()
    slots = int(context.maxNumConcurrentTasks(profile))
    running = sum(int(info.numRunningTasks())
                  for info in context.statusTracker().getExecutorInfos())
    return max(0, slots - running)


def profile_slots(spark, cpus, gpus):
    """Tasks of ``cpus`` cores and ``gpus`` GPUs each (a task-level resource profile) that
    the executors registered now can run at once, as the scheduler counts them.

    The profile is made in the JVM here: a pyspark ``ResourceProfile`` has no JVM side in a
    process that ever opened a Spark Connect session (pyspark then builds profiles for
    Connect).
    """
    jvm = spark.sparkContext._jvm
    requests = jvm.org.apache.spark.resource.TaskResourceRequests().cpus(cpus).resource(
        "gpu", float(gpus))
    profile = jvm.org.apache.spark.resource.ResourceProfileBuilder().require(requests).build()
    context = spark.sparkContext._jsc.sc()
    context.resourceProfileManager().addResourceProfile(profile)
    return int(context.maxNumConcurrentTasks(profile))


def tag_jobs(spark, tag):
    """Tag the jobs this thread starts on ``spark`` from now on, so that
    :func:`cancel_tagged_jobs` stops them. A classic session's ``SparkSession.addTag`` does
    not reach the jobs of a DataFrame action (its ``interruptTag`` finds no operation), so
    classic sessions tag their SparkContext's jobs; Connect has its own operation tags."""
    if is_connect_session(spark):
        spark.addTag(tag)
    else:
        spark.sparkContext.addJobTag(tag)


def untag_jobs(spark, tag):
    """Stop tagging this thread's jobs with ``tag``."""
    if is_connect_session(spark):
        spark.removeTag(tag)
    else:
        spark.sparkContext.removeJobTag(tag)


def cancel_tagged_jobs(spark, tag):
    """Cancel the running jobs tagged ``tag`` by :func:`tag_jobs` (from any thread)."""
    if is_connect_session(spark):
        spark.interruptTag(tag)
    else:
        spark.sparkContext.cancelJobsWithTag(tag)


class StragglerWatch:
    """Cancels a phase's stage when its last tasks have not finished ``allowance`` seconds
    after the first one did: ``max(timeout, twice the time the first took)``.

    A stopped or hung task would otherwise hold the barrier stage for ever (Spark has no
    task timeout). This needs the scheduler's status, so it watches on classic sessions
    only; on Connect a stopped task's executor is lost when it stops heartbeating.
    """

    def __init__(self, spark, n_tasks, timeout):
        self._context = None
        if n_tasks > 1 and not is_connect_session(spark):
            self._context = spark.sparkContext
        self._n_tasks = n_tasks
        self._timeout = timeout
        self._tag = f"skdbn-phase-{secrets.token_hex(8)}"
        self._done = threading.Event()
        self._thread = None
        self.cancelled = False
        self.finished = 0
        self.allowance = timeout

    def __enter__(self):
        if self._context is not None:
            self._context.addJobTag(self._tag)  # a tag of this thread's jobs
            self._thread = threading.Thread(target=self._watch, name="skdbn-straggler-watch",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._done.set()
        if self._thread is not None:
            self._thread.join(10.0)
            self._context.removeJobTag(self._tag)

    def _watch(self):
        started = first = None
        while not self._done.wait(0.5):
            running, finished = self._phase_tasks()
            now = time.monotonic()
            if started is None and running + finished:
                started = now
            if first is None and finished:
                first = now
                self.allowance = straggler_allowance(now - started, self._timeout)
            self.finished = finished
            if first is not None and now - first > self.allowance:
                self.cancelled = True
                self._context.cancelJobsWithTag(self._tag)
                return

    def _phase_tasks(self):
        """Running and finished tasks of the phase's barrier stage (the job's last)."""
        with contextlib.suppress(Exception):  # a job that just ended, or a stopped session
            tracker = self._context.statusTracker()
            for job in self._context._jsc.sc().statusTracker().getJobIdsForTag(self._tag):
                info = tracker.getJobInfo(job)
                stage = info and tracker.getStageInfo(max(info.stageIds))
                if stage and stage.numTasks == self._n_tasks:
                    return stage.numActiveTasks, stage.numCompletedTasks
        return 0, 0
