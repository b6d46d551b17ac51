"""Contrastive fine-tuning (stage 2): one program, read top to bottom.

Sections: start-up checks; workdir, init, tokenizer and shape; mesh; model and sharded state;
update step; checkpoint restore / init; input; evaluation; loop; export. Everything comes from
the config (configs/finetune.py); the computation itself is retromae_jax/models/biencoder.py and the
data retromae_jax/data/pairs.py.

Outputs in the workdir: metrics.jsonl (+ tensorboard/), checkpoints/<step>, export/encoder (a HF
BertModel directory with the tokenizer, at the end), export/best (the best evaluated step by
config.eval.metric, with best_eval.json).
"""

import functools
import json
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from retromae_jax.interop import export as export_lib
from retromae_jax.models import pooling as pooling_lib
from retromae_jax.trainers import checkpoints
from retromae_jax.models import biencoder as contrastive
from retromae_jax.evaluators import embed as encode
from retromae_jax.evaluators import retrieval as evaluate
from retromae_jax.interop import hf as hf_interop
from retromae_jax.trainers import metrics as metrics_lib
from retromae_jax.trainers import optim
from retromae_jax.trainers import sharding
from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.trainers import train_state
from retromae_jax.data import pairs
from retromae_jax.data import beir
from retromae_jax.evaluators import metrics as retrieval_metrics
from retromae_jax.models.retromae import model_config_from

BEST_EVAL = "best_eval.json"
# Keys of a HF config that fix the model's shape (dropout stays the config's choice).
_SHAPE_KEYS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
               "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
               "initializer_range")


# ------------------------------------------------------------------------------ Start-up checks


def validate(config, num_data_parallel: int | None = None, num_processes: int = 1, *,
             shape_known: bool | None = None):
  """Raises ValueError('config.KEY: ...') on the first invalid setting of a fine-tuning config.

  shape_known: whether config.model holds the final shape (default: when there is no
  init.model, whose config.json decides it); only then are lengths checked against it.
  """
  d, m, e = config.data, config.model, config.eval
  shape_known = not config.init.model if shape_known is None else shape_known
  max_len = m.max_position_embeddings if shape_known else float("inf")
  chunk = config.gradient_cache.chunk_size
  checks = [
      ("task", config.task == "finetune", "expected 'finetune'"),
      ("seed", config.seed >= 0, "expected >= 0"),
      ("batch_size", config.batch_size > 0, "expected a positive global number of queries"),
      ("total_steps", config.total_steps > 0, "expected a positive number of steps"),
      ("log_every", config.log_every > 0, "expected a positive interval"),
      ("checkpoint_every", config.checkpoint_every > 0, "expected a positive interval"),
      ("checkpoint_keep", config.checkpoint_keep > 0, "expected >= 1"),
      ("data.train", bool(d.train), f"expected a source ({pairs.SOURCES})"),
      ("data.group_size", d.group_size >= 1, "expected >= 1 (1 positive + group_size - 1 "
       "negatives)"),
      ("data.query_max_len", 3 <= d.query_max_len <= max_len,
       f"expected 3..model.max_position_embeddings ({max_len})"),
      ("data.passage_max_len", 3 <= d.passage_max_len <= max_len,
       f"expected 3..model.max_position_embeddings ({max_len})"),
      ("model.pooling", m.pooling in encode.POOLING_CHOICES,
       f"expected one of {encode.POOLING_CHOICES}"),
      ("model.similarity", m.similarity in contrastive.SIMILARITIES,
       f"expected one of {contrastive.SIMILARITIES}"),
      ("model.temperature", m.temperature >= 0, "expected > 0, or 0 for the similarity's "
       "default"),
      ("model.num_heads", m.num_heads > 0 and m.hidden_size % m.num_heads == 0,
       f"expected a divisor of model.hidden_size ({m.hidden_size})"),
      ("model.dtype", m.dtype in ("auto", "float32", "bfloat16", "float16"),
       "expected auto, float32, bfloat16 or float16"),
      ("model.remat", m.remat in ("none", "full", "dots"), "expected none, full or dots"),
      ("optim.warmup_ratio", 0.0 <= config.optim.warmup_ratio < 1.0, "expected [0, 1)"),
      ("gradient_cache.chunk_size", chunk >= 0, "expected >= 0 (0 = off)"),
      ("gradient_cache.chunk_size", not chunk or config.batch_size % chunk == 0,
       f"expected a divisor of batch_size ({config.batch_size})"),
      ("eval.every_steps", e.every_steps >= 0, "expected >= 0"),
      ("eval.top_k", e.top_k >= 1, "expected >= 1"),
      ("eval.batch_size", e.batch_size >= 1, "expected >= 1"),
      ("sharding_rules", config.sharding_rules in sharding.LOGICAL_AXIS_RULES,
       f"expected one of {sorted(sharding.LOGICAL_AXIS_RULES)}"),
  ]
  for key, ok, expected in checks:
    if not ok:
      value = functools.reduce(getattr, key.split("."), config)
      raise ValueError(f"config.{key}: {expected}, got {value!r}")
  try:
    _, k = retrieval_metrics.parse_measure(e.metric)
  except ValueError as err:
    raise ValueError(f"config.eval.metric: {err}") from None
  if k > e.top_k:
    raise ValueError(f"config.eval.metric: {e.metric} needs eval.top_k >= {k}, got {e.top_k}")
  if num_data_parallel:
    if config.batch_size % num_data_parallel:
      raise ValueError(f"config.batch_size: {config.batch_size} is not divisible by the "
                       f"{num_data_parallel} data-parallel devices of the mesh (data x fsdp)")
    if chunk and chunk % num_data_parallel:
      raise ValueError(f"config.gradient_cache.chunk_size: {chunk} is not divisible by the "
                       f"{num_data_parallel} data-parallel devices (every chunk spans them all)")
    if num_data_parallel % num_processes:
      raise ValueError(f"config.mesh: data x fsdp = {num_data_parallel} is not a multiple of the "
                       f"{num_processes} processes")


