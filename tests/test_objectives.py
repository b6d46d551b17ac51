"""The objectives beside the default enhanced decoder (retromae_jax/objectives), one test per
defining property, against an independent NumPy implementation where there is one to write.

The NumPy reference below is written from the modules' docstrings, loop by loop (explicit
per-head attention with a visibility matrix per query row, per-example loops); it shares nothing
with the Flax code but the parameter values.
"""

from math import erf

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from retromae_jax.trainers import validation as config_check
from retromae_jax.objectives import losses
from retromae_jax.models.bert import ModelConfig
from retromae_jax.objectives.bag_of_words.host import bag_of_words_weights
from retromae_jax.objectives.settings import ObjectiveConfig
from retromae_jax.objectives.drop.host import dropped_encoder_input
from retromae_jax.objectives.registry import make_model

B, L, P, V, D, H, F = 3, 12, 6, 50, 16, 4, 32
PAD, CLS, SEP, MASK, UNK = 0, 1, 2, 3, 4
IS_SPECIAL = np.arange(V) < 5
CFG = ModelConfig(vocab_size=V, hidden_size=D, num_layers=2, num_heads=H, intermediate_size=F,
                  max_position_embeddings=L, initializer_range=0.5)


# ---------------------------------------------------------------- NumPy reference

def _gelu(x):
  return 0.5 * x * (1.0 + np.vectorize(erf)(x / np.sqrt(2.0)))


def _ln(x, p, eps=1e-12):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * p["scale"] + p["bias"]


def _attend(p, prefix, query, kv, visible):
  """LN(query + W_o attention(query -> kv)); visible[i, j]: may query i see key j."""
  dh = D // H
  def proj(name, x):
    return np.einsum("ld,dhk->lhk", x, p[prefix + name]["kernel"]) + p[prefix + name]["bias"]
  q, k, v = proj("query", query), proj("key", kv), proj("value", kv)
  ctx = np.zeros_like(q)
  for h in range(H):
    scores = np.where(visible, q[:, h] @ k[:, h].T / np.sqrt(dh), -1e30)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    ctx[:, h] = (w / w.sum(-1, keepdims=True)) @ v[:, h]
  out = p[prefix + "attention_output"]
  return _ln(np.einsum("lhk,hkd->ld", ctx, out["kernel"]) + out["bias"] + query,
             p[prefix + "attention_LayerNorm"])


def _ffn(p, x):
  inner = _gelu(x @ p["intermediate"]["kernel"] + p["intermediate"]["bias"])
  return _ln(inner @ p["output"]["kernel"] + p["output"]["bias"] + x, p["output_LayerNorm"])


def _layer(p, query, kv, visible):
  return _ffn(p, _attend(p, "", query, kv, visible))


def _head(params, x):
  p, word = params["mlm_head"], params["bert"]["embeddings"]["word_embeddings"]["embedding"]
  x = _ln(_gelu(x @ p["dense"]["kernel"] + p["dense"]["bias"]), p["LayerNorm"])
  return x @ word.T + p["bias"]


def _embed_vectors(params, vectors):
  """LN(vectors + pos + type_0): BERT's embedding module from given word vectors."""
  e = params["bert"]["embeddings"]
  return _ln(vectors + e["position_embeddings"]["embedding"][:L]
             + e["token_type_embeddings"]["embedding"][0], e["LayerNorm"])


def _embed(params, ids):
  return _embed_vectors(params, params["bert"]["embeddings"]["word_embeddings"]["embedding"][ids])


def _layer_params(tree, i):
  return jax.tree.map(lambda a: a[i], tree)


def _encoder(params, ids, real):
  x = _embed(params, ids)
  layers = params["bert"]["encoder"]
  for i in range(CFG.num_layers):
    x = _layer(_layer_params(layers, i), x, x, np.broadcast_to(real, (L, L)))
  return x


