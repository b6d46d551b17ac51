"""No silent failure (docs/reliability.md): each fault a long run meets, injected into the real
program. For each: the exit status, the last line of stderr (one line naming the step or the
file), the time from the fault to the exit, and that every checkpoint left on disk restores and
holds finite values (read back with Orbax directly, checked with NumPy)."""

import datetime
import glob
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from ml_collections import ConfigDict

from retromae_jax.data.evalsets import beir
from retromae_jax.data import sources
from retromae_jax.interop import checkpoint_store as checkpoints
from retromae_jax.trainers import divergence
from retromae_jax.trainers import preflight
from retromae_jax.trainers.train_state import TrainState

from texts import DOCS  # noqa: E402  (tests/ is on sys.path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Lines a real corpus has a few of: the run skips and counts them.
BAD_LINES = ["{not json", '{"title": "no text field"}', "", '{"text": "   "}']
FAST_EXIT_S = 30  # from the fault to the exit: seconds, not a hang (generous for a busy 2-core CI)


def _corpus(directory) -> str:
  path = os.path.join(directory, "docs.jsonl")
  lines = [json.dumps({"text": d}) for d in DOCS] + BAD_LINES
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return path


def _args(corpus, *more):
  return ["--config=configs/base.py:smoke", f"--config.data.source=jsonl:{corpus}",
          "--config.batch_size=4", "--config.data.max_seq_length=64",
          "--config.data.shuffle_buffer=100", "--config.log_every=1", *more]


def _run(workdir, args, limit_fsize=None, timeout=600):
  """(returncode, stderr, seconds the process ran, wall-clock datetime at its exit)."""
  command = [sys.executable, "-m", "retromae_jax.main", f"--workdir={workdir}", *args]
  if limit_fsize:  # a full disk, as root meets it too: writes past the limit fail with EFBIG
    command = ["bash", "-c", f'ulimit -f {limit_fsize // 1024} && exec "$@"', "bash", *command]
  start = time.monotonic()
  proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
  return proc.returncode, proc.stderr, time.monotonic() - start, datetime.datetime.now()


def _last_line(stderr: str) -> str:
  return stderr.rstrip("\n").splitlines()[-1]


def _seconds_after(stderr: str, pattern: str, end: datetime.datetime) -> float:
  """Seconds from the first absl log line matching `pattern` to `end` (absl stamps local time)."""
  for line in stderr.splitlines():
    m = re.match(r"[IWEF](\d\d)(\d\d) (\d\d:\d\d:\d\d\.\d+) ", line)
    if m and re.search(pattern, line):
      stamp = datetime.datetime.strptime(f"{end.year}{m[1]}{m[2]} {m[3]}", "%Y%m%d %H:%M:%S.%f")
      return (end - stamp).total_seconds()
  raise AssertionError(f"no log line matches {pattern!r}")


def _steps(workdir):
  directory = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def _assert_all_checkpoints_finite(workdir):
  """Every step on disk reads back whole through Orbax itself, and every float is finite."""
  steps = _steps(workdir)
  assert steps
  for step in steps:
    state = ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step),
                                                          "state"))
    leaves = [np.asarray(x) for x in __import__("jax").tree.leaves(state)]
    floats = [x for x in leaves if np.issubdtype(x.dtype, np.floating)]
    assert floats and all(np.isfinite(x).all() for x in floats), step
  return steps


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
  monkeypatch.chdir(ROOT)


# ------------------------------------------------------------------------------ Divergence,
# then a corrupt latest checkpoint (one run each, shared)


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
  """A run whose learning rate makes it diverge, saving every step (keep 3)."""
  tmp = tmp_path_factory.mktemp("diverged")
  workdir = str(tmp / "run")
  corpus = _corpus(str(tmp))
  args = _args(corpus, "--config.total_steps=40", "--config.checkpoint_every=1",
               "--config.checkpoint_keep=3", "--config.optim.learning_rate=1e3",
               "--config.optim.warmup_ratio=0.25")
  return workdir, corpus, _run(workdir, args)


