"""RetroMAE's masks (spec sections 1-2), vectorised in NumPy over a whole batch.

Whole-word masking, exactly the references' greedy walk: words are a token plus its following
'##' tokens ([CLS], [SEP] and padding belong to no word); the words are shuffled; with budget
k = max(1, round(n * p)) (n counts [CLS] and [SEP]; round half to even, like Python's `round`)
the walk adds each word that still fits in what is left of the budget, skips those that do not,
and stops once the budget is reached.

Vectorised form of the walk (exactly equivalent, see `greedy_walk`): in shuffled order, every
word of the longest prefix whose total length fits is taken (one binary search per row in a
running sum over all rows); after it, the remainder is shorter than the word that overflowed, and
the rows still walking go on a band of 16 words at a time, where each round takes the longest
run of the words that fit the remainder (a word too long now never fits later): a few rounds,
one per word length crossed.

The encoder draws one mask per example (every objective does, first); the parts of the
objective (retromae_jax/objectives/registry.py) then build their fields from it, in order:
encoder.masking=corrupt corrupts it 80/10/10 ([MASK] / random id / kept), drop removes the
masked tokens; the enhanced decoder draws a pool of P = min(n, decoder_pool_size) independent
masks per example, sent bit-packed, and for each query row the pool row it uses
(retromae_jax/models/decoder_mask.py expands them on the device); the basic and
cross-attention decoders draw one more whole-word mask at the decoder ratio; the others none.

Every draw reads the document's own random stream (example_random.py; one stream per kind of
draw, STREAMS), laid out by the document's own sizes: a document's fields are a function of its
tokens and its identity, whatever batch, row or group of documents it is masked in.
"""

import dataclasses

import numpy as np

from retromae_jax.data import packing
from retromae_jax.data.example_random import ExampleRandom
from retromae_jax.objectives import contract, registry
from retromae_jax.objectives.config import ObjectiveConfig

_NEVER_FITS = np.iinfo(np.int32).max  # a word length no budget reaches
_WALK_BAND = 16  # words after the prefix walked at a time
_GROUP_ELEMENTS = 1 << 17  # (example, mask, word) cells of the decoder pool computed at once


@dataclasses.dataclass(frozen=True, eq=False)
class MaskingSpec:
  max_seq_length: int
  encoder_mask_ratio: float
  decoder_mask_ratio: float
  decoder_pool_size: int
  mask_id: int
  vocab_size: int
  is_continuation: np.ndarray  # bool[vocab_size]: the token continues a word ('##')
  # bool[vocab_size]: special tokens ([UNK], a literal [MASK], ...) met inside the text. As in
  # the references' collator, a chosen word spends its budget but such tokens are never corrupted
  # nor predicted. None: no such tokens.
  is_special: np.ndarray | None = None
  # Which fields the batch carries (retromae_jax/objectives/registry.py).
  objective: ObjectiveConfig = ObjectiveConfig()
  pad_id: int = 0
  pack: bool = False  # data.pack: rows hold several documents (data/packing.py)

  @property
  def encoder_capacity(self) -> int:
    """Width of encoder_positions: the budget for n = L, which no example can exceed."""
    return encoder_capacity(self.max_seq_length, self.encoder_mask_ratio)

  def dims(self, batch_size: int) -> contract.Dims:
    return contract.Dims(batch_size, self.max_seq_length, self.encoder_capacity,
                         self.decoder_pool_size, self.pack)

  @property
  def encoder_width(self) -> int:
    """Width of the encoder's input: L, or under drop only what a full example leaves visible."""
    return registry.encoder_width(self.objective, self.dims(1))

  def batch_shapes(self, batch_size: int) -> contract.Shapes:
    """name -> (shape, dtype) of every array make_batch returns for `batch_size` rows."""
    return registry.batch_shapes(self.objective, self.dims(batch_size))


def encoder_capacity(max_seq_length: int, ratio: float) -> int:
  """Encoder-masked slots per example: the budget of a full-length example, never exceeded."""
  return int(mask_budget(np.array([max_seq_length]), ratio)[0])


