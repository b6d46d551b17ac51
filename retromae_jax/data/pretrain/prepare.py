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
                               by reason), each shard file's size and SHA-256 (checked when
                               the corpus is opened: prepared.PreparedCorpus.verify); written
                               last, so a DIR with it is complete
DIR must be new or empty, or hold an interrupted prepare of the same settings (preparing.json,
written first): that one is resumed shard by shard, keeping the shards it finished (each
records itself in done-W-of-N.json once whole). Anything else in DIR is refused, never written
into. The worker processes die with the program, even when it is killed.
The workers are processes (every core by default), or, with --engine=beam, shard tasks of an
Apache Beam pipeline (DirectRunner here; Dataflow, Spark or Flink for a corpus that outgrows one
machine: data/pretrain/prepare_beam.py); the output is the same either way.
"""

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import time

from absl import logging
import numpy as np

from retromae_jax.data import source_spec, sources
from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.data.pretrain import chunking, masking, packing, pipeline, prepared
from retromae_jax.data.pretrain.settings import PretrainInput

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
  _save_npy(os.path.join(task.out, documents_name), np.asarray(doc_of_chunk, np.int64))
  row_of = pack_plan(np.asarray(lengths, np.int64), task.max_seq_length, task.encoder_mask_ratio)
  _save_npy(os.path.join(task.out, rows_name), row_of)
  files = {name: prepared.file_record(os.path.join(task.out, name))
           for name in (chunks_name, rows_name)}
  logging.info("prepare: shard %d/%d: %s; skipped lines %s", task.index, task.count, counts,
               skips.as_dict())
  result = {"chunks": chunks_name, "documents": documents_name, "rows": rows_name,
            "num_rows": int(row_of.max(initial=-1)) + 1, "num_chunks": counts.chunks,
            "num_documents": counts.documents, "tokens": counts.tokens,
            "dropped_chunks": counts.dropped_chunks, "dropped_tokens": counts.dropped_tokens,
            "skipped_lines": skips.as_dict(), "files": files}
  # The shard is complete once this record exists: a rerun of an interrupted prepare keeps it.
  _write_json(os.path.join(task.out, _done_name(task.index, task.count)), {
      **result, "local_documents_sha256": prepared.file_record(
          os.path.join(task.out, documents_name))["sha256"]})
  return result


def _save_npy(path: str, values: np.ndarray) -> None:
  """np.save, atomically: a killed write leaves no half file under the final name."""
  with open(path + ".tmp", "wb") as f:
    np.save(f, values)
  os.replace(path + ".tmp", path)


def _write_json(path: str, value) -> None:
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1)
  os.replace(path + ".tmp", path)


def _done_name(index: int, count: int) -> str:
  return f"done-{index:05d}-of-{count:05d}.json"


# Written first into --out: what is being prepared there, so that a rerun of an interrupted
# prepare with the same settings resumes it (keeping its finished shards), and another is refused.
_PLAN = "preparing.json"


def pack_plan(lengths: np.ndarray, seq_len: int, encoder_mask_ratio: float) -> np.ndarray:
  """The packed row of each chunk of a shard (data.pack): the rows the raw pipeline packs from
  the same chunk stream (pipeline.packed_rows), fixed here so that training reads rows by index.
  The plan depends on the encoder's mask ratio (a row's chunks share its C masked slots)."""
  budgets = masking.mask_budget(lengths, encoder_mask_ratio)
  capacity = masking.encoder_capacity(seq_len, encoder_mask_ratio)
  return packing.plan_rows(lengths, budgets, seq_len, capacity, pipeline.PACK_WINDOW)


def _check_out(out: str, plan: dict) -> dict[int, dict]:
  """The finished shards of an interrupted prepare of the same `plan` in `out` ({} for a new or
  empty directory, which is the other case allowed). Refuses in one line a directory holding a
  finished corpus, another plan's partial output, or other files."""
  if not os.path.isdir(out):
    if os.path.exists(out):
      raise ValueError(f"--out {out}: not a directory")
    return {}
  present = sorted(os.listdir(out))
  if not present:
    return {}
  meta_path = os.path.join(out, prepared.META)
  if os.path.isfile(meta_path):
    try:
      with open(meta_path, encoding="utf-8") as f:
        done = json.load(f).get("source")
    except (OSError, ValueError):
      done = None
    what = ("already holds a prepared corpus of this --source, finished" if done == plan["source"]
            else f"already holds a prepared corpus of another source ({done!r})")
    raise ValueError(f"--out {out}: {what} ({prepared.META}); train on it with "
                     f"--config.data.source=prepared:{out}, or remove it / choose another "
                     "directory")
  plan_path = os.path.join(out, _PLAN)
  if not os.path.isfile(plan_path):
    shown = ", ".join(present[:3]) + (f" and {len(present) - 3} more" if len(present) > 3 else "")
    raise ValueError(f"--out {out}: not empty ({shown}) and no finished corpus ({prepared.META} "
                     "is written last); remove what is there or choose a new directory")
  with open(plan_path, encoding="utf-8") as f:
    earlier = json.load(f)
  changed = [f"{k}: {earlier.get(k)!r} -> {plan[k]!r}" for k in plan if earlier.get(k) != plan[k]]
  if changed:
    raise ValueError(f"--out {out}: holds an interrupted prepare of other settings "
                     f"({'; '.join(changed)}); rerun it with its settings to resume it, or remove "
                     "it")
  finished = {}
  for index in range(plan["num_shards"]):
    path = os.path.join(out, _done_name(index, plan["num_shards"]))
    if not os.path.isfile(path):
      continue
    with open(path, encoding="utf-8") as f:
      result = json.load(f)
    whole = all(os.path.isfile(os.path.join(out, result[k])) for k in ("chunks", "documents",
                                                                      "rows")) and all(
        os.path.getsize(os.path.join(out, name)) == record["bytes"]
        for name, record in result["files"].items())
    if whole:
      finished[index] = result
  logging.info("prepare: resuming the interrupted prepare in %s: shards %s finished, %d to do", out,
               sorted(finished) or "none", plan["num_shards"] - len(finished))
  return finished


