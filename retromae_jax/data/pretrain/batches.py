"""The pretraining batch contract, shared by both sources of pretraining input (raw text,
pipeline.py; prepared corpora, prepared.py): the masking spec read from the config, the batch's
shapes and the shard arithmetic that makes a global batch independent of the process count.
"""

import ml_collections
import numpy as np
import tokenizers

from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.data.pretrain import masking
from retromae_jax.objectives import contract, registry
from retromae_jax.objectives.settings import objective_config_from


def masking_spec(config: ml_collections.ConfigDict,
                 tokenizer: tokenizers.Tokenizer) -> masking.MaskingSpec:
  """What masking.make_batch needs: the config's data section and objective, the tokenizer's ids."""
  ids = tokenizer_lib.special_ids(tokenizer)
  return masking.MaskingSpec(
      max_seq_length=config.data.max_seq_length,
      encoder_mask_ratio=config.data.encoder_mask_ratio,
      decoder_mask_ratio=config.data.decoder_mask_ratio,
      decoder_pool_size=config.data.decoder_pool_size,
      mask_id=ids.mask,
      vocab_size=ids.vocab_size,
      is_continuation=tokenizer_lib.continuation_table(tokenizer),
      is_special=tokenizer_lib.special_table(tokenizer),
      objective=objective_config_from(config),
      pad_id=ids.pad,
      pack=config.data.get("pack", False))


def host_batch_size(config: ml_collections.ConfigDict, process_count: int) -> int:
  if config.batch_size % process_count:
    raise ValueError(f"batch_size {config.batch_size} is not divisible by the "
                     f"{process_count} processes")
  return config.batch_size // process_count


def data_shards(config: ml_collections.ConfigDict, process_count: int) -> int:
  """How many logical shards the corpus is read as (config.data.num_shards; 0 = one per process).

  A shard is a fixed slice of the documents with its own shuffle and mask seeds, and it fills a
  fixed block of rows of every global batch; each process reads the shards whose rows it hosts.
  So with a fixed number of shards, the global batches do not depend on the process count: 1
  process with 8 devices trains on exactly what 2 processes x 4 devices do.
  """
  shards = config.data.num_shards or process_count
  if shards % process_count or config.batch_size % shards:
    raise ValueError(f"config.data.num_shards: {shards} shards must be a multiple of the "
                     f"{process_count} processes and divide batch_size {config.batch_size}")
  return shards


def batch_shapes(config: ml_collections.ConfigDict,
                 batch_size: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """name -> (shape, dtype) of every array of the batch contract, for the config's objective."""
  seq_len = config.data.max_seq_length
  dims = contract.Dims(batch_size, seq_len,
                       masking.encoder_capacity(seq_len, config.data.encoder_mask_ratio),
                       config.data.decoder_pool_size, config.data.get("pack", False))
  return registry.batch_shapes(objective_config_from(config), dims)
