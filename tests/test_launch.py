"""launch/: dry runs print the commands that really run; local_multiprocess.sh really runs N
processes. No network, no gcloud/SLURM: fakes on PATH record what the scripts would execute, and
no test starts jax (the multi-process training test is test_main's business)."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
LOCAL = os.path.join(LAUNCH, "local_multiprocess.sh")
TPU = os.path.join(LAUNCH, "tpu_pod.sh")
SLURM = os.path.join(LAUNCH, "slurm_gpu.sh")
SBATCH_SCRIPT = os.path.join(LAUNCH, "slurm_gpu.sbatch")

# Prints, as one JSON line, what a launched process was told.
PRINT_ENV = ("import json, os; print(json.dumps({k: os.environ.get(k) for k in ("
             "'JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID', "
             "'JAX_NUM_CPU_DEVICES')}))")


def _run(script, *args, env=None, timeout=60):
  full_env = dict(os.environ)
  full_env.pop("JAX_NUM_CPU_DEVICES", None)
  full_env.update(env or {})
  return subprocess.run([script, *args], cwd=ROOT, env=full_env, capture_output=True, text=True,
                        timeout=timeout)


def _commands(stdout):
  """The command lines of a dry run (comments skipped), each split as a shell would."""
  return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith("#")]


def _write_fake(bin_dir, name, body):
  """An executable `name` in bin_dir running the Python `body` (argv in sys.argv)."""
  path = os.path.join(bin_dir, name)
  with open(path, "w", encoding="utf-8") as f:
    f.write(f"#!{sys.executable}\nimport json, os, subprocess, sys\n{body}\n")
  os.chmod(path, 0o755)
  return path


@pytest.fixture
def fake_bin(tmp_path):
  """A PATH directory with fake gcloud and sbatch that append their argv to calls.jsonl."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  log = tmp_path / "calls.jsonl"
  record = (f"with open({str(log)!r}, 'a') as f:\n"
            f"  f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + '\\n')")
  _write_fake(str(bin_dir), "gcloud", record)
  _write_fake(str(bin_dir), "sbatch", record + "\nprint('Submitted batch job 42')")

  def calls():
    if not log.exists():
      return []
    return [json.loads(line) for line in log.read_text().splitlines()]

  env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
  return env, calls


# ---------------------------------------------------------------------------------------------
# All scripts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", [LOCAL, TPU, SLURM])
def test_help_exits_0_with_usage(script):
  proc = _run(script, "--help")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("Usage: ")
  assert "--dry-run" in proc.stdout