def _npy_sha256(values: np.ndarray) -> str:
  """The SHA-256 of the .npy file np.save writes for `values` (the same bytes every time)."""
  buffer = io.BytesIO()
  np.save(buffer, values)
  return hashlib.sha256(buffer.getvalue()).hexdigest()


def _number_documents(path: str, offset: int, local_sha256: str) -> None:
  """Numbers a shard's document index shard after shard (adds `offset`), once: a rerun after an
  interruption finds it either still local or already numbered, and tells which."""
  values = np.load(path)
  if _npy_sha256(values) == local_sha256:
    _save_npy(path, values + offset)
  elif _npy_sha256(values - offset) != local_sha256:
    raise ValueError(f"{path}: neither the shard's document index nor its numbered one; remove "
                     "--out and prepare again")


def _die_with_parent() -> None:
  """Worker initializer: the kernel kills the worker when the prepare process dies, even by
  SIGKILL (Linux's PR_SET_PDEATHSIG; elsewhere the pool's own shutdown is all there is)."""
  import ctypes
  import signal

  try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    return
  if os.getppid() == 1:  # the parent died before prctl took effect
    os._exit(1)


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
  start = time.perf_counter()
  tokenizer = tokenizer_lib.load_tokenizer(settings.tokenizer)
  vocab_size = tokenizer_lib.special_ids(tokenizer).vocab_size
  num_workers = num_workers or os.cpu_count() or 1
  tasks = [ShardTask(source, settings.data_dir, settings.tokenizer, settings.max_seq_length,
                     settings.min_chunk_tokens, index, num_workers, out,
                     "uint16" if vocab_size <= 1 << 16 else "int32",
                     settings.encoder_mask_ratio)
           for index in range(num_workers)]
  plan = {"format": prepared.FORMAT, "source": source, "data_dir": settings.data_dir,
          "tokenizer_fingerprint": prepared.tokenizer_fingerprint(tokenizer),
          "max_seq_length": settings.max_seq_length,
          "min_chunk_tokens": settings.min_chunk_tokens,
          "encoder_mask_ratio": settings.encoder_mask_ratio, "num_shards": num_workers}
  finished = _check_out(out, plan)
  sources.documents(source, settings.data_dir, skips=sources.SkipCounter())  # fails early
  os.makedirs(out, exist_ok=True)
  _write_json(os.path.join(out, _PLAN), plan)
  todo = [task for task in tasks if task.index not in finished]
  if not todo:
    results = []
  elif engine == "beam":
    from retromae_jax.data.pretrain import prepare_beam  # optional dependency, imported on demand
    results = prepare_beam.run_shards(todo, list(beam_args), prepare_shard)
  elif len(todo) == 1:
    results = [prepare_shard(todo[0])]
  else:
    # Each worker runs the tokenizer on one core: the workers are the parallelism. Spawned, not
    # forked: TensorFlow's threads do not survive a fork.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    with concurrent.futures.ProcessPoolExecutor(
        len(todo), mp_context=multiprocessing.get_context("spawn"),
        initializer=_die_with_parent) as pool:
      results = list(pool.map(prepare_shard, todo))
  done = {**finished, **{task.index: result for task, result in zip(todo, results)}}
  local_sha256 = {}
  for index in range(num_workers):  # (finished shards' records carry it; new ones: from disk)
    with open(os.path.join(out, _done_name(index, num_workers)), encoding="utf-8") as f:
      local_sha256[index] = json.load(f)["local_documents_sha256"]
  shards = [{k: v for k, v in done[index].items() if k != "local_documents_sha256"}
            for index in range(num_workers)]

  if not sum(s["num_chunks"] for s in shards):
    raise ValueError(f"--source {source!r}: no chunk of at least {settings.min_chunk_tokens} "
                     f"tokens in {sum(s['num_documents'] for s in shards)} documents")
  # Documents are numbered shard after shard.
  offset = 0
  for index, shard in enumerate(shards):
    path = os.path.join(out, shard["documents"])
    _number_documents(path, offset, local_sha256[index])
    offset += shard["num_documents"]
    # Sizes and checksums of the final files: opening the corpus checks them (prepared.verify).
    shard["files"][shard["documents"]] = prepared.file_record(path)

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
  _write_json(os.path.join(out, prepared.META), meta)
  for name in [_PLAN] + [_done_name(i, num_workers) for i in range(num_workers)]:
    os.remove(os.path.join(out, name))  # the corpus is finished: its prepared.json says it all
  return meta
