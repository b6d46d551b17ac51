"""Packing without mixing documents (data.pack, retromae_jax/data/pretrain/packing.py).

The references here are independent of the packing code: each document is cut out of the packed
row by hand (its tokens, its masked slots, its pool bits) and run ALONE through the model as an
unpacked row; its losses must be those it has inside the packed row.
"""

import dataclasses
import json

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from configs.base import get_config
from retromae_jax.tools import inspect as inspect_lib
from retromae_jax.trainers import settings
from retromae_jax.data.pretrain import batch_contract, masking, packing, pipeline
from retromae_jax.data import sources
from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.objectives.example_random import ExampleRandom
from retromae_jax.models import pooling
from retromae_jax.models.bert import ModelConfig
from retromae_jax.objectives import registry
from retromae_jax.objectives.settings import ObjectiveConfig
from retromae_jax.objectives.contract import IGNORE
from retromae_jax.trainers import validation

L = 64


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.load_tokenizer("default")


def _paragraphs(count):
  """Short real documents: the paragraphs of the standard library's docstrings."""
  out = []
  for text in sources.pydoc_texts():
    out += [p.strip() for p in text.split("\n\n") if len(p.split()) >= 4]
    if len(out) >= count:
      return out[:count]
  return out


def _spec(tok, pack=True, seq_len=L):
  config = get_config("smoke")
  config.data.max_seq_length = seq_len
  config.data.pack = pack
  return batch_contract.masking_spec(settings.pretrain_input(config), tok)


def _chunks(tok, count, seq_len=L):
  """Padded chunks ([N, L] ids, [N] lengths with [CLS] and [SEP]) of short documents."""
  ids = tokenizer_lib.special_ids(tok)
  encoded = tok.encode_batch(_paragraphs(count), add_special_tokens=False)
  texts = [e.ids[:seq_len - 2] for e in encoded]
  input_ids = np.full((len(texts), seq_len), ids.pad, np.int32)
  for row, text in enumerate(texts):
    input_ids[row, :len(text) + 2] = [ids.cls, *text, ids.sep]
  return input_ids, np.array([len(t) + 2 for t in texts])


def _packed_batch(tok, count, seed=0):
  spec = _spec(tok)
  input_ids, lengths = _chunks(tok, count)
  budgets = masking.mask_budget(lengths, spec.encoder_mask_ratio)
  rows, row_lengths, segments = packing.rows_of_chunks(input_ids, lengths, budgets,
                                                       spec.encoder_capacity, spec.pad_id)
  return spec, masking.make_batch(rows, row_lengths, spec, np.random.default_rng(seed), segments)


def _alone(batch, row, segment, seq_len, pad_id):
  """The unpacked one-row batch of one document of a packed batch, cut out by hand."""
  idx = np.flatnonzero(batch["segment_ids"][row] == segment)
  offset, n = idx[0], len(idx)

  def tokens(name, fill):
    out = np.full((1, seq_len), fill, batch[name].dtype)
    out[0, :n] = batch[name][row, idx]
    return out

  slots = batch["encoder_targets"][row] != IGNORE
  mine = slots & np.isin(batch["encoder_positions"][row], idx)
  capacity = batch["encoder_positions"].shape[1]
  positions = np.zeros((1, capacity), np.int32)
  targets = np.full((1, capacity), IGNORE, np.int32)
  positions[0, :mine.sum()] = batch["encoder_positions"][row, mine] - offset
  targets[0, :mine.sum()] = batch["encoder_targets"][row, mine]
  bits = np.unpackbits(batch["decoder_pool"][row], axis=-1, count=seq_len)  # [P, L]
  alone_bits = np.zeros_like(bits)
  alone_bits[:, :n] = bits[:, idx]
  return {
      "input_ids": tokens("input_ids", pad_id),
      "attention_mask": (np.arange(seq_len) < n).astype(np.int32)[None],
      "encoder_input_ids": tokens("encoder_input_ids", pad_id),
      "encoder_positions": positions, "encoder_targets": targets,
      "decoder_pool": np.packbits(alone_bits, axis=-1)[None],
      "decoder_choice": tokens("decoder_choice", 0),
      "decoder_targets": tokens("decoder_targets", IGNORE),
  }


