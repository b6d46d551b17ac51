"""The host-side pretraining input pipeline: documents -> chunks -> shuffled batches -> masks.

  documents (sources.py, this process's share)
  -> tokenise and chunk in a Python generator (chunking.py; HF tokenizers, batch-encoded)
  -> data.pack (default): chunks packed into rows, each its own [CLS] ... [SEP] segment
     (packing.py; a window of PACK_WINDOW chunks at a time)
  -> shuffle(settings.shuffle_buffer per shard, seed=settings.seed + shard), reshuffled every
     epoch -> repeat
  -> batch(settings.batch_size // num_shards, drop_remainder)
  -> masks (masking.py, vectorised NumPy on the whole batch), seeded by
     (settings.seed, shard, batch index): the same seed gives the same batches whatever tf.data's
     parallelism
  -> the process's shards side by side (data_shards: a fixed settings.num_shards makes the
     global batch independent of the process count) -> prefetch

THE BATCH CONTRACT (fixed shapes; L = data.max_seq_length, B = per-host batch,
C = max(1, round(L * encoder_mask_ratio)), P = data.decoder_pool_size): every batch carries
  input_ids          int32 [B, L]   [CLS] chunk [SEP], then the pad id (packed: several of them)
  attention_mask     int32 [B, L]   1 on real tokens
and, with data.pack, (O(L) per row: the device builds every mask from them)
  segment_ids        int32 [B, L]   k on the row's k-th chunk, 0 on padding
  positions          int32 [B, L]   position inside the chunk (0 at its [CLS]; 0 on padding)
then the fields of the objective's parts (config objective.* / decoder.* / encoder.*), each
declared with its shape and meaning in its file under retromae_jax/objectives/ and put
together by objectives/registry.batch_shapes. The default objective's batch (the spec's):
  encoder_input_ids  int32 [B, L]   input_ids after the 80/10/10 corruption of the masked words
  encoder_positions  int32 [B, C]   encoder-masked positions, ascending, padded with 0
  encoder_targets    int32 [B, C]   their ORIGINAL ids, padded with -100     (objectives/corrupt/host.py)
  decoder_pool       uint8 [B, P, ceil(L/8)]  np.packbits of the pool masks (bit 1 = masked)
  decoder_choice     int32 [B, L]   the pool row each query row uses (0 on padding rows)
  decoder_targets    int32 [B, L]   original ids on real tokens except [CLS] and [SEP], else -100
                                                                            (objectives/enhanced/host.py)
retromae_jax.models.decoder_mask.decoder_attention(pool, choice, attention_mask, segment_ids)
expands the decoder's dense [B, L, L] visibility on the device. Packed, each chunk's fields are
those of the chunk masked alone, put at its place in the row (encoder_positions shifted by its
offset; the pool's row p holds every chunk's p-th mask on its own tokens).
"""

import dataclasses
import threading

import numpy as np
import tensorflow as tf
import tokenizers
from absl import logging

from retromae_jax.data import sources
from retromae_jax.data import numpy_batches
from retromae_jax.data import source_spec
from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.data.pretrain.settings import PretrainInput
from retromae_jax.data.pretrain import batch_contract, chunking, masking, packing, prepared
from retromae_jax.objectives import example_random

_DOCS_PER_CALL = 64  # documents per tokenizer call: big batches for the Rust side
# Chunks packed together (data.pack): the window's last row is the only one not full, so a
# bigger window wastes fewer slots; its rows are then shuffled like chunks.
PACK_WINDOW = 1024


@dataclasses.dataclass
class PipelineStats:
  """What the pipeline dropped and produced so far (cumulative over epochs); logged per epoch."""
  skips: sources.SkipCounter = dataclasses.field(default_factory=sources.SkipCounter)
  chunks: chunking.ChunkStats = dataclasses.field(default_factory=chunking.ChunkStats)
  epochs: int = 0
  _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

  def add_chunks(self, more: chunking.ChunkStats) -> None:
    with self._lock:
      for field in dataclasses.fields(more):
        name = field.name
        setattr(self.chunks, name, getattr(self.chunks, name) + getattr(more, name))