def test_shellcheck_clean():
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not on PATH")
  scripts = sorted(os.path.join(LAUNCH, f) for f in os.listdir(LAUNCH)
                   if f.endswith((".sh", ".sbatch")))
  proc = subprocess.run(["shellcheck", "-x", *scripts], cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------
# local_multiprocess.sh
# ---------------------------------------------------------------------------------------------
def _process_reports(stdout):
  """{process id: the JSON it printed} from [pI]-prefixed lines."""
  reports = {}
  for line in stdout.splitlines():
    prefix, _, rest = line.partition(" ")
    reports[int(prefix.strip("[p]"))] = json.loads(rest)
  return reports


def test_local_runs_two_processes_splitting_jax_num_cpu_devices():
  proc = _run(LOCAL, "2", "--", sys.executable, "-c", PRINT_ENV, env={"JAX_NUM_CPU_DEVICES": "8"})
  assert proc.returncode == 0, proc.stderr
  reports = _process_reports(proc.stdout)
  assert sorted(reports) == [0, 1]
  for pid, report in reports.items():
    assert report["JAX_PROCESS_ID"] == str(pid)
    assert report["JAX_NUM_PROCESSES"] == "2"
    assert report["JAX_NUM_CPU_DEVICES"] == "4"  # 8 in the launcher's environment, 2 processes
  addresses = {r["JAX_COORDINATOR_ADDRESS"] for r in reports.values()}
  assert len(addresses) == 1
  host, port = addresses.pop().split(":")
  assert host == "127.0.0.1" and 0 < int(port) < 65536


@pytest.mark.parametrize("args, env, expected", [
    (["3"], {}, "1"),  # nothing set: one device each
    (["3", "--devices_per_process=2"], {"JAX_NUM_CPU_DEVICES": "5"}, "2"),  # the flag wins
])
def test_local_devices_per_process(args, env, expected):
  proc = _run(LOCAL, *args, "--", sys.executable, "-c", PRINT_ENV, env=env)
  assert proc.returncode == 0, proc.stderr
  reports = _process_reports(proc.stdout)
  assert sorted(reports) == [0, 1, 2]
  assert {r["JAX_NUM_CPU_DEVICES"] for r in reports.values()} == {expected}


def test_local_dry_run_prints_each_process_env_and_command():
  proc = _run(LOCAL, "--dry-run", "--port=23456", "2", "--", "python", "-m", "retromae_jax.main",
              "--config=configs/base.py:smoke", "--workdir=/tmp/w x",
              env={"JAX_NUM_CPU_DEVICES": "8"})
  assert proc.returncode == 0, proc.stderr
  assert _commands(proc.stdout) == [
      ["JAX_COORDINATOR_ADDRESS=127.0.0.1:23456", "JAX_NUM_PROCESSES=2", f"JAX_PROCESS_ID={i}",
       "JAX_NUM_CPU_DEVICES=4", "python", "-m", "retromae_jax.main",
       "--config=configs/base.py:smoke", "--workdir=/tmp/w x"]
      for i in range(2)]


def test_local_failing_process_stops_the_others_and_fails():
  code = ("import os, sys, time\n"
          "if os.environ['JAX_PROCESS_ID'] == '1': sys.exit(3)\n"
          "time.sleep(60)")
  start = time.monotonic()
  proc = _run(LOCAL, "3", "--", sys.executable, "-c", code)
  assert time.monotonic() - start < 30  # the sleepers were stopped, not waited for
  assert proc.returncode == 3
  assert "process 1 failed (exit status 3)" in proc.stderr


def _default_signals():
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, signal.SIG_DFL)


def _start_ready(code, n=2):
  """Starts the launcher on `code` and returns once all n processes printed 'ready'."""
  # Started with default signal dispositions, as from a terminal or a scheduler: a test process
  # may have SIGINT ignored by then (seen in full-suite runs), which the launcher would inherit,
  # and bash cannot trap a signal ignored at its start.
  launcher = subprocess.Popen([LOCAL, str(n), "--", sys.executable, "-c", code], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=_default_signals)
  ready = 0
  while ready < n:
    line = launcher.stdout.readline()
    assert line, "the launcher ended before its processes were ready"
    ready += line.endswith("ready\n")
  return launcher


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_local_forwards_signals_and_keeps_the_processes_last_words(signum):
  code = ("import signal, sys, time\n"
          "def stop(signum, frame):\n"
          "  print('got', signum, flush=True); time.sleep(0.3); print('saved', flush=True)\n"
          "  sys.exit(0)\n"
          "signal.signal(signal.SIGTERM, stop)\n"
          "signal.signal(signal.SIGINT, stop)\n"
          "print('ready', flush=True)\n"
          "time.sleep(60)")
  launcher = _start_ready(code)
  launcher.send_signal(signum)
  out, err = launcher.communicate(timeout=30)
  assert launcher.returncode == 0, err  # the processes exited 0 after saving
  for pid in (0, 1):
    assert f"[p{pid}] got {int(signum)}" in out
    assert f"[p{pid}] saved" in out  # printed after the launcher got the signal
  assert f"got {signum.name}, forwarding it" in err