def test_divergence_stops_at_that_step_and_saves_nothing_non_finite(diverged):
  workdir, _, (rc, stderr, _, end) = diverged
  assert rc == 1, stderr[-3000:]
  last = _last_line(stderr)
  m = re.fullmatch(r"step (\d+): loss \S+, gradient norm \S+ \(not finite\): the run diverged and "
                   r"stopped; the newest checkpoint, all finite, is (\S+)/(\d+) \(resume.*\)", last)
  assert m, last
  bad_step, directory, good_step = int(m[1]), m[2], int(m[3])
  assert directory == os.path.join(workdir, "checkpoints")
  # The step named is the first non-finite one in metrics.jsonl; the checkpoint named, the one
  # before it (saved every step); the last 3 finite ones were not rotated out by NaN states.
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  first_bad = next(r["step"] for r in rows if not (np.isfinite(r["loss"])
                                                   and np.isfinite(r["grad_norm"])))
  assert bad_step == first_bad
  assert good_step == bad_step - 1
  assert _assert_all_checkpoints_finite(workdir) == list(range(max(1, bad_step - 3), bad_step))
  assert not os.path.exists(os.path.join(workdir, "export"))
  assert _seconds_after(stderr, rf"step {bad_step}/40 \|", end) < FAST_EXIT_S


def test_skip_counts_are_logged_as_they_happen_and_written_to_metrics(diverged):
  workdir, _, (_, stderr, _, _) = diverged
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  # Every pass over the corpus skips BAD_LINES: one invalid JSON, one without "text", two empty.
  # The counts are cumulative and the pipeline reads ahead, so: whole passes, never decreasing.
  passes = [r["skipped_invalid_json"] for r in rows]
  assert passes[0] >= 1 and passes == sorted(passes)
  for r in rows:
    assert (r["skipped_missing_text"], r["skipped_empty"], r["skipped_non_utf8"]) == (
        r["skipped_invalid_json"], 2 * r["skipped_invalid_json"], 0)
  reports = [line for line in stderr.splitlines() if "skipped input lines so far" in line]
  assert reports
  m = re.search(r"skipped input lines so far: empty (\d+), invalid_json (\d+), missing_text "
                r"(\d+) \(\+(\d+) since the last report\)$", reports[0])
  n = int(m[2])
  assert n >= 1 and (int(m[1]), int(m[3]), int(m[4])) == (2 * n, n, 4 * n)