def _token_losses(logits, targets):
  """Per-slot cross-entropy (0 where IGNORE), an optax computation on float64 NumPy inputs."""
  valid = targets != IGNORE
  loss = optax.softmax_cross_entropy_with_integer_labels(
      np.asarray(logits, np.float64), np.where(valid, targets, 0))
  return np.where(valid, np.asarray(loss), 0.0)


@pytest.mark.parametrize("family,query_stream,sentence_vector",
                         [("bert", "embeddings", "cls"), ("roberta", "raw", "cls"),
                          ("bert", "embeddings", "mean")])
def test_each_document_has_the_losses_it_has_alone(tok, family, query_stream, sentence_vector):
  spec, batch = _packed_batch(tok, 40)
  segments = batch["segment_ids"]
  assert segments.max() >= 3  # several documents share rows
  cfg = ModelConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_layers=2, num_heads=4,
                    intermediate_size=64, max_position_embeddings=L + 2, dropout_rate=0.0,
                    attention_dropout_rate=0.0, family=family, pad_token_id=1,
                    query_stream=query_stream, sentence_vector=sentence_vector)
  model = registry.make_model(cfg, ObjectiveConfig())
  params = nn.unbox(model.init(jax.random.key(0), batch, deterministic=True))["params"]
  run = jax.jit(lambda b: model.apply({"params": params}, b, deterministic=True,
                                      method="outputs"))
  packed = run(batch)
  enc = _token_losses(packed["encoder_logits"], batch["encoder_targets"])
  dec = _token_losses(packed["decoder_logits"], batch["decoder_targets"])
  slot_segment = np.take_along_axis(segments, batch["encoder_positions"], axis=1)
  checked = 0
  for row in range(len(segments)):
    for segment in range(1, segments[row].max() + 1):
      alone = _alone(batch, row, segment, L, spec.pad_id)
      out = run(alone)
      enc_alone = _token_losses(out["encoder_logits"], alone["encoder_targets"]).sum()
      dec_alone = _token_losses(out["decoder_logits"], alone["decoder_targets"]).sum()
      enc_packed = enc[row][(slot_segment[row] == segment)].sum()
      dec_packed = dec[row][segments[row] == segment].sum()
      np.testing.assert_allclose(enc_packed, enc_alone, rtol=2e-5)
      np.testing.assert_allclose(dec_packed, dec_alone, rtol=2e-5)
      checked += 1
  assert checked == len(packing.documents(segments)[0])


def test_packed_mean_is_each_documents_own_mean():
  """pooling.segment_mean at every token against NumPy's mean over its document's real tokens."""
  rng = np.random.default_rng(0)
  segments = np.array([[1, 1, 1, 2, 2, 3, 3, 3, 3, 0], [1, 1, 1, 1, 1, 1, 2, 2, 0, 0]])
  hidden = rng.normal(size=(*segments.shape, 5)).astype(np.float32)
  mask = (segments > 0).astype(np.int32)
  got = np.asarray(pooling.segment_mean(hidden, mask, segments))
  for row, col in zip(*np.nonzero(segments)):
    mine = segments[row] == segments[row, col]
    np.testing.assert_allclose(got[row, col], hidden[row, mine].mean(0), rtol=1e-6)