def test_local_second_signal_kills_processes_that_ignore_the_first():
  code = ("import signal, time\n"
          "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
          "print('ready', flush=True)\n"
          "time.sleep(60)")
  launcher = _start_ready(code)
  launcher.send_signal(signal.SIGTERM)
  time.sleep(0.5)
  assert launcher.poll() is None  # TERM ignored: still running
  launcher.send_signal(signal.SIGTERM)
  _, err = launcher.communicate(timeout=10)
  assert launcher.returncode == 128 + signal.SIGKILL
  assert "exited with status 137" in err


def test_local_log_dir_writes_one_log_per_process(tmp_path):
  log_dir = tmp_path / "logs"
  proc = _run(LOCAL, "2", f"--log_dir={log_dir}", "--", "bash", "-c",
              'echo "hello from $JAX_PROCESS_ID"; echo "warning $JAX_PROCESS_ID" >&2')
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines() == ["hello from 0", "warning 0"]  # process 0, unprefixed
  for i in range(2):
    assert (log_dir / f"process_{i}.log").read_text().splitlines() == [
        f"hello from {i}", f"warning {i}"]


@pytest.mark.parametrize("args, env, message", [
    ([], {}, "missing N"),
    (["0", "--", "true"], {}, "N must be a whole number >= 1"),
    (["two", "--", "true"], {}, "N must be a whole number >= 1"),
    (["2"], {}, "missing the command"),
    (["2", "true"], {}, "the command goes after --"),
    (["2", "--port=70000", "--", "true"], {}, "--port must be in 1..65535"),
    (["2", "--devices_per_process=0", "--", "true"], {}, "--devices_per_process must be"),
    (["2", "--bogus", "--", "true"], {}, "unknown option --bogus"),
    (["2", "--", "true"], {"JAX_NUM_CPU_DEVICES": "3"}, "does not split evenly over 2"),
])
def test_local_bad_arguments_fail_with_a_clear_message(args, env, message):
  proc = _run(LOCAL, *args, env=env)
  assert proc.returncode == 2
  assert message in proc.stderr
  assert proc.stdout == ""


# ---------------------------------------------------------------------------------------------
# tpu_pod.sh
# ---------------------------------------------------------------------------------------------
def _remote(command_word):
  """The words of the shell command in a `--command=...` argument."""
  assert command_word.startswith("--command=")
  return shlex.split(command_word[len("--command="):])


