"""Every objective trains through the real program (train.train_and_evaluate: pipeline, sharded
state, update step, metrics, checkpoint, export) on 8 fake CPU devices with a (2, 2, 2) mesh, and
its loss falls on real text (the embedded pydoc source). One subprocess runs every variant, so
that JAX and TensorFlow start once; still, each variant compiles its own sharded init and step
(~25 s on 2 shared cores): five variants that cover every option run in CI, the other three
with `pytest -m slow`."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6

VARIANTS = {
    "enhanced": {},
    "enhanced_2_layers_bow": {"decoder.num_layers": 2, "objective.bow_weight": 0.1},
    "basic": {"decoder.kind": "basic"},
    "cross_attention_sentence": {"decoder.kind": "cross_attention"},
    "cross_attention_tokens_drop": {"decoder.kind": "cross_attention",
                                    "decoder.cross_attend_to": "tokens",
                                    "encoder.masking": "drop"},
    "autoregressive_span": {"decoder.kind": "autoregressive", "decoder.attention_span": 3},
    "tsdae_drop": {"decoder.kind": "tsdae", "encoder.masking": "drop"},
    "drop": {"encoder.masking": "drop"},
    "mlm": {"objective.kind": "mlm"},
}

_PROGRAM = """
    import json, os, sys
    from absl import logging
    from configs import base
    from retromae_jax.trainers import pretrain as train
    logging.set_verbosity(logging.WARNING)
    out = {}
    for name, overrides in json.loads(sys.argv[1]).items():
      config = base.get_config("smoke")
      config.batch_size, config.data.max_seq_length = 8, 32
      config.data.shuffle_buffer = 64
      config.total_steps, config.log_every, config.checkpoint_every = %d, 1, 1000
      config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
      config.model.hidden_size, config.model.num_layers, config.model.intermediate_size = 64, 1, 128
      config.optim.learning_rate = 3e-3
      config.model.dropout_rate = config.model.attention_dropout_rate = 0.0
      config.data.pack = True  # the default: every objective part packs
      for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
      workdir = os.path.join(sys.argv[2], name)
      train.train_and_evaluate(config, workdir)
      with open(os.path.join(workdir, "metrics.jsonl")) as f:
        out[name] = [json.loads(line) for line in f]
    print(json.dumps(out))
""" % STEPS


# Between them these cover every decoder kind, both encoder maskings, a deeper decoder, the
# bag-of-words loss and the MLM baseline; they run in CI. The rest are @slow.
IN_CI = ("enhanced_2_layers_bow", "basic", "cross_attention_tokens_drop", "autoregressive_span",
         "mlm")


def _train(variants: dict, workdir: str) -> dict:
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="8")
  proc = subprocess.run(
      [sys.executable, "-c", textwrap.dedent(_PROGRAM), json.dumps(variants), workdir],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def ci_runs(tmp_path_factory):
  return _train({k: VARIANTS[k] for k in IN_CI}, str(tmp_path_factory.mktemp("objectives")))


@pytest.fixture(scope="module")
def slow_runs(tmp_path_factory):
  return _train({k: v for k, v in VARIANTS.items() if k not in IN_CI},
                str(tmp_path_factory.mktemp("objectives_slow")))


@pytest.mark.parametrize("name", [
    name if name in IN_CI else pytest.param(name, marks=pytest.mark.slow) for name in VARIANTS])
def test_every_objective_trains_sharded_and_its_loss_falls(request, name):
  rows = request.getfixturevalue("ci_runs" if name in IN_CI else "slow_runs")[name]
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  overrides = VARIANTS[name]
  # Each term is logged on its own, and only the terms the objective has.
  terms = {"enc_loss", "dec_loss", "bow_loss"} & set(rows[0])
  expected = {"enc_loss", "dec_loss"}
  if overrides.get("encoder.masking") == "drop":
    expected.discard("enc_loss")  # nothing is predicted at a dropped position
  if overrides.get("objective.kind") == "mlm":
    expected.discard("dec_loss")
  if overrides.get("objective.bow_weight"):
    expected.add("bow_loss")
  assert terms == expected
  weight = overrides.get("objective.bow_weight", 0.0)
  for r in rows:
    total = r.get("enc_loss", 0.0) + r.get("dec_loss", 0.0) + weight * r.get("bow_loss", 0.0)
    assert r["loss"] == pytest.approx(total, rel=1e-5)
  first = sum(r["loss"] for r in rows[:2]) / 2
  last = sum(r["loss"] for r in rows[-2:]) / 2
  assert last < 0.98 * first, [round(r["loss"], 3) for r in rows]