def test_masking_statistics_are_those_of_documents_alone(tok):
  spec, batch = _packed_batch(tok, 300, seed=1)
  rows, offsets, lengths = packing.documents(batch["segment_ids"])
  # The same documents, unpacked, through the unpacked code path (another seed).
  input_ids, chunk_lengths = _chunks(tok, 300)
  alone = masking.make_batch(input_ids, chunk_lengths, _spec(tok, pack=False),
                             np.random.default_rng(2))
  np.testing.assert_array_equal(np.sort(lengths), np.sort(chunk_lengths))
  seg = batch["segment_ids"]
  pos = batch["positions"]

  # Encoder: masked slots only on text tokens of their own document, within its budget.
  valid = batch["encoder_targets"] != IGNORE
  slot_row = np.broadcast_to(np.arange(len(seg))[:, None], valid.shape)[valid]
  slot_pos = batch["encoder_positions"][valid]
  slot_seg = seg[slot_row, slot_pos]
  assert (slot_seg > 0).all()
  doc_len = lengths[np.searchsorted(rows * 10_000 + offsets,
                                    slot_row * 10_000 + slot_pos - pos[slot_row, slot_pos])]
  inside = pos[slot_row, slot_pos]
  assert ((inside >= 1) & (inside <= doc_len - 2)).all()  # never [CLS] nor [SEP]
  counts = np.zeros(len(rows), int)
  np.add.at(counts, np.searchsorted(rows * 10_000 + offsets,
                                    slot_row * 10_000 + slot_pos - inside), 1)
  assert (counts <= masking.mask_budget(lengths, spec.encoder_mask_ratio)).all()
  alone_counts = (alone["encoder_targets"] != IGNORE).sum(1)
  np.testing.assert_allclose((counts / lengths).mean(), (alone_counts / chunk_lengths).mean(),
                             atol=0.01)
  # 80/10/10: the share of [MASK] among masked slots.
  share = lambda b, v, r, p: (b["encoder_input_ids"][r, p] == spec.mask_id).mean()
  alone_valid = alone["encoder_targets"] != IGNORE
  alone_rows = np.broadcast_to(np.arange(len(input_ids))[:, None], alone_valid.shape)[alone_valid]
  np.testing.assert_allclose(share(batch, valid, slot_row, slot_pos),
                             share(alone, alone_valid, alone_rows,
                                   alone["encoder_positions"][alone_valid]), atol=0.04)

  # Decoder: each query row picks one of its own document's min(n, P) pool masks; the bits of a
  # document's segment are its masks (masked share as alone; none past its P).
  bits = np.unpackbits(batch["decoder_pool"], axis=-1, count=L).astype(bool)  # [B, P, L]
  pool_rows = np.minimum(lengths, spec.decoder_pool_size)
  shares = []
  for d, (r, o, n) in enumerate(zip(rows, offsets, lengths)):
    assert (batch["decoder_choice"][r, o:o + n] < pool_rows[d]).all()
    doc_bits = bits[r, :, o:o + n]
    chosen = np.unique(batch["decoder_choice"][r, o:o + n])
    assert not np.delete(doc_bits, chosen, axis=0).any()  # rows no query row uses: zero
    assert not doc_bits[:, [0, n - 1]].any()  # [CLS] and [SEP] never masked
    shares.append(doc_bits[chosen].sum(1).mean() / n)
  alone_bits = np.unpackbits(alone["decoder_pool"], axis=-1, count=L).astype(bool)
  alone_shares = [alone_bits[i, np.unique(alone["decoder_choice"][i, :chunk_lengths[i]])]
                  .sum(1).mean() / chunk_lengths[i] for i in range(len(chunk_lengths))]
  np.testing.assert_allclose(np.mean(shares), np.mean(alone_shares), atol=0.01)


def test_a_packed_document_is_masked_exactly_as_alone(tok):
  """With per-document identities, every field of a document inside a packed row (cut out by
  hand) equals that of the same document masked alone in an unpacked batch."""
  spec = _spec(tok)
  input_ids, lengths = _chunks(tok, 80)
  budgets = masking.mask_budget(lengths, spec.encoder_mask_ratio)
  row_of = packing.assign_rows(lengths, L, budgets, spec.encoder_capacity)
  rows, _, segments = packing.place_chunks(input_ids, lengths, row_of, spec.pad_id)
  ids = np.stack([np.zeros(len(lengths), int), np.full(len(lengths), 4), np.arange(len(lengths))],
                 axis=1)
  order = np.lexsort((np.arange(len(lengths)), row_of))  # the chunks in the rows' order
  packed = masking.make_batch(rows, (segments > 0).sum(1), spec, ExampleRandom(3, ids[order]),
                              segments)
  alone = masking.make_batch(input_ids, lengths, _spec(tok, pack=False), ExampleRandom(3, ids))
  assert segments.max() >= 3
  doc_rows, _, _ = packing.documents(segments)
  segment_of = segments[doc_rows, packing.documents(segments)[1]]
  for d, chunk in enumerate(order):
    cut = _alone(packed, doc_rows[d], segment_of[d], L, spec.pad_id)
    for name, value in cut.items():
      np.testing.assert_array_equal(value[0], alone[name][chunk], err_msg=f"{name} of {chunk}")


