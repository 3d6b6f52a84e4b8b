"""A study's worker pool stops with one signal: every running job is told to
stop (SIGTERM, as the trainer expects) and the study raises RunStopped,
instead of hanging or killing workers mid-step."""

import os
import signal
import threading
import time

import pytest

from moejax.studies.comparison import RunStopped
from moejax.studies.worker_pool import run_in_workers


def _job_until_sigterm(out: str, seconds: float) -> str:
  """A training's stand-in: runs until SIGTERM (then 'saves a checkpoint' and
  raises RunStopped, as train_row does) or for `seconds`."""
  stop = []
  previous = signal.signal(signal.SIGTERM, lambda *a: stop.append(True))
  try:
    os.makedirs(out)
    open(os.path.join(out, "started"), "w").close()
    deadline = time.time() + seconds
    while not stop and time.time() < deadline:
      time.sleep(0.05)
  finally:
    signal.signal(signal.SIGTERM, previous)
  if stop:
    open(os.path.join(out, "checkpoint"), "w").close()
    raise RunStopped(f"{out}: stopped")
  open(os.path.join(out, "returned"), "w").close()
  return out


def _signal_when_started(paths, signum, pids):
  deadline = time.time() + 120
  while time.time() < deadline and not all(os.path.exists(p) for p in paths):
    time.sleep(0.05)
  for pid in pids():
    os.kill(pid, signum)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal handlers need the main thread")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_one_signal_to_the_study_stops_every_running_job(tmp_path, signum):
  outs = [str(tmp_path / f"job{i}") for i in range(4)]
  started = [os.path.join(o, "started") for o in outs[:2]]
  sender = threading.Thread(target=_signal_when_started,
                            args=(started, signum, lambda: [os.getpid()]), daemon=True)
  finished = []
  sender.start()
  begin = time.time()
  with pytest.raises(RunStopped, match=rf"stopped on {signal.Signals(signum).name}: [234] "
                                       "running run\\(s\\) saved a checkpoint"):
    run_in_workers(_job_until_sigterm, [(o, 300.0) for o in outs], 2,
                   lambda i, r: finished.append(i))
  # Stopped within seconds, not after the jobs' 300 s; nothing finished, and
  # every job that started was stopped at a "checkpoint".
  assert time.time() - begin < 100 and finished == []
  ran = [o for o in outs if os.path.exists(os.path.join(o, "started"))]
  assert len(ran) >= 2 and all(os.path.exists(os.path.join(o, "checkpoint")) for o in ran)


def test_sigterm_to_the_workers_never_hangs_the_study(tmp_path):
  """SIGTERM sent to the worker processes themselves (e.g. by a job
  scheduler), while one worker is idle: the idle one ignores it (killed, it
  broke the pool) and the running job stops, so the study ends with that
  job's RunStopped."""
  import multiprocessing
  short, long = str(tmp_path / "short"), str(tmp_path / "long")
  sender = threading.Thread(
      target=_signal_when_started,
      args=([os.path.join(short, "returned"), os.path.join(long, "started")], signal.SIGTERM,
            lambda: time.sleep(0.5) or [c.pid for c in multiprocessing.active_children()]),
      daemon=True)
  sender.start()
  finished, begin = [], time.time()
  with pytest.raises(RunStopped, match="long: stopped"):
    run_in_workers(_job_until_sigterm, [(short, 0.0), (long, 300.0)], 2,
                   lambda i, r: finished.append(i))
  assert time.time() - begin < 100 and finished == [0]


def _job_failing_once(out: str, other_started: str) -> str:
  """Fails (a bad config, a NaN) once the other job is running."""
  deadline = time.time() + 120
  while not os.path.exists(other_started) and time.time() < deadline:
    time.sleep(0.05)
  raise ValueError(f"{out}: bad row")


def _either_job(kind: str, *args):
  return (_job_failing_once if kind == "fail" else _job_until_sigterm)(*args)


def test_a_failing_job_stops_the_running_ones_at_a_checkpoint(tmp_path):
  """The first job's error ends the study at once: the other running job is
  stopped (it would otherwise train on for minutes) and the error is raised."""
  long = str(tmp_path / "long")
  begin = time.time()
  with pytest.raises(ValueError, match="bad row"):
    run_in_workers(_either_job, [("fail", str(tmp_path / "bad"), os.path.join(long, "started")),
                                 ("long", long, 300.0)], 2, lambda i, r: None)
  assert time.time() - begin < 100 and os.path.exists(os.path.join(long, "checkpoint"))
