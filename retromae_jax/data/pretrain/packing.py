"""Packing without mixing documents (data.pack): several chunks per row, each its own segment.

A packed row is [CLS] a [SEP] [CLS] b [SEP] ... pad: every chunk keeps its own [CLS] and [SEP],
its positions restart at 0, and segment_ids [L] says which chunk a token belongs to (k for the
row's k-th chunk, 0 for padding). The device builds every mask from segment_ids (attention stays
inside a segment; each segment's decoder reads its own [CLS] vector), so each chunk's losses are
those of the chunk encoded alone, while XLA keeps one static shape and no slot is wasted on the
padding that dynamic padding to a batch's longest text would still leave.

Host side, in two steps:
- rows_of_chunks (tf.data, before the shuffle): first-fit decreasing over a window of chunks,
  under two limits per row: L tokens, and the encoder's masked slots C (a row's chunks together
  never have more encoder-masked tokens than C = the budget of one full-length chunk, so the
  batch keeps its shape [B, C]).
- masks per chunk (masking.make_batch): each chunk is masked alone, exactly as unpacked, then its
  fields are put back at its place in the row, each as its part declares
  (objectives/contract.Pack; pack_field: place_tokens, place_slots, place_pool).
"""

import typing

import numpy as np

from retromae_jax.objectives import contract


def assign_rows(lengths: np.ndarray, seq_len: int, budgets: np.ndarray, capacity: int
                ) -> np.ndarray:
  """Row index of each chunk: first-fit decreasing under `seq_len` tokens and `capacity`
  encoder-masked slots per row. lengths, budgets [N] (each chunk alone fits)."""
  count = len(lengths)
  free_tokens = np.full(count, seq_len, np.int64)
  free_slots = np.full(count, capacity, np.int64)
  row_of = np.empty(count, np.int64)
  used_rows = 0
  for chunk in np.argsort(-np.asarray(lengths), kind="stable"):
    n, b = lengths[chunk], budgets[chunk]
    # The first used row that fits, else a new one (row used_rows always fits).
    fits = (free_tokens[:used_rows + 1] >= n) & (free_slots[:used_rows + 1] >= b)
    row = int(fits.argmax())
    used_rows = max(used_rows, row + 1)
    free_tokens[row] -= n
    free_slots[row] -= b
    row_of[chunk] = row
  return row_of