def reference_decoder_logits(params, batch, objective):
  """[B, L, V] decoder logits, computed from each decoder's description, per example."""
  out = []
  kind, num, dec = objective.decoder_kind, objective.decoder_layers, params["decoder"]

  def layer(i):  # one enhanced layer is a plain layer (the spec's layout), else a stack
    return dec if kind == "enhanced" and num == 1 else _layer_params(dec["layers"], i)

  for b in range(B):
    real = batch["attention_mask"][b].astype(bool)
    hidden = _encoder(params, batch["encoder_input_ids"][b], real)
    h = hidden[0]
    if kind == "enhanced":  # queries LN(h + pos + type); keys H2; later queries: previous output
      kv = _embed(params, batch["input_ids"][b])
      kv[0] = h
      x = _embed_vectors(params, np.broadcast_to(h, (L, D)))
      pool = np.unpackbits(batch["decoder_pool"][b], axis=-1, count=L).astype(bool)
      visible = np.ones((L, L), bool)
      for i in range(int(real.sum())):
        masked = pool[batch["decoder_choice"][b, i]].copy()
        masked[i] = True
        visible[i] = ~masked & real
      for i in range(num):
        x = _layer(layer(i), x, kv, visible)
    elif kind in ("basic", "autoregressive"):
      ids = batch["decoder_input_ids" if kind == "basic" else "input_ids"][b]
      x = _embed(params, ids)
      x[0] = h
      visible = np.broadcast_to(real, (L, L)).copy()
      if kind == "autoregressive":
        span = objective.attention_span
        for t in range(L):
          for j in range(L):
            before = j <= t and (span == 0 or j == 0 or j > t - span)
            visible[t, j] &= before
      for i in range(num):
        x = _layer(layer(i), x, x, visible)
    else:  # cross_attention
      x = _embed(params, batch["decoder_input_ids"][b])
      if objective.cross_attend_to == "sentence":
        memory, memory_visible = h[None], np.ones((L, 1), bool)
      else:
        memory, memory_visible = hidden, np.broadcast_to(real, (L, L))
      for i in range(num):
        p = layer(i)
        x = _attend(p, "", x, x, np.broadcast_to(real, (L, L)))
        x = _attend(p, "cross_", x, memory, memory_visible)
        x = _ffn(p, x)
    out.append(_head(params, x))
  return np.stack(out)


# ---------------------------------------------------------------- Shared fixtures

def _batch(seed=0):
  """A small batch carrying every decoder's fields (each model reads its own)."""
  rng = np.random.default_rng(seed)
  lengths = np.array([L, 7, 10])
  mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
  ids = np.where(mask, rng.integers(5, V, (B, L)), PAD).astype(np.int32)
  ids[1, 3] = UNK  # a special token inside the text
  ids[0, 4] = ids[0, 2]  # a repeated id
  ids[:, 0] = CLS
  ids[np.arange(B), lengths - 1] = SEP
  text = (np.arange(L) >= 1) & (np.arange(L) < lengths[:, None] - 1)
  positions = np.sort(rng.choice(np.arange(1, 6), (B, 3)), axis=1).astype(np.int32)
  encoder_ids = ids.copy()
  np.put_along_axis(encoder_ids, positions, MASK, axis=1)
  dec_masked = text & (rng.random((B, L)) < 0.5)
  pool = rng.random((B, P, L)) < 0.5
  pool[:, :, 0] = False
  return dict(
      input_ids=ids, attention_mask=mask, encoder_input_ids=encoder_ids,
      encoder_positions=positions,
      encoder_targets=np.take_along_axis(ids, positions, axis=1).astype(np.int32),
      decoder_pool=np.packbits(pool, axis=-1),
      decoder_choice=np.where(mask, rng.integers(0, P, (B, L)), 0).astype(np.int32),
      decoder_input_ids=np.where(dec_masked, MASK, ids).astype(np.int32),
      decoder_targets=np.where(dec_masked, ids, -100).astype(np.int32),
      bow_weights=bag_of_words_weights(ids, lengths, IS_SPECIAL)), lengths


def _init(objective, batch, seed=0):
  """The model and random parameters of its shape: kernels N(0, 0.5), biases N(0, 0.1),
  LayerNorm scales 1 + N(0, 0.1), so that a swapped or missing parameter shows. (Only the
  shapes come from Flax's init, traced, not run: a real init costs seconds per model here.)"""
  model = make_model(CFG, objective)
  shapes = jax.eval_shape(
      lambda: nn.unbox(model.init(jax.random.key(0), batch, deterministic=True))["params"])
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    noise = rng.normal(0.0, 0.1 if name in ("bias", "scale") else 0.5, leaf.shape)
    return jnp.asarray(noise + (name == "scale"), leaf.dtype)

  return model, jax.tree_util.tree_map_with_path(draw, shapes)