def chunk_dataset(settings: PretrainInput, tokenizer: tokenizers.Tokenizer, *,
                  process_index: int = 0, process_count: int = 1,
                  stats: PipelineStats | None = None) -> tf.data.Dataset:
  """One epoch of (input_ids int32 [L] = [CLS] chunk [SEP] pad..., length int32), in order."""
  stats = stats if stats is not None else PipelineStats()
  seq_len = settings.max_seq_length
  ids = tokenizer_lib.special_ids(tokenizer)
  is_continuation = tokenizer_lib.continuation_table(tokenizer)
  docs = sources.documents(settings.source, settings.data_dir, process_index,
                           process_count, skips=stats.skips)
  chunks_at_epoch_start = [0]

  def chunk_numpy(texts):
    """A batch of documents -> their chunks, padded: ([N, L] ids, [N] lengths)."""
    counts = chunking.ChunkStats()
    chunks = list(chunking.chunk_documents(
        (t.decode("utf-8") for t in texts), tokenizer, max_seq_length=seq_len,
        min_chunk_tokens=settings.min_chunk_tokens, is_continuation=is_continuation,
        stats=counts))
    stats.add_chunks(counts)
    lengths = np.array([len(c) for c in chunks], np.int32) + 2
    input_ids = np.full((len(chunks), seq_len), ids.pad, np.int32)
    input_ids[:, 0] = ids.cls
    for row, chunk in enumerate(chunks):
      input_ids[row, 1:len(chunk) + 1] = chunk
    input_ids[np.arange(len(chunks)), lengths - 1] = ids.sep
    return input_ids, lengths

  def end_epoch():
    """Runs after the epoch's last document: logs the counts, returns no chunk."""
    stats.epochs += 1
    produced = stats.chunks.chunks - chunks_at_epoch_start[0]
    chunks_at_epoch_start[0] = stats.chunks.chunks
    logging.info("data: shard %d/%d finished epoch %d: %d chunks; totals %s; skipped lines %s",
                 process_index, process_count, stats.epochs, produced, stats.chunks, stats.skips.as_dict())
    if not produced:
      raise ValueError(f"data.source {settings.source!r}: no chunk of at least "
                       f"{settings.min_chunk_tokens} tokens in shard {process_index} of "
                       f"{process_count} (too few documents for data.num_shards?)")
    return np.zeros((0, seq_len), np.int32), np.zeros((0,), np.int32)

  def as_blocks(fn, *args):
    input_ids, lengths = tf.numpy_function(fn, list(args), [tf.int32, tf.int32])
    input_ids.set_shape([None, seq_len])
    lengths.set_shape([None])
    return input_ids, lengths

  # Documents are independent (a chunk never spans two), so batches of them can be tokenised
  # in parallel; deterministic=True keeps the document order.
  blocks = docs.batch(_DOCS_PER_CALL).map(
      lambda texts: as_blocks(chunk_numpy, texts), num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True)
  marker = tf.data.Dataset.range(1).map(lambda _: as_blocks(end_epoch))
  return blocks.concatenate(marker).unbatch()


def packed_rows(chunks: tf.data.Dataset, spec: masking.MaskingSpec) -> tf.data.Dataset:
  """Chunks -> packed rows (input_ids [L], length, segment_ids [L]; data/pretrain/packing.py), a window
  of PACK_WINDOW chunks at a time (only a window's last rows are not full)."""
  seq_len, capacity = spec.max_seq_length, spec.encoder_capacity

  def pack_numpy(input_ids, lengths):
    budgets = masking.mask_budget(lengths, spec.encoder_mask_ratio)
    return packing.rows_of_chunks(input_ids, lengths, budgets, capacity, spec.pad_id)

  def pack(input_ids, lengths):
    ids, row_lengths, segments = tf.numpy_function(pack_numpy, [input_ids, lengths],
                                                   [tf.int32, tf.int32, tf.int32])
    ids.set_shape([None, seq_len])
    row_lengths.set_shape([None])
    segments.set_shape([None, seq_len])
    return ids, row_lengths, segments

  return chunks.batch(PACK_WINDOW).map(pack, num_parallel_calls=tf.data.AUTOTUNE,
                                       deterministic=True).unbatch()


