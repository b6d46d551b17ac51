"""What the pretraining input reads, resolved once at start-up from the config
(trainers/settings.pretrain_input): the corpus, the sizes and ratios of the batch contract, the
shard arithmetic and the objective whose fields the batches carry. Frozen: the pipeline, the
prepared corpora and `prepare` take this, never the raw config. Messages name the config keys
(`data.max_seq_length`, ...) that the fields come from.
"""

import dataclasses

from retromae_jax.objectives.settings import ObjectiveConfig


@dataclasses.dataclass(frozen=True)
class PretrainInput:
  source: str  # data.source
  data_dir: str  # data.data_dir (TFDS)
  tokenizer: str  # config.tokenizer, as given (a name or a directory)
  max_seq_length: int  # data.max_seq_length
  min_chunk_tokens: int  # data.min_chunk_tokens
  encoder_mask_ratio: float  # data.encoder_mask_ratio
  decoder_mask_ratio: float  # data.decoder_mask_ratio
  decoder_pool_size: int  # data.decoder_pool_size
  pack: bool  # data.pack
  shuffle_buffer: int  # data.shuffle_buffer
  num_shards: int  # data.num_shards (0: one per process)
  prefetch: int  # data.prefetch
  batch_size: int  # config.batch_size: the GLOBAL batch
  seed: int  # config.seed
  objective: ObjectiveConfig = ObjectiveConfig()  # objective.* / decoder.* / encoder.*
