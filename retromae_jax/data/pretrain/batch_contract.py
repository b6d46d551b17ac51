"""The pretraining batch contract, shared by both sources of pretraining input (raw text,
pipeline.py; prepared corpora, prepared.py): the masking spec read from the config, the batch's
shapes and the shard arithmetic that makes a global batch independent of the process count.
"""

import numpy as np
import tokenizers

from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.data.pretrain.settings import PretrainInput
from retromae_jax.data.pretrain import masking
from retromae_jax.objectives import contract, registry


def masking_spec(settings: PretrainInput,
                 tokenizer: tokenizers.Tokenizer) -> masking.MaskingSpec:
  """What masking.make_batch needs: the config's data section and objective, the tokenizer's ids."""
  ids = tokenizer_lib.special_ids(tokenizer)
  return masking.MaskingSpec(
      max_seq_length=settings.max_seq_length,
      encoder_mask_ratio=settings.encoder_mask_ratio,
      decoder_mask_ratio=settings.decoder_mask_ratio,
      decoder_pool_size=settings.decoder_pool_size,
      mask_id=ids.mask,
      vocab_size=ids.vocab_size,
      is_continuation=tokenizer_lib.continuation_table(tokenizer),
      is_special=tokenizer_lib.special_table(tokenizer),
      objective=settings.objective,
      pad_id=ids.pad,
      pack=settings.pack)


def host_batch_size(settings: PretrainInput, process_count: int) -> int:
  if settings.batch_size % process_count:
    raise ValueError(f"batch_size {settings.batch_size} is not divisible by the "
                     f"{process_count} processes")
  return settings.batch_size // process_count


def data_shards(settings: PretrainInput, process_count: int) -> int:
  """How many logical shards the corpus is read as (settings.num_shards; 0 = one per process).

  A shard is a fixed slice of the documents with its own shuffle and mask seeds, and it fills a
  fixed block of rows of every global batch; each process reads the shards whose rows it hosts.
  So with a fixed number of shards, the global batches do not depend on the process count: 1
  process with 8 devices trains on exactly what 2 processes x 4 devices do.
  """
  shards = settings.num_shards or process_count
  if shards % process_count or settings.batch_size % shards:
    raise ValueError(f"config.data.num_shards: {shards} shards must be a multiple of the "
                     f"{process_count} processes and divide batch_size {settings.batch_size}")
  return shards


def batch_shapes(settings: PretrainInput,
                 batch_size: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """name -> (shape, dtype) of every array of the batch contract, for the config's objective."""
  seq_len = settings.max_seq_length
  dims = contract.Dims(batch_size, seq_len,
                       masking.encoder_capacity(seq_len, settings.encoder_mask_ratio),
                       settings.decoder_pool_size, settings.pack)
  return registry.batch_shapes(settings.objective, dims)
