"""Optimizer recipe (hand-checked numbers) and start-up config validation."""

import ml_collections
import numpy as np
import pytest

from configs import base
from retromae_jax.trainers import validation as config_check
from retromae_jax.trainers import optim


def test_schedule_warms_up_then_decays_linearly_to_zero():
  cfg = base.get_config("base").optim
  schedule = optim.learning_rate_schedule(cfg, total_steps=1000)  # 100 warmup steps
  np.testing.assert_allclose(
      [schedule(s) for s in (0, 50, 100, 550, 1000)], [0.0, 5e-5, 1e-4, 5e-5, 0.0], atol=1e-12)


def test_no_weight_decay_on_biases_and_layernorm():
  params = {"dense": {"kernel": np.ones((2, 2)), "bias": np.ones(2)},
            "LayerNorm": {"scale": np.ones(2), "bias": np.ones(2)},
            "word_embeddings": {"embedding": np.ones((3, 2))}}
  cfg = ml_collections.ConfigDict(dict(
      learning_rate=0.1, warmup_ratio=0.0, weight_decay=0.5, b1=0.9, b2=0.999, eps=1e-8,
      grad_clip_norm=1.0, freeze_encoder_steps=0, encoder_learning_rate=0.0))
  tx, _ = optim.make_optimizer(cfg, total_steps=10)
  zero_grads = {k: {n: np.zeros_like(v) for n, v in d.items()} for k, d in params.items()}
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  # With zero gradients the only update is decoupled decay: -lr * wd * param = -0.05 at step 0
  # where the schedule's first value is lr (no warmup).
  assert float(updates["dense"]["kernel"][0, 0]) == pytest.approx(-0.05)
  assert float(updates["word_embeddings"]["embedding"][0, 0]) == pytest.approx(-0.05)
  assert float(np.abs(updates["dense"]["bias"]).max()) == 0.0
  assert float(np.abs(updates["LayerNorm"]["scale"]).max()) == 0.0


@pytest.mark.parametrize("key,value,message", [
    ("data.encoder_mask_ratio", 1.0, "config.data.encoder_mask_ratio: expected a ratio in (0, 1)"),
    ("data.decoder_mask_ratio", 0.0, "config.data.decoder_mask_ratio: expected a ratio in (0, 1)"),
    ("data.max_seq_length", 1024, "config.data.max_seq_length"),
    ("model.num_heads", 5, "config.model.num_heads"),
    ("model.query_stream", "cross", "config.model.query_stream"),
    ("model.vocab_loss", "blocked", "config.model.vocab_loss: expected auto, chunked, plain"),
    ("model.vocab_loss_block", 0, "config.model.vocab_loss_block: expected an integer >= 1"),
])
def test_invalid_settings_name_their_key(key, value, message):
  config = base.get_config("smoke")
  section, name = key.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config_check.validate(config)


def test_batch_that_the_mesh_cannot_divide():
  config = base.get_config("smoke")
  config.batch_size = 10
  with pytest.raises(ValueError, match="config.batch_size: 10 is not divisible by the 4"):
    config_check.validate(config, num_data_parallel=4)


def test_unknown_preset():
  with pytest.raises(ValueError, match="unknown preset 'tiny'"):
    base.get_config("tiny")
