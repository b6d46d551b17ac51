"""RetroMAE pretraining: one program, read top to bottom.

Sections: workdir and tokenizer, mesh, input, model and sharded state, update step, checkpoint
restore, loop, export. Everything comes from the config (configs/base.py).
"""

import dataclasses
import functools
import os

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.experimental import multihost_utils

from retromae_jax.trainers import checkpoints
from retromae_jax.trainers import validation as config_check
from retromae_jax.interop import export as export_lib
from retromae_jax.trainers import flops
from retromae_jax.interop import hf as hf_interop
from retromae_jax.models import losses
from retromae_jax.trainers import metrics as metrics_lib
from retromae_jax.trainers import init_parts
from retromae_jax.trainers import optim
from retromae_jax.trainers import sharding
from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.trainers import train_state
from retromae_jax.data import pipeline
from retromae_jax.models.objectives.config import objective_config_from
from retromae_jax.models.retromae import make_model, model_config_from


_SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size")


def _resolve_model_shape(config, vocab_size: int):
  """An HF init directory or an init checkpoint fixes the model's shape; the config's model
  section follows it."""
  overrides = {}
  if config.init.hf_dir:
    overrides = hf_interop.model_overrides(hf_interop.read_hf_config(config.init.hf_dir))
  elif config.init.checkpoint:
    meta, _ = checkpoints.read_meta(config.init.checkpoint)
    overrides = {k: v for k, v in meta["model"].items() if k in _SHAPE_FIELDS}
  with config.unlocked():
    config.model.update(overrides)
  return model_config_from(config, vocab_size)