def test_tpu_run_dry_run_runs_main_on_all_workers_with_gs_workdir_and_flags():
  proc = _run(TPU, "run", "--zone=us-central2-b", "--accelerator_type=v4-32", "--project=proj",
              "--bucket=gs://my-bucket/", "--data_dir=gs://my-bucket/tfds",
              "--config.data.source=tfds:wikipedia/20230601.en", "--dry-run",
              "--", "--config.batch_size=512", "--config.optim.learning_rate=2e-4")
  assert proc.returncode == 0, proc.stderr
  [cmd] = _commands(proc.stdout)
  assert cmd[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
  assert cmd[5] == "retromae"
  assert {"--zone=us-central2-b", "--worker=all", "--project=proj"} <= set(cmd)
  [command_word] = [w for w in cmd if w.startswith("--command=")]
  remote = _remote(command_word)
  assert remote[remote.index("-m") + 1] == "retromae_jax.main"
  assert remote[remote.index("-m") + 2:] == [
      "--config=configs/base.py:base", "--workdir=gs://my-bucket/retromae/retromae",
      "--config.data.data_dir=gs://my-bucket/tfds",
      "--config.data.source=tfds:wikipedia/20230601.en", "--config.batch_size=512",
      "--config.optim.learning_rate=2e-4"]


def test_tpu_run_detach_keeps_running_after_ssh():
  proc = _run(TPU, "run", "--zone=z", "--workdir=gs://b/run", "--detach", "--dry-run")
  assert proc.returncode == 0, proc.stderr
  [cmd] = _commands(proc.stdout)
  remote = _remote(cmd[-1])
  assert "nohup" in remote and remote[-1] == "&"


@pytest.mark.parametrize("accelerator, version", [
    ("v4-32", "tpu-ubuntu2204-base"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-64", "v2-alpha-tpuv5"),
    ("v6e-16", "v2-alpha-tpuv6e"),
])
def test_tpu_create_dry_run_picks_the_runtime_for_the_accelerator(accelerator, version):
  proc = _run(TPU, "create", "--zone=us-east5-b", f"--accelerator_type={accelerator}",
              "--name=pod-a", "--dry-run")
  assert proc.returncode == 0, proc.stderr
  assert _commands(proc.stdout) == [[
      "gcloud", "compute", "tpus", "tpu-vm", "create", "pod-a", "--zone=us-east5-b",
      f"--accelerator-type={accelerator}", f"--version={version}"]]


def test_tpu_create_queued_spot_with_explicit_runtime():
  proc = _run(TPU, "create", "--queued", "--spot", "--zone", "us-west4-a", "--accelerator-type",
              "v5litepod-16", "--runtime_version=custom-rt", "--project=proj", "--dry-run")
  assert proc.returncode == 0, proc.stderr
  assert _commands(proc.stdout) == [[
      "gcloud", "compute", "tpus", "queued-resources", "create", "retromae", "--zone=us-west4-a",
      "--node-id=retromae", "--accelerator-type=v5litepod-16", "--runtime-version=custom-rt",
      "--spot", "--project=proj"]]


def test_tpu_copy_and_setup_dry_runs_reach_all_workers():
  head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                        check=True).stdout.strip()
  proc = _run(TPU, "copy", "--zone=z", "--dry-run")
  assert proc.returncode == 0, proc.stderr
  archive, scp, unpack = _commands(proc.stdout)
  assert archive[:4] == ["git", "-C", ROOT, "archive"] and archive[-1] == head
  tarball = next(w for w in archive if w.startswith("--output=")).split("=", 1)[1]
  assert scp[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball]
  assert scp[6] == f"retromae:retromae_jax-{head[:12]}.tar.gz"
  assert {"--zone=z", "--worker=all"} <= set(scp)
  assert unpack[4] == "ssh" and "--worker=all" in unpack
  assert f"retromae_jax-{head[:12]}.tar.gz" in unpack[-1]

  proc = _run(TPU, "setup", "--zone=z", "--dry-run")
  assert proc.returncode == 0, proc.stderr
  [setup] = _commands(proc.stdout)
  assert setup[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "retromae"]
  assert {"--zone=z", "--worker=all"} <= set(setup)
  assert "-r retromae_jax/requirements.txt 'jax[tpu]'" in setup[-1]


@pytest.mark.parametrize("args, expected", [
    (["stop"], ["tpu-vm", "stop", "retromae", "--zone=z"]),
    (["delete"], ["tpu-vm", "delete", "retromae", "--zone=z"]),
    (["delete", "--queued"], ["queued-resources", "delete", "retromae", "--zone=z", "--force"]),
])
def test_tpu_stop_and_delete_dry_runs(args, expected):
  proc = _run(TPU, *args, "--zone=z", "--dry-run")
  assert proc.returncode == 0, proc.stderr
  assert _commands(proc.stdout) == [["gcloud", "compute", "tpus", *expected]]


def test_tpu_refuses_a_local_workdir_on_a_multi_host_slice():
  proc = _run(TPU, "run", "--zone=z", "--accelerator_type=v4-32", "--workdir=/home/me/run",
              "--dry-run")
  assert proc.returncode == 2
  assert "--workdir=/home/me/run is not a gs:// path" in proc.stderr
  assert proc.stdout == ""
  # One host (v5litepod-8 is 8 chips on one VM) may keep its workdir on its own disk.
  proc = _run(TPU, "run", "--zone=z", "--accelerator_type=v5litepod-8", "--workdir=/home/me/run",
              "--dry-run")
  assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--zone=z"], "missing the subcommand"),
    (["launch", "--zone=z"], "unknown subcommand 'launch'"),
    (["create"], "--zone is required"),
    (["create", "--zone=z", "--accelerator_type=v4"], "is not FAMILY-SIZE"),
    (["create", "--zone=z", "--accelerator_type=v9x-16"], "no default runtime version"),
    (["create", "--zone=z", "--name=Bad_Name"], "--name 'Bad_Name'"),
    (["create", "--zone=z", "--frobnicate"], "unknown option --frobnicate"),
    (["create", "--zone=z", "--config.batch_size=8"], "only apply to run"),
    (["run", "--zone=z"], "run needs --workdir"),
    (["stop", "--zone=z", "--queued"], "cannot be stopped"),
    (["copy", "--zone=z", "--commit=no-such-commit"], "is not a commit"),
    (["run", "--zone"], "--zone needs a value"),
])
def test_tpu_bad_arguments_fail_with_a_clear_message(args, message):
  proc = _run(TPU, *args, "--dry-run")
  assert proc.returncode == 2
  assert message in proc.stderr
  assert proc.stdout == ""