def mask_budget(lengths: np.ndarray, ratio: float) -> np.ndarray:
  """k = max(1, round(n * ratio)), round half to even on the same float64 product as Python."""
  return np.maximum(1, np.rint(np.asarray(lengths, np.float64) * ratio)).astype(np.int64)


def word_spans(input_ids: np.ndarray, lengths: np.ndarray,
               is_continuation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Groups each row's tokens into words.

  Returns word_of_token [B, L] (the word index of each token, -1 for [CLS], [SEP] and padding)
  and word_len [B, W] (tokens per word, 0 past a row's last word; W = most words in a row).
  The first text token opens a word even if it is a '##' piece (a chunk cut inside a word).
  """
  batch, seq_len = input_ids.shape
  pos = np.arange(seq_len)
  inside = (pos >= 1) & (pos < np.asarray(lengths)[:, None] - 1)
  starts = inside & (~is_continuation[input_ids] | (pos == 1))
  word_of_token = np.where(inside, np.cumsum(starts, axis=1) - 1, -1)
  num_words = max(1, int(starts.sum(axis=1).max(initial=0)))
  flat = (np.arange(batch)[:, None] * num_words + word_of_token)[inside]
  word_len = np.bincount(flat, minlength=batch * num_words).reshape(batch, num_words)
  return word_of_token, word_len


def greedy_walk(sorted_len: np.ndarray, budget: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The references' walk over words in shuffled order, on all rows at once.

  sorted_len [R, W]: word lengths in walking order (0: no word there, never counts);
  budget [R]: tokens to mask per row.
  Returns (prefix [R], extra_rows, extra_cols): row r takes its first prefix[r] words, and the
  word at (extra_rows[i], extra_cols[i]) for every i.
  """
  sorted_len = np.asarray(sorted_len)
  num_rows, num_words = sorted_len.shape
  budget = np.asarray(budget, np.int64)
  # One running sum over all rows end to end: non-decreasing (lengths >= 0), so each row's
  # prefix (its words while their sum fits the budget) is one binary search, with no pass
  # comparing every word to the budget.
  fits_32 = int(sorted_len.max(initial=0)) * sorted_len.size < 1 << 31
  running = np.cumsum(sorted_len, axis=None, dtype=np.int32 if fits_32 else np.int64)
  row_ends = np.arange(1, num_rows + 1) * num_words - 1
  before = np.concatenate([[0], running[row_ends[:-1]]])  # the sum of the rows before each
  prefix = np.searchsorted(running, before + budget, side="right") - (row_ends + 1 - num_words)
  prefix = np.minimum(prefix, num_words)
  used = np.where(prefix > 0, running[row_ends - num_words + np.maximum(prefix, 1)] - before, 0)
  remaining = budget - used
  last = prefix - 1  # the last word walked past; the next one overflowed the budget
  rows = np.flatnonzero((remaining > 0) & (prefix < num_words))
  extra_rows, extra_cols = _walk_after(sorted_len, rows, last[rows], remaining[rows])
  return prefix, extra_rows, extra_cols


def _walk_after(sorted_len: np.ndarray, rows: np.ndarray, last: np.ndarray, left: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
  """The walk after the prefix, for the rows with budget left: (rows, cols) of the words taken.

  last [n]: each row's last word walked past, left [n] > 0: its budget left. The rows walk
  _WALK_BAND words at a time (what is left is nearly always spent within them); the few rows
  with budget left after a band walk the next one.
  """
  num_words = sorted_len.shape[1]
  found_rows, found_cols = [np.zeros(0, np.intp)], [np.zeros(0, np.intp)]
  while rows.size:
    cols = last[:, None] + np.arange(1, _WALK_BAND + 1)
    lens = sorted_len[rows[:, None], np.minimum(cols, num_words - 1)].astype(np.int32)
    lens[(cols >= num_words) | (lens == 0)] = _NEVER_FITS  # past the end, or no word there
    taken, left = _walk_band(lens, left)
    taker, col = np.nonzero(taken)
    found_rows.append(rows[taker])
    found_cols.append(cols[taker, col])
    more = (left > 0) & (cols[:, -1] < num_words - 1)
    rows, last, left = rows[more], cols[more, -1], left[more]
  return np.concatenate(found_rows), np.concatenate(found_cols)


def _walk_band(lens: np.ndarray, left: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The walk over a band of words: (taken bool [n, K], budget left [n]).

  lens [n, K] in walking order (_NEVER_FITS: no word). A word longer than what is left never
  fits later (it only shrinks), so among the words that fit now the walk takes the longest
  prefix that fits together; the first that does not lowers the bar for the rest. Each round is
  one such prefix: a few rounds (one per distinct word length crossed), not one per word.
  """
  index = np.arange(lens.shape[1])
  rows = np.arange(len(lens))
  taken = np.zeros(lens.shape, bool)
  walking = left > 0
  while walking.any():
    eligible = (lens <= left[:, None]) & walking[:, None]
    cumulative = np.cumsum(np.where(eligible, lens, 0), axis=1)
    take = eligible & (cumulative <= left[:, None])
    taken |= take
    over = eligible & ~take
    has_over = over.any(axis=1)
    first_over = over.argmax(axis=1)
    # No word over: every one that fits was taken, and the band is done.
    left = left - np.where(has_over, cumulative[rows, first_over] - lens[rows, first_over],
                           cumulative[:, -1])
    lens[index <= first_over[:, None]] = _NEVER_FITS  # walked past
    walking = has_over & (left > 0)
  return taken, left


def mask_rows(num_masks: int) -> int:
  """Masks computed for num_masks: a multiple of 8 (the gather in whole_word_masks moves 8 masks
  per uint64); the random_keys of whole_word_masks have this many rows."""
  return -(-num_masks // 8) * 8


def whole_word_masks(word_of_token: np.ndarray, word_len: np.ndarray, budget: np.ndarray,
                     num_masks: int, *, random_keys: np.ndarray | None = None,
                     priority: np.ndarray | None = None) -> np.ndarray:
  """num_masks independent whole-word masks per example, token-major: bool [E, L, num_masks].

  word_of_token [E, L], word_len [E, W]: from word_spans; budget [E]: tokens per mask.
  Mask m of example e walks its words by increasing rank, ties by the word's index: the rank
  is the top 24 bits of random_keys[e, m, w] (uint32 [E, mask_rows(num_masks), W], used up:
  overwritten; uniformly random:
  a uniformly random order), or (tests) priority[e, m, w] (integers < 2^24, e.g. each order's
  inverse permutation). Two random ranks tie with probability 2^-24 per pair of words (about
  3e-4 per mask at 100 words), and the order does not depend on W: a document's masks are the
  same whatever the group of documents it is masked with.
  """
  num_examples, num_words = word_len.shape
  seq_len = word_of_token.shape[1]
  num_rows = mask_rows(num_masks)
  # Sort keys: the rank in the high bits, the word's index in the low bits, so one np.sort
  # yields the walking order (np.argsort is ~5x slower). Up to 256 words the keys are 32-bit
  # (sorting 2.5x faster than 64-bit); longer rows use 64-bit keys with the same 24-bit rank.
  index_bits = 8 if num_words <= 256 else 32
  key_type = np.uint32 if index_bits == 8 else np.uint64
  shape = (num_examples, num_rows, num_words)
  if priority is None:
    ranked = np.asarray(random_keys, np.uint32)
    if ranked.shape != shape:
      raise ValueError(f"random_keys: shape {ranked.shape}, expected {shape}")
    if key_type is np.uint32:
      keys = ranked
      keys &= np.uint32(0xFFFFFF00)  # in place (the caller's keys are used up): the rank stays
    else:
      keys = (ranked >> np.uint32(8)).astype(np.uint64) << np.uint64(index_bits)
  else:
    keys = np.zeros(shape, key_type)
    keys[:, :num_masks] = priority
    keys <<= key_type(index_bits)
  keys |= np.arange(num_words, dtype=key_type)
  sorted_keys = np.sort(keys, axis=-1)
  index_mask = key_type((1 << index_bits) - 1)
  sorted_words = sorted_keys & index_mask  # flat indices into word_len
  sorted_words += (np.arange(num_examples, dtype=key_type) * key_type(num_words))[:, None, None]
  sorted_len = word_len.astype(np.int16).ravel().take(sorted_words).reshape(-1, num_words)
  sorted_keys = sorted_keys.reshape(-1, num_words)
  prefix, extra_rows, extra_cols = greedy_walk(sorted_len, np.repeat(budget, num_rows))

  # Taken words: the prefix is every key up to the prefix's last, plus the few extra words.
  threshold = sorted_keys[np.arange(sorted_keys.shape[0]), np.maximum(prefix - 1, 0)]
  # Compared in the keys' layout, then made word-major (masks contiguous): faster than comparing
  # the transposed keys.
  taken = keys <= threshold.reshape(num_examples, num_rows, 1)
  taken = np.ascontiguousarray(taken.transpose(0, 2, 1))
  empty = np.flatnonzero(prefix == 0)  # the first word overflowed: no prefix at all
  taken[empty // num_rows, :, empty % num_rows] = False
  extra_words = sorted_keys[extra_rows, extra_cols] & index_mask
  taken[extra_rows // num_rows, extra_words.astype(np.intp), extra_rows % num_rows] = True

  # Token j copies the row of its word: num_rows / 8 uint64 per token, not num_rows bools.
  rows_u64 = taken.view(np.uint64)
  masks = rows_u64[np.arange(num_examples)[:, None], np.maximum(word_of_token, 0)]
  masks *= (word_of_token >= 0)[:, :, None]
  return masks.view(bool).reshape(num_examples, seq_len, num_rows)[:, :, :num_masks]


def pack_token_bits(masks: np.ndarray) -> np.ndarray:
  """np.packbits(masks.transpose(0, 2, 1), axis=-1) for token-major masks [E, L, G].

  Returns uint8 [E, G, ceil(L/8)]. When G % 8 == 0, the 8 tokens of one output byte are
  combined with shifts on uint64 lanes (8 masks per lane, no carries): ~10x faster.
  """
  num_examples, seq_len, num_masks = masks.shape
  if num_masks % 8 or not masks.flags.c_contiguous:
    return np.packbits(masks.transpose(0, 2, 1), axis=-1)
  pad = -seq_len % 8
  if pad:
    masks = np.concatenate([masks, np.zeros((num_examples, pad, num_masks), bool)], axis=1)
  lanes = masks.view(np.uint64).reshape(num_examples, -1, 8, num_masks // 8)
  packed = np.zeros((num_examples, lanes.shape[1], num_masks // 8), np.uint64)
  for bit in range(8):  # token 8b + bit -> bit (7 - bit) of byte b: np.packbits' big-endian order
    packed |= lanes[:, :, bit] << np.uint64(7 - bit)
  return np.ascontiguousarray(packed.view(np.uint8).transpose(0, 2, 1))


# Each random draw of a batch reads its own stream of every document (example_random.py).
STREAMS = {"encoder_mask": 1, "corrupt": 2, "decoder_pool": 3, "decoder_choice": 4,
           "decoder_mask": 5}


@dataclasses.dataclass(eq=False)
class Draw:
  """One batch being drawn: what each part's builder reads (objectives/contract.Part.build).

  input_ids int32 [B, L] and lengths [B] (padded chunks, one document per row), their words
  (word_spans), the spec, the documents' random streams (one identity per row), and the
  encoder's whole-word mask, drawn first for every objective. Every draw reads a named stream
  (STREAMS) of each document, laid out by the document's own sizes: a document's fields do not
  depend on the other rows.
  """
  input_ids: np.ndarray
  lengths: np.ndarray
  spec: MaskingSpec
  random: ExampleRandom
  word_of_token: np.ndarray = dataclasses.field(init=False)
  word_len: np.ndarray = dataclasses.field(init=False)
  num_words: np.ndarray = dataclasses.field(init=False)
  encoder_masked: np.ndarray = dataclasses.field(init=False)

  def __post_init__(self):
    self.word_of_token, self.word_len = word_spans(self.input_ids, self.lengths,
                                                   self.spec.is_continuation)
    self.num_words = np.count_nonzero(self.word_len, axis=1)
    self.encoder_masked = self.whole_word_mask(self.spec.encoder_mask_ratio, "encoder_mask")

  def whole_word_mask(self, ratio: float, stream: str) -> np.ndarray:
    """bool [B, L]: one whole-word mask per example with budget round(n * ratio), its order
    from `stream`; special tokens inside the text spend budget but are never masked."""
    batch, num_words = self.word_len.shape
    keys = self.random.uint32_blocks(STREAMS[stream], np.arange(batch), np.ones(batch, int),
                                     self.num_words, (mask_rows(1), num_words))
    budget = mask_budget(self.lengths, ratio)
    masked = whole_word_masks(self.word_of_token, self.word_len, budget, 1,
                              random_keys=keys)[:, :, 0]
    if self.spec.is_special is not None:
      masked &= ~self.spec.is_special[self.input_ids]
    return masked

  def token_bits(self, stream: str) -> np.ndarray:
    """uint64 [B, L]: random bits at each real token (the first lengths[e] values of document
    e's stream), 0 on padding. example_random.below / low_fraction turn them into numbers."""
    return self.random.uint64(STREAMS[stream], self.lengths, self.input_ids.shape[1])

  def mask_pool(self, ratio: float, pool_size: int, choice: np.ndarray) -> np.ndarray:
    """The pools of P = min(n, pool_size) whole-word masks with budget round(n * ratio), each
    mask from its row of the document's "decoder_pool" stream, bit-packed along the tokens (bit
    1 = masked): uint8 [B, pool_size, ceil(L/8)]. Only the rows that some query row uses
    (choice [B, L], on the real tokens) are computed; the others stay zero (never read)."""
    return mask_pool(self.word_of_token, self.word_len, self.lengths, ratio, pool_size,
                     self.random, choice)


def make_batch(input_ids: np.ndarray, lengths: np.ndarray, spec: MaskingSpec,
               random: ExampleRandom | np.random.Generator,
               segment_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """The batch contract (see retromae_jax/data/pipeline.py) from padded ids and true lengths.

  random: the documents' random streams (example_random.ExampleRandom: one identity per
  document, rows first, then a packed row's segments in order), or a np.random.Generator to
  draw their identities from (tests, benchmarks).
  Draws the encoder's mask, then each part's fields (objectives/registry.parts: encoder,
  decoder, options), each from its own stream of every document.
  With spec.pack, rows are packed (segment_ids [B, L]; without it, one document per row): each
  document is masked alone, exactly as an unpacked row, and its fields are put back at its place.
  """
  input_ids = np.asarray(input_ids, np.int32)
  lengths = np.asarray(lengths, np.int64)
  real = np.arange(input_ids.shape[1]) < lengths[:, None]
  if spec.pack:
    if segment_ids is None:
      segment_ids = real.astype(np.int32)
    return _packed_batch(input_ids, np.asarray(segment_ids, np.int32), spec, random)
  draw = Draw(input_ids, lengths, spec, _for_documents(random, len(input_ids)))
  out = {"input_ids": input_ids, "attention_mask": real.astype(np.int32)}
  for part in registry.parts(spec.objective):
    out.update(part.build(draw))
  return out


def _for_documents(random: ExampleRandom | np.random.Generator, count: int) -> ExampleRandom:
  if isinstance(random, np.random.Generator):
    return ExampleRandom.from_generator(random, count)
  return random.for_documents(count)


def _packed_batch(input_ids, segment_ids, spec: MaskingSpec, random) -> dict[str, np.ndarray]:
  """make_batch of packed rows: the documents' own batch (one per row), placed back."""
  num_rows, seq_len = input_ids.shape
  rows, offsets, doc_lengths = packing.documents(segment_ids)
  doc_ids = packing.take_tokens(input_ids, rows, offsets, doc_lengths, spec.pad_id)
  alone = make_batch(doc_ids, doc_lengths, dataclasses.replace(spec, pack=False),
                     _for_documents(random, len(rows)))
  out = {"input_ids": input_ids, "attention_mask": (segment_ids > 0).astype(np.int32),
         "segment_ids": segment_ids, "positions": packing.positions(segment_ids)}
  fills = {contract.PACK_IDS: spec.pad_id, contract.PACK_LABELS: contract.IGNORE,
           contract.PACK_ZEROS: 0}
  for part in registry.parts(spec.objective):
    if part.packs is None:
      raise ValueError(f"data.pack: the objective part {part.name!r} does not support packing")
    for name, kind in part.packs.items():
      if kind in fills:
        field = np.full((num_rows, seq_len), fills[kind], alone[name].dtype)
        out[name] = packing.place_tokens(field, alone[name], rows, offsets, doc_lengths)
      elif kind == contract.PACK_POOL:
        out[name] = packing.place_pool(alone[name], rows, offsets, num_rows)
    if contract.PACK_SLOTS in part.packs.values():
      out["encoder_positions"], out["encoder_targets"] = packing.place_positions(
          alone["encoder_positions"], alone["encoder_targets"], rows, offsets, num_rows)
  return {name: out[name] for name in spec.batch_shapes(num_rows)}  # the declared order


def mask_pool(word_of_token: np.ndarray, word_len: np.ndarray, lengths: np.ndarray, ratio: float,
              pool_size: int, random: ExampleRandom, choice: np.ndarray) -> np.ndarray:
  """The enhanced decoder's pools: see Draw.mask_pool.

  A row of the pool that no query row chooses changes nothing the model sees, and with n query
  rows choosing among P = n masks only 1 - (1 - 1/n)^n ~ 63% of them are chosen: the others are
  not computed. The chosen ones are exactly what the whole pool would hold.
  """
  batch, seq_len = word_of_token.shape
  pool_rows = np.minimum(lengths, pool_size)
  budget = mask_budget(lengths, ratio)
  packed = np.zeros((batch, pool_size, (seq_len + 7) // 8), np.uint8)
  used = np.zeros((batch, pool_size), bool)
  real = np.arange(seq_len) < lengths[:, None]
  used[np.nonzero(real)[0], choice[real]] = True
  num_used = used.sum(axis=1)
  used_rows = np.argsort(~used, axis=1, kind="stable")  # each document's chosen rows first
  # Examples shortest first, a few at a time, each group with only the masks (its chosen rows,
  # rounded up to a multiple of 8, the fast path of the gather and the bit packing) and words
  # its longest example needs: packed documents are of all lengths, and a 20-token one needs at
  # most 20 masks of 18 words, not the batch's 128 of 126. Groups of up to _GROUP_ELEMENTS
  # (example, mask, word) cells: arrays of ~1 MB are reused by malloc from one group to the next,
  # while whole-batch arrays are returned to the OS and page-faulted back in on every batch
  # (measured: 2x slower at batch 16, L=128).
  order = np.argsort(lengths, kind="stable")
  num_words = np.count_nonzero(word_len, axis=1)
  masks_needed = np.maximum.accumulate(np.minimum(mask_rows(1) * -(-num_used[order] // 8),
                                                  mask_rows(pool_size)))
  words_needed = np.maximum.accumulate(np.maximum(1, num_words[order]))
  cells = masks_needed * words_needed  # of a group that ends with this example (non-decreasing)
  start = 0
  while start < batch:
    fits = np.arange(1, batch - start + 1) * cells[start:] <= _GROUP_ELEMENTS
    end = start + max(1, int(np.count_nonzero(fits)))
    rows = order[start:end]
    num_masks, words = int(masks_needed[end - 1]), int(words_needed[end - 1])
    # The chosen rows of each document's pool (row m's keys are the same whichever rows are
    # chosen).
    pick = used_rows[rows, :min(num_masks, pool_size)]
    keys = random.uint32_blocks(STREAMS["decoder_pool"], rows, pool_rows[rows], num_words[rows],
                                (num_masks, words),
                                picks=[p[:k] for p, k in zip(pick, num_used[rows].tolist())])
    pool = whole_word_masks(word_of_token[rows], word_len[rows, :words], budget[rows],
                            num_masks, random_keys=keys)
    bits = pack_token_bits(pool)  # [group, num_masks, ceil(L/8)]
    chosen = np.arange(pick.shape[1]) < num_used[rows, None]
    where = np.nonzero(chosen)
    packed[rows[where[0]], pick[where]] = bits[where]
    start = end
  return packed