def _decoder_logits(model, params, batch):
  return np.asarray(model.apply({"params": params}, batch, deterministic=True,
                                method="outputs")["decoder_logits"])


# ---------------------------------------------------------------- Every decoder vs NumPy

@pytest.mark.parametrize("objective", [
    ObjectiveConfig(decoder_layers=2),  # enhanced, later queries = previous layer's output
    ObjectiveConfig(decoder_kind="basic"),
    ObjectiveConfig(decoder_kind="cross_attention", cross_attend_to="sentence"),
    ObjectiveConfig(decoder_kind="cross_attention", cross_attend_to="tokens", decoder_layers=2),
    ObjectiveConfig(decoder_kind="autoregressive", attention_span=3, decoder_layers=2),
], ids=lambda o: f"{o.decoder_kind}-{o.cross_attend_to}-{o.decoder_layers}")
def test_decoder_logits_match_numpy_reference(objective):
  batch, _ = _batch()
  model, params = _init(objective, batch)
  got = _decoder_logits(model, params, batch)
  expected = reference_decoder_logits(jax.tree.map(lambda a: np.asarray(a, np.float64), params),
                                      batch, objective)
  real = batch["attention_mask"].astype(bool)
  np.testing.assert_allclose(got[real], expected[real], atol=2e-4, rtol=1e-4)


# ---------------------------------------------------------------- Defining properties

@pytest.mark.parametrize("layers,span,reach", [(1, 0, None), (1, 3, 3), (2, 3, 5)])
def test_autoregressive_position_sees_only_earlier_tokens_within_its_span(layers, span, reach):
  # reach: how many tokens x_{t-reach+1..t} can influence position t (span per layer, so
  # n layers reach n*(span-1)+1); None = all of x_1..x_t.
  objective = ObjectiveConfig(decoder_kind="autoregressive", decoder_layers=layers,
                              attention_span=span)
  batch, _ = _batch()
  model, params = _init(objective, batch)
  logits = jax.jit(lambda ids: model.apply({"params": params}, dict(batch, input_ids=ids),
                                           deterministic=True, method="outputs")["decoder_logits"])
  base_logits = np.asarray(logits(batch["input_ids"]))

  def changed_rows(j):
    """Which positions' logits change when only token x_j changes (example 0, length L)."""
    ids = batch["input_ids"].copy()
    ids[0, j] = 5 + (ids[0, j] - 5 + 17) % (V - 5)
    diff = np.abs(np.asarray(logits(ids))[0] - base_logits[0]).max(-1)
    assert np.all(diff[:j] < 1e-5), (j, diff)  # never a position before x_j
    return diff > 1e-3

  for j in range(1, L):
    rows = changed_rows(j)
    expected = np.arange(L) >= j
    if reach is not None:
      expected &= np.arange(L) < j + reach
    np.testing.assert_array_equal(rows, expected, err_msg=f"token {j}")
  # Every position sees h: a different encoder input changes every row.
  other = dict(batch, encoder_input_ids=np.where(batch["attention_mask"], 7, PAD).astype(np.int32))
  moved = np.abs(_decoder_logits(model, params, other)[0] - base_logits[0]).max(-1)
  assert np.all(moved > 1e-3)


@pytest.mark.parametrize("memory", ["sentence", "tokens"])
def test_cross_attention_reads_h_alone_or_every_encoder_state(memory):
  objective = ObjectiveConfig(decoder_kind="cross_attention", cross_attend_to=memory)
  batch, _ = _batch()
  model, params = _init(objective, batch)
  hidden, key_mask, _ = model.apply({"params": params}, batch, True, method="run_encoder")
  decode = lambda states: np.asarray(model.apply(
      {"params": params}, states, key_mask, batch, True, method="decode"))
  before = decode(hidden)
  bump = np.zeros(hidden.shape, np.float32)
  bump[:, 1:] = 1.0  # every encoder state but [CLS]'s
  after_tokens = decode(hidden + bump)
  after_cls = decode(hidden.at[:, 0].add(1.0))
  real = batch["attention_mask"].astype(bool)
  row_change = lambda after: np.abs(after - before).max(-1)[real]
  assert row_change(after_cls).min() > 1e-3  # h reaches every row in both modes
  if memory == "sentence":
    np.testing.assert_array_equal(after_tokens, before)  # only h is in the memory
  else:
    assert row_change(after_tokens).min() > 1e-3


