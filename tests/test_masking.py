"""RetroMAE's masks against the spec (sections 1-2), on real text and against a loop reference."""

import numpy as np
import pytest

from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.data.pretrain import chunking, masking, word_walk
from retromae_jax.data import sources
from retromae_jax.objectives.example_random import ExampleRandom
from retromae_jax.objectives.contract import IGNORE

L = 128


def reference_mask(is_cont: list[bool], n: int, k: int, priority) -> set[int]:
  """The references' loop, written independently: positions masked in one row.

  Words: a token plus the following '##' tokens, over positions 1..n-2; walked by increasing
  priority; a word is added while it fits in the budget, skipped if it overflows; stop at k.
  """
  words = []
  for i in range(1, n - 1):
    if words and is_cont[i]:
      words[-1].append(i)
    else:
      words.append([i])
  masked = []
  for w in sorted(range(len(words)), key=lambda w: priority[w]):
    if len(masked) >= k:
      break
    if len(masked) + len(words[w]) > k:
      continue
    masked.extend(words[w])
  return set(masked)


def test_budget_rounds_half_to_even_like_python():
  for ratio in (0.15, 0.25, 0.3, 0.5, 0.7, 0.125):
    n = np.arange(1, 1025)
    expected = [max(1, round(int(x) * ratio)) for x in n]
    np.testing.assert_array_equal(masking.mask_budget(n, ratio), expected)
  assert masking.mask_budget(np.array([10]), 0.25)[0] == 2  # 2.5 -> 2, not 3