def test_pool_bits_land_on_their_segments_tokens():
  """packing.place_pool (bytes moved and shifted, never unpacked) against a bit-by-bit layout."""
  rng = np.random.default_rng(0)
  for _ in range(200):
    seq_len, num_rows = int(rng.integers(3, 70)), int(rng.integers(1, 5))
    pool_size = int(rng.integers(1, 10))
    rows, offsets, lengths = [], [], []
    for row in range(num_rows):
      offset = 0
      while offset < seq_len - 1 and rng.random() < 0.8:
        n = int(rng.integers(1, seq_len - offset + 1))
        rows.append(row), offsets.append(offset), lengths.append(n)
        offset += n
    doc_bits = np.zeros((len(rows), pool_size, seq_len), bool)
    expected = np.zeros((num_rows, pool_size, seq_len), bool)
    for d, (row, offset, n) in enumerate(zip(rows, offsets, lengths)):
      doc_bits[d, :, :n] = rng.random((pool_size, n)) < 0.5
      expected[row, :, offset:offset + n] = doc_bits[d, :, :n]
    got = packing.place_pool(np.packbits(doc_bits, axis=-1), np.array(rows, np.int64),
                             np.array(offsets, np.int64), num_rows)
    np.testing.assert_array_equal(np.unpackbits(got, axis=-1, count=seq_len).astype(bool),
                                  expected)


def test_dense_view_shows_no_visibility_across_documents(tok):
  _, batch = _packed_batch(tok, 60)
  view = inspect_lib.dense_view(batch)
  seg = view["segment_ids"]
  same = seg[:, :, None] == seg[:, None, :]
  for name in ("encoder_attention", "decoder_attention"):
    assert view[name].any()
    assert not view[name][~same].any(), name
    assert not view[name][:, :, :][np.broadcast_to((seg == 0)[:, None, :], same.shape)].any()
  # Inside a document the encoder sees all of it.
  real = seg > 0
  np.testing.assert_array_equal(view["encoder_attention"].astype(bool),
                                same & real[:, None, :] & real[:, :, None])


def test_pipeline_rows_are_full_on_short_documents(tok, tmp_path):
  path = tmp_path / "paragraphs.jsonl"
  path.write_text("\n".join(json.dumps({"text": t}) for t in _paragraphs(3000)) + "\n")
  config = get_config("smoke")
  config.data.source = f"jsonl:{path}"
  config.data.max_seq_length = 128
  config.data.shuffle_buffer = 200
  config.batch_size = 16
  batches = pipeline.pretrain_batches(settings.pretrain_input(config), tok)
  taken = [next(batches) for _ in range(8)]
  batches.close()
  real = np.mean([b["attention_mask"].mean() for b in taken])
  assert real >= 0.95, real
  config.data.pack = False  # the same text one document per row: mostly padding
  batches = pipeline.pretrain_batches(settings.pretrain_input(config), tok)
  unpacked = np.mean([next(batches)["attention_mask"].mean() for _ in range(8)])
  batches.close()
  assert unpacked < 0.6, unpacked
  for b in taken:  # rows keep the contract's invariants
    seg, pos = b["segment_ids"], b["positions"]
    starts = (seg > 0) & (pos == 0)
    np.testing.assert_array_equal(b["input_ids"][starts], tokenizer_lib.special_ids(tok).cls)


# Every part packs: each variant beside the default, its parts' documents run packed and alone.
VARIANTS = [
    {"decoder.kind": "basic"},
    {"decoder.kind": "cross_attention"},  # memory: h alone
    {"decoder.kind": "cross_attention", "decoder.cross_attend_to": "tokens",
     "encoder.masking": "drop"},
    {"decoder.kind": "autoregressive", "decoder.attention_span": 3},
    {"encoder.masking": "drop", "objective.bow_weight": 0.1},
    {"objective.bow_weight": 0.1, "objective.kind": "mlm"},
]


@pytest.fixture(scope="module")
def chunks40(tok):
  return _chunks(tok, 40)


def _variant_config(overrides, pack):
  config = get_config("smoke")
  config.data.max_seq_length = L
  config.data.pack = pack
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value
  validation.validate(config)  # data.pack=True is accepted for every part
  return config