def rows_of_chunks(input_ids: np.ndarray, lengths: np.ndarray, budgets: np.ndarray,
                   capacity: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Padded chunks ([N, L] ids, [N] lengths with [CLS]/[SEP]) -> packed rows: (input_ids
  [R, L], lengths [R] = real tokens of the row, segment_ids [R, L]). Within a row, chunks keep
  their order in the window."""
  count, seq_len = input_ids.shape
  if not count:
    return input_ids, np.zeros((0,), np.int32), np.zeros((0, seq_len), np.int32)
  lengths = np.asarray(lengths, np.int64)
  return place_chunks(input_ids, lengths, assign_rows(lengths, seq_len, budgets, capacity),
                      pad_id)


def place_chunks(input_ids: np.ndarray, lengths: np.ndarray, row_of: np.ndarray,
                 pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Padded chunks ([N, L] ids, [N] lengths) and the row of each ([N], rows 0 .. R-1 all used)
  -> the rows (input_ids [R, L], lengths [R], segment_ids [R, L]): within a row, chunks in
  their order here, back to back from its first token."""
  count, seq_len = input_ids.shape
  lengths = np.asarray(lengths, np.int64)
  order = np.lexsort((np.arange(count), row_of))  # by row, then by position in the window
  rows, sizes = row_of[order], lengths[order]
  ends = np.cumsum(sizes)
  row_start = np.searchsorted(rows, rows, side="left")  # first chunk of each chunk's row
  offsets = ends - sizes - np.concatenate([[0], ends])[row_start]
  segment = np.arange(count) - row_start + 1
  num_rows = int(rows[-1]) + 1
  out_ids = np.full((num_rows, seq_len), pad_id, np.int32)
  out_segments = np.zeros((num_rows, seq_len), np.int32)
  place_tokens(out_ids, input_ids[order], rows, offsets, sizes)
  place_tokens(out_segments, np.broadcast_to(segment[:, None], (count, seq_len)), rows, offsets,
               sizes)
  return out_ids, np.bincount(rows, sizes, num_rows).astype(np.int32), out_segments


def plan_rows(lengths: np.ndarray, budgets: np.ndarray, seq_len: int, capacity: int,
              window: int) -> np.ndarray:
  """The row of each chunk of a chunk stream packed as the raw pipeline packs it: windows of
  `window` consecutive chunks, each packed by assign_rows; rows numbered window after window."""
  row_of = np.empty(len(lengths), np.int64)
  first_row = 0
  for start in range(0, len(lengths), window):
    part = slice(start, start + window)
    row_of[part] = first_row + assign_rows(lengths[part], seq_len, budgets[part], capacity)
    first_row = int(row_of[part].max()) + 1
  return row_of


def _segment_edges(segment_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(starts, ends) bool [B, L]: the first and the last token of every segment."""
  real = segment_ids > 0
  changes = segment_ids[:, 1:] != segment_ids[:, :-1]  # between token j and j + 1
  starts, ends = real.copy(), real.copy()
  starts[:, 1:] &= changes
  ends[:, :-1] &= changes
  return starts, ends


def documents(segment_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(row [D], offset [D], length [D]) of every segment, in row order then position."""
  starts, ends = _segment_edges(segment_ids)
  rows, offsets = np.nonzero(starts)
  end_rows, end_cols = np.nonzero(ends)
  if not np.array_equal(rows, end_rows):
    raise ValueError("segment_ids: expected each segment in one contiguous run")
  return rows, offsets, end_cols - offsets + 1


def positions(segment_ids: np.ndarray) -> np.ndarray:
  """int32 [B, L]: each token's position inside its segment (0 at its [CLS]; 0 on padding)."""
  pos = np.arange(segment_ids.shape[1])
  starts, _ = _segment_edges(segment_ids)
  last_start = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
  return np.where(segment_ids > 0, pos - last_start, 0).astype(np.int32)


def _token_index(rows, offsets, lengths, width, seq_len):
  """(valid [D, width], row index [D, width], column in the row [D, width]) of each chunk's
  first lengths[d] entries (width: the chunk's field's; seq_len: the row's)."""
  pos = np.arange(width)
  valid = pos < lengths[:, None]
  cols = np.minimum(offsets[:, None] + pos, seq_len - 1)
  return valid, np.broadcast_to(rows[:, None], valid.shape), cols


def take_tokens(row_field: np.ndarray, rows, offsets, lengths, fill) -> np.ndarray:
  """Each chunk's tokens of a row-aligned field, moved to the front: [D, L] (fill after)."""
  width = row_field.shape[1]
  valid, row_index, cols = _token_index(rows, offsets, lengths, width, width)
  return np.where(valid, row_field[row_index, cols], fill).astype(row_field.dtype)


def place_tokens(out: np.ndarray, doc_field: np.ndarray, rows, offsets, lengths) -> np.ndarray:
  """Writes each chunk's first lengths[d] entries of doc_field [D, W, ...] from its offset in out
  [B, L, ...] (in place; returns out)."""
  valid, row_index, cols = _token_index(rows, offsets, lengths, doc_field.shape[1],
                                        out.shape[1])
  out[row_index[valid], cols[valid]] = doc_field[valid]
  return out


def place_slots(doc_field: np.ndarray, doc_valid: np.ndarray, rows, shift, num_rows: int,
                fill) -> np.ndarray:
  """Lists of slots ([D, C], doc_valid: the used ones, first in each chunk's list) -> the rows'
  ([B, C]): the chunks' used entries one after the other in row order (plus shift[d]: a
  position moves by its chunk's offset), fill after."""
  capacity = doc_field.shape[1]
  doc_index = np.broadcast_to(np.arange(len(rows))[:, None], doc_valid.shape)[doc_valid]
  entry_rows = rows[doc_index]  # ascending: chunks are in row order, slots ascending
  rank = np.arange(len(entry_rows)) - np.searchsorted(entry_rows, entry_rows, side="left")
  if rank.size and rank.max() >= capacity:
    raise ValueError(f"packed row: more encoder-masked tokens than the {capacity} slots "
                     "(rows must be packed by data/packing.rows_of_chunks)")
  out = np.full((num_rows, capacity), fill, doc_field.dtype)
  out[entry_rows, rank] = doc_field[doc_valid] + np.asarray(shift)[doc_index]
  return out


class Layout(typing.NamedTuple):
  """Where the documents of packed rows are: row [D], offset [D] and length [D] of each
  (documents()), and the rows' shape."""
  rows: np.ndarray
  offsets: np.ndarray
  lengths: np.ndarray
  num_rows: int
  seq_len: int


def pack_field(how: contract.Pack, name: str, alone: dict[str, np.ndarray], layout: Layout,
               segment_of: np.ndarray, pad_id: int) -> np.ndarray:
  """Field `name` of packed rows from the documents' own batch `alone` (one per row, in
  layout order), as its part declares (objectives/contract.Pack); segment_of [D]: each
  document's segment number."""
  rows, offsets, lengths, num_rows, seq_len = layout
  if how.how == contract.POOL:
    return place_pool(alone[name], rows, offsets, num_rows)
  if how.how == contract.SLOTS:
    shift = offsets if how.shift else np.zeros_like(offsets)
    return place_slots(alone[name], alone[how.valid] != contract.IGNORE, rows, shift, num_rows,
                       how.fill)
  if how.how not in (contract.TOKENS, contract.SEGMENTS):
    raise ValueError(f"{name}: unknown packing {how.how!r}")
  extent = np.count_nonzero(alone[how.extent], axis=1) if how.extent else lengths
  if how.how == contract.SEGMENTS:
    doc_field = np.broadcast_to(segment_of.astype(np.int32)[:, None], (len(rows), seq_len))
  else:
    doc_field = alone[name]
  fill = pad_id if how.fill == contract.PAD else how.fill
  out = np.full((num_rows, seq_len, *doc_field.shape[2:]), fill, doc_field.dtype)
  return place_tokens(out, doc_field, rows, offsets, extent)


def place_pool(doc_pool: np.ndarray, rows, offsets, num_rows: int) -> np.ndarray:
  """Bit-packed pools [D, P, ceil(L/8)] -> the rows' [B, P, ceil(L/8)]: row p of a packed pool
  holds every chunk's p-th mask, each on its own segment's tokens (segments are disjoint).

  The bits move as bytes: a chunk at offset o moves o // 8 bytes and o % 8 bits (each output
  byte is a window of two input bytes), and chunks sharing a row are OR-ed together; nothing is
  unpacked. A chunk's bits past its length are zero (masks cover its words only).
  """
  num_docs, pool_size, num_bytes = doc_pool.shape
  if not num_docs:
    return np.zeros((num_rows, pool_size, num_bytes), np.uint8)
  # Output byte b of a chunk at offset o is the chunk's bytes (b - o // 8 - 1, b - o // 8) read
  # as one 16-bit window shifted right by o % 8; bytes before the chunk's first are zero.
  padded = np.zeros((num_docs, pool_size, 2 * num_bytes), np.uint16)
  padded[:, :, num_bytes:] = doc_pool
  offsets = np.asarray(offsets)
  start = (np.arange(num_docs * pool_size) * (2 * num_bytes)).reshape(num_docs, pool_size, 1)
  source = start + (num_bytes - offsets // 8)[:, None, None] + np.arange(num_bytes)
  window = (padded.take(source - 1) << 8) | padded.take(source)
  moved = (window >> (offsets % 8).astype(np.uint16)[:, None, None]).astype(np.uint8)
  # Chunks come in row order, the k-th of each row at k - (the row's first): OR them together.
  out = np.zeros((num_rows, pool_size, num_bytes), np.uint8)
  rank = np.arange(num_docs) - np.searchsorted(rows, rows, side="left")
  for k in range(int(rank.max()) + 1):
    out[rows[rank == k]] |= moved[rank == k]
  return out
