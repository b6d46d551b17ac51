"""models/vocab_loss.py: the chunked cross-entropy is the plain one (all logits, then
objectives/losses.masked_cross_entropy), in value, accuracy, count and gradients, in float32;
and a RetroMAE model trained with model.vocab_loss=chunked has the plain model's loss and
gradients, with no [tokens, V] logits among its outputs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retromae_jax.models import vocab_loss
from retromae_jax.models.bert import ModelConfig, vocab_logits
from retromae_jax.objectives import losses
from retromae_jax.objectives.enhanced.model import RetroMAE
from tests import test_retromae_model as retromae_case


def _plain_sums(hidden, embeddings, bias, labels):
  """(loss sum, correct, labelled) from the whole [B, T, V] logits."""
  logits = vocab_logits(hidden, embeddings, bias, "autodiff")
  loss, acc, count = losses.masked_cross_entropy(logits, labels, denominator=1)
  return loss, acc, count


def _case(seed=0, batch=3, length=37, vocab=50, dim=16):
  rng = np.random.default_rng(seed)
  hidden = jnp.asarray(rng.normal(size=(batch, length, dim)), jnp.float32)
  embeddings = jnp.asarray(rng.normal(size=(vocab, dim)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(vocab,)), jnp.float32)
  labels = rng.integers(0, vocab, (batch, length))
  labels[rng.random((batch, length)) < 0.3] = -100
  labels[1] = -100  # a row with no labelled token
  return hidden, embeddings, bias, jnp.asarray(labels, jnp.int32)


@pytest.mark.parametrize("block", [1, 8, 13, 37, 128])
def test_sums_and_gradients_equal_the_plain_loss(block):
  hidden, embeddings, bias, labels = _case()
  loss, correct, count = vocab_loss.chunked_cross_entropy(hidden, embeddings, bias, labels, block)
  ref_loss, ref_correct, ref_count = _plain_sums(hidden, embeddings, bias, labels)
  assert int(count) == int(ref_count) == int((np.asarray(labels) != -100).sum())
  assert int(correct) == int(ref_correct) > 0
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)

  chunked = jax.grad(lambda *a: vocab_loss.chunked_cross_entropy(*a, labels, block)[0],
                     argnums=(0, 1, 2))(hidden, embeddings, bias)
  plain = jax.grad(lambda *a: _plain_sums(*a, labels)[0], argnums=(0, 1, 2))(
      hidden, embeddings, bias)
  for got, want in zip(chunked, plain):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Ignored positions get no gradient.
  assert not np.asarray(chunked[0])[np.asarray(labels) == -100].any()


def test_retromae_loss_and_gradients_equal_with_chunked_vocab_loss():
  batch = retromae_case._random_batch(np.random.default_rng(0))
  shape = dict(vocab_size=retromae_case.V, hidden_size=retromae_case.D, num_layers=2,
               num_heads=retromae_case.H, intermediate_size=retromae_case.F,
               max_position_embeddings=retromae_case.L, initializer_range=0.5)
  plain_model = RetroMAE(ModelConfig(**shape, vocab_loss="plain"))
  chunked_model = RetroMAE(ModelConfig(**shape, vocab_loss="chunked", vocab_loss_block=5))
  params = nn.unbox(plain_model.init(jax.random.key(0), batch, deterministic=True))["params"]

  def loss(model, p):
    outputs = model.apply({"params": p}, batch, deterministic=True, method="outputs")
    return losses.objective_loss(outputs, batch)

  (got, got_aux), got_grads = jax.value_and_grad(lambda p: loss(chunked_model, p),
                                                 has_aux=True)(params)
  (want, want_aux), want_grads = jax.value_and_grad(lambda p: loss(plain_model, p),
                                                    has_aux=True)(params)
  chunked_outputs = chunked_model.apply({"params": params}, batch, deterministic=True,
                                        method="outputs")
  # No logits were made: both terms read a Projection (its hidden states, not [.., V]).
  for name in ("encoder_logits", "decoder_logits"):
    assert isinstance(chunked_outputs[name], vocab_loss.Projection), name
    assert chunked_outputs[name].hidden.shape[-1] == retromae_case.D
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for key in ("enc_loss", "dec_loss", "enc_acc", "dec_acc", "enc_tokens", "dec_tokens"):
    np.testing.assert_allclose(got_aux[key], want_aux[key], rtol=1e-5, err_msg=key)
  for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got_grads)[0],
                          jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_the_pretraining_step_is_the_same_with_either_loss():
  """pretrain.build_step (the step main runs and tools/compile.py compiles) on the smoke config,
  packed, 2 microbatches: one update from the same state and real pipeline batch gives the same
  losses and parameters with model.vocab_loss=chunked as with plain."""
  from configs.base import get_config
  from retromae_jax.data import tokenizer as tokenizer_lib
  from retromae_jax.trainers import loop, pretrain
  from tests import batches as batches_lib

  results = []
  for kind in ("plain", "chunked"):
    config = get_config("smoke")
    config.model.vocab_loss, config.model.vocab_loss_block = kind, 24
    config.batch_size, config.grad_accum_steps, config.model.dropout_rate = 4, 2, 0.0
    config.model.attention_dropout_rate = 0.0
    tokenizer = tokenizer_lib.load_tokenizer(config.tokenizer)
    batch = batches_lib.take(config, tokenizer, 1)[0]
    mesh, rules = loop.make_mesh(config, jax.devices()[:1])
    model_cfg = loop.resolve_model_config(config, tokenizer.get_vocab_size())
    assert model_cfg.vocab_loss == kind
    step = pretrain.build_step(config, model_cfg, mesh, rules)
    compiled, _ = step.compile(step.setting)
    state, metrics = compiled(step.init(0), batch)
    results.append((jax.device_get(metrics), jax.device_get(state.params)))
  (plain_metrics, plain_params), (chunked_metrics, chunked_params) = results
  assert plain_metrics["dec_tokens"] > 0 and plain_metrics["enc_tokens"] > 0
  for key in ("loss", "enc_loss", "dec_loss", "enc_acc", "dec_acc", "grad_norm"):
    np.testing.assert_allclose(chunked_metrics[key], plain_metrics[key], rtol=2e-5, err_msg=key)
  for got, want in zip(jax.tree.leaves(chunked_params), jax.tree.leaves(plain_params)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
