"""The bf16 compute path (model.dtype=bfloat16, parameters f32) on CPU: the same training losses
as float32 within bf16's precision, packed rows included."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs.base import get_config
from retromae_jax.data.pretrain import batch_contract, masking, packing
from retromae_jax.trainers import settings
from retromae_jax.data import sources
from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.objectives import losses
from retromae_jax.models.bert import ModelConfig
from retromae_jax.objectives.settings import ObjectiveConfig
from retromae_jax.objectives.registry import make_model

L = 64


def test_bf16_losses_and_gradients_are_close_to_float32():
  tok = tokenizer_lib.load_tokenizer("default")
  config = get_config("smoke")
  config.data.max_seq_length = L
  spec = batch_contract.masking_spec(settings.pretrain_input(config), tok)
  ids = tokenizer_lib.special_ids(tok)
  texts = [t.ids[:L - 2] for t in tok.encode_batch(sources.pydoc_texts()[:24],
                                                   add_special_tokens=False)]
  chunks = np.full((len(texts), L), ids.pad, np.int32)
  for row, text in enumerate(texts):
    chunks[row, :len(text) + 2] = [ids.cls, *text, ids.sep]
  lengths = np.array([len(t) + 2 for t in texts])
  rows, row_lengths, segments = packing.rows_of_chunks(
      chunks, lengths, masking.mask_budget(lengths, spec.encoder_mask_ratio),
      spec.encoder_capacity, spec.pad_id)
  batch = masking.make_batch(rows, row_lengths, spec, np.random.default_rng(0), segments)

  def loss_and_grads(dtype):
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, num_layers=2,
                      num_heads=4, intermediate_size=128, max_position_embeddings=L,
                      dropout_rate=0.0, attention_dropout_rate=0.0, dtype=dtype)
    model = make_model(cfg, ObjectiveConfig())
    params = nn.unbox(model.init(jax.random.key(0), batch, deterministic=True))["params"]

    def loss_fn(params):
      outputs = model.apply({"params": params}, batch, deterministic=True, method="outputs")
      return losses.objective_loss(outputs, batch)

    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    return loss, metrics, grads, outputs_dtype(model, params)

  def outputs_dtype(model, params):
    hidden = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                         method="encode")
    return hidden.dtype

  loss32, metrics32, grads32, dtype32 = loss_and_grads(jnp.float32)
  loss16, metrics16, grads16, dtype16 = loss_and_grads(jnp.bfloat16)
  assert dtype32 == jnp.float32 and dtype16 == jnp.bfloat16  # the path really runs in bf16
  assert loss16.dtype == jnp.float32  # softmax and cross-entropy in f32 whatever the dtype
  for term in ("enc_loss", "dec_loss"):
    np.testing.assert_allclose(metrics16[term], metrics32[term], rtol=1e-2)
  assert float(jnp.abs(loss16 - loss32)) > 0  # not the same computation
  flat32, flat16 = jax.tree.leaves(grads32), jax.tree.leaves(grads16)
  cosine = lambda a, b: float(jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b) + 1e-30))
  total = cosine(jnp.concatenate([g.ravel() for g in flat32]),
                 jnp.concatenate([g.astype(jnp.float32).ravel() for g in flat16]))
  assert total > 0.99, total