def test_a_cut_latest_checkpoint_is_moved_aside_and_the_previous_one_resumed(diverged, tmp_path):
  workdir, corpus, _ = diverged
  steps = _steps(workdir)
  latest = os.path.join(workdir, "checkpoints", str(steps[-1]))
  # Every data file cut in half, as a copy or a write stopped midway leaves them: which file holds
  # the parameters and which the optimizer state is Orbax's business (cutting only the largest
  # one sometimes spared the parameters).
  data_files = glob.glob(f"{latest}/state/ocdbt.process_0/d/*")
  assert data_files
  for data in data_files:
    with open(data, "r+b") as f:
      f.truncate(os.path.getsize(data) // 2)
  # export / init.checkpoint read through restore_params: it names the step and a cut file.
  copy = str(tmp_path / "copy" / str(steps[-1]))
  shutil.copytree(latest, copy)
  with pytest.raises(checkpoints.Damaged, match=re.escape(
      f"{copy}: the checkpoint cannot be read (damaged file {copy}/state/ocdbt.process_0/d/")):
    checkpoints.restore_params(copy, checkpoints.abstract_params(copy))

  # The resumed run trains one step: the one the cut checkpoint held, which the diverging run
  # trained to a finite loss from the same parameters and batch. (Further steps from these
  # blown-up weights can overflow at any learning rate.)
  total = steps[-1]
  rc, stderr, _, _ = _run(workdir, _args(corpus, f"--config.total_steps={total}",
                                         "--config.checkpoint_every=1",
                                         "--config.checkpoint_keep=3",
                                         "--config.optim.learning_rate=1e-5"))
  assert rc == 0, stderr[-3000:]
  moved = [line for line in stderr.splitlines() if "moved to" in line]
  assert len(moved) == 1 and f"{latest}: the checkpoint cannot be read" in moved[0], moved
  assert os.path.isdir(latest + checkpoints.DAMAGED_SUFFIX)  # kept, not deleted
  assert f"Resuming from {workdir}/checkpoints/{steps[-2]}" in stderr
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    assert [json.loads(line)["step"] for line in f][-2:] == [total - 1, total]
  assert _assert_all_checkpoints_finite(workdir)[-1] == total


# ------------------------------------------------------------------------------ Failed saves


def test_a_save_that_fails_in_the_background_stops_the_run_in_seconds(tmp_path):
  workdir = str(tmp_path / "run")
  corpus = _corpus(str(tmp_path))
  # 4 MiB per file: config, metrics and logs fit; the 30 MiB checkpoint data file does not.
  rc, stderr, _, end = _run(workdir, _args(corpus, "--config.total_steps=30",
                                           "--config.checkpoint_every=3"), limit_fsize=4 << 20)
  assert rc == 1, stderr[-3000:]
  last = _last_line(stderr)
  assert last.startswith(f"{workdir}/checkpoints: saving a checkpoint failed ("), last
  assert "File too large" in last and last.endswith("the newest complete checkpoint is none")
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    logged = [json.loads(line)["step"] for line in f]
  assert logged[-1] < 30  # stopped, did not train on without checkpoints
  assert _seconds_after(stderr, r"File too large", end) < FAST_EXIT_S
  assert not _steps(workdir)


def test_a_checkpoint_directory_that_cannot_be_written_fails_before_compiling(tmp_path):
  # As root no permission bit stops a write: a directory under a regular file cannot exist.
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  os.makedirs(tmp_path / "run")
  os.symlink(blocker / "checkpoints", tmp_path / "run" / "checkpoints")
  rc, stderr, seconds, _ = _run(str(tmp_path / "run"), _args(_corpus(str(tmp_path))))
  assert rc == 1
  assert _last_line(stderr).startswith(f"{tmp_path}/run/checkpoints: cannot write checkpoints "
                                       "there")
  assert "Compiled step" not in stderr and seconds < 60


# ------------------------------------------------------------------------------ Bad inputs


@pytest.mark.parametrize("fault", ["missing", "empty", "no_usable_document"])
def test_bad_data_fails_in_seconds_naming_the_file(tmp_path, fault):
  path = tmp_path / "docs.jsonl"
  if fault == "empty":
    path.write_text("")
  elif fault == "no_usable_document":
    path.write_text("\n".join(BAD_LINES) + "\n")
  rc, stderr, seconds, _ = _run(str(tmp_path / "run"), _args(str(path)))
  assert rc == 1
  last = _last_line(stderr)
  assert last.startswith(f"data.source 'jsonl:{path}': "), last
  expected = {"missing": "no file matches", "empty": "every matching file is empty",
              "no_usable_document": "no usable document in 1 file(s), 4 lines (skipped: empty 2, "
                                    "invalid_json 1, missing_text 1)"}[fault]
  assert expected in last
  assert "Compiled step" not in stderr and "Traceback" not in stderr and seconds < 60


def _write_safetensors(path, tensors):
  header, offset, blobs = {}, 0, []
  for name, array in tensors.items():
    blob = np.ascontiguousarray(array, np.float32).tobytes()
    header[name] = {"dtype": "F32", "shape": list(array.shape),
                    "data_offsets": [offset, offset + len(blob)]}
    offset += len(blob)
    blobs.append(blob)
  head = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def test_a_cut_safetensors_file_is_named_at_start_up(tmp_path):
  path = str(tmp_path / "model.safetensors")
  _write_safetensors(path, {"a": np.ones((64, 64)), "b": np.zeros(10)})
  preflight.check_safetensors(path)  # whole: passes
  size = os.path.getsize(path)
  os.truncate(path, size - 100)
  with pytest.raises(ValueError, match=re.escape(f"{path}: cut short ({size - 100} bytes, its "
                                                 f"header describes {size})")):
    preflight.check_safetensors(path)
  os.truncate(path, 4)
  with pytest.raises(ValueError, match=re.escape(f"{path}: not a readable safetensors file")):
    preflight.check_safetensors(path)


def test_a_cut_model_safetensors_in_init_hf_dir_fails_before_compiling(tmp_path):
  hf_dir = tmp_path / "bert"
  hf_dir.mkdir()
  (hf_dir / "config.json").write_text(json.dumps({
      "model_type": "bert", "vocab_size": 30522, "hidden_size": 128, "num_hidden_layers": 2,
      "num_attention_heads": 2, "intermediate_size": 512, "max_position_embeddings": 128}))
  weights = str(hf_dir / "model.safetensors")
  _write_safetensors(weights, {"embeddings.word_embeddings.weight": np.zeros((30522, 128))})
  os.truncate(weights, os.path.getsize(weights) // 2)  # a download cut in half
  rc, stderr, seconds, _ = _run(str(tmp_path / "run"),
                                _args(_corpus(str(tmp_path)), f"--config.init.hf_dir={hf_dir}"))
  assert rc == 1
  assert _last_line(stderr).startswith(f"{weights}: cut short ("), _last_line(stderr)
  assert "Compiled step" not in stderr and seconds < 60


def test_evaluate_refuses_qrels_that_match_nothing_before_loading_the_model(tmp_path):
  # Every id mismatched: this used to score nDCG@10 0.0000 and exit 0.
  beir.write(str(tmp_path), {"d1": "one", "d2": "two"}, {"q1": "x"}, {"test": {"q1": {"D1": 1}}})
  proc = subprocess.run([sys.executable, "-m", "retromae_jax.tools.evaluate",
                         f"--model={tmp_path}/no_model", f"--beir_dir={tmp_path}"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert _last_line(proc.stderr).endswith(
      f"{beir.qrels_path(str(tmp_path), 'test')}: 0 of 1 query ids are not in queries.jsonl, 1 of "
      "1 judged document ids are not in corpus.jsonl (first: 'D1'); expected ids that match the "
      "folder's files (or allow them: eval.allow_missing_ids / --allow_missing_ids)")


def test_qrels_naming_unknown_ids_fail_unless_allowed(tmp_path):
  beir.write(str(tmp_path), {"d1": "one", "d2": "two"}, {"q1": "x", "q2": "y"},
             {"test": {"q1": {"d1": 1, "d9": 1}, "q3": {"d2": 1}}})
  where = beir.qrels_path(str(tmp_path), "test")
  message = (f"{where}: 1 of 2 query ids are not in queries.jsonl (first: 'q3'), 1 of 3 judged "
             "document ids are not in corpus.jsonl (first: 'd9')")
  for check in (lambda: beir.load(str(tmp_path), "test"),
                lambda: preflight.check_beir(str(tmp_path), "test", False)):
    with pytest.raises(ValueError, match=re.escape(message)):
      check()
  data = beir.load(str(tmp_path), "test", allow_missing_ids=True)
  assert data.qrels == {"q1": {"d1": 1, "d9": 1}} and list(data.queries) == ["q1"]
  preflight.check_beir(str(tmp_path), "test", True)


# ------------------------------------------------------------------------------ The pieces


def test_guard_stops_at_the_first_non_finite_step_or_after_k_skips():
  class Manager:  # the two things the guard reads from Orbax's manager
    directory = "/ckpt"

    def latest_step(self):
      return 4

  losses = [1.0, 2.0, float("nan"), 3.0, float("inf"), 1.0]
  for skip_steps, stop_at in ((0, 3), (1, 5)):
    guard = divergence.Guard(ConfigDict({"skip_steps": skip_steps}), Manager())
    with pytest.raises(divergence.Diverged) as raised:
      for step, loss in enumerate(losses, 1):
        guard.observe(step, {"loss": jnp.float32(loss), "grad_norm": jnp.float32(1.0)})
      guard.check()
    assert str(raised.value).startswith(f"step {stop_at}: loss ")
    assert str(raised.value).endswith("the newest checkpoint, all finite, is /ckpt/4 (resume "
                                      "from it with a lower optim.learning_rate)")
    assert guard.skipped == skip_steps


def test_keep_if_finite_keeps_the_old_state_and_advances_the_step():
  old = TrainState(step=jnp.int32(3), params={"w": jnp.ones(3)}, opt_state=(jnp.zeros(3),))
  new = TrainState(step=jnp.int32(4), params={"w": jnp.full(3, jnp.nan)},
                   opt_state=(jnp.ones(3),))
  state, metrics = divergence.keep_if_finite(new, old, {"loss": jnp.float32(jnp.nan),
                                                        "grad_norm": jnp.float32(1.0)})
  np.testing.assert_array_equal(state.params["w"], np.ones(3))
  np.testing.assert_array_equal(state.opt_state[0], np.zeros(3))
  assert int(state.step) == 4 and int(metrics["skipped"]) == 1
  state, metrics = divergence.keep_if_finite(old, new, {"loss": jnp.float32(2.0),
                                                        "grad_norm": jnp.float32(1.0)})
  np.testing.assert_array_equal(state.params["w"], np.ones(3))
  assert int(metrics["skipped"]) == 0


def test_skip_counter_reports_only_when_the_counts_change():
  skips = sources.SkipCounter()
  assert skips.report() is None
  kept = sources.jsonl_texts([b'{"text": "a"}', b"{bad", b"", b'{"x": 1}'], skips)
  assert kept == [b"a"]
  assert skips.report() == ("skipped input lines so far: empty 1, invalid_json 1, "
                            "missing_text 1 (+3 since the last report)")
  assert skips.report() is None
  assert skips.metrics() == {"skipped_empty": 1, "skipped_invalid_json": 1,
                             "skipped_missing_text": 1, "skipped_non_utf8": 0}
