"""The config, resolved once at start-up into the frozen settings each layer takes.

configs/*.py stay the user's interface (`--config.a.b=value`); the programs validate the config
(validation.py, preflight.py, the objective registry's part checks) and then hand each concern
its own settings: the pretraining input (data/pretrain/settings.PretrainInput), the objective
(objectives/settings.ObjectiveConfig), the model (models/bert.ModelConfig). Code below the
programs reads those, never the ConfigDict, so a key is read in one place.
"""

import ml_collections

from retromae_jax.data.pretrain.settings import PretrainInput
from retromae_jax.objectives.settings import ObjectiveConfig


def objective(config: ml_collections.ConfigDict) -> ObjectiveConfig:
  """From the config's top-level `objective`, `decoder` and `encoder` sections."""
  return ObjectiveConfig(
      kind=config.objective.kind, decoder_kind=config.decoder.kind,
      decoder_layers=config.decoder.num_layers, cross_attend_to=config.decoder.cross_attend_to,
      attention_span=config.decoder.attention_span, encoder_masking=config.encoder.masking,
      bow_weight=float(config.objective.bow_weight))


def pretrain_input(config: ml_collections.ConfigDict) -> PretrainInput:
  d = config.data
  return PretrainInput(
      source=d.source, data_dir=d.data_dir, tokenizer=config.tokenizer,
      max_seq_length=d.max_seq_length, min_chunk_tokens=d.min_chunk_tokens,
      encoder_mask_ratio=d.encoder_mask_ratio, decoder_mask_ratio=d.decoder_mask_ratio,
      decoder_pool_size=d.decoder_pool_size, pack=d.pack, shuffle_buffer=d.shuffle_buffer,
      num_shards=d.num_shards, prefetch=d.prefetch, batch_size=config.batch_size,
      seed=config.seed, objective=objective(config))