def pretrain_dataset(settings: PretrainInput, tokenizer: tokenizers.Tokenizer, *,
                     process_index: int = 0, process_count: int = 1, start_step: int = 0,
                     stats: PipelineStats | None = None) -> tf.data.Dataset:
  """Infinite per-host batches following the batch contract (module docstring): the rows of
  this process's shards, shard after shard (see batch_contract.data_shards).

  Iterate it with pretrain_batches (or close your own iterator before the program exits).
  A `prepared:` data.source is read by index instead (data/pretrain/prepared.py).
  """
  if source_spec.is_prepared(settings.source):
    return prepared.pretrain_dataset(settings, tokenizer, process_index=process_index,
                                     process_count=process_count, start_step=start_step)
  batch_contract.host_batch_size(settings, process_count)  # validates the split
  num_shards = batch_contract.data_shards(settings, process_count)
  per_process = num_shards // process_count
  rows = settings.batch_size // num_shards
  spec = batch_contract.masking_spec(settings, tokenizer)
  seed = settings.seed & (2**63 - 1)
  shapes = spec.batch_shapes(rows)
  names = tuple(shapes)

  def shard_batches(shard: int) -> tf.data.Dataset:
    ds = chunk_dataset(settings, tokenizer, process_index=shard, process_count=num_shards,
                       stats=stats)
    if spec.pack:
      ds = packed_rows(ds, spec)
    else:
      ds = ds.map(lambda input_ids, length: (input_ids, length, tf.zeros_like(input_ids)))
    if settings.shuffle_buffer > 1:
      # The buffer is per shard, so that a shard's order does not depend on who reads it.
      ds = ds.shuffle(settings.shuffle_buffer, seed=seed + shard,
                      reshuffle_each_iteration=True)
    ds = ds.repeat().batch(rows, drop_remainder=True)
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.counter()))
    # Resume: exact (the stream is a function of the config, the shard and the step). The
    # skipped batches are read and tokenised again, not masked.
    ds = ds.skip(start_step)

    def mask_numpy(input_ids, lengths, segment_ids, index):
      # Each document's own streams: (seed, shard, step, its number in the shard's batch).
      random = example_random.ExampleRandom.numbered(seed, shard, int(index))
      batch = masking.make_batch(input_ids, lengths, spec, random,
                                 segment_ids if spec.pack else None)
      return tuple(batch[name] for name in names)

    def mask(batch, index):
      input_ids, lengths, segment_ids = batch
      return numpy_batches.host_tensors(mask_numpy, shapes, input_ids, lengths, segment_ids, index)

    # Parallel calls cannot change the result (masks come from each document's identity);
    # deterministic=True keeps the order.
    return ds.map(mask, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  first = process_index * per_process
  shards = [shard_batches(s) for s in range(first, first + per_process)]
  if len(shards) == 1:
    ds = shards[0]
  else:
    ds = tf.data.Dataset.zip(tuple(shards)).map(
        lambda *parts: {n: tf.concat([p[n] for p in parts], axis=0) for n in names})
  return ds.prefetch(settings.prefetch)


def pretrain_batches(settings: PretrainInput, tokenizer: tokenizers.Tokenizer, *,
                     process_index: int = 0, process_count: int = 1, start_step: int = 0,
                     stats: PipelineStats | None = None) -> numpy_batches.Batches:
  """pretrain_dataset as an iterator of NumPy batches, starting at batch `start_step`."""
  return numpy_batches.Batches(pretrain_dataset(settings, tokenizer, process_index=process_index,
                                  process_count=process_count, start_step=start_step,
                                  stats=stats))