def train_and_evaluate(config, workdir: str):
  # ---------------------------------------------------------------- Workdir, tokenizer, shape
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  tokenizer = tokenizer_lib.load_tokenizer(config.tokenizer)
  # Tensor parallelism splits the vocabulary: model.vocab_multiple pads it (Megatron-style; the
  # extra rows are never a target nor an input, their logits just learn to stay low).
  multiple = config.model.vocab_multiple
  model_cfg = _resolve_model_shape(
      config, -(-tokenizer.get_vocab_size() // multiple) * multiple)
  if tokenizer.get_vocab_size() > model_cfg.vocab_size:
    raise ValueError(f"config.tokenizer: {tokenizer.get_vocab_size()} tokens, more than the "
                     f"model's vocabulary ({model_cfg.vocab_size}, config.model.vocab_size)")
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
  logging.info("Model: %s", model_cfg)

  # ---------------------------------------------------------------- Mesh
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.LOGICAL_AXIS_RULES[config.sharding_rules]
  config_check.validate(config, sharding.data_parallel_size(mesh, rules), jax.process_count())
  logging.info("Mesh %s over %d devices (%s), %d process(es)", dict(mesh.shape),
               jax.device_count(), jax.devices()[0].device_kind, jax.process_count())

  # ---------------------------------------------------------------- Model and sharded state
  objective = objective_config_from(config)
  model = make_model(model_cfg, objective)
  logging.info("Objective: %s", objective)
  example = {name: jax.ShapeDtypeStruct(shape, dtype)
             for name, (shape, dtype) in pipeline.batch_shapes(config, 1).items()}
  new_parts = init_parts.new_parts(config, init_parts.model_parts(model, example))
  if new_parts and (config.init.hf_dir or config.init.checkpoint):
    logging.info("Not in the initial checkpoint, starting at random initialisation: %s%s",
                 ", ".join(new_parts), f" (trained alone for the first "
                 f"{config.optim.freeze_encoder_steps} steps)"
                 if config.optim.freeze_encoder_steps else "")
  tx, schedule = optim.make_optimizer(config.optim, config.total_steps, new_parts)
  encoder_schedule = optim.encoder_schedule(config.optim, config.total_steps)

  state, state_shardings = train_state.create_sharded_state(model, tx, example, mesh, rules, config.seed)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("Parameters: %.1fM (decoder %.1fM)", num_params / 1e6,
               sum(x.size for x in jax.tree.leaves(state.params.get("decoder", {}))) / 1e6)
  per_device = lambda tree: sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree))
  logging.info("Per device: parameters %.1f MiB, optimizer state %.1f MiB",
               per_device(state.params) / 2**20, per_device(state.opt_state) / 2**20)

  # ---------------------------------------------------------------- Update step
  batch_sharding = {k: sharding.batch_sharding(mesh, rules) for k in example}
  dropout_root = jax.random.key(config.seed + 1)

  def loss_fn(params, batch, dropout_key, denominators=None):
    outputs = model.apply({"params": params}, batch, deterministic=False,
                          rngs={"dropout": dropout_key}, method="outputs")
    return losses.objective_loss(outputs, batch, objective.bow_weight, denominators)

  def accumulated_grads(params, batch, dropout_key, k):
    """Loss and gradients of the whole batch from k microbatches.

    Microbatch i takes rows i, i+k, i+2k, ...: with the batch split over devices in contiguous
    blocks, every microbatch is spread over all of them.
    """
    denominators = losses.loss_denominators(batch)
    micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1),
                         batch)

    def add_microbatch(totals, inputs):
      i, microbatch = inputs
      out = jax.value_and_grad(loss_fn, has_aux=True)(
          params, microbatch, jax.random.fold_in(dropout_key, i), denominators)
      return jax.tree.map(jnp.add, totals, out), None

    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(
        jax.value_and_grad(loss_fn, has_aux=True), params,
        jax.tree.map(lambda x: x[0], micro), dropout_key, denominators))
    totals, _ = jax.lax.scan(add_microbatch, zeros, (jnp.arange(k), micro))
    return totals

  def update_step(state, batch, accum_steps):
    # Dropout depends only on (seed, step): not on the mesh or on where the run resumed.
    dropout_key = jax.random.fold_in(dropout_root, state.step)
    if accum_steps == 1:
      (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          state.params, batch, dropout_key)
    else:
      (loss, aux), grads = accumulated_grads(state.params, batch, dropout_key, accum_steps)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step_metrics = dict(loss=loss, grad_norm=optax.global_norm(grads), lr=schedule(state.step),
                        tokens=batch["attention_mask"].sum(), **aux)
    if optim.has_groups(config.optim):
      step_metrics["lr_encoder"] = encoder_schedule(state.step)
    return train_state.TrainState(step=state.step + 1, params=params, opt_state=opt_state), step_metrics

  global_example = {k: jax.ShapeDtypeStruct((config.batch_size, *v.shape[1:]), v.dtype)
                    for k, v in example.items()}

  def compile_step(accum_steps: int):
    return train_state.compile_ahead(
        functools.partial(update_step, accum_steps=accum_steps), state, state_shardings,
        global_example, batch_sharding, mesh, rules, f"{accum_steps} microbatch(es)")

  train_step, needed = compile_step(config.grad_accum_steps)
  available = train_state.device_memory_bytes()
  if config.auto_microbatch and available and needed > available:
    # Activation memory shrinks with the microbatch: split the step further (same global batch,
    # same loss) rather than run out of memory, e.g. the BERT-base default on a CPU.
    per_device = config.batch_size // sharding.data_parallel_size(mesh, rules)
    wanted = config.grad_accum_steps * needed / available
    accum = next((k for k in range(1, per_device + 1) if per_device % k == 0 and k >= wanted),
                 per_device)
    logging.warning("The step needs %.1f GiB per device, %.1f GiB available: %d microbatches "
                    "instead of %d (config.auto_microbatch)", needed / 2**30, available / 2**30,
                    accum, config.grad_accum_steps)
    train_step, needed = compile_step(accum)
    if needed > available:
      raise ValueError(f"config.batch_size: even {accum} microbatches need "
                       f"{needed / 2**30:.1f} GiB per device, more than the {available / 2**30:.1f}"
                       " GiB available: lower the batch, set model.remat, or add devices")

  # ---------------------------------------------------------------- Checkpoint restore / init
  # Every restore reads onto the shardings of the freshly built state: a checkpoint written on
  # another mesh or process count loads all the same (Orbax reads each device's slice).
  mngr = checkpoints.manager(workdir, config)
  meta = checkpoints.make_meta(model_cfg, config.tokenizer,
                                objective=dataclasses.asdict(objective))
  start_step = mngr.latest_step() or 0
  if start_step:
    logging.info("Resuming from %s/checkpoints/%d", workdir, start_step)
    state, _ = checkpoints.restore(mngr, start_step, state)
  else:
    params = state.params
    if config.init.checkpoint:  # encoder, MLM head and decoder; a fresh optimizer at step 0
      params, _, step_dir = checkpoints.restore_params(config.init.checkpoint, params)
      logging.info("Parameters initialised from %s", step_dir)
    if config.init.hf_dir:
      params = hf_interop.load_hf_bert(config.init.hf_dir, params)
      logging.info("Encoder initialised from %s", config.init.hf_dir)
    if config.init.decoder_dir:
      params = {**params, "decoder": export_lib.load_decoder(config.init.decoder_dir,
                                                             params["decoder"])}
      logging.info("Decoder initialised from %s", config.init.decoder_dir)
    state = state.replace(params=params)

  # ---------------------------------------------------------------- Input
  # pretrain_batches closes its tf.data iterator at exit (a live one can hang TF's shutdown).
  local_batches = pipeline.pretrain_batches(
      config, tokenizer, process_index=jax.process_index(), process_count=jax.process_count(),
      start_step=start_step)

  def global_batch(local):
    return {k: jax.make_array_from_process_local_data(batch_sharding[k], local[k])
            for k in example}

  # ---------------------------------------------------------------- Loop
  # A resumed run rewrites the metrics logged after its checkpoint (a killed run may have logged
  # steps it never saved): metrics.jsonl always reads as one uninterrupted run.
  writer = metrics_lib.MetricsWriter(workdir, config.total_steps, resume_step=start_step)
  flops_per_step = config.batch_size * flops.train_flops_per_example(
      model_cfg, objective, config.data.max_seq_length,
      encoder_len=example["encoder_input_ids"].shape[1],
      encoder_positions=example["encoder_positions"].shape[1] if "encoder_positions" in example
      else 0)
  peak = flops.device_peak_flops(config) * jax.device_count()
  window, stopwatch, window_start = [], metrics_lib.Stopwatch(), start_step
  step = start_step
  preemption = checkpoints.PreemptionWatch()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    while step < config.total_steps:
      batch = global_batch(next(local_batches))
      if step == start_step:
        stopwatch.reset()  # the pipeline's start-up (first documents read and tokenised) is no step
      state, step_metrics = train_step(state, batch)
      step += 1
      window.append(step_metrics)
      # The first step is logged too: its progress line gives the ETA of a slow run at once.
      if step % config.log_every == 0 or step in (start_step + 1, config.total_steps):
        seconds, steps = stopwatch.elapsed(), step - window_start
        scalars = metrics_lib.window_scalars(window, seconds)
        if peak:
          scalars["mfu"] = flops_per_step * steps / seconds / peak
        writer.write(step, scalars)
        writer.progress(step, steps / seconds, scalars)
        window, window_start = [], step
      if checkpoints.save_if_due(mngr, step, state, meta, config, preemption):
        writer.close()
        return state
      if window_start == step:
        stopwatch.reset()  # after logging and saving: neither counts towards the next window
  mngr.wait_until_finished()
  writer.close()

  # ---------------------------------------------------------------- Export
  # Every process takes part in gathering parameters that may span hosts; process 0 writes.
  params = multihost_utils.process_allgather(state.params, tiled=True)
  if is_main:
    out = os.path.join(workdir, "export")
    encoder = export_lib.export_encoder(params, model_cfg, meta, os.path.join(out, "encoder"))
    export_lib.export_sentence_transformers(encoder, os.path.join(out, "sentence-transformers"),
                                            model_cfg.hidden_size, config.data.max_seq_length,
                                            model_cfg.sentence_vector)
    if "decoder" in params:
      export_lib.save_decoder(params["decoder"], meta, os.path.join(out, "decoder"))
    logging.info("Exported to %s: encoder/ (HF BERT), sentence-transformers/, decoder/", out)
  return state