def _per_document_losses(out, batch, documents):
  """{term: [D] losses} of each document (rows, offsets, lengths; the batch's segment numbers
  at their offsets), from the model's outputs, in float64 NumPy: token terms summed over the
  document's tokens or encoder slots, the bag of words as DupMAE's sum over its id set."""
  rows, offsets, lengths = documents
  segments = batch.get("segment_ids")
  losses = {}

  def token_losses(logits, targets):  # cross-entropy at the labelled entries only, else 0
    valid = targets != IGNORE
    out = np.zeros(targets.shape)
    out[valid] = _token_losses(np.asarray(logits)[valid], targets[valid])
    return out

  if "decoder_logits" in out:
    dec = token_losses(out["decoder_logits"], batch["decoder_targets"])
    losses["dec"] = [dec[r, o:o + n].sum() for r, o, n in zip(rows, offsets, lengths)]
  if "encoder_logits" in out:
    enc = token_losses(out["encoder_logits"], batch["encoder_targets"])
    slots = batch["encoder_positions"]
    losses["enc"] = [enc[r][(slots[r] >= o) & (slots[r] < o + n)].sum()
                     for r, o, n in zip(rows, offsets, lengths)]
  if "bow_logits" in out:
    pooled = np.asarray(out["bow_logits"], np.float64)
    log_probs = pooled - pooled.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    bow = []
    for r, o, n in zip(rows, offsets, lengths):
      doc = log_probs[r] if segments is None else log_probs[r, segments[r, o] - 1]
      ids, weights = batch["input_ids"][r, o:o + n], batch["bow_weights"][r, o:o + n]
      bow.append(-(weights * doc[ids]).sum())
    losses["bow"] = bow
  return {term: np.array(values) for term, values in losses.items()}


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(map(str, o.values())))
def test_every_part_gives_each_document_the_losses_it_has_alone(tok, chunks40, overrides):
  """The packed batch (packing code, packed model) against the same documents masked and run
  one per row (the unpacked code paths), with the same identities: equal per-document losses."""
  packed_spec, alone_spec = (
      batch_contract.masking_spec(settings.pretrain_input(_variant_config(overrides, pack)), tok)
      for pack in (True, False))
  input_ids, lengths = chunks40
  budgets = masking.mask_budget(lengths, packed_spec.encoder_mask_ratio)
  row_of = packing.assign_rows(lengths, L, budgets, packed_spec.encoder_capacity)
  rows, _, segments = packing.place_chunks(input_ids, lengths, row_of, packed_spec.pad_id)
  assert segments.max() >= 3
  ids = np.stack([np.zeros(len(lengths), int), np.full(len(lengths), 4), np.arange(len(lengths))],
                 axis=1)
  order = np.lexsort((np.arange(len(lengths)), row_of))  # the chunks in the rows' order
  packed = masking.make_batch(rows, (segments > 0).sum(1), packed_spec,
                              ExampleRandom(3, ids[order]), segments)
  alone = masking.make_batch(input_ids[order], lengths[order], alone_spec,
                             ExampleRandom(3, ids[order]))
  objective = packed_spec.objective
  # Large weights (initializer_range 0.5): logits far from uniform, so that what each token
  # attends to shows in its loss.
  cfg = ModelConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_layers=2, num_heads=4,
                    intermediate_size=64, max_position_embeddings=L + 2, dropout_rate=0.0,
                    attention_dropout_rate=0.0, initializer_range=0.5)
  model = registry.make_model(cfg, objective)
  params = nn.unbox(model.init(jax.random.key(0), packed, deterministic=True))["params"]
  run = jax.jit(lambda b: model.apply({"params": params}, b, deterministic=True,
                                      method="outputs"))
  documents = packing.documents(segments)
  in_rows = _per_document_losses(run(packed), packed, documents)
  count = len(lengths)
  one_per_row = _per_document_losses(run(alone), alone,
                                     (np.arange(count), np.zeros(count, int), lengths[order]))
  assert set(in_rows) == {term.name for term in registry.loss_terms(objective)}
  for term, values in in_rows.items():
    assert np.abs(values).min() > 0, term  # every document has this loss
    np.testing.assert_allclose(values, one_per_row[term], rtol=2e-5, err_msg=term)


def test_a_part_without_packing_is_refused_at_start_up(monkeypatch):
  """A part that declares no packing (contract.Part.packs = None) refuses data.pack=True with
  one line naming it; every registered part packs today."""
  assert all(part.packs is not None for part in (*registry.ENCODERS.values(),
                                                 *registry.DECODERS.values(), *registry.OPTIONS))
  unpacked = dataclasses.replace(registry.DECODERS["basic"], packs=None)
  monkeypatch.setitem(registry.DECODERS, "basic", unpacked)
  config = get_config("smoke")
  config.decoder.kind = "basic"
  with pytest.raises(ValueError, match="config.data.pack: the objective's part.s. basic do "
                                       "not support packed rows"):
    validation.validate(config)
  config.data.pack = False
  validation.validate(config)
