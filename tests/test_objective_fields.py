"""The host side of the objectives (retromae_jax/objectives/, masking.make_batch) on real text:
each variant's fields against loop references written from the batch contract (pipeline.py)."""

import numpy as np
import pytest

from configs import base
from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.trainers import settings
from retromae_jax.data.pretrain import batch_contract, chunking, masking
from retromae_jax.data import sources
from retromae_jax.objectives.bag_of_words.host import bag_of_words_weights
from retromae_jax.objectives.drop.host import dropped_encoder_input

L, N = 64, 96


@pytest.fixture(scope="module")
def text():
  """N chunks of the standard library's docstrings (the embedded pydoc source), padded to L."""
  tok = tokenizer_lib.load_tokenizer("default")
  ids = tokenizer_lib.special_ids(tok)
  is_cont = tokenizer_lib.continuation_table(tok)
  chunks = list(chunking.chunk_documents(sources.pydoc_texts()[:300], tok, max_seq_length=L,
                                         min_chunk_tokens=8, is_continuation=is_cont))[:N]
  lengths = np.array([len(c) + 2 for c in chunks])
  input_ids = np.full((N, L), ids.pad, np.int32)
  for row, chunk in enumerate(chunks):
    input_ids[row, :len(chunk) + 2] = [ids.cls, *chunk, ids.sep]
  return tok, input_ids, lengths


def _spec(tok, **objective):
  config = base.get_config("smoke")
  config.data.max_seq_length = L
  config.data.pack = False  # one document per row: the fields' own layout (packing: test_packing)
  for key, value in objective.items():
    section, name = key.split("__")
    config[section][name] = value
  return config, batch_contract.masking_spec(settings.pretrain_input(config), tok)


VARIANTS = [
    {},
    {"encoder__masking": "drop"},
    {"decoder__kind": "basic"},
    {"decoder__kind": "cross_attention", "objective__bow_weight": 0.1},
    {"decoder__kind": "autoregressive"},
    {"objective__kind": "mlm"},
]


@pytest.mark.parametrize("objective", VARIANTS, ids=lambda o: ",".join(map(str, o.values())) or
                         "default")
def test_each_variant_emits_exactly_its_contract(text, objective):
  tok, input_ids, lengths = text
  config, spec = _spec(tok, **objective)
  batch = masking.make_batch(input_ids[:16], lengths[:16], spec, np.random.default_rng(0))
  shapes = batch_contract.batch_shapes(settings.pretrain_input(config), 16)
  assert list(batch) == list(shapes)  # same order: the pipeline maps outputs by position
  for name, (shape, dtype) in shapes.items():
    assert batch[name].shape == shape and batch[name].dtype == dtype, name
  if not objective:  # the spec's contract, unchanged
    assert list(batch) == ["input_ids", "attention_mask", "encoder_input_ids",
                           "encoder_positions", "encoder_targets", "decoder_pool",
                           "decoder_choice", "decoder_targets"]


def test_drop_keeps_exactly_the_tokens_corrupt_would_have_masked_out(text):
  tok, input_ids, lengths = text
  _, corrupt = _spec(tok)
  _, drop = _spec(tok, encoder__masking="drop")
  # Both draw the encoder's mask first from the same stream: the same whole-word mask.
  a = masking.make_batch(input_ids, lengths, corrupt, np.random.default_rng(3))
  b = masking.make_batch(input_ids, lengths, drop, np.random.default_rng(3))
  width = drop.encoder_width
  assert width == L - masking.encoder_capacity(L, 0.3) == b["encoder_input_ids"].shape[1]
  for row in range(N):
    masked = set(a["encoder_positions"][row][a["encoder_targets"][row] != -100].tolist())
    kept = [j for j in range(lengths[row]) if j not in masked]
    if len(kept) > width:  # the greedy walk fell short of its budget: the last text tokens go
      kept = kept[:width - 1] + [lengths[row] - 1]
    count = int(b["encoder_attention_mask"][row].sum())
    assert b["encoder_position_ids"][row, :count].tolist() == kept
    assert b["encoder_input_ids"][row, :count].tolist() == input_ids[row, kept].tolist()
    assert not b["encoder_attention_mask"][row, count:].any()
  assert "encoder_positions" not in b  # no L_enc under drop