def _beir_dir(spec: str) -> str:
  if spec == "pydoc":
    from retromae_jax.data import pydoc_set  # builds the set on first use
    return pydoc_set.cached_dir()
  return spec.removeprefix("beir:")


def _dropout(model_cfg) -> bool:
  return model_cfg.dropout_rate > 0 or model_cfg.attention_dropout_rate > 0


def train_and_evaluate(config, workdir: str):
  # ---------------------------------------------------------------- Workdir, init, tokenizer, shape
  is_main = jax.process_index() == 0
  validate(config)
  os.makedirs(workdir, exist_ok=True)
  # A pretraining workdir stands for its export/encoder; its shape and tokenizer come along.
  init_dir = encode.resolve_model_dir(config.init.model) if config.init.model else ""
  tokenizer_spec = config.tokenizer or init_dir or "default"
  tokenizer = tokenizer_lib.load_tokenizer(tokenizer_spec)
  with config.unlocked():
    if init_dir:
      overrides = hf_interop.model_overrides(hf_interop.read_hf_config(init_dir))
      config.model.update({k: overrides[k] for k in _SHAPE_KEYS})
    config.model.pooling = pooling_lib.resolve(init_dir, config.model.pooling)
    if not config.model.temperature:
      config.model.temperature = contrastive.DEFAULT_TEMPERATURE[config.model.similarity]
  validate(config, shape_known=True)  # the lengths, against the init model's positions
  model_cfg = model_config_from(config, tokenizer.get_vocab_size())
  if tokenizer.get_vocab_size() > model_cfg.vocab_size:
    raise ValueError(f"config.tokenizer: {tokenizer.get_vocab_size()} tokens, more than the "
                     f"model's vocabulary ({model_cfg.vocab_size})")
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
  logging.info("Model: %s; %s pooling, %s similarity, temperature %g; init %s", model_cfg,
               config.model.pooling, config.model.similarity, config.model.temperature,
               init_dir or "random")

  # ---------------------------------------------------------------- Mesh
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.LOGICAL_AXIS_RULES[config.sharding_rules]
  num_data_parallel = sharding.data_parallel_size(mesh, rules)
  validate(config, num_data_parallel, jax.process_count(), shape_known=True)
  logging.info("Mesh %s over %d devices (%s), %d process(es)", dict(mesh.shape),
               jax.device_count(), jax.devices()[0].device_kind, jax.process_count())

  # ---------------------------------------------------------------- Model and sharded state
  model = contrastive.BiEncoder(model_cfg)
  tx, schedule = optim.make_optimizer(config.optim, config.total_steps)
  example = {name: jax.ShapeDtypeStruct((1, config.data.passage_max_len), jnp.int32)
             for name in ("input_ids", "attention_mask")}
  state, state_shardings = train_state.create_sharded_state(model, tx, example, mesh, rules,
                                                      config.seed)
  logging.info("Parameters: %.1fM", sum(x.size for x in jax.tree.leaves(state.params)) / 1e6)
  spec = contrastive.Spec(model_cfg, config.model.pooling, config.model.similarity,
                          config.model.temperature, rules)

  # ---------------------------------------------------------------- Update step
  d = config.data
  shapes = pairs.batch_shapes(config.batch_size, d.group_size, d.query_max_len,
                              d.passage_max_len)
  batch_sharding = {k: sharding.batch_sharding(mesh, rules) for k in shapes}
  global_example = {k: jax.ShapeDtypeStruct(s, t) for k, (s, t) in shapes.items()}
  dropout_root = jax.random.key(config.seed + 1)

  def update_step(state, batch, chunk_size):
    # Dropout depends on (seed, step, row of the global batch) only: not on the mesh, the
    # gradient cache's chunks, or where the run resumed.
    dropout_key = jax.random.fold_in(dropout_root, state.step) if _dropout(model_cfg) else None
    (loss, aux), grads = contrastive.value_and_grad(spec, state.params, batch, dropout_key,
                                                    chunk_size)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    tokens = batch["query_attention_mask"].sum() + batch["passage_attention_mask"].sum()
    step_metrics = dict(loss=loss, grad_norm=optax.global_norm(grads), lr=schedule(state.step),
                        tokens=tokens, **aux)
    return train_state.TrainState(step=state.step + 1, params=params, opt_state=opt_state), step_metrics

  def compile_step(chunk_size: int):
    return train_state.compile_ahead(
        functools.partial(update_step, chunk_size=chunk_size), state, state_shardings,
        global_example, batch_sharding, mesh, rules, f"gradient cache chunk {chunk_size or 'off'}")

  chunk_size = config.gradient_cache.chunk_size
  train_step, needed = compile_step(chunk_size)
  available = train_state.device_memory_bytes()
  if config.gradient_cache.auto and not chunk_size and available and needed > available:
    # Activations shrink with the chunk; the global batch (and its negatives) stays whole.
    wanted = config.batch_size * available / needed
    chunk_size = max((c for c in range(num_data_parallel, config.batch_size + 1, num_data_parallel)
                      if config.batch_size % c == 0 and c <= wanted), default=num_data_parallel)
    logging.warning("The step needs %.1f GiB per device, %.1f GiB available: gradient cache "
                    "with chunks of %d rows (config.gradient_cache.auto)", needed / 2**30,
                    available / 2**30, chunk_size)
    train_step, needed = compile_step(chunk_size)
    if needed > available:
      raise ValueError(f"config.batch_size: even chunks of {chunk_size} rows need "
                       f"{needed / 2**30:.1f} GiB per device, more than the "
                       f"{available / 2**30:.1f} GiB available: shorten data.passage_max_len, "
                       "set model.remat, or add devices")

  # ---------------------------------------------------------------- Checkpoint restore / init
  mngr = checkpoints.manager(workdir, config)
  meta = checkpoints.make_meta(model_cfg, tokenizer_spec, task="finetune")
  start_step = mngr.latest_step() or 0
  if start_step:
    logging.info("Resuming from %s/checkpoints/%d", workdir, start_step)
    state, _ = checkpoints.restore(mngr, start_step, state)
  elif init_dir:
    state = state.replace(params=hf_interop.load_hf_bert(init_dir, state.params))
    logging.info("Encoder initialised from %s", init_dir)

  # ---------------------------------------------------------------- Input
  examples = pairs.load_examples(d.train, d.split, d.hard_negatives, jax.process_index(),
                                 jax.process_count())
  # Every process turns epochs at the same step: an epoch uses the smallest share's size.
  epoch_size = int(np.min(multihost_utils.process_allgather(np.int32(len(examples)))))
  batches = pairs.GroupBatches(
      examples, tokenizer, batch_size=config.batch_size // jax.process_count(),
      group_size=d.group_size, query_max_len=d.query_max_len,
      passage_max_len=d.passage_max_len, seed=config.seed,
      query_instruction=d.query_instruction, passage_instruction=d.passage_instruction,
      process_index=jax.process_index(), epoch_size=epoch_size)
  logging.info("Data: %d examples per process and epoch, %d steps per epoch, %.2f epochs",
               epoch_size, batches.steps_per_epoch, config.total_steps / batches.steps_per_epoch)
  with_negatives = int(np.sum(multihost_utils.process_allgather(
      np.int32(sum(bool(x.neg) for x in examples)))))
  if d.group_size > 1 and not with_negatives:
    logging.warning("config.data.group_size is %d but no example has negatives: every negative "
                    "slot is an empty passage (masked out of the loss, but encoded). "
                    "group_size=1 trains the same loss faster; or mine negatives "
                    "(python -m retromae_jax.tools.mine) and set data.hard_negatives", d.group_size)
  local_batches = pairs.group_batches(batches, start_step, d.prefetch)

  def global_batch(local):
    return {k: jax.make_array_from_process_local_data(batch_sharding[k], local[k])
            for k in shapes}

  # ---------------------------------------------------------------- Evaluation
  e = config.eval
  eval_data = beir.load(_beir_dir(e.data), e.split) if e.data else None
  measures = tuple(dict.fromkeys(retrieval_metrics.DEFAULT_MEASURES + (e.metric,)))
  best_dir = os.path.join(workdir, "export", "best")
  best = {}
  if os.path.isfile(os.path.join(best_dir, BEST_EVAL)):  # a resumed run keeps its best so far
    with open(os.path.join(best_dir, BEST_EVAL), encoding="utf-8") as f:
      best = json.load(f)

  def export(params, out_dir):
    # Every process takes part in gathering parameters that may span hosts; process 0 writes.
    params = multihost_utils.process_allgather(params, tiled=True)
    if is_main:
      hf_interop.save_hf_bert(params, model_cfg, out_dir,
                              tokenizer_dir=tokenizer_lib.files_dir(tokenizer_spec))

  def run_eval(step, params):
    """Scores `params` on the eval split (every process, same result); keeps the best."""
    result = evaluate.evaluate_params(
        model_cfg, params, tokenizer, eval_data, pooling=config.model.pooling,
        normalize=config.model.similarity == "cosine", max_len=d.passage_max_len,
        query_max_len=d.query_max_len, batch_size=e.batch_size, top_k=e.top_k,
        query_prefix=d.query_instruction, passage_prefix=d.passage_instruction,
        measures=measures)
    writer.write(step, {f"eval/{k}": result[k] for k in measures})
    logging.info("eval step %d: %s", step, " | ".join(f"{k} {result[k]:.4f}" for k in measures))
    if not best or result[e.metric] > best["value"]:
      best.update(step=step, metric=e.metric, value=result[e.metric], result=result)
      export(params, best_dir)
      if is_main:
        with open(os.path.join(best_dir, BEST_EVAL), "w", encoding="utf-8") as f:
          json.dump(best, f, indent=1)
      logging.info("New best %s %.4f at step %d: exported to %s", e.metric, best["value"], step,
                   best_dir)

  # ---------------------------------------------------------------- Loop
  writer = metrics_lib.MetricsWriter(workdir, config.total_steps, resume_step=start_step)
  if eval_data is not None and e.at_start and start_step == 0:
    run_eval(0, state.params)
  window, stopwatch, window_start = [], metrics_lib.Stopwatch(), start_step
  step = start_step
  preemption = checkpoints.PreemptionWatch()
  # No mesh context here: the step is compiled, and evaluation embeds over the params' mesh.
  while step < config.total_steps:
    batch = global_batch(next(local_batches))
    if step == start_step:
      stopwatch.reset()  # the pipeline's start-up is no step
    state, step_metrics = train_step(state, batch)
    step += 1
    window.append(step_metrics)
    if step % config.log_every == 0 or step in (start_step + 1, config.total_steps):
      seconds, steps = stopwatch.elapsed(), step - window_start
      scalars = metrics_lib.window_scalars(window, seconds)
      scalars["queries_per_s"] = config.batch_size * steps / seconds
      writer.write(step, scalars)
      left = (config.total_steps - step) * seconds / steps
      logging.info("step %d/%d | loss %.4f | acc %.3f | grad norm %.3f | lr %.2e | %.2f steps/s"
                   " | %.1f queries/s | ETA %ds", step, config.total_steps, scalars["loss"],
                   scalars["accuracy"], scalars["grad_norm"], scalars["lr"], steps / seconds,
                   scalars["queries_per_s"], left)
      window, window_start = [], step
    if checkpoints.save_if_due(mngr, step, state, meta, config, preemption):
      writer.close()
      return state
    if eval_data is not None and (
        (e.every_steps and step % e.every_steps == 0) or step == config.total_steps):
      eval_watch = metrics_lib.Stopwatch()
      run_eval(step, state.params)
      stopwatch.start += eval_watch.elapsed()  # evaluation time is no training time
    if window_start == step:
      stopwatch.reset()  # after logging, saving and evaluating: none counts towards a step
  mngr.wait_until_finished()

  # ---------------------------------------------------------------- Export
  out = os.path.join(workdir, "export", "encoder")
  export(state.params, out)
  if is_main:  # records the pooling: encode/evaluate --pooling=auto read it
    export_lib.export_sentence_transformers(
        out, os.path.join(workdir, "export", "sentence-transformers"), model_cfg.hidden_size,
        d.passage_max_len, config.model.pooling)
  writer.close()
  logging.info("Encoder exported to %s (HF BertModel format)", out)
  return state
