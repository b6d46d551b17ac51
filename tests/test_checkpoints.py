"""Checkpoints a pod can trust: SIGKILL/SIGTERM at any moment and a restart reproduce an
uninterrupted run's metrics line for line; exports load in transformers / sentence-transformers
and re-import; a checkpoint that does not fit says exactly why."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from retromae_jax.interop import checkpoint_store as checkpoints
from retromae_jax.evaluators import embed as encode
import resume_check  # tests/resume_check.py (pytest puts tests/ on sys.path)
from retromae_jax.interop import export as export_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config=configs/base.py:smoke", "--config.batch_size=4",
        "--config.data.max_seq_length=64", "--config.total_steps=12",
        "--config.checkpoint_every=4", "--config.log_every=1", "--config.data.shuffle_buffer=100",
        "--config.checkpoint_keep=1", "--config.checkpoint_keep_period=8"]


def _main(workdir, *args, check=True):
  proc = subprocess.run(resume_check._command(workdir, list(args)), cwd=ROOT, capture_output=True,
                        text=True, timeout=900)
  if check:
    assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The uninterrupted run every interrupted one is compared with."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  _main(workdir, *ARGS)
  return workdir


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
  monkeypatch.chdir(ROOT)  # `python -m retromae_jax.main` from the repository


def test_sigkill_during_a_save_then_restart_gives_identical_metrics(tmp_path, straight):
  result = resume_check.check(str(tmp_path), ARGS, "during_save", straight=straight)
  assert "while writing" in result["killed"], result
  assert result["identical"], result
  assert result["steps_logged"] == 12


def test_sigterm_saves_the_step_reached_exits_0_and_resumes_identically(tmp_path, straight):
  workdir = str(tmp_path / "preempted")
  proc = subprocess.Popen(resume_check._command(workdir, ARGS), cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while not resume_check._logged_steps(workdir) and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-3000:]
  saved = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()]
  assert saved and max(saved) == resume_check._logged_steps(workdir)[-1]  # the step reached
  assert not os.path.exists(os.path.join(workdir, "export"))  # preempted: not finished

  proc = _main(workdir, *ARGS)
  assert f"Resuming from {workdir}/checkpoints/{max(saved)}" in proc.stderr
  assert resume_check.read_metrics(workdir) == resume_check.read_metrics(straight)


def test_export_loads_in_sentence_transformers_and_the_decoder_reimports(tmp_path, straight):
  st = pytest.importorskip("sentence_transformers")
  out = str(tmp_path / "export")
  proc = subprocess.run([sys.executable, "-m", "retromae_jax.tools.export",
                         f"--checkpoint={straight}/checkpoints/8", f"--out={out}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(os.listdir(out)) == ["decoder", "encoder", "sentence-transformers"]

  # Our embeddings straight from the checkpoint's parameters (not through the export).
  meta, step_dir = checkpoints.read_meta(f"{straight}/checkpoints/8")
  cfg = export_lib.model_config_from_meta(meta, step_dir)
  params, _, _ = checkpoints.restore_params(step_dir, checkpoints.abstract_params(step_dir))
  tok = encode.tokenizer_lib.load_tokenizer(os.path.join(out, "encoder"))
  texts = ["Lists might contain items of different types.",
           "The with statement allows objects like files to be cleaned up promptly.",
           "Exceptions are raised when an error is detected during execution."]
  ours = encode.embed(cfg, {"bert": params["bert"]}, tok, texts, pooling="cls", normalize=True)
  theirs = st.SentenceTransformer(os.path.join(out, "sentence-transformers"),
                                  device="cpu").encode(texts)
  assert np.min(np.sum(ours * theirs, axis=1)) >= 0.99999

  # Continue pretraining from the exported encoder + decoder, and from the checkpoint itself:
  # the first step (its loss is computed before any update) must agree exactly.
  one_step = ["--config=configs/base.py:smoke", "--config.batch_size=4",
              "--config.data.max_seq_length=64", "--config.total_steps=1",
              "--config.checkpoint_every=100"]
  from_export = str(tmp_path / "from_export")
  _main(from_export, *one_step, f"--config.init.hf_dir={out}/encoder",
        f"--config.init.decoder_dir={out}/decoder")
  from_checkpoint = str(tmp_path / "from_checkpoint")
  _main(from_checkpoint, *one_step, f"--config.init.checkpoint={straight}/checkpoints/8")
  # (A decoder left at its random initialisation would give another dec_loss.)
  a, b = (resume_check.read_metrics(w)[0] for w in (from_export, from_checkpoint))
  assert a["dec_loss"] == pytest.approx(b["dec_loss"], rel=1e-6)
  assert a["enc_loss"] == pytest.approx(b["enc_loss"], rel=1e-6)


def _copy_step(straight, tmp_path, step=8):
  directory = str(tmp_path / "checkpoints")
  shutil.copytree(f"{straight}/checkpoints/{step}", f"{directory}/{step}")
  return f"{directory}/{step}"


def test_a_checkpoint_of_another_shape_names_the_differences(tmp_path, straight):
  step_dir = _copy_step(straight, tmp_path)
  key = "params/bert/embeddings/position_embeddings/embedding"
  target = checkpoints.abstract_params(step_dir)
  target["bert"]["embeddings"]["position_embeddings"]["embedding"] = jax.ShapeDtypeStruct(
      (64, 128), np.float32)
  target["decoder"]["extra"] = jax.ShapeDtypeStruct((3,), np.float32)
  with pytest.raises(ValueError) as e:
    checkpoints.restore_params(step_dir, target)
  message = str(e.value)
  assert step_dir in message
  assert f"{key}: checkpoint (128, 128) float32, model (64, 128) float32" in message
  assert "missing params/decoder/extra" in message


def test_a_missing_item_or_a_corrupted_file_fails_clearly(tmp_path, straight):
  step_dir = _copy_step(straight, tmp_path)
  target = checkpoints.abstract_params(step_dir)
  with open(f"{step_dir}/state/_METADATA", "w", encoding="utf-8") as f:
    f.write("{not json")
  with pytest.raises(ValueError, match=f"{step_dir}/state: cannot read the checkpoint's metadata"):
    checkpoints.restore_params(step_dir, target)

  for name in glob.glob(f"{step_dir}/state/d/*"):  # the OCDBT store: array data and its index
    with open(name, "r+b") as f:
      f.seek(100)
      f.write(b"\0garbage\0" * 1000)
  with pytest.raises(ValueError,
                     match=f"{step_dir}(/state: cannot read|: the checkpoint cannot be read)"):
    checkpoints.restore_params(step_dir, target)

  shutil.rmtree(f"{step_dir}/state")
  with pytest.raises(ValueError, match="the checkpoint has no 'state' item"):
    checkpoints.restore_params(step_dir, target)
  with pytest.raises(ValueError, match="no such checkpoint"):
    checkpoints.resolve(str(tmp_path / "nowhere"))


def test_keep_period_keeps_every_kth_checkpoint_beyond_the_last_n(straight):
  # Checkpoints at 4, 8, 12; keep the last 1 plus every multiple of 8.
  assert sorted(int(s) for s in os.listdir(f"{straight}/checkpoints") if s.isdigit()) == [8, 12]
