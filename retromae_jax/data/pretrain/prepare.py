"""Prepare a corpus once: tokenise and chunk it, write the chunks for reading by index.

  python -m retromae_jax.tools.prepare --source=SOURCE --out=DIR \
      [--config=configs/base.py --config.data.max_seq_length=512 ...] [--num_workers=N]

SOURCE is any raw data.source (jsonl:GLOB, text:GLOB, tfds:NAME[:SPLIT], pydoc, pydoc:modules).
The chunks are exactly the raw pipeline's (data/pretrain/chunking.py, the config's tokenizer,
data.max_seq_length and data.min_chunk_tokens): worker w of N chunks the documents that process w
of N would read (data/sources.py) and writes output shard w. Train on DIR with
--config.data.source=prepared:DIR (data/pretrain/prepared.py). DIR gets:
  chunks-W-of-N.array_record   one record per chunk: its token ids, no [CLS]/[SEP], as
                               little-endian uint16 (int32 for vocabularies over 65,536)
  documents-W-of-N.npy         int64, per chunk: the index of its document (shard after shard)
  rows-W-of-N.npy              int64, per chunk: its packed row within the shard (data.pack):
                               the raw pipeline's packing of the shard's chunk stream (windows
                               of pipeline.PACK_WINDOW chunks, first-fit decreasing under L
                               tokens and the encoder's C masked slots at the config's
                               data.encoder_mask_ratio)
  tokenizer/                   the tokenizer's files
  prepared.json                settings, tokenizer fingerprint, per-shard and total counts
                               (documents, chunks, tokens, dropped short chunks, skipped lines
                               by reason); written last, so a DIR with it is complete
The workers are processes (every core by default), or, with --engine=beam, shard tasks of an
Apache Beam pipeline (DirectRunner here; Dataflow, Spark or Flink for a corpus that outgrows one
machine: data/pretrain/prepare_beam.py); the output is the same either way.
"""

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import shutil
import time

from absl import logging
import numpy as np

from retromae_jax.data import source_spec
from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.data.pretrain.settings import PretrainInput
from retromae_jax.data.pretrain import chunking, masking, packing, pipeline, prepared
from retromae_jax.data import sources

_WRITER_OPTIONS = "group_size:1"  # one record per group: a random read decodes one chunk only


@dataclasses.dataclass(frozen=True)
class ShardTask:
  source: str
  data_dir: str
  tokenizer: str
  max_seq_length: int
  min_chunk_tokens: int
  index: int
  count: int
  out: str
  token_dtype: str
  encoder_mask_ratio: float


def prepare_shard(task: ShardTask) -> dict:
  """Chunks the documents of share `task.index` of `task.count` and writes output shard index.

  Returns its counts. Documents are chunked one at a time (chunk_documents on a one-document
  list), which gives exactly the chunks of the batched call (a chunk never spans documents) and
  tells which document each chunk comes from.
  """
  from array_record.python import array_record_module

  tokenizer = tokenizer_lib.load_tokenizer(task.tokenizer)
  is_continuation = tokenizer_lib.continuation_table(tokenizer)
  skips, counts = sources.SkipCounter(), chunking.ChunkStats()
  docs = sources.documents(task.source, task.data_dir, task.index, task.count, skips=skips)
  chunks_name, documents_name, rows_name = prepared.shard_names(task.index, task.count)
  tmp = os.path.join(task.out, chunks_name + ".tmp")
  writer = array_record_module.ArrayRecordWriter(tmp, _WRITER_OPTIONS)
  doc_of_chunk, lengths = [], []
  dtype = np.dtype(task.token_dtype).newbyteorder("<")
  for doc, text in enumerate(docs.as_numpy_iterator()):
    for chunk in chunking.chunk_documents(
        [text.decode("utf-8")], tokenizer, max_seq_length=task.max_seq_length,
        min_chunk_tokens=task.min_chunk_tokens, is_continuation=is_continuation, stats=counts):
      writer.write(chunk.astype(dtype).tobytes())
      doc_of_chunk.append(doc)
      lengths.append(len(chunk) + 2)  # with [CLS] and [SEP], as the pipeline packs them
  writer.close()
  os.replace(tmp, os.path.join(task.out, chunks_name))
  np.save(os.path.join(task.out, documents_name), np.asarray(doc_of_chunk, np.int64))
  row_of = pack_plan(np.asarray(lengths, np.int64), task.max_seq_length, task.encoder_mask_ratio)
  np.save(os.path.join(task.out, rows_name), row_of)
  logging.info("prepare: shard %d/%d: %s; skipped lines %s", task.index, task.count, counts,
               skips.as_dict())
  return {"chunks": chunks_name, "documents": documents_name, "rows": rows_name,
          "num_rows": int(row_of.max(initial=-1)) + 1, "num_chunks": counts.chunks,
          "num_documents": counts.documents, "tokens": counts.tokens,
          "dropped_chunks": counts.dropped_chunks, "dropped_tokens": counts.dropped_tokens,
          "skipped_lines": skips.as_dict()}