def test_basic_decoder_loss_only_on_its_masked_positions():
  objective = ObjectiveConfig(decoder_kind="basic")
  batch, _ = _batch()
  model, params = _init(objective, batch)
  outputs = model.apply({"params": params}, batch, deterministic=True, method="outputs")
  _, metrics = losses.objective_loss(outputs, batch)

  def dec_loss(decoder_logits):
    return losses.objective_loss(dict(outputs, decoder_logits=decoder_logits), batch)[1]["dec_loss"]

  touched = np.abs(np.asarray(jax.grad(dec_loss)(outputs["decoder_logits"]))).max(-1) > 0
  masked = batch["decoder_input_ids"] == MASK
  np.testing.assert_array_equal(touched, masked)
  # The value: mean cross-entropy over exactly those positions.
  logits = np.asarray(outputs["decoder_logits"], np.float64)[masked]
  log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  expected = np.mean(log_z - logits[np.arange(len(logits)), batch["input_ids"][masked]])
  np.testing.assert_allclose(metrics["dec_loss"], expected, rtol=1e-5)
  assert int(metrics["dec_tokens"]) == masked.sum()


def test_bag_of_words_loss_matches_numpy_dupmae():
  objective = ObjectiveConfig(bow_weight=0.1)
  batch, lengths = _batch()
  model, params = _init(objective, batch)
  outputs = model.apply({"params": params}, batch, deterministic=True, method="outputs")
  loss, metrics = losses.objective_loss(outputs, batch, objective)

  p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  expected = []
  for b in range(B):
    real = batch["attention_mask"][b].astype(bool)
    logits = _head(p64, _encoder(p64, batch["encoder_input_ids"][b], real))  # [L, V]
    pooled = (logits + np.where(real, 0.0, -1000.0)[:, None])[1:].max(0)  # positions 1..L-1
    log_probs = pooled - np.log(np.exp(pooled - pooled.max()).sum()) - pooled.max()
    text = batch["input_ids"][b, 1:lengths[b] - 1].tolist()
    present = {t for t in text if not IS_SPECIAL[t]}  # a set: the repeated id counts once
    expected.append(-sum(log_probs[t] for t in present) / len(text))
  np.testing.assert_allclose(metrics["bow_loss"], np.mean(expected), rtol=1e-5)
  np.testing.assert_allclose(
      loss, metrics["enc_loss"] + metrics["dec_loss"] + 0.1 * metrics["bow_loss"], rtol=1e-6)
  # Bag of words on leaves the other logits as they were.
  plain = make_model(CFG).apply({"params": params}, batch, deterministic=True, method="outputs")
  np.testing.assert_allclose(outputs["encoder_logits"], plain["encoder_logits"], atol=1e-4)
  np.testing.assert_array_equal(outputs["decoder_logits"], plain["decoder_logits"])


def test_mlm_baseline_has_no_decoder():
  objective = ObjectiveConfig(kind="mlm")
  batch, _ = _batch()
  encoder_only = {k: batch[k] for k in ("input_ids", "attention_mask", "encoder_input_ids",
                                        "encoder_positions", "encoder_targets")}
  model, params = _init(objective, encoder_only)
  assert set(params) == {"bert", "mlm_head"}
  outputs = model.apply({"params": params}, encoder_only, deterministic=True, method="outputs")
  assert set(outputs) == {"encoder_logits"}
  loss, metrics = losses.objective_loss(outputs, encoder_only, objective)
  assert set(metrics) == {"enc_loss", "enc_acc", "enc_tokens"}
  assert float(loss) == float(metrics["enc_loss"])
  # Same encoder and head parameters as the RetroMAE model, minus its decoder.
  _, full = _init(ObjectiveConfig(), batch)
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  assert count(params) == count(full) - count(full["decoder"])


