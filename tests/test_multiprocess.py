"""Two JAX processes (launch/local_multiprocess.sh, 4 CPU devices each) train exactly what one
process with 8 devices trains, and their checkpoint resumes in a single process.

A 1,000-token vocabulary keeps every gradient buffer under 1 MiB: the CPU backend's gloo
collectives are known to corrupt large reduce-scatters, which has nothing to do with us.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("vocab"))
  subprocess.run([sys.executable, "-m", "retromae_jax.tools.train_tokenizer", "--input=pydoc",
                  "--vocab_size=1000", f"--out={out}"], cwd=ROOT, check=True,
                 capture_output=True, timeout=600)
  return out


def _args(workdir, vocab):
  return ["-m", "retromae_jax.main", "--config=configs/base.py:smoke", f"--workdir={workdir}",
          f"--config.tokenizer={vocab}", "--config.batch_size=8",
          "--config.data.max_seq_length=32", "--config.data.num_shards=2",
          "--config.total_steps=3", "--config.log_every=1", "--config.checkpoint_every=2"]


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [(r["step"], r["enc_loss"], r["dec_loss"]) for r in map(json.loads, f)]


def _run(cmd):
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="8")
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
  return proc.stderr


def _assert_close(got, expected):
  assert [s for s, *_ in got] == [s for s, *_ in expected]
  for (_, enc, dec), (_, ref_enc, ref_dec) in zip(got, expected):
    assert enc == pytest.approx(ref_enc, rel=1e-5)
    assert dec == pytest.approx(ref_dec, rel=1e-5)


def test_two_processes_train_like_one_and_their_checkpoint_resumes_in_one(tmp_path, small_vocab):
  one = str(tmp_path / "one_process")
  _run([sys.executable, *_args(one, small_vocab)])
  two = str(tmp_path / "two_processes")
  _run(["bash", "launch/local_multiprocess.sh", "2", "--", sys.executable,
        *_args(two, small_vocab)])
  assert os.path.isdir(os.path.join(two, "export", "encoder"))  # process 0 exported
  _assert_close(_losses(two), _losses(one))

  # The 2-process step-2 checkpoint, restored by 1 process: step 3 as both runs had it.
  moved = str(tmp_path / "moved")
  shutil.copytree(two, moved)
  shutil.rmtree(os.path.join(moved, "checkpoints", "3"))
  log = _run([sys.executable, *_args(moved, small_vocab)])
  assert f"Resuming from {moved}/checkpoints/2" in log  # not a fresh run that happens to agree
  _assert_close(_losses(moved), _losses(one))


def test_sigterm_to_two_processes_saves_one_agreed_step_and_exits_0(tmp_path, small_vocab):
  """The launcher forwards SIGTERM to both processes; Orbax's preemption sync makes them stop
  and save at the same step (a checkpoint both wrote), and every process exits 0."""
  workdir = str(tmp_path / "preempted")
  args = _args(workdir, small_vocab) + ["--config.total_steps=100000",
                                        "--config.checkpoint_every=100000"]
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="8")
  proc = subprocess.Popen(["bash", "launch/local_multiprocess.sh", "2", "--", sys.executable,
                           *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 600
  while not (os.path.exists(metrics) and os.path.getsize(metrics)) and time.time() < deadline:
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  output, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, output[-4000:]
  saved = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()]
  assert len(saved) == 1 and saved[0] == _losses(workdir)[-1][0]
  assert output.count(f"Preempted: saved step {saved[0]}") == 2  # [p0] and [p1]


def test_a_busy_workdir_stops_every_process_together_before_compiling(tmp_path):
  """Process 0 takes the workdir's lock for the run; when another run holds it, process 0 names
  the holder and the other process stops with it, both before compiling."""
  workdir, logs = str(tmp_path / "run"), str(tmp_path / "logs")
  os.makedirs(workdir)
  holder = subprocess.Popen([sys.executable, "-c", (
      "import time; from retromae_jax.trainers import workdir_lock\n"
      f"with workdir_lock.hold({workdir!r}):\n  print('held', flush=True); time.sleep(600)")],
      cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="8")
    start = time.monotonic()
    proc = subprocess.run(["bash", "launch/local_multiprocess.sh", f"--log_dir={logs}", "2", "--",
                           sys.executable, "-m", "retromae_jax.main",
                           "--config=configs/base.py:smoke", f"--workdir={workdir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - start
  finally:
    holder.kill()
    holder.wait()
  assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]
  last = {}
  for i in range(2):
    with open(os.path.join(logs, f"process_{i}.log"), encoding="utf-8") as f:
      text = f.read()
    assert "Compiled step" not in text and "Traceback" not in text, text[-3000:]
    last[i] = text.rstrip("\n").splitlines()[-1]
  assert last[0].startswith(f"{workdir}: in use by another run (host "), last[0]
  assert f"pid {holder.pid}," in last[0]
  assert last[1] == f"{workdir}: process 0 could not take the workdir's lock (its log says why)"
  assert seconds < 120
