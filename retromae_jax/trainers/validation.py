"""Start-up validation of a config, run once when the mesh is known: each problem is one
ValueError naming the key ('config.KEY: expected ..., got ...'). Pretraining and fine-tuning share
the checks of the keys they share."""

import functools

from retromae_jax.evaluators import metrics as retrieval_metrics
from retromae_jax.evaluators.embed import POOLING_CHOICES, POOLINGS
from retromae_jax.models import pooling
from retromae_jax.models.biencoder import SIMILARITIES
from retromae_jax.models import vocab_loss
from retromae_jax.trainers import anchor, loop, settings, sharding
from retromae_jax.objectives import registry


def validate(config, num_data_parallel: int | None = None, num_processes: int = 1, *,
             shape_known: bool | None = None):
  """Raises ValueError('config.KEY: ...') on the first invalid setting of a pretraining or
  fine-tuning config (config.task). num_data_parallel: the mesh's data x fsdp size, once known.
  shape_known: whether config.model holds the final shape (default: when no initial model, whose
  config decides it, is set); only then are lengths checked against it."""
  finetune = config.task == "finetune"
  if shape_known is None:
    init = config.init
    shape_known = not (init.get("model") or init.get("hf_dir") or init.get("checkpoint"))
  checks = _shared_checks(config, shape_known)
  checks += (_finetune_checks(config, shape_known) if finetune
             else _pretrain_checks(config, shape_known))
  init = config.init
  checks += anchor.checks(config, bool(init.get("model") or init.get("hf_dir")
                                       or init.get("checkpoint")))
  for key, ok, expected in checks:
    if not ok:
      value = functools.reduce(getattr, key.split("."), config)
      raise ValueError(f"config.{key}: {expected}, got {value!r}")
  if finetune:
    _check_eval_metric(config.eval)
    _check_finetune_loss_and_data(config, shape_known)
  else:
    _check_pretrain_combinations(config)
  if num_data_parallel:
    _check_mesh(config, num_data_parallel, num_processes, finetune)


def _shared_checks(config, shape_known: bool):
  m, e = config.model, config.eval
  return [
      ("seed", config.seed >= 0, "expected >= 0"),
      ("dropout_prng", config.dropout_prng in loop.DROPOUT_PRNGS,
       f"expected one of {sorted(loop.DROPOUT_PRNGS)}"),
      ("batch_size", config.batch_size > 0, "expected a positive global batch size"),
      ("total_steps", config.total_steps > 0, "expected a positive number of steps"),
      ("log_every", config.log_every > 0, "expected a positive interval"),
      ("checkpoint_every", config.checkpoint_every > 0, "expected a positive interval"),
      ("checkpoint_keep", config.checkpoint_keep > 0, "expected >= 1"),
      ("model.num_heads", not shape_known or (m.num_heads > 0 and m.hidden_size % m.num_heads == 0),
       f"expected a divisor of model.hidden_size ({m.hidden_size})"),
      ("model.dtype", m.dtype in ("auto", "float32", "bfloat16", "float16"),
       "expected auto, float32, bfloat16 or float16"),
      ("model.remat", m.remat in ("none", "full", "dots"), "expected none, full or dots"),
      ("model.vocab_loss", m.vocab_loss in ("auto", *vocab_loss.VOCAB_LOSSES),
       f"expected auto, {', '.join(vocab_loss.VOCAB_LOSSES)}"),
      ("model.vocab_loss_block", isinstance(m.vocab_loss_block, int) and m.vocab_loss_block > 0,
       "expected an integer >= 1"),
      ("optim.warmup_ratio", 0.0 <= config.optim.warmup_ratio < 1.0, "expected [0, 1)"),
      ("sharding_rules", config.sharding_rules in sharding.LOGICAL_AXIS_RULES,
       f"expected one of {sorted(sharding.LOGICAL_AXIS_RULES)}"),
      ("eval.every_steps", e.every_steps >= 0, "expected >= 0"),
      ("eval.top_k", e.top_k >= 1, "expected >= 1"),
      ("eval.batch_size", e.batch_size >= 1, "expected >= 1"),
  ]


