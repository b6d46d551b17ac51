"""Random numbers per document: each document's masks are a function of its own identity.

A batch's masks used to come from one generator per batch, so a document's masks depended on
the batch around it (its row, its companions in a packed row, how many shards split the batch).
Here every document draws from its own streams, keyed by an identity of three integers:
  - prepared corpora (data/pretrain/prepared.py): (corpus, epoch, record key): the paper's "masks seeded
    by (seed, epoch, example index)"; the same chunk in the same epoch gets the same masks
    whatever the batch size, the number of shards or processes, or the packing;
  - raw text (data/pretrain/pipeline.py): (shard, step, document number in the shard's batch).

The generator is numpy's Philox (a counter-based generator: Salmon et al., "Parallel random
numbers: as easy as 1, 2, 3", SC 2011), whose key and counter can be set freely, structured
values included: document (a, b, c) reads stream s with key (seed, a) and counter (0, s, b, c),
so every (document, stream) pair has its own block of 2^64 draws. One bit generator is re-keyed
per (document, stream) through its state (~2.5 us); building one generator per document costs
30-70 us, more than all the masks of a short document. Each stream's values are laid out by the
document's own sizes (its words, its tokens, its pool rows), never by the batch's, so the
vectorised masking code may group documents as it likes.
"""

import numpy as np

_MAX_ID = 2**64


class ExampleRandom:
  """Streams of random uint64 for the documents of one batch (see the module docstring).

  seed: the run's seed (data: config.seed); ids [E, 3]: one identity per document, in the
  order the batch lists them (rows, then a packed row's segments from its start). `numbered`
  makes identities (a, b, 0..count-1) once the count is known.
  """

  def __init__(self, seed: int, ids: np.ndarray | None = None,
               prefix: tuple[int, int] | None = None,
               bit_generator: np.random.Philox | None = None):
    if (ids is None) == (prefix is None):
      raise ValueError("ExampleRandom: expected ids or prefix, not both")
    self.seed = int(seed)
    self.prefix = prefix
    self.ids = None if ids is None else self._checked(ids)
    # One bit generator re-keyed for every (document, stream); building one costs ~30 us. Not
    # shared between threads: tf.data masks batches in parallel.
    self._bit_generator = np.random.Philox(0) if bit_generator is None else bit_generator
    self._state = self._bit_generator.state  # re-used: a new dict per re-key costs 2x

  @classmethod
  def numbered(cls, seed: int, a: int, b: int) -> "ExampleRandom":
    """Identities (a, b, d) for the batch's documents d = 0, 1, ... (raw text: shard, step)."""
    return cls(seed, prefix=(a, b))

  @classmethod
  def from_generator(cls, rng: np.random.Generator, count: int) -> "ExampleRandom":
    """Identities drawn from `rng` (tests and benchmarks that hold one generator)."""
    return cls(int(rng.integers(2**63)), rng.integers(0, 2**63, (count, 3)))

  @staticmethod
  def _checked(ids) -> np.ndarray:
    ids = np.asarray(ids)
    out_of_range = ids.size and (ids.min() < 0 or ids.max() >= _MAX_ID)
    if ids.ndim != 2 or ids.shape[1] != 3 or out_of_range:
      raise ValueError(f"ExampleRandom: expected ids [documents, 3] of integers in [0, 2^64), "
                       f"got shape {ids.shape}")
    return ids.astype(np.uint64)

  def for_documents(self, count: int) -> "ExampleRandom":
    """This batch's streams for exactly `count` documents."""
    if self.ids is None:
      a, b = self.prefix
      ids = np.stack([np.full(count, a), np.full(count, b), np.arange(count)], axis=1)
      return ExampleRandom(self.seed, ids, bit_generator=self._bit_generator)
    if len(self.ids) != count:
      raise ValueError(f"ExampleRandom: {len(self.ids)} document identities for {count} "
                       "documents")
    return self

  def _rekey(self, document: int, stream: int) -> np.random.Philox:
    a, b, c = self.ids[document]
    state = self._state
    state["state"]["key"][:] = (self.seed, a)
    state["state"]["counter"][:] = (0, stream, b, c)
    state["buffer_pos"] = 4  # no buffered values of the previous key
    state["has_uint32"] = 0
    self._bit_generator.state = state
    return self._bit_generator

  def uint64(self, stream: int, counts: np.ndarray, width: int) -> np.ndarray:
    """uint64 [E, width]: row e holds the first counts[e] values of document e's stream, zeros
    after (counts[e] <= width)."""
    out = np.zeros((len(self.ids), width), np.uint64)
    for document, count in enumerate(np.asarray(counts).tolist()):
      out[document, :count] = self._rekey(document, stream).random_raw(count)
    return out

  def uint32(self, stream: int, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first counts[e] uint32 values of every document e's stream, end to end: (values
    [sum(counts)], offsets [E]: where document e's values start)."""
    counts = np.asarray(counts, np.int64)
    parts = [self._rekey(document, stream).random_raw(-(-count // 2)).view(np.uint32)[:count]
             for document, count in enumerate(counts.tolist())]
    offsets = np.cumsum(counts) - counts
    return (np.concatenate(parts) if parts else np.zeros(0, np.uint32)), offsets


def below(values: np.ndarray, bound) -> np.ndarray:
  """Integers in [0, bound) from uint64 values: the top 32 bits times bound, shifted down
  (Lemire's multiply-shift; the bias, at most bound / 2^32, is below 1e-5 for any vocabulary)."""
  return (((values >> np.uint64(32)) * np.asarray(bound, np.uint64)) >> np.uint64(32)).astype(
      np.int64)


def low_fraction(values: np.ndarray) -> np.ndarray:
  """Uniform floats in [0, 1) from the low 32 bits (independent of `below`'s high bits)."""
  return (values & np.uint64(0xFFFFFFFF)).astype(np.float64) * 2.0**-32