def test_drop_encoder_reads_only_the_unmasked_tokens_at_their_original_positions():
  objective = ObjectiveConfig(encoder_masking="drop")
  batch, lengths = _batch()
  masked = np.zeros((B, L), bool)
  masked[0, [2, 3, 7]] = masked[1, [1, 2]] = masked[2, [4, 5, 6, 8]] = True
  fields, final_mask = dropped_encoder_input(
      batch["input_ids"], lengths, masked, width=9, pad_id=PAD)
  np.testing.assert_array_equal(final_mask, masked)  # width 9 fits every example here
  model, params = _init(objective, {**batch, **fields})
  hidden, key_mask, outputs = model.apply({"params": params}, {**batch, **fields}, True,
                                          method="run_encoder")
  assert hidden.shape == (B, 9, D) and "encoder_logits" not in outputs
  # The same encoder over the full sequence, with the masked tokens hidden from attention,
  # must give the same states at the kept positions: nothing else reaches the encoder.
  kept = batch["attention_mask"].astype(bool) & ~masked
  full = np.asarray(model.apply({"params": params}, batch["input_ids"], kept.astype(np.int32),
                                method="encode"))
  for b in range(B):
    n = int(key_mask[b].sum())
    np.testing.assert_array_equal(fields["encoder_position_ids"][b, :n], np.flatnonzero(kept[b]))
    np.testing.assert_allclose(np.asarray(hidden)[b, :n], full[b, kept[b]], atol=1e-5)


def test_default_objective_is_the_spec_model():
  # The enhanced model keeps the spec's parameter layout: one plain layer under 'decoder'
  # (tests/test_retromae_model.py pins its values against NumPy).
  batch, _ = _batch()
  _, params = _init(ObjectiveConfig(), batch)
  assert set(params) == {"bert", "mlm_head", "decoder"}
  assert params["decoder"]["query"]["kernel"].shape == (D, H, D // H)


# ---------------------------------------------------------------- Start-up validation

@pytest.mark.parametrize("overrides,message", [
    ({"objective.kind": "clm"}, "config.objective.kind: expected one of retromae, mlm"),
    ({"objective.bow_weight": -0.1}, "config.objective.bow_weight: expected a weight >= 0"),
    ({"decoder.kind": "causal"}, "config.decoder.kind: expected one of enhanced, basic"),
    ({"decoder.num_layers": 13}, "config.decoder.num_layers: expected 1..12"),
    ({"decoder.num_layers": 0}, "config.decoder.num_layers: expected 1..12"),
    ({"decoder.kind": "cross_attention", "decoder.cross_attend_to": "all"},
     "config.decoder.cross_attend_to: expected one of"),
    ({"decoder.cross_attend_to": "tokens"}, "config.decoder.cross_attend_to: only the cross_att"),
    ({"decoder.kind": "autoregressive", "decoder.attention_span": -1},
     "config.decoder.attention_span: expected >= 0"),
    ({"decoder.attention_span": 2}, "config.decoder.attention_span: only the autoregressive"),
    ({"encoder.masking": "mae"}, "config.encoder.masking: expected one of corrupt, drop"),
    ({"objective.kind": "mlm", "decoder.kind": "basic"},
     "config.decoder.kind: objective.kind='mlm' has no decoder"),
    ({"objective.kind": "mlm", "encoder.masking": "drop"},
     "config.encoder.masking: objective.kind='mlm' needs 'corrupt'"),
])
def test_invalid_objective_settings_name_their_key(overrides, message):
  config = base.get_config("smoke")
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value
  with pytest.raises(ValueError, match=message.replace("(", r"\(")) as error:
    config_check.validate(config)
  assert "\n" not in str(error.value)


def test_every_valid_combination_passes_validation():
  config = base.get_config("smoke")
  config.decoder.kind, config.decoder.attention_span = "autoregressive", 4
  config.decoder.num_layers, config.encoder.masking, config.objective.bow_weight = 12, "drop", 0.1
  config.data.pack = False  # drop and the bag of words do not pack
  config_check.validate(config)