def pack_plan(lengths: np.ndarray, seq_len: int, encoder_mask_ratio: float) -> np.ndarray:
  """The packed row of each chunk of a shard (data.pack): the rows the raw pipeline packs from
  the same chunk stream (pipeline.packed_rows), fixed here so that training reads rows by index.
  The plan depends on the encoder's mask ratio (a row's chunks share its C masked slots)."""
  budgets = masking.mask_budget(lengths, encoder_mask_ratio)
  capacity = masking.encoder_capacity(seq_len, encoder_mask_ratio)
  return packing.plan_rows(lengths, budgets, seq_len, capacity, pipeline.PACK_WINDOW)


def prepare(source: str, out: str, settings: PretrainInput, num_workers: int = 0, engine: str = "local",
            beam_args: tuple[str, ...] = ()) -> dict:
  """Writes the prepared corpus of `source` to `out` (module docstring); returns prepared.json.

  engine "local": `num_workers` processes of this machine; "beam": `num_workers` shard tasks on
  Apache Beam with the pipeline options `beam_args` (data/pretrain/prepare_beam.py).
  """
  if engine not in ("local", "beam"):
    raise ValueError(f"--engine {engine!r}: expected local or beam")
  if source_spec.is_prepared(source):
    raise ValueError(f"--source {source!r}: already prepared; expected a raw data.source")
  if os.path.exists(os.path.join(out, prepared.META)):
    raise ValueError(f"--out {out}: already holds a prepared corpus ({prepared.META}); remove it "
                     "or choose another directory")
  start = time.perf_counter()
  tokenizer = tokenizer_lib.load_tokenizer(settings.tokenizer)
  vocab_size = tokenizer_lib.special_ids(tokenizer).vocab_size
  num_workers = num_workers or os.cpu_count() or 1
  os.makedirs(out, exist_ok=True)
  tasks = [ShardTask(source, settings.data_dir, settings.tokenizer, settings.max_seq_length,
                     settings.min_chunk_tokens, index, num_workers, out,
                     "uint16" if vocab_size <= 1 << 16 else "int32",
                     settings.encoder_mask_ratio)
           for index in range(num_workers)]
  sources.documents(source, settings.data_dir, skips=sources.SkipCounter())  # fails early
  if engine == "beam":
    from retromae_jax.data.pretrain import prepare_beam  # optional dependency, imported on demand
    shards = prepare_beam.run_shards(tasks, list(beam_args))
  elif num_workers == 1:
    shards = [prepare_shard(tasks[0])]
  else:
    # Each worker runs the tokenizer on one core: the workers are the parallelism. Spawned, not
    # forked: TensorFlow's threads do not survive a fork.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    with concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
      shards = list(pool.map(prepare_shard, tasks))

  if not sum(s["num_chunks"] for s in shards):
    raise ValueError(f"--source {source!r}: no chunk of at least {settings.min_chunk_tokens} "
                     f"tokens in {sum(s['num_documents'] for s in shards)} documents")
  # Documents are numbered shard after shard.
  offset = 0
  for shard in shards:
    path = os.path.join(out, shard["documents"])
    np.save(path, np.load(path) + offset)
    offset += shard["num_documents"]

  os.makedirs(os.path.join(out, prepared.TOKENIZER_DIR), exist_ok=True)
  for path in tokenizer_lib.file_paths(settings.tokenizer):
    shutil.copy(path, os.path.join(out, prepared.TOKENIZER_DIR, os.path.basename(path)))

  totals = {key: sum(s[key] for s in shards) for key in (
      "num_documents", "num_chunks", "tokens", "dropped_chunks", "dropped_tokens")}
  meta = {
      "format": prepared.FORMAT,
      "source": source,
      "data_dir": settings.data_dir,
      "tokenizer": settings.tokenizer,
      "tokenizer_fingerprint": prepared.tokenizer_fingerprint(tokenizer),
      "token_dtype": tasks[0].token_dtype,
      "max_seq_length": settings.max_seq_length,
      "min_chunk_tokens": settings.min_chunk_tokens,
      "stats": {
          "documents": totals["num_documents"], "chunks": totals["num_chunks"],
          "tokens": totals["tokens"], "dropped_chunks": totals["dropped_chunks"],
          "dropped_tokens": totals["dropped_tokens"],
          "skipped_lines": {reason: sum(s["skipped_lines"][reason] for s in shards)
                            for reason in sources.SkipCounter.REASONS},
      },
      "pack": {"encoder_mask_ratio": settings.encoder_mask_ratio,
               "window": pipeline.PACK_WINDOW, "rows": sum(s["num_rows"] for s in shards)},
      "shards": shards,
      "seconds": round(time.perf_counter() - start, 1),
  }
  tmp = os.path.join(out, prepared.META + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=1)
  os.replace(tmp, os.path.join(out, prepared.META))
  return meta
