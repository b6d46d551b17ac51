"""Training on prepared corpora (written once by `python -m retromae_jax.tools.prepare`), read by
index: the batch of step s is a pure function of (settings, s), so a resume seeks straight to it.

  data.source = prepared:DIR                          one corpus
  data.source = prepared:DIR1@0.7,prepared:DIR2@0.3   a weighted mixture (weights are normalised)

A prepared DIR holds ArrayRecord shards of chunks (random access by record key, the format
grain and tfds.data_source read), the per-chunk document indices, the tokenizer's files and
prepared.json (the chunking settings, the counts, the skipped lines). See docs/prepared_data.md.

THE ORDER. Examples form one infinite stream; batch s is stream positions [s*B, (s+1)*B) and
shard k of data.num_shards owns its R = B / num_shards rows [s*B + k*R, s*B + (k+1)*R).
  - one corpus of N chunks: position i is the i % N-th entry of epoch i // N's permutation of
    [0, N), drawn from (seed, epoch): every chunk once per epoch, no shuffle buffer to refill;
    an epoch may end inside a batch (as the raw pipeline's `repeat`).
  - a mixture: positions are dealt in blocks of MIX_BLOCK; each block gives corpus c exactly its
    share m_c (largest remainder of MIX_BLOCK * weight), in an order drawn from (seed, block), so
    corpus c's j-th example of the block is its own stream position block * m_c + j; each corpus
    then runs through its own epochs as above (a small corpus is repeated more often).
  - data.shuffle_buffer <= 1 turns the permutations off (corpus order), as it does for raw text.
So the chunks of a global batch do not depend on the process count nor on data.num_shards, and
each process reads only the rows of its own shards.

PACKED ROWS (data.pack, the default): the stream's units are then the rows of the packing plan
written at prepare time (prepare.pack_plan: the raw pipeline's packing of each shard's chunk
stream), not single chunks; the order above applies to rows unchanged, so a packed batch is as
much a function of its step, and every chunk is once per epoch in some row.

THE MASKS of a chunk are drawn from its own streams, keyed by (seed, corpus, epoch, record key)
(objectives/example_random.py): the same chunk in the same epoch is masked the same way whatever the
batch size, data.num_shards, the process count or the row it is packed in, and differently in
every epoch. The raw pipeline keys a document by (seed, shard, step, its number in the batch)
instead, so with one shard and no shuffling both pipelines give the same tokens, and masks
that differ (each is the masking of its own identities; tests/test_prepared.py checks both).
"""

import functools
import hashlib
import json
import os

import numpy as np
import tensorflow as tf
import tokenizers

from retromae_jax.data.pretrain.settings import PretrainInput
from retromae_jax.data.pretrain import batch_contract, masking, packing
from retromae_jax.objectives import example_random
from retromae_jax.data import numpy_batches, source_spec
from retromae_jax.data import tokenizer as tokenizer_lib

FORMAT = "retromae_jax.prepared/1"
META = "prepared.json"
TOKENIZER_DIR = "tokenizer"
MIX_BLOCK = 1 << 16  # stream positions per mixture block: weights are exact to 1 / MIX_BLOCK
_PERMUTATION, _MIXTURE = 1, 2  # tags that keep the seed streams apart
_EXPECTED = "expected prepared:DIR or prepared:DIR1@W1,prepared:DIR2@W2 (weights > 0)"


def shard_names(index: int, count: int) -> tuple[str, str, str]:
  """File names of output shard `index`: its chunks (ArrayRecord), their document indices and
  their packed rows (data.pack)."""
  suffix = f"{index:05d}-of-{count:05d}"
  return f"chunks-{suffix}.array_record", f"documents-{suffix}.npy", f"rows-{suffix}.npy"


def file_record(path: str) -> dict:
  """{'bytes', 'sha256'} of a file as prepare wrote it (prepared.json keeps one per shard file)."""
  digest = hashlib.sha256()
  with tf.io.gfile.GFile(path, "rb") as f:
    while block := f.read(1 << 22):
      digest.update(block)
  return {"bytes": tf.io.gfile.stat(path).length, "sha256": digest.hexdigest()}


def tokenizer_fingerprint(tokenizer: tokenizers.Tokenizer) -> str:
  """A hash of the tokenizer's full definition: chunks are only valid for the one that made them."""
  return hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()[:16]


