"""Runs a study's trainings in worker processes, stoppable with one signal.

SIGTERM or SIGINT (Ctrl-C) to the study's own process stops the whole study
cleanly: the jobs not started yet are cancelled, and every running training
gets SIGTERM, on which the trainer saves a checkpoint at its current step and
the job records no row (a rerun of the same command resumes it). Between
jobs the workers ignore SIGINT (a terminal's Ctrl-C reaches the whole process
group) and SIGTERM (a killed idle worker breaks the pool, and the parent then
waited forever); while a job trains, the trainer turns either signal into a
stop after the current step.
Because a job that was already handed to a worker may start after the
signal, the parent sends SIGTERM again every second until every running job
has stopped.

concurrent.futures supplies the pool; it has no notion of stopping the jobs
it runs, which is all this file adds. The parent records the signal with
the trainer's own StopFlag (a second Ctrl-C there aborts at once).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
from typing import Any, Callable, Sequence

from moejax.studies.comparison import RunStopped
from moejax.train.loop import StopFlag

RESEND_SECONDS = 1.0


def _worker_ignores_signals() -> None:
  """A worker's baseline: the trainer installs its StopFlag handlers while a
  job trains and restores these after."""
  for signum in StopFlag.SIGNALS:
    signal.signal(signum, signal.SIG_IGN)


def _stop_running(pending: set) -> set:
  """Cancels the jobs not started and sends SIGTERM to the workers every
  RESEND_SECONDS until every started job has ended; returns those jobs'
  futures (a job can finish just before its signal)."""
  for future in pending:
    future.cancel()
  ended = set()
  while pending:
    for child in multiprocessing.active_children():
      os.kill(child.pid, signal.SIGTERM)   # idle workers ignore it
    done, pending = concurrent.futures.wait(pending, timeout=RESEND_SECONDS)
    ended |= {future for future in done if not future.cancelled()}
  return ended


def run_in_workers(fn: Callable, args: Sequence[tuple], workers: int,
                   on_result: Callable[[int, Any], None]) -> None:
  """Calls fn(*args[i]) for every i in `workers` spawned processes, and
  on_result(i, result) as each finishes. Raises RunStopped when the study was
  signalled to stop, and otherwise the first job's error (the other running
  jobs are then stopped at a checkpoint too, the rest cancelled)."""
  context = multiprocessing.get_context("spawn")
  with StopFlag() as stop, concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=context, initializer=_worker_ignores_signals) as pool:
    futures = {pool.submit(fn, *a): i for i, a in enumerate(args)}
    pending = set(futures)
    try:
      while pending and not stop.reason:
        done, pending = concurrent.futures.wait(
            pending, timeout=RESEND_SECONDS, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
          on_result(futures[future], future.result())
    except BaseException:
      _stop_running(pending)
      raise
    if not stop.reason:
      return
    stopped = 0
    for future in _stop_running(pending):
      try:
        on_result(futures[future], future.result())   # it finished before the signal
      except RunStopped:
        stopped += 1
  raise RunStopped(f"the study stopped on {stop.reason}: {stopped} running run(s) saved a "
                   "checkpoint and recorded no row; rerun the same command to resume")
