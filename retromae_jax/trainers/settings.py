"""The config, resolved once at start-up into the frozen settings each layer takes.

configs/*.py stay the user's interface (`--config.a.b=value`); the programs validate the config
(validation.py, preflight.py, the objective registry's part checks) and then hand each concern
its own settings: the pretraining input (data/pretrain/settings.PretrainInput), the objective
(objectives/settings.ObjectiveConfig), the model (models/bert.ModelConfig), the Matryoshka
sizes of the contrastive loss and the periodic evaluator. Code below the programs reads those,
never the ConfigDict, so a key is read in one place.
"""

import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from retromae_jax.data import pairs_checks
from retromae_jax.data.evalsets import beir
from retromae_jax.data.pretrain.settings import PretrainInput
from retromae_jax.evaluators import metrics as retrieval_metrics
from retromae_jax.evaluators import periodic
from retromae_jax.models.bert import DEFAULT_PAD, FAMILIES, OFFSET_POSITIONS, ModelConfig
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


def max_length(model_section: ml_collections.ConfigDict) -> int:
  """The longest input `config.model`'s positions cover (ModelConfig.max_length)."""
  family, pad = model_section.family, model_section.pad_token_id
  pad = pad if pad >= 0 else DEFAULT_PAD.get(family, 0)
  return model_section.max_position_embeddings - (pad + 1 if family in OFFSET_POSITIONS else 0)


def model(config: ml_collections.ConfigDict, vocab_size: int) -> ModelConfig:
  """The static ModelConfig of `config.model`, resolving 'auto' dtype and vocab -1."""
  m = config.model
  if m.family not in FAMILIES:
    raise ValueError(f"config.model.family: expected one of {', '.join(FAMILIES)}, got "
                     f"{m.family!r}")
  dtype = m.dtype
  if dtype == "auto":
    dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  vocab_loss = m.vocab_loss
  if vocab_loss == "auto":  # configs/base.py: memory decides on accelerators, time on CPUs
    vocab_loss = "plain" if jax.default_backend() == "cpu" else "chunked"
  return ModelConfig(
      vocab_size=m.vocab_size if m.vocab_size > 0 else vocab_size,
      hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads,
      intermediate_size=m.intermediate_size, max_position_embeddings=m.max_position_embeddings,
      type_vocab_size=m.type_vocab_size, dropout_rate=m.dropout_rate,
      attention_dropout_rate=m.attention_dropout_rate, initializer_range=m.initializer_range,
      layer_norm_eps=m.layer_norm_eps, dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(m.param_dtype),
      query_stream=m.query_stream, remat=m.remat, family=m.family,
      pad_token_id=m.pad_token_id if m.pad_token_id >= 0 else DEFAULT_PAD[m.family],
      attention=m.attention, attention_block=m.attention_block,
      sentence_vector=m.sentence_vector, vocab_head=m.vocab_head, vocab_loss=vocab_loss,
      vocab_loss_block=m.vocab_loss_block)


def matryoshka(loss_config: ml_collections.ConfigDict) -> tuple[tuple[int, ...], tuple[float, ...]]:
  """(dims, weights) of config.loss.matryoshka_dims / matryoshka_weights ('' = none / 1 each)."""
  def numbers(key, kind):
    text = str(loss_config[key] or "").strip()
    try:
      return tuple(kind(x) for x in text.split(",")) if text else ()
    except ValueError:
      raise ValueError(f"config.loss.{key}: expected comma-separated numbers, got {text!r}") from None
  dims, weights = numbers("matryoshka_dims", int), numbers("matryoshka_weights", float)
  if any(d < 1 for d in dims) or len(set(dims)) != len(dims):
    raise ValueError(f"config.loss.matryoshka_dims: expected distinct sizes >= 1, got {dims}")
  if weights and len(weights) != len(dims):
    raise ValueError(f"config.loss.matryoshka_weights: expected {len(dims)} weights (one per "
                     f"matryoshka_dims), got {len(weights)}")
  return dims, weights


def retrieval_evaluator(config: ml_collections.ConfigDict, model_cfg: ModelConfig, tokenizer,
                        writer, on_result=None) -> periodic.RetrievalEvaluator | None:
  """The periodic evaluator config.eval asks for, or None (eval.data = '')."""
  e = config.eval
  if not e.data:
    return None
  if config.task == "finetune":
    # Fine-tuning evaluates as it trains: its pooling, similarity, lengths and instructions.
    d, m = config.data, config.model
    # eval.dims, or a Matryoshka model's sizes: also scored truncated to each size below the
    # full vector's (eval/dim<d>/<measure> rows).
    dims = tuple(int(x) for x in str(e.dims or "").split(",") if x.strip())
    if not dims:
      dims, _ = matryoshka(config.loss)
    embed_kwargs = dict(pooling=m.pooling, normalize=m.similarity == "cosine",
                        max_len=d.passage_max_len, query_max_len=d.query_max_len,
                        query_prefix=d.query_instruction, passage_prefix=d.passage_instruction,
                        dims=tuple(x for x in dims if x < model_cfg.hidden_size))
    measures = tuple(dict.fromkeys(retrieval_metrics.DEFAULT_MEASURES + (e.metric,)))
  else:
    limit = model_cfg.max_length
    embed_kwargs = dict(pooling=e.pooling, normalize=e.normalize,
                        max_len=min(e.passage_max_len, limit),
                        query_max_len=min(e.query_max_len, limit))
    measures = retrieval_metrics.DEFAULT_MEASURES
  start = time.perf_counter()
  data = beir.load(periodic.beir_dir(e.data), e.split, e.allow_missing_ids)
  logging.info("Evaluation set %s (%s split): %d queries, %d documents, loaded in %.1f s",
               e.data, e.split, len(data.queries), len(data.corpus),
               time.perf_counter() - start)
  return periodic.RetrievalEvaluator(
      data, model_cfg, tokenizer, writer, every_steps=e.every_steps,
      total_steps=config.total_steps, measures=measures,
      embed_kwargs=dict(embed_kwargs, batch_size=e.batch_size, top_k=e.top_k),
      on_result=on_result)


def pairs_data(config: ml_collections.ConfigDict) -> pairs_checks.PairsData:
  """config.data as the fine-tuning data's start-up checks read it."""
  d = config.data
  return pairs_checks.PairsData(
      train=d.train, split=d.split, hard_negatives=d.hard_negatives, group_size=d.group_size,
      max_unusable_fraction=float(d.max_unusable_fraction),
      max_short_groups_fraction=float(d.max_short_groups_fraction),
      min_hard_negatives_coverage=float(d.min_hard_negatives_coverage))
