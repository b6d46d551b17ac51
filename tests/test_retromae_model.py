"""The RetroMAE forward pass and both losses against an independent NumPy implementation.

The reference below is written from the spec (section 2), loop by loop: it builds each decoder
row's visibility from the pool masks by hand, runs BERT layers with explicit per-head attention,
and computes the cross-entropies with log-sum-exp. It shares nothing with the Flax code but the
parameter values.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn

from retromae_jax.objectives import losses
from retromae_jax.models.bert import ModelConfig
from retromae_jax.objectives.enhanced.model import RetroMAE

B, L, P, V, D, H, F = 3, 12, 6, 50, 16, 4, 32


def _gelu(x):
  from math import erf
  return 0.5 * x * (1.0 + np.vectorize(erf)(x / np.sqrt(2.0)))


def _ln(x, p, eps=1e-12):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _layer(p, query, kv, visible):
  """One BERT layer; visible[i, j] says whether query i may attend to key j."""
  dh = D // H
  q = np.einsum("ld,dhk->lhk", query, p["query"]["kernel"]) + p["query"]["bias"]
  k = np.einsum("ld,dhk->lhk", kv, p["key"]["kernel"]) + p["key"]["bias"]
  v = np.einsum("ld,dhk->lhk", kv, p["value"]["kernel"]) + p["value"]["bias"]
  ctx = np.zeros_like(q)
  for h in range(H):
    scores = q[:, h] @ k[:, h].T / np.sqrt(dh)
    scores = np.where(visible, scores, -1e30)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    ctx[:, h] = w @ v[:, h]
  attn = np.einsum("lhk,hkd->ld", ctx, p["attention_output"]["kernel"]) + p["attention_output"]["bias"]
  x = _ln(attn + query, p["attention_LayerNorm"])
  inner = _gelu(x @ p["intermediate"]["kernel"] + p["intermediate"]["bias"])
  return _ln(inner @ p["output"]["kernel"] + p["output"]["bias"] + x, p["output_LayerNorm"])


def _head(p, word, x):
  t = _ln(_gelu(x @ p["dense"]["kernel"] + p["dense"]["bias"]), p["LayerNorm"])
  return t @ word.T + p["bias"]


def _ce(logits, labels):
  keep = labels != -100
  z = logits[keep]
  lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
  return float(np.mean(lse - z[np.arange(len(z)), labels[keep]]))


def reference(params, batch, query_stream):
  emb = params["bert"]["embeddings"]
  word = emb["word_embeddings"]["embedding"]
  pos = emb["position_embeddings"]["embedding"]
  typ = emb["token_type_embeddings"]["embedding"]
  enc_layers = params["bert"]["encoder"]
  num_layers = enc_layers["query"]["kernel"].shape[0]
  enc_logits, dec_logits = [], []
  for b in range(B):
    real = batch["attention_mask"][b].astype(bool)
    n = int(real.sum())
    x = _ln(word[batch["encoder_input_ids"][b]] + pos[:L] + typ[0], emb["LayerNorm"])
    for i in range(num_layers):
      layer = jax.tree.map(lambda a: a[i], enc_layers)
      x = _layer(layer, x, x, np.broadcast_to(real, (L, L)))
    enc_logits.append(_head(params["mlm_head"], word, x[batch["encoder_positions"][b]]))
    h = x[0]
    kv = _ln(word[batch["input_ids"][b]] + pos[:L] + typ[0], emb["LayerNorm"])
    kv[0] = h
    if query_stream == "embeddings":
      query = _ln(h + pos[:L] + typ[0], emb["LayerNorm"])
    else:
      query = h + pos[:L]
    pool = np.unpackbits(batch["decoder_pool"][b], axis=-1, count=L).astype(bool)
    visible = np.zeros((L, L), bool)
    for i in range(n):
      masked = pool[batch["decoder_choice"][b, i]].copy()
      masked[i] = True
      visible[i] = ~masked & real
    visible[n:] = True  # padded query rows: any finite value, their loss is ignored
    dec_logits.append(_head(params["mlm_head"], word, _layer(params["decoder"], query, kv, visible)))
  enc_logits, dec_logits = np.stack(enc_logits), np.stack(dec_logits)
  return (enc_logits, dec_logits, _ce(enc_logits, batch["encoder_targets"]),
          _ce(dec_logits, batch["decoder_targets"]))


def _random_batch(rng):
  lengths = np.array([L, 7, 9])
  attention_mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
  input_ids = np.where(attention_mask, rng.integers(5, V, (B, L)), 0).astype(np.int32)
  input_ids[:, 0] = 1
  input_ids[np.arange(B), lengths - 1] = 2
  pool = rng.random((B, P, L)) < 0.5
  pool[:, :, 0] = False
  positions = np.sort(rng.choice(np.arange(1, 6), (B, 3)), axis=1).astype(np.int32)
  encoder_input_ids = input_ids.copy()
  np.put_along_axis(encoder_input_ids, positions, 3, axis=1)
  targets = np.take_along_axis(input_ids, positions, axis=1)
  targets[2, 2] = -100
  decoder_targets = np.where(attention_mask, input_ids, -100)
  decoder_targets[:, 0] = -100
  decoder_targets[np.arange(B), lengths - 1] = -100
  choice = np.where(attention_mask, rng.integers(0, P, (B, L)), 0).astype(np.int32)
  return dict(input_ids=input_ids, attention_mask=attention_mask,
              encoder_input_ids=encoder_input_ids, encoder_positions=positions,
              encoder_targets=targets.astype(np.int32), decoder_pool=np.packbits(pool, axis=-1),
              decoder_choice=choice, decoder_targets=decoder_targets.astype(np.int32))


@pytest.mark.parametrize("query_stream", ["embeddings", "raw"])
def test_forward_and_losses_match_numpy_reference(query_stream):
  cfg = ModelConfig(vocab_size=V, hidden_size=D, num_layers=2, num_heads=H, intermediate_size=F,
                    max_position_embeddings=L, initializer_range=0.5, query_stream=query_stream)
  batch = _random_batch(np.random.default_rng(0))
  model = RetroMAE(cfg)
  params = nn.unbox(model.init(jax.random.key(0), batch, deterministic=True))["params"]
  # Non-trivial LayerNorm and bias values, so a swapped or missing parameter shows.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [
      a + 0.1 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
  outputs = model.apply({"params": params}, batch, deterministic=True)
  enc_logits, dec_logits = outputs["encoder_logits"], outputs["decoder_logits"]
  loss, aux = losses.objective_loss(outputs, batch)  # L = L_enc + L_dec

  params64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  ref_enc, ref_dec, ref_enc_loss, ref_dec_loss = reference(params64, batch, query_stream)
  np.testing.assert_allclose(enc_logits, ref_enc, atol=2e-4, rtol=1e-4)
  real = batch["attention_mask"].astype(bool)
  np.testing.assert_allclose(np.asarray(dec_logits)[real], ref_dec[real], atol=2e-4, rtol=1e-4)
  assert np.isfinite(np.asarray(dec_logits)).all()  # padded rows see nothing, yet stay finite
  np.testing.assert_allclose(aux["enc_loss"], ref_enc_loss, rtol=1e-5)
  np.testing.assert_allclose(aux["dec_loss"], ref_dec_loss, rtol=1e-5)
  np.testing.assert_allclose(loss, ref_enc_loss + ref_dec_loss, rtol=1e-5)
  assert int(aux["dec_tokens"]) == int(real.sum()) - 2 * B  # every real token but [CLS], [SEP]


def test_decoder_shares_embeddings_and_head_and_trains_encoder_through_h():
  cfg = ModelConfig(vocab_size=V, hidden_size=D, num_layers=1, num_heads=H, intermediate_size=F,
                    max_position_embeddings=L)
  batch = _random_batch(np.random.default_rng(1))
  model = RetroMAE(cfg)
  params = nn.unbox(model.init(jax.random.key(0), batch, deterministic=True))["params"]
  # The decoder's only own parameters are one layer: 4 D^2 + 2 D F weights plus biases and LNs.
  decoder_size = sum(x.size for x in jax.tree.leaves(params["decoder"]))
  assert decoder_size == 4 * D * D + 2 * D * F + 4 * D + F + D + 4 * D
  assert set(params) == {"bert", "mlm_head", "decoder"}

  def dec_loss(p):
    dec_logits = model.apply({"params": p}, batch, deterministic=True)["decoder_logits"]
    return losses.masked_cross_entropy(dec_logits, batch["decoder_targets"])[0]

  grads = jax.grad(dec_loss)(params)
  # L_dec reaches the encoder's layers only through h (position 0 of the last hidden state).
  assert float(jnp.abs(grads["bert"]["encoder"]["query"]["kernel"]).sum()) > 0
  assert float(jnp.abs(grads["decoder"]["query"]["kernel"]).sum()) > 0


def test_bert_base_decoder_is_about_7_1m_parameters():
  cfg = ModelConfig()
  layer = jax.eval_shape(lambda: nn.unbox(RetroMAE(cfg).init(
      jax.random.key(0), {k: jnp.zeros(s, jnp.int32) for k, s in {
          "input_ids": (1, 8), "attention_mask": (1, 8), "encoder_input_ids": (1, 8),
          "encoder_positions": (1, 2), "encoder_targets": (1, 2), "decoder_choice": (1, 8),
          "decoder_targets": (1, 8)}.items()} | {"decoder_pool": jnp.zeros((1, 4, 1), jnp.uint8)},
      deterministic=True))["params"]["decoder"])
  assert abs(sum(x.size for x in jax.tree.leaves(layer)) - 7.09e6) < 0.01e6
