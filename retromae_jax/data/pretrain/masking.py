"""RetroMAE's masks (spec sections 1-2) for a whole batch.

Whole-word masking, exactly the references' greedy walk: words are a token plus its following
'##' tokens ([CLS], [SEP] and padding belong to no word); the words are shuffled; with budget
k = max(1, round(n * p)) (n counts [CLS] and [SEP]; round half to even, like Python's `round`)
the walk adds each word that still fits in what is left of the budget, skips those that do not,
and stops once the budget is reached. The walk itself is compiled (word_walk.py); the rest is
NumPy over the batch.

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

from retromae_jax.data.pretrain import packing, word_walk
from retromae_jax.objectives.example_random import ExampleRandom
from retromae_jax.objectives import contract, registry
from retromae_jax.objectives.settings import ObjectiveConfig


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
  pack: bool = False  # data.pack: rows hold several documents (data/pretrain/packing.py)

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


# Each random draw of a batch reads its own stream of every document (example_random.py): the
# encoder mask's, and those the parts declare (objectives/contract.Part.streams).
STREAMS = registry.random_streams()


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
  num_words: np.ndarray = dataclasses.field(init=False)  # [B]
  word_start: np.ndarray = dataclasses.field(init=False)  # [B, W]: each word's first token
  encoder_masked: np.ndarray = dataclasses.field(init=False)

  def __post_init__(self):
    self.word_of_token, self.word_len = word_spans(self.input_ids, self.lengths,
                                                   self.spec.is_continuation)
    self.num_words = np.count_nonzero(self.word_len, axis=1)
    # Words are back to back from position 1.
    self.word_start = 1 + np.cumsum(self.word_len, axis=1) - self.word_len
    self.encoder_masked = self.whole_word_mask(self.spec.encoder_mask_ratio, "encoder_mask")

  def walk(self, stream: str, budget: np.ndarray, rows: np.ndarray, num_rows: int
           ) -> np.ndarray:
    """Whole-word masks with budget[e] tokens each, bit-packed: uint8 [B, num_rows, ceil(L/8)].
    rows [B, R]: the masks to make (-1: none), each from its row of the document's stream
    (min(n, num_rows) rows of one key per word), written at that row."""
    batch, seq_len = self.input_ids.shape
    key_rows = np.minimum(self.lengths, num_rows)
    keys, offsets = self.random.uint32(STREAMS[stream], key_rows * self.num_words)
    out = np.zeros((batch, num_rows, (seq_len + 7) // 8), np.uint8)
    as_int = lambda a: np.ascontiguousarray(a, np.int64)
    return word_walk.walk_masks(as_int(self.word_start), as_int(self.word_len),
                                as_int(self.num_words), as_int(budget), keys, offsets,
                                as_int(rows), out)

  def whole_word_mask(self, ratio: float, stream: str) -> np.ndarray:
    """bool [B, L]: one whole-word mask per example with budget round(n * ratio), its order
    from `stream`; special tokens inside the text spend budget but are never masked."""
    batch, seq_len = self.input_ids.shape
    bits = self.walk(stream, mask_budget(self.lengths, ratio), np.zeros((batch, 1), int), 1)
    masked = np.unpackbits(bits[:, 0], axis=-1, count=seq_len).astype(bool)
    if self.spec.is_special is not None:
      masked &= ~self.spec.is_special[self.input_ids]
    return masked

  def token_bits(self, stream: str) -> np.ndarray:
    """uint64 [B, L]: random bits at each real token (the first lengths[e] values of document
    e's stream), 0 on padding. example_random.below / low_fraction turn them into numbers."""
    return self.random.uint64(STREAMS[stream], self.lengths, self.input_ids.shape[1])

  def mask_pool(self, ratio: float, pool_size: int, choice: np.ndarray, stream: str
                ) -> np.ndarray:
    """The pools of P = min(n, pool_size) whole-word masks with budget round(n * ratio), mask
    m from row m of the document's `stream`, bit-packed along the tokens (bit 1 =
    masked): uint8 [B, pool_size, ceil(L/8)].

    Only the rows that some query row uses (choice [B, L], on the real tokens) are computed: a
    row no query row chooses changes nothing the model sees, and with n query rows choosing
    among P = n masks only 1 - (1 - 1/n)^n ~ 63% of them are chosen. The others stay zero.
    """
    batch, seq_len = self.input_ids.shape
    used = np.zeros((batch, pool_size), bool)
    real = np.arange(seq_len) < self.lengths[:, None]
    used[np.nonzero(real)[0], choice[real]] = True
    num_used = used.sum(axis=1)
    width = max(1, int(num_used.max()))
    used_rows = np.argsort(~used, axis=1, kind="stable")[:, :width]  # the chosen rows first
    rows = np.where(np.arange(width) < num_used[:, None], used_rows, -1)
    return self.walk(stream, mask_budget(self.lengths, ratio), rows, pool_size)


def make_batch(input_ids: np.ndarray, lengths: np.ndarray, spec: MaskingSpec,
               random: ExampleRandom | np.random.Generator,
               segment_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """The batch contract (see retromae_jax/data/pretrain/pipeline.py) from padded ids and true lengths.

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
  layout = packing.Layout(*packing.documents(segment_ids), num_rows=num_rows, seq_len=seq_len)
  doc_ids = packing.take_tokens(input_ids, layout.rows, layout.offsets, layout.lengths,
                                spec.pad_id)
  alone = make_batch(doc_ids, layout.lengths, dataclasses.replace(spec, pack=False),
                     _for_documents(random, len(layout.rows)))
  out = {"input_ids": input_ids, "attention_mask": (segment_ids > 0).astype(np.int32),
         "segment_ids": segment_ids, "positions": packing.positions(segment_ids)}
  segment_of = segment_ids[layout.rows, layout.offsets]
  for part in registry.parts(spec.objective):
    if part.packs is None:
      raise ValueError(f"data.pack: the objective part {part.name!r} does not support packing")
    for name, how in part.packs.items():
      out[name] = packing.pack_field(how, name, alone, layout, segment_of, spec.pad_id)
  return {name: out[name] for name in spec.batch_shapes(num_rows)}  # the declared order
