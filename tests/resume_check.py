"""Checks that a run killed with SIGKILL and restarted gives exactly an uninterrupted run's metrics.

  python -m tests.resume_check --workdir=DIR --kill=during_save -- \
      --config=configs/base.py:smoke --config.total_steps=12 --config.checkpoint_every=4

runs `python -m retromae_jax.main ARGS` three times: straight to the end in DIR/straight; then in
DIR/killed, killed with SIGKILL (`--kill=after_checkpoint`: once a checkpoint is complete and a
later step has been logged; `--kill=during_save`: while Orbax is writing a checkpoint after a
complete one, i.e. while its temporary directory exists), and restarted with the same command. Every line of the two
metrics.jsonl files must then be identical except the timing fields. Prints the verdict as one
JSON line and exits non-zero on any difference.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from absl import app, flags

TIMING = ("tokens_per_s", "steps_per_s", "mfu")
KILLS = ("after_checkpoint", "during_save")
_TMP = ".orbax-checkpoint-tmp"


def _command(workdir: str, args: list[str]) -> list[str]:
  return [sys.executable, "-m", "retromae_jax.main", f"--workdir={workdir}", *args]


def _run(workdir: str, args: list[str], timeout: float) -> None:
  proc = subprocess.run(_command(workdir, args), capture_output=True, text=True, timeout=timeout)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(_command(workdir, args))} failed:\n{proc.stderr[-3000:]}")


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def _logged_steps(workdir: str) -> list[int]:
  try:
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
      return [json.loads(line)["step"] for line in f if line.endswith("\n")]
  except FileNotFoundError:
    return []


def _checkpoint_entries(workdir: str) -> list[str]:
  try:
    return os.listdir(os.path.join(workdir, "checkpoints"))
  except FileNotFoundError:
    return []


def _kill_now(workdir: str, kill: str) -> str | None:
  """What justifies killing now, or None to keep waiting."""
  entries = _checkpoint_entries(workdir)
  done = [int(e) for e in entries if e.isdigit()]
  if kill == "during_save":
    # A save after a complete one: the restart must skip the torn save and use the previous.
    torn = [e for e in entries if _TMP in e]
    return f"while writing {torn[0]} (complete: {sorted(done)})" if torn and done else None
  logged = _logged_steps(workdir)
  if done and logged and logged[-1] > max(done):
    return f"after checkpoint {max(done)}, at logged step {logged[-1]}"
  return None


def kill_and_restart(workdir: str, args: list[str], kill: str, timeout: float = 900) -> str:
  """Starts the run, SIGKILLs it at the chosen moment, restarts it to the end; returns when
  (and why) it was killed."""
  proc = subprocess.Popen(_command(workdir, args), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout
  reason = None
  while reason is None:
    if proc.poll() is not None:
      raise RuntimeError(f"the run ended (exit {proc.returncode}) before it could be killed "
                         f"{kill.replace('_', ' ')}: use more steps or checkpoints")
    if time.time() > deadline:
      proc.kill()
      raise RuntimeError(f"no moment to kill {kill.replace('_', ' ')} within {timeout} s")
    reason = _kill_now(workdir, kill)
    if reason is None:
      time.sleep(0.002)  # a small model's save lasts a few tens of milliseconds
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  _run(workdir, args, timeout)
  return reason


def check(workdir: str, args: list[str], kill: str, straight: str | None = None) -> dict:
  """Runs the check; `straight` reuses an uninterrupted run's workdir made with the same args."""
  if straight is None:
    straight = os.path.join(workdir, "straight")
    shutil.rmtree(straight, ignore_errors=True)
    _run(straight, args, timeout=900)
  killed = os.path.join(workdir, f"killed_{kill}")
  shutil.rmtree(killed, ignore_errors=True)
  when = kill_and_restart(killed, args, kill)
  expected, got = read_metrics(straight), read_metrics(killed)
  differing = [e["step"] for e, g in zip(expected, got) if e != g]
  same = len(expected) == len(got) and not differing
  return {"identical": same, "killed": when, "steps_logged": len(got),
          "expected_steps_logged": len(expected), "differing_steps": differing}


_WORKDIR = flags.DEFINE_string("workdir", None, "Where the straight and killed runs go.")
_KILL = flags.DEFINE_enum("kill", "during_save", KILLS, "When to SIGKILL the second run.")


def main(argv):
  result = check(_WORKDIR.value, argv[1:], _KILL.value)
  print(json.dumps(result))
  if not result["identical"]:
    sys.exit(1)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
