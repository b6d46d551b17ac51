"""Resume cost of the input pipeline: a prepared corpus (read by index) against raw text.

  python bench/prepared_resume.py [--work=/tmp/prepared_resume] [--num_chunks=1000000]
      [--steps=0,100000] [--raw_steps=0,50] [--raw_extrapolate_to=100000] [--nopack]

1. Prepares real text (the standard library's docstrings, pydoc:modules) with the base config
   (BERT WordPiece, max_seq_length 512), then writes a corpus of --num_chunks chunks by repeating
   its chunks (tokenising a million chunks of new text would time the tokenizer, not the reader)
   and its packing plan (data.pack, the default; --nopack: one chunk per row).
2. For each of --steps: `python -m retromae_jax.tools.input_bench --start_step=S` at batch 256 on the
   prepared corpus, in a fresh process; reports its seconds_to_first_batch and the process's wall
   time (imports included).
3. The same for the raw pipeline on pydoc:modules at --raw_steps: it reads and tokenises every
   batch before S, so its time grows with S. Step 100,000 of batch 256 is 25.6M chunks to
   tokenise again (hours on one host), so by default it is measured at a small step and
   extrapolated linearly to --raw_extrapolate_to (marked "extrapolated"); pass
   --raw_steps=0,100000 on a quiet machine for the real figure.
The last stdout line is JSON with every figure. Time figures need a quiet machine.
"""

import json
import os
import shutil
import subprocess
import sys
import time

from absl import app, flags
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from retromae_jax.data.pretrain import prepared  # noqa: E402  (after the path fix above)

_WORK = flags.DEFINE_string("work", "/tmp/prepared_resume", "scratch directory")
_NUM_CHUNKS = flags.DEFINE_integer("num_chunks", 1_000_000, "chunks in the prepared corpus")
_STEPS = flags.DEFINE_list("steps", ["0", "100000"], "resume steps on the prepared corpus")
_RAW_STEPS = flags.DEFINE_list("raw_steps", ["0", "50"], "resume steps on raw text")
_PACK = flags.DEFINE_bool("pack", True,
                          "packed rows (the default pipeline) or one chunk per row")
_RAW_TO = flags.DEFINE_integer("raw_extrapolate_to", 100_000, "step the raw figure is "
                               "extrapolated to when --raw_steps stops short of it")
_BATCH = 256
_CONFIG = "--config=configs/base.py:base"


def _run(*args) -> tuple[dict, float]:
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
  wall = time.perf_counter() - start
  if proc.returncode:
    raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def _repeat(seed_dir: str, out: str, num_chunks: int) -> None:
  """A corpus of num_chunks chunks: the seed corpus's chunks over and over, in 8 shards."""
  from array_record.python import array_record_module

  seed = prepared.PreparedCorpus(seed_dir)
  records = [c.astype(seed.dtype).tobytes() for c in seed.chunks(np.arange(len(seed)))]
  # The seed's packing plan, repeated with its chunks: chunk i sits in the seed row of chunk
  # i % S of repetition i // S (a row cut by a shard's edge keeps the chunks on each side).
  seed_keys, seed_starts = seed.packed
  seed_row = np.empty(len(seed), np.int64)
  seed_row[seed_keys] = np.repeat(np.arange(seed.num_rows), np.diff(seed_starts))
  num_shards = 8
  os.makedirs(out)
  shards = []
  for index in range(num_shards):
    count = num_chunks // num_shards + (index < num_chunks % num_shards)
    chunks_name, documents_name, rows_name = prepared.shard_names(index, num_shards)
    writer = array_record_module.ArrayRecordWriter(os.path.join(out, chunks_name), "group_size:1")
    first = sum(s["num_chunks"] for s in shards)
    for i in range(first, first + count):
      writer.write(records[i % len(records)])
    writer.close()
    chunk = np.arange(first, first + count)
    np.save(os.path.join(out, documents_name), chunk)
    _, row_of = np.unique((chunk // len(seed)) * seed.num_rows + seed_row[chunk % len(seed)],
                          return_inverse=True)
    np.save(os.path.join(out, rows_name), row_of)
    shards.append({"chunks": chunks_name, "documents": documents_name, "rows": rows_name,
                   "num_rows": int(row_of.max()) + 1, "num_chunks": count,
                   "num_documents": count, "tokens": 0, "dropped_chunks": 0,
                   "dropped_tokens": 0, "skipped_lines": {}})
  meta = dict(seed.meta, source=f"{seed.meta['source']} repeated to {num_chunks} chunks",
              shards=shards)
  meta["stats"] = dict(meta["stats"], chunks=num_chunks, documents=num_chunks, tokens=None)
  meta["pack"] = dict(seed.meta["pack"], rows=sum(s["num_rows"] for s in shards))
  shutil.copytree(os.path.join(seed_dir, prepared.TOKENIZER_DIR),
                  os.path.join(out, prepared.TOKENIZER_DIR))
  with open(os.path.join(out, prepared.META), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=1)


def main(argv):
  del argv
  seed_dir = os.path.join(_WORK.value, "seed")
  big = os.path.join(_WORK.value, f"repeated_packed_{_NUM_CHUNKS.value}")
  if not os.path.exists(os.path.join(seed_dir, prepared.META)):
    shutil.rmtree(seed_dir, ignore_errors=True)
    _run("-m", "retromae_jax.tools.prepare", "--source=pydoc:modules", f"--out={seed_dir}",
         _CONFIG)
  if not os.path.exists(os.path.join(big, prepared.META)):
    shutil.rmtree(big, ignore_errors=True)
    _repeat(seed_dir, big, _NUM_CHUNKS.value)

  common = ["-m", "retromae_jax.tools.input_bench", _CONFIG, f"--config.batch_size={_BATCH}",
            f"--config.data.pack={_PACK.value}", "--num_batches=2"]
  result = {"num_chunks": _NUM_CHUNKS.value, "batch_size": _BATCH, "max_seq_length": 512,
            "pack": _PACK.value,
            "prepared": {}, "raw": {}}
  for step in map(int, _STEPS.value):
    out, wall = _run(*common, f"--config.data.source=prepared:{big}", f"--start_step={step}")
    result["prepared"][step] = {"seconds_to_first_batch": out["seconds_to_first_batch"],
                                "process_seconds": round(wall, 1)}
    print(f"prepared, resume at step {step}: first batch after "
          f"{out['seconds_to_first_batch']:.2f} s (process {wall:.1f} s)", flush=True)
  raw = {}
  for step in map(int, _RAW_STEPS.value):
    out, wall = _run(*common, "--config.data.source=pydoc:modules", f"--start_step={step}")
    raw[step] = out["seconds_to_first_batch"]
    result["raw"][step] = {"seconds_to_first_batch": raw[step], "process_seconds": round(wall, 1)}
    print(f"raw text, resume at step {step}: first batch after {raw[step]:.2f} s "
          f"(process {wall:.1f} s)", flush=True)
  low, high = min(raw), max(raw)
  if high < _RAW_TO.value and high > low:
    per_step = (raw[high] - raw[low]) / (high - low)
    estimate = raw[low] + per_step * (_RAW_TO.value - low)
    result["raw"][f"{_RAW_TO.value} (extrapolated)"] = {"seconds_to_first_batch": round(estimate)}
    print(f"raw text, resume at step {_RAW_TO.value}: about {estimate:.0f} s (extrapolated, "
          f"{per_step:.3f} s per step skipped)", flush=True)
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