def parse_source(source: str) -> list[tuple[str, float]]:
  """'prepared:A@0.7,prepared:B@0.3' -> [(A, 0.7), (B, 0.3)], weights normalised to sum 1."""
  return [(s.arg, s.weight) for s in source_spec.parse_mixture(
      source, "data.source", _EXPECTED, schemes=(source_spec.PREPARED,),
      what="prepared corpus")]


class PreparedCorpus:
  """One prepared directory: its metadata, and its chunks by record key (0 .. len - 1)."""

  def __init__(self, directory: str):
    from array_record.python import array_record_data_source  # only for prepared sources

    self.directory = directory
    meta_path = os.path.join(directory, META)
    try:
      with tf.io.gfile.GFile(meta_path) as f:
        self.meta = json.load(f)
    except (tf.errors.NotFoundError, OSError):
      raise ValueError(f"data.source prepared:{directory}: no {META} there; expected a directory "
                       "written by `python -m retromae_jax.tools.prepare`") from None
    except json.JSONDecodeError as e:
      raise ValueError(f"{meta_path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if self.meta.get("format") != FORMAT:
      raise ValueError(f"{meta_path}: format {self.meta.get('format')!r}; expected {FORMAT!r}")
    self.dtype = np.dtype(self.meta["token_dtype"])
    self.num_chunks = int(self.meta["stats"]["chunks"])
    if self.num_chunks < 1:
      raise ValueError(f"{meta_path}: the corpus has no chunk")
    self.verify(checksums=False)
    # 'FILE[0:n]' gives each file's record count (verified above against the file's own index).
    paths = [f"{os.path.join(directory, s['chunks'])}[0:{s['num_chunks']}]"
             for s in self.meta["shards"] if s["num_chunks"]]
    self._source = array_record_data_source.ArrayRecordDataSource(paths)
    if len(self._source) != self.num_chunks:
      raise ValueError(f"{directory}: the shards hold {len(self._source)} chunks, {META} says "
                       f"{self.num_chunks}")

  def __len__(self):
    return self.num_chunks

  def verify(self, checksums: bool) -> None:
    """Raises ValueError naming the first file that is missing, of another size than prepare
    wrote, holding another number of records or rows than prepared.json says, or (`checksums`:
    the per-chunk index files, rows and documents, read whole) of another SHA-256; and a
    prepared.json whose totals disagree with its own shards (an edited pack.rows). Without
    `checksums` it reads only the files' sizes and the chunk files' ArrayRecord footers."""
    from array_record.python import array_record_module

    meta_path = os.path.join(self.directory, META)
    shards = self.meta["shards"]
    again = "prepare the corpus again"
    for key, total in (("num_chunks", self.meta["stats"]["chunks"]),
                       ("num_rows", self.meta.get("pack", {}).get("rows"))):
      if total is not None and sum(int(s[key]) for s in shards) != int(total):
        field = "stats.chunks" if key == "num_chunks" else "pack.rows"
        raise ValueError(f"{meta_path}: {field} is {total}, its shards' {key} add up to "
                         f"{sum(int(s[key]) for s in shards)}; the file was edited or damaged: "
                         f"{again}")
    for shard in shards:
      for name, record in shard.get("files", {}).items():
        path = os.path.join(self.directory, name)
        if not tf.io.gfile.exists(path):
          raise ValueError(f"{path}: missing ({META} lists it); {again}")
        size = tf.io.gfile.stat(path).length
        if size != record["bytes"]:
          raise ValueError(f"{path}: {size} bytes, {META} says {record['bytes']} (cut short or "
                           f"overwritten); {again}")
        if checksums and not name.startswith("chunks-") and (
            file_record(path)["sha256"] != record["sha256"]):
          raise ValueError(f"{path}: its SHA-256 differs from {META}'s (overwritten); {again}")
      chunks = os.path.join(self.directory, shard["chunks"])
      if not tf.io.gfile.exists(chunks):
        raise ValueError(f"{chunks}: missing ({META} lists it); {again}")
      try:
        reader = array_record_module.ArrayRecordReader(chunks)
        records = reader.num_records()
        reader.close()
      except Exception as e:  # pylint: disable=broad-except  (the library's own errors)
        raise ValueError(f"{chunks}: not a readable ArrayRecord file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); {again}") from None
      if records != int(shard["num_chunks"]):
        raise ValueError(f"{chunks}: {records} records, {META} says {shard['num_chunks']}; "
                         f"{again}")
      if checksums:
        for key, count, what in (("rows", shard["num_chunks"], "chunks"),
                                 ("documents", shard["num_chunks"], "chunks")):
          path = os.path.join(self.directory, shard[key])
          try:
            values = np.load(path, mmap_mode="r")
          except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable .npy file ({e}); {again}") from None
          if values.shape != (int(count),):
            raise ValueError(f"{path}: {values.shape[0] if values.ndim else 0} entries, {META} "
                             f"says {count} {what}; {again}")
          if key == "rows" and int(values.max(initial=-1)) + 1 != int(shard["num_rows"]):
            raise ValueError(f"{path}: plans {int(values.max(initial=-1)) + 1} rows, {META} "
                             f"says num_rows {shard['num_rows']}; {again}")

  def chunks(self, keys: np.ndarray) -> list[np.ndarray]:
    """The token ids (no [CLS]/[SEP]) of the chunks at these record keys."""
    records = self._source.__getitems__([int(k) for k in keys])
    return [np.frombuffer(r, self.dtype).astype(np.int32) for r in records]

  @functools.cached_property
  def packed(self) -> tuple[np.ndarray, np.ndarray]:
    """The packing plan as (record keys in row order [len], row starts [rows + 1]): row r holds
    the chunks keys[starts[r]:starts[r + 1]], in corpus order."""
    offsets = np.cumsum([0] + [s["num_rows"] for s in self.meta["shards"]])
    row_of = np.concatenate([
        np.load(os.path.join(self.directory, s["rows"])) + offset
        for s, offset in zip(self.meta["shards"], offsets)])
    keys = np.argsort(row_of, kind="stable")  # stable: a row's chunks stay in corpus order
    return keys, np.searchsorted(row_of[keys], np.arange(offsets[-1] + 1))

  def row_chunks(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(record keys of the chunks of these packed rows, in row order; chunks per row)."""
    keys, starts = self.packed
    counts = starts[rows + 1] - starts[rows]
    first = np.repeat(starts[rows] - np.cumsum(counts) + counts, counts)
    return keys[first + np.arange(counts.sum())], counts

  def documents(self) -> np.ndarray:
    """int64 [len]: the document index of every chunk (documents numbered shard after shard)."""
    return np.concatenate([
        np.load(os.path.join(self.directory, s["documents"])) for s in self.meta["shards"]])

  def check_compatible(self, settings: PretrainInput,
                       tokenizer: tokenizers.Tokenizer) -> None:
    """Chunks were cut for one tokenizer and one length: training must use the same."""
    where = f"data.source prepared:{self.directory}"
    for key in ("max_seq_length", "min_chunk_tokens"):
      if self.meta[key] != getattr(settings, key):
        raise ValueError(f"{where}: prepared with data.{key}={self.meta[key]}, the config has "
                         f"{getattr(settings, key)}; set --config.data.{key}={self.meta[key]} or "
                         "prepare again")
    if settings.pack:
      self._check_pack_plan(settings, where)
    if self.meta["tokenizer_fingerprint"] != tokenizer_fingerprint(tokenizer):
      raise ValueError(f"{where}: prepared with another tokenizer than {settings.tokenizer!r}; set "
                       f"--config.tokenizer={os.path.join(self.directory, TOKENIZER_DIR)}")

  def _check_pack_plan(self, settings: PretrainInput, where: str) -> None:
    """Packed rows are planned at prepare time for one encoder mask ratio (a row's chunks share
    the encoder's masked slots)."""
    plan = self.meta.get("pack")
    if plan is None:
      raise ValueError(f"{where}: prepared without a packing plan (an older prepare); prepare "
                       "again, or set --config.data.pack=False")
    if plan["encoder_mask_ratio"] != settings.encoder_mask_ratio:
      raise ValueError(f"{where}: rows packed for data.encoder_mask_ratio="
                       f"{plan['encoder_mask_ratio']}, the config has "
                       f"{settings.encoder_mask_ratio}; set --config.data.encoder_mask_ratio="
                       f"{plan['encoder_mask_ratio']}, prepare again, or set "
                       "--config.data.pack=False")

  @property
  def num_rows(self) -> int:
    return int(self.meta["pack"]["rows"])


class IndexStream:
  """Stream position -> (corpus, unit: record key, or packed row with data.pack): the order of
  the module docstring, O(1) per position apart from one permutation per (corpus, epoch) and one
  deal per mixture block, both cached."""

  def __init__(self, sizes: list[int], weights: list[float], seed: int, shuffle: bool):
    self.sizes = [int(n) for n in sizes]
    self.seed = seed
    self.shuffle = shuffle
    shares = np.asarray(weights, np.float64) * MIX_BLOCK
    counts = np.floor(shares).astype(np.int64)
    # Largest remainder: the block's positions are all dealt, each corpus within one of its share.
    counts[np.argsort(counts - shares, kind="stable")[:MIX_BLOCK - counts.sum()]] += 1
    if len(sizes) > 1 and (counts == 0).any():
      raise ValueError(f"data.source: mixture weights {list(weights)} give some corpus no example "
                       f"in {MIX_BLOCK}; expected weights >= 1/{MIX_BLOCK}")
    self.counts = counts

  @functools.lru_cache(maxsize=8)
  def permutation(self, corpus: int, epoch: int) -> np.ndarray:
    """Record keys of corpus `corpus` in the order of epoch `epoch`."""
    size = self.sizes[corpus]
    if not self.shuffle:
      return np.arange(size, dtype=np.int64)
    return np.random.default_rng([self.seed, _PERMUTATION, corpus, epoch]).permutation(size)

  @functools.lru_cache(maxsize=4)
  def _deal(self, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(corpus of each position of a mixture block, its rank among that corpus's positions)."""
    owner = np.repeat(np.arange(len(self.counts)), self.counts)
    if self.shuffle:
      owner = np.random.default_rng([self.seed, _MIXTURE, block]).permutation(owner)
    rank = np.empty(MIX_BLOCK, np.int64)
    for corpus in range(len(self.counts)):
      mine = owner == corpus
      rank[mine] = np.arange(np.count_nonzero(mine))
    return owner, rank

  def lookup(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(corpus [n], record key [n], the corpus's epoch [n]) of stream positions [n] (int64)."""
    positions = np.asarray(positions, np.int64)
    if len(self.sizes) == 1:
      corpus = np.zeros_like(positions)
      local = positions
    else:
      corpus, local = np.empty_like(positions), np.empty_like(positions)
      for i, position in enumerate(positions):  # a batch touches one or two blocks
        block, offset = divmod(int(position), MIX_BLOCK)
        owner, rank = self._deal(block)
        corpus[i] = owner[offset]
        local[i] = block * self.counts[corpus[i]] + rank[offset]
    sizes = np.asarray(self.sizes, np.int64)[corpus]
    epoch, index = np.divmod(local, sizes)
    keys = np.empty_like(positions)
    for c, e in set(zip(corpus.tolist(), epoch.tolist())):  # a batch spans one or two epochs
      mine = (corpus == c) & (epoch == e)
      keys[mine] = self.permutation(c, e)[index[mine]]
    return corpus, keys, epoch


class PreparedData:
  """The corpora of a `prepared:` data.source and their index stream, checked against the config.

  The stream's units are chunks, or with data.pack the packed rows of the corpora's plans."""

  def __init__(self, settings: PretrainInput, tokenizer: tokenizers.Tokenizer):
    parts = parse_source(settings.source)
    self.corpora = [PreparedCorpus(path) for path, _ in parts]
    for corpus in self.corpora:
      corpus.check_compatible(settings, tokenizer)
    self.pack = settings.pack
    units = [c.num_rows if self.pack else len(c) for c in self.corpora]
    self.stream = IndexStream(units, [w for _, w in parts], settings.seed & (2**63 - 1),
                              settings.shuffle_buffer > 1)
    self.ids = tokenizer_lib.special_ids(tokenizer)
    self.seq_len = settings.max_seq_length

  def _chunks(self, corpus: np.ndarray, keys: np.ndarray) -> list[np.ndarray]:
    """The token ids of the chunks at (corpus, record key) pairs, in their order."""
    chunks = [None] * len(keys)
    for c in np.unique(corpus):
      where = np.flatnonzero(corpus == c)
      for i, chunk in zip(where, self.corpora[c].chunks(keys[where])):
        chunks[i] = chunk
    return chunks

  def _padded(self, chunks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids int32 [n, L] = [CLS] chunk [SEP] pad..., lengths int32 [n])."""
    lengths = np.array([len(c) for c in chunks], np.int32) + 2
    input_ids = np.full((len(chunks), self.seq_len), self.ids.pad, np.int32)
    input_ids[:, 0] = self.ids.cls
    for row, chunk in enumerate(chunks):
      input_ids[row, 1:len(chunk) + 1] = chunk
    input_ids[np.arange(len(chunks)), lengths - 1] = self.ids.sep
    return input_ids, lengths

  def rows(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One chunk per row (data.pack off) at stream positions: (input_ids [n, L], lengths [n],
    identities [n, 3]: each chunk's (corpus, epoch, record key), what its masks are drawn
    from)."""
    corpus, keys, epoch = self.stream.lookup(positions)
    return (*self._padded(self._chunks(corpus, keys)), np.stack([corpus, epoch, keys], axis=1))

  def packed_rows(self, positions: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The planned packed rows at stream positions (data.pack): (input_ids [n, L], lengths [n]
    = real tokens, segment_ids [n, L], as packing.rows_of_chunks lays them out; identities
    [chunks, 3] in the order of the rows' segments: (corpus, epoch of the row, record key))."""
    corpus, rows, epoch = self.stream.lookup(positions)
    chunk_corpus, chunk_keys, chunk_row, chunk_epoch = [], [], [], []
    for c in np.unique(corpus):
      where = np.flatnonzero(corpus == c)
      keys, counts = self.corpora[c].row_chunks(rows[where])
      chunk_corpus.append(np.full(len(keys), c))
      chunk_keys.append(keys)
      chunk_row.append(np.repeat(where, counts))
      chunk_epoch.append(np.repeat(epoch[where], counts))
    chunk_corpus, chunk_keys, chunk_row, chunk_epoch = map(
        np.concatenate, (chunk_corpus, chunk_keys, chunk_row, chunk_epoch))
    input_ids, lengths = self._padded(self._chunks(chunk_corpus, chunk_keys))
    # place_chunks lays each row's chunks in their order here: the segments' order is this one.
    order = np.argsort(chunk_row, kind="stable")
    ids = np.stack([chunk_corpus, chunk_epoch, chunk_keys], axis=1)[order]
    return (*packing.place_chunks(input_ids, lengths, chunk_row, self.ids.pad), ids)


def pretrain_dataset(settings: PretrainInput, tokenizer: tokenizers.Tokenizer, *,
                     process_index: int = 0, process_count: int = 1,
                     start_step: int = 0) -> tf.data.Dataset:
  """Infinite per-host batches of the batch contract (data/pretrain/pipeline.py) from prepared corpora,
  starting at batch `start_step` with no read of the batches before it."""
  batch_contract.host_batch_size(settings, process_count)  # validates the split
  num_shards = batch_contract.data_shards(settings, process_count)
  per_process = num_shards // process_count
  rows = settings.batch_size // num_shards
  data = PreparedData(settings, tokenizer)
  spec = batch_contract.masking_spec(settings, tokenizer)
  seed = settings.seed & (2**63 - 1)
  shapes = batch_contract.batch_shapes(settings, rows * per_process)
  names = tuple(shapes)
  first = process_index * per_process

  def host_batch(step):
    step = int(step)
    parts = []
    for shard in range(first, first + per_process):
      positions = step * settings.batch_size + shard * rows + np.arange(rows)
      segment_ids = None
      if spec.pack:
        input_ids, lengths, segment_ids, ids = data.packed_rows(positions)
      else:
        input_ids, lengths, ids = data.rows(positions)
      random = example_random.ExampleRandom(seed, ids)  # per chunk: (corpus, epoch, record key)
      parts.append(masking.make_batch(input_ids, lengths, spec, random, segment_ids))
    return tuple(np.concatenate([p[n] for p in parts]) for n in names)

  def as_tensors(step):
    return numpy_batches.host_tensors(host_batch, shapes, step)

  # Every batch is a function of its step alone: parallel calls cannot change the result, and
  # deterministic=True keeps the order.
  ds = tf.data.Dataset.counter(start_step).map(
      as_tensors, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(settings.prefetch)
