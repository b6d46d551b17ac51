"""MFU accounting: the analytic FLOP count equals the matmul FLOPs in the model's own jaxpr."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retromae_jax.trainers import flops
from retromae_jax.trainers import optim
from retromae_jax.models.bert import ModelConfig
from retromae_jax.objectives.enhanced.model import RetroMAE
from retromae_jax.objectives.settings import ObjectiveConfig
from retromae_jax.objectives.registry import make_model


def _matmul_flops(jaxpr) -> int:
  """2 x multiply-adds of every dot_general, scan bodies counted `length` times."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
    for name, sub in eqn.params.items():
      inner = getattr(sub, "jaxpr", sub)
      if hasattr(inner, "eqns"):
        total += _matmul_flops(inner) * (eqn.params["length"] if eqn.primitive.name == "scan"
                                         else 1)
  return total


def test_forward_flops_match_the_jaxpr():
  cfg = ModelConfig(vocab_size=1000, hidden_size=64, num_layers=3, num_heads=4,
                    intermediate_size=256, max_position_embeddings=64)
  b, seq, c, pool = 4, 64, 19, 8
  batch = {k: jnp.zeros((b, n), jnp.int32) for k, n in (
      ("input_ids", seq), ("attention_mask", seq), ("encoder_input_ids", seq),
      ("encoder_positions", c), ("encoder_targets", c), ("decoder_choice", seq),
      ("decoder_targets", seq))}
  batch["decoder_pool"] = jnp.zeros((b, pool, seq // 8), jnp.uint8)
  model = RetroMAE(cfg)
  params = nn.unbox(model.init(jax.random.key(0), batch, deterministic=True))["params"]
  jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, batch, deterministic=True))(params)
  counted = _matmul_flops(jaxpr.jaxpr)
  analytic = b * flops.train_flops_per_example(cfg, ObjectiveConfig(), seq, seq, c) / 3  # forward
  assert counted == analytic


@pytest.mark.parametrize("objective", [
    ObjectiveConfig(decoder_layers=3, bow_weight=0.1),
    ObjectiveConfig(decoder_kind="basic", decoder_layers=2),
    ObjectiveConfig(decoder_kind="cross_attention", cross_attend_to="sentence"),
    ObjectiveConfig(decoder_kind="cross_attention", cross_attend_to="tokens",
                    encoder_masking="drop"),
    ObjectiveConfig(decoder_kind="autoregressive", attention_span=4),
    ObjectiveConfig(kind="mlm"),
], ids=lambda o: f"{o.kind}-{o.decoder_kind}-{o.cross_attend_to}-{o.encoder_masking}")
def test_forward_flops_of_every_objective_match_the_jaxpr(objective):
  # The same count for the other objectives: a drop encoder is narrower (width w), the bag of
  # words runs the head everywhere, decoders differ in depth and memory.
  cfg = ModelConfig(vocab_size=1000, hidden_size=64, num_layers=2, num_heads=4,
                    intermediate_size=256, max_position_embeddings=64)
  b, seq, c, w = 4, 64, 19, 45
  enc = w if objective.encoder_masking == "drop" else seq
  shapes = {"input_ids": seq, "attention_mask": seq, "encoder_input_ids": enc,
            "encoder_position_ids": enc, "encoder_attention_mask": enc, "encoder_positions": c,
            "encoder_targets": c, "decoder_choice": seq, "decoder_targets": seq,
            "decoder_input_ids": seq}
  batch = {k: jnp.zeros((b, n), jnp.int32) for k, n in shapes.items()}
  batch["decoder_pool"] = jnp.zeros((b, 8, seq // 8), jnp.uint8)
  batch["bow_weights"] = jnp.zeros((b, seq), jnp.float32)
  model = make_model(cfg, objective)
  params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), batch,
                                                      deterministic=True))["params"])
  jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, batch, deterministic=True,
                                               method="outputs"))(params)
  positions = c if objective.encoder_masking == "corrupt" else 0
  analytic = b * flops.train_flops_per_example(cfg, objective, seq, enc, positions) / 3
  assert _matmul_flops(jaxpr.jaxpr) == analytic


def test_weight_decay_mask_on_the_real_parameter_tree():
  cfg = ModelConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2,
                    intermediate_size=32, max_position_embeddings=16)
  batch = {k: jnp.zeros((1, n), jnp.int32) for k, n in (
      ("input_ids", 16), ("attention_mask", 16), ("encoder_input_ids", 16),
      ("encoder_positions", 3), ("encoder_targets", 3), ("decoder_choice", 16),
      ("decoder_targets", 16))}
  batch["decoder_pool"] = jnp.zeros((1, 4, 2), jnp.uint8)
  params = nn.unbox(RetroMAE(cfg).init(jax.random.key(0), batch, deterministic=True))["params"]
  mask = optim.decay_mask(params)
  flat = {"/".join(k.key for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  # BERT's no_decay list: every bias and every LayerNorm weight; everything else decays.
  for name, decays in flat.items():
    no_decay = name.endswith("bias") or "LayerNorm" in name
    assert decays == (not no_decay), name
  assert flat["mlm_head/bias"] is False
  assert flat["bert/embeddings/word_embeddings/embedding"] is True
  assert np.sum(list(flat.values())) == 3 + 6 + 6 + 1  # 3 embeddings, encoder, decoder, MLM dense
