"""Start-up validation of a pretraining config: each problem is one line naming the key."""

import functools

from retromae_jax.models import pooling
from retromae_jax.trainers import sharding
from retromae_jax.models.objectives import config as objectives


def validate(config, num_data_parallel: int | None = None, num_processes: int = 1):
  """Raises ValueError('config.KEY: ...') on the first invalid setting."""
  d, m = config.data, config.model
  for key in ("encoder_mask_ratio", "decoder_mask_ratio"):
    value = d[key]
    if not 0.0 < value < 1.0:
      raise ValueError(f"config.data.{key}: expected a ratio in (0, 1), got {value}")
  checks = [
      ("batch_size", config.batch_size > 0, "expected a positive global batch size"),
      ("total_steps", config.total_steps > 0, "expected a positive number of steps"),
      ("log_every", config.log_every > 0, "expected a positive interval"),
      ("checkpoint_every", config.checkpoint_every > 0, "expected a positive interval"),
      ("data.max_seq_length", 8 <= d.max_seq_length <= m.max_position_embeddings,
       f"expected 8..model.max_position_embeddings ({m.max_position_embeddings})"),
      ("data.decoder_pool_size", d.decoder_pool_size >= 1, "expected >= 1"),
      ("model.num_heads", m.num_heads > 0 and m.hidden_size % m.num_heads == 0,
       f"expected a divisor of model.hidden_size ({m.hidden_size})"),
      ("model.query_stream", m.query_stream in ("embeddings", "raw"),
       "expected 'embeddings' or 'raw'"),
      ("model.sentence_vector", m.get("sentence_vector", "cls") in pooling.POOLINGS and (
          m.get("sentence_vector", "cls") == "cls" or config.objective.kind == "mlm"
          or config.decoder.kind == "enhanced"),
       f"expected one of {pooling.POOLINGS} ('mean' with decoder.kind=enhanced only)"),
      ("optim.freeze_encoder_steps",
       0 <= config.optim.get("freeze_encoder_steps", 0) < config.total_steps,
       "expected 0 (off) or fewer steps than total_steps"),
      ("optim.encoder_learning_rate", config.optim.get("encoder_learning_rate", 0.0) >= 0,
       "expected >= 0 (0 = optim.learning_rate)"),
      ("model.dtype", m.dtype in ("auto", "float32", "bfloat16", "float16"),
       "expected auto, float32, bfloat16 or float16"),
      ("optim.warmup_ratio", 0.0 <= config.optim.warmup_ratio < 1.0, "expected [0, 1)"),
      ("grad_accum_steps", config.grad_accum_steps >= 1, "expected >= 1"),
      ("model.remat", m.remat in ("none", "full", "dots"), "expected none, full or dots"),
      ("sharding_rules", config.sharding_rules in sharding.LOGICAL_AXIS_RULES,
       f"expected one of {sorted(sharding.LOGICAL_AXIS_RULES)}"),
  ]
  for key, ok, expected in checks + _objective_checks(config):
    if not ok:
      value = functools.reduce(getattr, key.split("."), config)
      raise ValueError(f"config.{key}: {expected}, got {value!r}")
  if config.checkpoint_keep < 1 or config.checkpoint_keep_period < 0:
    raise ValueError(f"config.checkpoint_keep / checkpoint_keep_period: expected >= 1 / >= 0, got "
                     f"{config.checkpoint_keep} / {config.checkpoint_keep_period}")
  if config.model.vocab_multiple < 1:
    raise ValueError(f"config.model.vocab_multiple: expected >= 1, got "
                     f"{config.model.vocab_multiple}")
  if config.data.num_shards < 0:
    raise ValueError(f"config.data.num_shards: expected >= 0 (0 = one per process), got "
                     f"{config.data.num_shards}")
  if config.init.decoder_dir and config.objective.kind != "retromae":
    raise ValueError(f"config.init.decoder_dir: objective.kind={config.objective.kind!r} has no "
                     "decoder to initialise")
  if config.init.checkpoint and config.init.hf_dir:
    raise ValueError("config.init.checkpoint and config.init.hf_dir: set one (the checkpoint "
                     "already holds an encoder)")
  if num_data_parallel and config.batch_size % num_data_parallel:
    raise ValueError(f"config.batch_size: {config.batch_size} is not divisible by the "
                     f"{num_data_parallel} data-parallel devices of the mesh (data x fsdp)")
  if config.batch_size % (config.grad_accum_steps * (num_data_parallel or 1)):
    raise ValueError(f"config.grad_accum_steps: batch_size {config.batch_size} is not divisible "
                     f"into {config.grad_accum_steps} microbatches over {num_data_parallel or 1} "
                     "data-parallel devices")
  if num_data_parallel and num_data_parallel % num_processes:
    # Each process feeds whole batch shards; a shard split across processes would get two
    # different halves of data.
    raise ValueError(f"config.mesh: data x fsdp = {num_data_parallel} is not a multiple of the "
                     f"{num_processes} processes")


def _objective_checks(config):
  """(key, ok, expected) for the objective, decoder and encoder sections."""
  o, dec, enc = config.objective, config.decoder, config.encoder
  one_of = lambda values: f"expected one of {', '.join(values)}"
  is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
  mlm = o.kind == "mlm"
  return [
      ("objective.kind", o.kind in objectives.OBJECTIVE_KINDS, one_of(objectives.OBJECTIVE_KINDS)),
      ("objective.bow_weight", isinstance(o.bow_weight, (int, float)) and o.bow_weight >= 0,
       "expected a weight >= 0 (0 = no bag-of-words loss)"),
      ("decoder.kind", dec.kind in objectives.DECODER_KINDS, one_of(objectives.DECODER_KINDS)),
      ("decoder.num_layers",
       is_int(dec.num_layers) and 1 <= dec.num_layers <= objectives.MAX_DECODER_LAYERS,
       f"expected 1..{objectives.MAX_DECODER_LAYERS}"),
      ("decoder.cross_attend_to", dec.cross_attend_to in objectives.CROSS_ATTEND_TO,
       one_of(objectives.CROSS_ATTEND_TO)),
      ("decoder.cross_attend_to",
       dec.cross_attend_to == "sentence" or dec.kind == "cross_attention",
       "only the cross_attention decoder has a memory to choose; expected 'sentence'"),
      ("decoder.attention_span", is_int(dec.attention_span) and dec.attention_span >= 0,
       "expected >= 0 (0 = every earlier token)"),
      ("decoder.attention_span", dec.attention_span == 0 or dec.kind == "autoregressive",
       "only the autoregressive decoder has an attention span; expected 0"),
      ("encoder.masking", enc.masking in objectives.ENCODER_MASKINGS,
       one_of(objectives.ENCODER_MASKINGS)),
      # The MLM baseline has no decoder: a decoder setting would silently do nothing.
      ("decoder.kind", not mlm or dec.kind == "enhanced",
       "objective.kind='mlm' has no decoder; leave decoder.kind at 'enhanced'"),
      ("decoder.num_layers", not mlm or dec.num_layers == 1,
       "objective.kind='mlm' has no decoder; leave decoder.num_layers at 1"),
      # Under drop the encoder predicts nothing: the MLM baseline would have no loss left.
      ("encoder.masking", not (mlm and enc.masking == "drop"),
       "objective.kind='mlm' needs 'corrupt' (under 'drop' no encoder state exists at a masked "
       "position, so nothing would be predicted)"),
  ]