def _pretrain_checks(config, shape_known: bool):
  d, m = config.data, config.model
  max_len = settings.max_length(m) if shape_known else float("inf")  # positions less the offset
  return [
      ("data.encoder_mask_ratio", 0.0 < d.encoder_mask_ratio < 1.0, "expected a ratio in (0, 1)"),
      ("data.decoder_mask_ratio", 0.0 < d.decoder_mask_ratio < 1.0, "expected a ratio in (0, 1)"),
      ("data.max_seq_length", 8 <= d.max_seq_length <= max_len,
       f"expected 8..model.max_position_embeddings ({max_len})"),
      ("data.decoder_pool_size", d.decoder_pool_size >= 1, "expected >= 1"),
      ("data.num_shards", d.num_shards >= 0, "expected >= 0 (0 = one per process)"),
      ("model.query_stream", m.query_stream in ("embeddings", "raw"),
       "expected 'embeddings' or 'raw'"),
      ("model.vocab_multiple", m.vocab_multiple >= 1, "expected >= 1"),
      ("model.sentence_vector", m.get("sentence_vector", "cls") in pooling.POOLINGS,
       f"expected one of {pooling.POOLINGS}"),
      ("optim.freeze_encoder_steps",
       0 <= config.optim.freeze_encoder_steps < config.total_steps,
       "expected 0 (off) or fewer steps than total_steps"),
      ("optim.encoder_learning_rate", config.optim.encoder_learning_rate >= 0,
       "expected >= 0 (0 = optim.learning_rate)"),
      ("grad_accum_steps", config.grad_accum_steps >= 1, "expected >= 1"),
      ("checkpoint_keep_period", config.checkpoint_keep_period >= 0, "expected >= 0 (0 = none)"),
      ("eval.pooling", config.eval.pooling in POOLINGS, f"expected one of {POOLINGS}"),
      ("eval.query_max_len", config.eval.query_max_len >= 3, "expected >= 3"),
      ("eval.passage_max_len", config.eval.passage_max_len >= 3, "expected >= 3"),
  ] + registry.config_checks(config, settings.objective(config))


def _finetune_checks(config, shape_known: bool):
  d, m = config.data, config.model
  max_len = settings.max_length(m) if shape_known else float("inf")  # positions less the offset
  chunk = config.gradient_cache.chunk_size
  return [
      ("task", config.task == "finetune", "expected 'finetune'"),
      ("data.train", bool(d.train), "expected a source (jsonl:GLOB, beir:DIR or pydoc)"),
      ("data.group_size", d.group_size >= 1, "expected >= 1 (1 positive + group_size - 1 "
       "negatives)"),
      ("data.query_max_len", 3 <= d.query_max_len <= max_len,
       f"expected 3..model.max_position_embeddings ({max_len})"),
      ("data.passage_max_len", 3 <= d.passage_max_len <= max_len,
       f"expected 3..model.max_position_embeddings ({max_len})"),
      ("model.pooling", m.pooling in POOLING_CHOICES, f"expected one of {POOLING_CHOICES}"),
      ("model.similarity", m.similarity in SIMILARITIES, f"expected one of {SIMILARITIES}"),
      ("model.temperature", m.temperature >= 0, "expected > 0, or 0 for the similarity's "
       "default"),
      ("gradient_cache.chunk_size", chunk >= 0, "expected >= 0 (0 = off)"),
      ("gradient_cache.chunk_size", not chunk or config.batch_size % chunk == 0,
       f"expected a divisor of batch_size ({config.batch_size})"),
  ]