def test_tpu_runs_exactly_what_its_dry_run_prints(fake_bin):
  env, calls = fake_bin
  for args in (["create", "--queued"], ["setup"], ["run", "--bucket=b", "--config.seed=3"],
               ["delete"]):
    args = [*args, "--zone=us-central2-b", "--project=proj"]
    dry = _run(TPU, *args, "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert calls() == []
    real = _run(TPU, *args, env=env)
    assert real.returncode == 0, real.stderr
    assert calls() == _commands(dry.stdout)
    os.remove(os.path.join(env["TMPDIR"], "calls.jsonl"))


def test_tpu_copy_ships_the_committed_tree(fake_bin):
  env, calls = fake_bin
  proc = _run(TPU, "copy", "--zone=z", env=env)
  assert proc.returncode == 0, proc.stderr
  scp, unpack = calls()
  tarball = scp[5]
  assert os.path.dirname(tarball) == env["TMPDIR"]
  listing = subprocess.run(["tar", "-tzf", tarball], capture_output=True, text=True,
                           check=True).stdout.split()
  top = os.path.basename(tarball)[:-len(".tar.gz")]
  assert {f"{top}/README.md", f"{top}/requirements.txt", f"{top}/configs/base.py"} <= set(listing)
  assert unpack[4] == "ssh" and "--worker=all" in unpack


# ---------------------------------------------------------------------------------------------
# slurm_gpu.sh and slurm_gpu.sbatch
# ---------------------------------------------------------------------------------------------
def test_slurm_dry_run_prints_sbatch_srun_and_each_task():
  proc = _run(SLURM, "--nodes=2", "--gpus_per_node=4", "--partition=gpu", "--time=24:00:00",
              "--workdir=/shared/runs/x", "--config.data.source=jsonl:/shared/data/*.jsonl",
              "--dry-run", "--", "--config.batch_size=512")
  assert proc.returncode == 0, proc.stderr
  sbatch, srun, task0, task1 = _commands(proc.stdout)
  main_args = ["--config=configs/base.py:base", "--workdir=/shared/runs/x",
               "--config.data.source=jsonl:/shared/data/*.jsonl", "--config.batch_size=512"]
  assert sbatch == ["sbatch", "--job-name=retromae", "--nodes=2", "--ntasks-per-node=1",
                    "--gpus-per-node=4", "--partition=gpu", "--time=24:00:00", f"--chdir={ROOT}",
                    SBATCH_SCRIPT, *main_args]
  assert srun[0] == "srun" and "--kill-on-bad-exit=1" in srun
  assert srun[-len(main_args) - 3:] == ["python", "-m", "retromae_jax.main", *main_args]
  for i, task in enumerate((task0, task1)):
    assert task == ["JAX_COORDINATOR_ADDRESS=FIRST_NODE:PORT", "JAX_NUM_PROCESSES=2",
                    f"JAX_PROCESS_ID={i}", "python", "-m", "retromae_jax.main", *main_args]


def test_slurm_submits_exactly_what_its_dry_run_prints(fake_bin):
  env, calls = fake_bin
  args = ["--nodes=3", "--port=29500", "--python=/opt/venv/bin/python", "--account=lab",
          "--cpus_per_task=16", "--workdir=/shared/w"]
  dry = _run(SLURM, *args, "--dry-run", env=env)
  assert dry.returncode == 0, dry.stderr
  sbatch = _commands(dry.stdout)[0]
  assert "--export=ALL,JAX_COORDINATOR_PORT=29500,PYTHON=/opt/venv/bin/python" in sbatch
  assert {"--account=lab", "--cpus-per-task=16"} <= set(sbatch)
  real = _run(SLURM, *args, env=env)
  assert real.returncode == 0, real.stderr
  assert calls() == [sbatch]
  assert "Submitted batch job 42" in real.stdout


def test_sbatch_script_sets_each_task_env_from_the_allocation(tmp_path):
  """Runs slurm_gpu.sbatch as SLURM would, with scontrol, srun and the interpreter faked."""
  bin_dir = str(tmp_path)
  _write_fake(bin_dir, "scontrol", "assert sys.argv[1:3] == ['show', 'hostnames']\n"
                                   "print('gpu07'); print('gpu08')")
  srun_log = tmp_path / "srun.json"
  _write_fake(bin_dir, "srun", (
      f"open({str(srun_log)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
      "args = sys.argv[1:]\n"
      "while args[0].startswith('-'): args.pop(0)\n"
      "codes = [subprocess.call(args, env={**os.environ, 'SLURM_PROCID': str(i)})\n"
      "         for i in range(int(os.environ['SLURM_NTASKS']))]\n"
      "sys.exit(max(codes))"))
  python = _write_fake(bin_dir, "fake_python", (
      "print(json.dumps({'argv': sys.argv[1:], 'env': {k: os.environ[k] for k in (\n"
      "    'JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')}}))"))
  env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHON": python,
         "SLURM_JOB_ID": "5000", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NTASKS": "2",
         "SLURM_CPUS_ON_NODE": "64"}
  proc = _run(SBATCH_SCRIPT, "--config=configs/base.py:smoke", "--workdir=/shared/w", env=env)
  assert proc.returncode == 0, proc.stderr
  tasks = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  port = 61440 + 5000 % 4096
  assert [t["env"] for t in tasks] == [
      {"JAX_COORDINATOR_ADDRESS": f"gpu07:{port}", "JAX_NUM_PROCESSES": "2",
       "JAX_PROCESS_ID": str(i)} for i in range(2)]
  assert all(t["argv"] == ["-m", "retromae_jax.main", "--config=configs/base.py:smoke",
                           "--workdir=/shared/w"] for t in tasks)
  srun_args = json.loads(srun_log.read_text())
  assert {"--kill-on-bad-exit=1", "--ntasks-per-node=1", "--cpus-per-task=64"} <= set(srun_args)


def test_sbatch_script_refuses_to_run_outside_a_job():
  proc = _run(SBATCH_SCRIPT, "--workdir=/w", env={"SLURM_JOB_ID": ""})
  assert proc.returncode == 2
  assert "not inside a SLURM job" in proc.stderr


@pytest.mark.parametrize("args, message", [
    ([], "--workdir=DIR is required"),
    (["--workdir=/w", "--nodes=0"], "--nodes must be a whole number >= 1"),
    (["--workdir=/w", "--gpus_per_node=eight"], "--gpus_per_node must be a whole number >= 1"),
    (["--workdir=/w", "--time=tomorrow"], "is not a SLURM time limit"),
    (["--workdir=/w", "--port=0"], "--port must be in 1..65535"),
    (["--workdir=/w", "--partition"], "--partition needs a value"),
    (["--workdir=/w", "train"], "unexpected argument 'train'"),
    (["--workdir=/w", "--gpus=8"], "unknown option --gpus"),
])
def test_slurm_bad_arguments_fail_with_a_clear_message(args, message):
  proc = _run(SLURM, *args, "--dry-run")
  assert proc.returncode == 2
  assert message in proc.stderr
  assert proc.stdout == ""
