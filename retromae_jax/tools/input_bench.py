"""Throughput of the host input pipeline alone (no model).

  python -m retromae_jax.tools.input_bench --config=configs/base.py:minilm [--num_batches=50]
      [--start_step=N] [--config.data.source=prepared:DIR]

The last stdout line is JSON:
  seconds_to_first_batch         from building the pipeline to its first batch, which is batch
                                 start_step: what a resume at that step waits for (the raw
                                 pipeline reads and tokenises every batch before it; a prepared
                                 corpus seeks to it)
  examples_per_s, tokens_per_s   the whole pipeline (documents -> masked batches), after one
                                 warm-up batch; tokens = real tokens (attention_mask)
  masking_examples_per_s         masking.make_batch alone on already-tokenised batches: the
                                 work FlagEmbedding's PyTorch collator does per batch (rows:
                                 packed rows with data.pack); masking_tokens_per_s: real tokens;
                                 masking_examples_per_cpu_s: per CPU second of the process
                                 (steadier than the wall clock on a loaded machine)
"""

import json
import time

import numpy as np
from absl import flags
from ml_collections import config_flags

from retromae_jax.data import source_spec
from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.data.pretrain import batch_contract, masking, pipeline, prepared
from retromae_jax.trainers import settings
from retromae_jax.tools import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/base.py:PRESET")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 50, "batches to time")
_START_STEP = flags.DEFINE_integer("start_step", 0, "the first batch, as a resume at that step")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  config = _CONFIG.value
  num_batches = _NUM_BATCHES.value
  tokenizer = tokenizer_lib.load_tokenizer(config.tokenizer)
  input_settings = settings.pretrain_input(config)
  batch_size = batch_contract.host_batch_size(input_settings, 1)

  start = time.perf_counter()
  batches = pipeline.pretrain_batches(input_settings, tokenizer, start_step=_START_STEP.value)
  next(batches)  # also the warm-up: reading the source, filling the shuffle buffer
  to_first_batch = time.perf_counter() - start
  start = time.perf_counter()
  tokens = sum(int(next(batches)["attention_mask"].sum()) for _ in range(num_batches))
  elapsed = time.perf_counter() - start
  batches.close()

  # Masking alone, on the same kind of batches (packed rows with data.pack), tokenised and
  # packed beforehand.
  spec = batch_contract.masking_spec(input_settings, tokenizer)
  if source_spec.is_prepared(config.data.source):  # read by index: packed rows with data.pack
    data = prepared.PreparedData(input_settings, tokenizer)
    read = ((lambda positions: data.packed_rows(positions)[:3]) if spec.pack
            else lambda positions: (*data.rows(positions)[:2], None))
    raw = [read(np.arange(i * batch_size, (i + 1) * batch_size)) for i in range(num_batches)]
  else:
    chunks = pipeline.chunk_dataset(input_settings, tokenizer)
    if spec.pack:
      chunks = pipeline.packed_rows(chunks, spec)
    else:
      chunks = chunks.map(lambda ids, length: (ids, length, ids * 0))
    raw = list(chunks.repeat().batch(batch_size).take(num_batches).as_numpy_iterator())
  rng = np.random.default_rng(config.seed)
  make = lambda ids, lengths, segments: masking.make_batch(ids, lengths, spec, rng,
                                                           segments if spec.pack else None)
  make(*raw[0])  # warm-up
  start, cpu_start = time.perf_counter(), time.process_time()
  for batch in raw:
    make(*batch)
  mask_elapsed, mask_cpu = time.perf_counter() - start, time.process_time() - cpu_start
  mask_tokens = sum(int(lengths.sum()) for _, lengths, _ in raw)

  print(json.dumps({
      "examples_per_s": round(num_batches * batch_size / elapsed, 1),
      "tokens_per_s": round(tokens / elapsed, 1),
      "masking_examples_per_s": round(len(raw) * batch_size / mask_elapsed, 1),
      "seconds_to_first_batch": round(to_first_batch, 3),
      "start_step": _START_STEP.value,
      "masking_tokens_per_s": round(mask_tokens / mask_elapsed, 1),
      "masking_examples_per_cpu_s": round(len(raw) * batch_size / mask_cpu, 1),
      "pack": spec.pack,
      "batch_size": batch_size,
      "max_seq_length": config.data.max_seq_length,
      "num_batches": num_batches,
  }))


if __name__ == "__main__":
  cli.run(main)