def _check_finetune_loss_and_data(config, shape_known: bool):
  from retromae_jax.data import mixture  # numpy only: no input pipeline at validation
  loss = config.get("loss")
  datasets = mixture.parse(config.data.train)
  if loss is not None:
    if not loss.kd_weight >= 0:
      raise ValueError(f"config.loss.kd_weight: expected >= 0 (0 = off), got {loss.kd_weight}")
    if not loss.kd_temperature > 0:
      raise ValueError(f"config.loss.kd_temperature: expected > 0, got {loss.kd_temperature}")
    if loss.kd_weight and config.data.group_size < 2:
      raise ValueError("config.loss.kd_weight: distillation compares the passages of a query's "
                       f"group; expected data.group_size >= 2, got {config.data.group_size}")
    if loss.kd_weight:
      for dataset in datasets:
        if not dataset.source.startswith("jsonl:"):
          raise ValueError(f"config.loss.kd_weight: {dataset.source!r} carries no teacher "
                           "scores; distillation reads them from jsonl lines (pos_scores / "
                           "neg_scores)")
    dims, _ = settings.matryoshka(loss)
    if shape_known and dims and max(dims) > config.model.hidden_size:
      raise ValueError(f"config.loss.matryoshka_dims: expected sizes <= model.hidden_size "
                       f"({config.model.hidden_size}), got {dims}")
  try:
    eval_dims = [int(x) for x in str(config.eval.get("dims", "") or "").split(",") if x.strip()]
  except ValueError:
    raise ValueError(f"config.eval.dims: expected comma-separated sizes, got "
                     f"{config.eval.dims!r}") from None
  if any(x < 1 or (shape_known and x > config.model.hidden_size) for x in eval_dims):
    raise ValueError(f"config.eval.dims: expected sizes in 1..model.hidden_size, got {eval_dims}")
  if config.eval.get("patience", 0) < 0:
    raise ValueError(f"config.eval.patience: expected >= 0 (0 = never stop early), got "
                     f"{config.eval.patience}")


def _check_eval_metric(e):
  try:
    _, k = retrieval_metrics.parse_measure(e.metric)
  except ValueError as err:
    raise ValueError(f"config.eval.metric: {err}") from None
  if k > e.top_k:
    raise ValueError(f"config.eval.metric: {e.metric} needs eval.top_k >= {k}, got {e.top_k}")


def _check_pretrain_combinations(config):
  if config.init.decoder_dir and config.objective.kind != "retromae":
    raise ValueError(f"config.init.decoder_dir: objective.kind={config.objective.kind!r} has no "
                     "decoder to initialise")
  if config.init.checkpoint and config.init.hf_dir:
    raise ValueError("config.init.checkpoint and config.init.hf_dir: set one (the checkpoint "
                     "already holds an encoder)")
  accum = config.grad_accum_steps
  if config.batch_size % accum:
    raise ValueError(f"config.grad_accum_steps: batch_size {config.batch_size} is not divisible "
                     f"into {accum} microbatches")


def _check_mesh(config, num_data_parallel: int, num_processes: int, finetune: bool):
  if config.batch_size % num_data_parallel:
    raise ValueError(f"config.batch_size: {config.batch_size} is not divisible by the "
                     f"{num_data_parallel} data-parallel devices of the mesh (data x fsdp)")
  if finetune:
    chunk = config.gradient_cache.chunk_size
    if chunk and chunk % num_data_parallel:
      raise ValueError(f"config.gradient_cache.chunk_size: {chunk} is not divisible by the "
                       f"{num_data_parallel} data-parallel devices (every chunk spans them all)")
  elif config.batch_size % (config.grad_accum_steps * num_data_parallel):
    raise ValueError(f"config.grad_accum_steps: batch_size {config.batch_size} is not divisible "
                     f"into {config.grad_accum_steps} microbatches over {num_data_parallel} "
                     "data-parallel devices")
  if num_data_parallel % num_processes:
    # Each process feeds whole batch shards; a shard split across processes would get two
    # different halves of data.
    raise ValueError(f"config.mesh: data x fsdp = {num_data_parallel} is not a multiple of the "
                     f"{num_processes} processes")