def test_drop_masks_the_last_text_tokens_when_too_many_are_left():
  ids = np.array([[1, 10, 11, 12, 13, 14, 2, 0]])
  masked = np.array([[0, 0, 1, 0, 0, 0, 0, 0]], bool)  # 4 text tokens left, room for 2
  fields, final = dropped_encoder_input(ids, np.array([7]), masked, 4, pad_id=0)
  assert fields["encoder_input_ids"].tolist() == [[1, 10, 12, 2]]
  assert fields["encoder_position_ids"].tolist() == [[0, 1, 3, 6]]
  assert fields["encoder_attention_mask"].tolist() == [[1, 1, 1, 1]]
  assert np.flatnonzero(final[0]).tolist() == [2, 4, 5]  # what the encoder does not read


@pytest.mark.parametrize("kind", ["basic", "cross_attention"])
def test_masked_decoder_input_hides_whole_words_at_the_decoder_ratio(text, kind):
  tok, input_ids, lengths = text
  _, spec = _spec(tok, decoder__kind=kind)
  batch = masking.make_batch(input_ids, lengths, spec, np.random.default_rng(1))
  mask_id = tokenizer_lib.special_ids(tok).mask
  targets, dec_ids = batch["decoder_targets"], batch["decoder_input_ids"]
  hidden = targets != -100
  assert "decoder_pool" not in batch
  np.testing.assert_array_equal(dec_ids[hidden], mask_id)
  np.testing.assert_array_equal(targets[hidden], input_ids[hidden])
  np.testing.assert_array_equal(dec_ids[~hidden], input_ids[~hidden])
  is_cont = tokenizer_lib.continuation_table(tok)
  exact = 0
  for row in range(N):
    n = lengths[row]
    assert not hidden[row, 0] and not hidden[row, n - 1:].any()  # [CLS], [SEP], padding
    words, start = [], 1
    for j in range(2, n):  # whole words: a token and its '##' continuations
      if j == n - 1 or not is_cont[input_ids[row, j]]:
        words.append(range(start, j))
        start = j
    for word in words:
      assert len({bool(hidden[row, j]) for j in word}) == 1, (row, list(word))
    budget = max(1, round(n * 0.5))
    assert hidden[row].sum() <= budget
    exact += hidden[row].sum() == budget
  assert exact >= 0.9 * N  # the greedy walk fills its budget unless words are too long


def test_next_token_targets_are_the_following_text_token(text):
  tok, input_ids, lengths = text
  _, spec = _spec(tok, decoder__kind="autoregressive")
  batch = masking.make_batch(input_ids, lengths, spec, np.random.default_rng(2))
  assert set(batch) == {"input_ids", "attention_mask", "encoder_input_ids", "encoder_positions",
                        "encoder_targets", "decoder_targets"}  # no decoder mask at all
  for row in range(N):
    n = lengths[row]
    expected = [input_ids[row, t + 1] if t + 1 <= n - 2 else -100 for t in range(L)]
    assert batch["decoder_targets"][row].tolist() == expected


def test_bag_of_words_weights_encode_the_set_of_text_ids(text):
  tok, input_ids, lengths = text
  is_special = tokenizer_lib.special_table(tok)
  unk = tok.token_to_id("[UNK]")
  input_ids = input_ids.copy()
  input_ids[:, 2] = unk  # special tokens inside the text count in len(text) but are no target
  weights = bag_of_words_weights(input_ids, lengths, is_special)
  for row in range(N):
    text_ids = input_ids[row, 1:lengths[row] - 1].tolist()
    expected = {t: 1 / len(text_ids) for t in set(text_ids) if not is_special[t]}
    got = {}
    for j in np.flatnonzero(weights[row]):
      assert input_ids[row, j] not in got  # one position per distinct id
      got[int(input_ids[row, j])] = float(weights[row, j])
    assert got.keys() == expected.keys()
    np.testing.assert_allclose([got[t] for t in expected], list(expected.values()), rtol=1e-6)