def test_walk_equals_loop_reference_for_its_order():
  """The compiled walk (word_walk.walk_masks) against the references' loop, given the order
  its keys make (walk_order, plain Python): documents of 1 to 600 words, any '##' share."""
  rng = np.random.default_rng(1)
  checked = 0
  for case in range(120):
    examples, seq_len = 3, int(rng.integers(3, 48 if case % 4 else 602))
    vocab = 40
    is_cont = rng.random(vocab) < rng.random()  # from no '##' at all to almost all '##'
    input_ids = rng.integers(0, vocab, (examples, seq_len)).astype(np.int32)
    lengths = rng.integers(2, seq_len + 1, examples)
    _, word_len = masking.word_spans(input_ids, lengths, is_cont)
    num_words = np.count_nonzero(word_len, axis=1)
    word_start = 1 + np.cumsum(word_len, axis=1) - word_len
    num_masks = int(rng.integers(1, 12))
    counts = num_masks * num_words  # each document's keys: one row of one key per word per mask
    keys = rng.integers(0, 2**32, counts.sum(), dtype=np.uint32)
    offsets = np.cumsum(counts) - counts
    rows = np.where(np.arange(num_masks) < rng.integers(1, num_masks + 1, (examples, 1)),
                    rng.permuted(np.tile(np.arange(num_masks), (examples, 1)), axis=1), -1)
    budget = masking.mask_budget(lengths, float(rng.random()))
    out = np.zeros((examples, num_masks, (seq_len + 7) // 8), np.uint8)
    word_walk.walk_masks(word_start, word_len.astype(np.int64), num_words, budget, keys, offsets,
                         rows, out)
    bits = np.unpackbits(out, axis=-1, count=seq_len).astype(bool)
    for e in range(examples):
      for r in range(num_masks):
        if rows[e, r] < 0:
          assert not bits[e, np.setdiff1d(np.arange(num_masks), rows[e])].any()
          break
        m, count = rows[e, r], int(num_words[e])
        order = word_walk.walk_order(keys[offsets[e] + m * count:][:count], count)
        priority = np.argsort(order)  # word -> its step in the walk
        expected = reference_mask(is_cont[input_ids[e]].tolist(), int(lengths[e]),
                                  int(budget[e]), priority)
        assert set(np.flatnonzero(bits[e, m]).tolist()) == expected
        checked += 1
  assert checked > 400


def test_walk_order_is_a_uniform_shuffle():
  """All 24 orders of 4 words equally likely (chi-square, 23 degrees of freedom, 0.1%: 49.7),
  and the first word walked uniform over 7 words."""
  keys = np.random.default_rng(3).integers(0, 2**32, (24_000, 7), dtype=np.uint32)
  orders = [tuple(word_walk.walk_order(k, 4)) for k in keys]
  counts = np.unique(orders, axis=0, return_counts=True)[1]
  assert len(counts) == 24 and ((counts - 1000) ** 2 / 1000).sum() < 49.7
  first = np.bincount([word_walk.walk_order(k, 7)[0] for k in keys[:7000]], minlength=7)
  assert ((first - 1000) ** 2 / 1000).sum() < 22.5


def test_a_documents_fields_depend_on_its_identity_not_its_batch(real):
  """Masks are drawn per document (example_random.py): the same document with the same
  identity gets the same fields in any batch, at any row, beside any other documents."""
  _, _, _, _, spec = real
  input_ids, lengths = real[0]["input_ids"][:16], real[1][:16]
  ids = np.stack([np.zeros(16, int), np.ones(16, int), np.arange(16)], axis=1)
  whole = masking.make_batch(input_ids, lengths, spec, ExampleRandom(9, ids))
  subset = np.array([11, 3, 7])  # other rows, another order, a smaller batch
  part = masking.make_batch(input_ids[subset], lengths[subset], spec,
                            ExampleRandom(9, ids[subset]))
  for name in whole:
    np.testing.assert_array_equal(part[name], whole[name][subset], err_msg=name)
  # Another identity, another draw.
  other = masking.make_batch(input_ids[subset], lengths[subset], spec,
                             ExampleRandom(9, ids[subset] + [0, 1, 0]))
  assert not np.array_equal(other["decoder_pool"], part["decoder_pool"])
  assert not np.array_equal(other["encoder_positions"], part["encoder_positions"])


# ---------------------------------------------------------------- Real text (pydoc)

@pytest.fixture(scope="module")
def real():
  """30 batches x 16 examples of the standard library's docstrings, masked as in training."""
  tok = tokenizer_lib.load_tokenizer("default")
  ids = tokenizer_lib.special_ids(tok)
  is_cont = tokenizer_lib.continuation_table(tok)
  chunks = list(chunking.chunk_documents(sources.pydoc_texts()[:800], tok, max_seq_length=L,
                                         min_chunk_tokens=8, is_continuation=is_cont))
  chunks = chunks[:480]
  lengths = np.array([len(c) + 2 for c in chunks])
  input_ids = np.full((len(chunks), L), ids.pad, np.int32)
  for row, chunk in enumerate(chunks):
    input_ids[row, :len(chunk) + 2] = [ids.cls, *chunk, ids.sep]
  spec = masking.MaskingSpec(L, 0.3, 0.5, 128, ids.mask, ids.vocab_size, is_cont)
  rng = np.random.default_rng(0)
  batches = [masking.make_batch(input_ids[i:i + 16], lengths[i:i + 16], spec, rng)
             for i in range(0, len(chunks), 16)]
  batch = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  return batch, lengths, is_cont, ids, spec


def _encoder_masked(batch):
  masked = np.zeros(batch["input_ids"].shape, bool)
  valid = batch["encoder_targets"] != IGNORE
  rows = np.broadcast_to(np.arange(len(masked))[:, None], valid.shape)
  masked[rows[valid], batch["encoder_positions"][valid]] = True
  return masked


def _words(is_cont_row: np.ndarray, n: int) -> list[list[int]]:
  words = []
  for i in range(1, n - 1):
    if words and is_cont_row[i]:
      words[-1].append(i)
    else:
      words.append([i])
  return words


def test_encoder_masks_whole_words_within_the_exact_budget(real):
  batch, lengths, is_cont, _, _ = real
  masked = _encoder_masked(batch)
  assert masked.sum() >= 10_000
  budget = masking.mask_budget(lengths, 0.3)
  reached = 0
  for row, n in enumerate(lengths):
    words = _words(is_cont[batch["input_ids"][row]], int(n))
    for word in words:  # all or nothing: a masked '##' piece implies its whole word
      assert masked[row, word].all() or not masked[row, word].any()
    count = int(masked[row].sum())
    assert count <= budget[row]
    # With at least k one-token words the walk always reaches k exactly.
    if sum(len(w) == 1 for w in words) >= budget[row]:
      assert count == budget[row]
      reached += 1
  assert reached >= 0.9 * len(lengths)


def test_encoder_never_masks_specials_or_padding(real):
  batch, lengths, _, _, _ = real
  masked = _encoder_masked(batch)
  pos = np.arange(L)
  outside = (pos == 0) | (pos >= lengths[:, None] - 1)
  assert not masked[outside].any()
  np.testing.assert_array_equal(batch["encoder_input_ids"][~masked], batch["input_ids"][~masked])
  positions, targets = batch["encoder_positions"], batch["encoder_targets"]
  valid = targets != IGNORE
  assert (positions[~valid] == 0).all()
  np.testing.assert_array_equal(
      targets[valid], np.take_along_axis(batch["input_ids"], positions, axis=1)[valid])
  for row in range(len(positions)):  # ascending, valid ones first
    p = positions[row][valid[row]]
    assert (np.diff(p) > 0).all() and valid[row][:len(p)].all()


def test_encoder_corruption_is_80_10_10(real):
  batch, _, _, ids, _ = real
  masked = _encoder_masked(batch)
  original, corrupted = batch["input_ids"][masked], batch["encoder_input_ids"][masked]
  to_mask = np.mean(corrupted == ids.mask)
  kept = np.mean(corrupted == original)
  random = np.mean((corrupted != ids.mask) & (corrupted != original))
  assert abs(to_mask - 0.8) < 0.02, to_mask
  assert abs(kept - 0.1) < 0.02, kept
  assert abs(random - 0.1) < 0.02, random
  assert corrupted.max() < ids.vocab_size and corrupted.min() >= 0


def test_decoder_visibility_follows_the_spec(real):
  from retromae_jax.models.decoder_mask import decoder_attention

  batch, lengths, _, _, spec = real
  visible = np.asarray(decoder_attention(batch["decoder_pool"], batch["decoder_choice"],
                                         batch["attention_mask"]))
  real_tok = batch["attention_mask"].astype(bool)
  assert not visible[:, np.arange(L), np.arange(L)].any()  # never itself
  rows_after_0 = real_tok.copy()
  rows_after_0[:, 0] = False
  assert visible[:, :, 0][rows_after_0].all()  # every real row but 0 sees [CLS] (= h)
  assert not visible[~real_tok].any()  # padded query rows see nothing
  assert not visible.transpose(0, 2, 1)[~real_tok].any()  # padding keys are never visible

  pool = np.unpackbits(batch["decoder_pool"], axis=-1, count=L).astype(bool)
  pool_rows = np.minimum(lengths, spec.decoder_pool_size)
  budget = masking.mask_budget(lengths, 0.5)
  sizes = pool.sum(-1)  # [E, P]
  assert (batch["decoder_choice"] < pool_rows[:, None]).all()
  assert not pool[:, :, 0].any() and not pool[np.arange(len(lengths)), :, lengths - 1].any()
  # Only the pool rows that some query row chooses are computed (the others are never read);
  # choices are uniform over the P rows, so about 1 - (1 - 1/P)^n of them are chosen.
  chosen = np.zeros(pool.shape[:2], bool)
  chosen[np.nonzero(real_tok)[0], batch["decoder_choice"][real_tok]] = True
  assert not pool[~chosen].any()
  expected_chosen = 1 - (1 - 1 / pool_rows) ** lengths
  assert abs(np.mean(chosen.sum(1) / pool_rows) - expected_chosen.mean()) < 0.01
  assert (sizes[chosen] <= np.repeat(budget, chosen.sum(1))).all()
  assert np.mean(sizes[chosen] == np.repeat(budget, chosen.sum(1))) > 0.99

  # Expected visible keys over an example's real rows, given its pool: row i sees
  # n - |M_c| - 1 + [i in M_c] keys with c uniform over the pool, which sums over the n rows
  # to n(n - 1) - (n - 1) * mean|M|; with |M| = k exactly: (n - 1)(n - k).
  mean_size = np.array([sizes[e, chosen[e]].mean() for e in range(len(lengths))])
  expected = lengths * (lengths - 1) - (lengths - 1) * mean_size
  observed = visible.sum(axis=(1, 2))
  assert abs(observed.sum() / expected.sum() - 1) < 0.002
  exact = (lengths - 1) * (lengths - budget)
  assert abs(observed.sum() / exact.sum() - 1) < 0.002
  fraction = observed.sum() / (lengths * lengths).sum()
  assert abs(fraction - (1 - 0.5)) < 0.01, fraction


def test_decoder_targets_skip_cls_and_sep(real):
  batch, lengths, _, _, _ = real
  targets = batch["decoder_targets"]
  pos = np.arange(L)
  inside = (pos >= 1) & (pos < lengths[:, None] - 1)
  np.testing.assert_array_equal(targets[inside], batch["input_ids"][inside])
  assert (targets[~inside] == IGNORE).all()


def test_same_rng_same_masks_different_rng_different(real):
  _, _, _, _, spec = real
  batch, lengths = real[0]["input_ids"][:16], real[1][:16]
  a = masking.make_batch(batch, lengths, spec, np.random.default_rng([7, 0, 3]))
  b = masking.make_batch(batch, lengths, spec, np.random.default_rng([7, 0, 3]))
  c = masking.make_batch(batch, lengths, spec, np.random.default_rng([8, 0, 3]))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["decoder_pool"], c["decoder_pool"])
  assert not np.array_equal(a["encoder_positions"], c["encoder_positions"])


def test_special_tokens_inside_the_text_are_never_corrupted_or_predicted():
  tok = tokenizer_lib.load_tokenizer("default")
  ids = tokenizer_lib.special_ids(tok)
  unk = tok.token_to_id("[UNK]")
  is_cont = tokenizer_lib.continuation_table(tok)
  spec = masking.MaskingSpec(32, 0.5, 0.5, 128, ids.mask, ids.vocab_size, is_cont,
                             is_special=tokenizer_lib.special_table(tok))
  rng = np.random.default_rng(0)
  words = np.array([tok.token_to_id(w) for w in ("the", "module", "returns", "a", "list")])
  input_ids = np.full((64, 32), ids.pad, np.int32)
  body = rng.choice(np.append(words, [unk, ids.mask]), (64, 30))
  input_ids[:, 0], input_ids[:, 1:31], input_ids[:, 31] = ids.cls, body, ids.sep
  batch = masking.make_batch(input_ids, np.full(64, 32), spec, rng)
  specials = (input_ids == unk) | (input_ids == ids.mask)
  chosen = np.zeros_like(specials)
  np.put_along_axis(chosen, batch["encoder_positions"], batch["encoder_targets"] != -100, axis=1)
  assert specials.sum() > 500 and chosen.sum() > 500
  assert not (chosen & specials).any()
  assert (batch["encoder_input_ids"][specials] == input_ids[specials]).all()
