"""RetroMAE pretraining: one program, read top to bottom.

Sections: workdir, tokenizer and shape; mesh; model, sharded state and the compiled update step
(build_step: the step tools/compile.py also compiles for a TPU topology); checkpoint restore /
init; input; evaluation; loop; export. Everything comes from the config
(configs/base.py); the mechanics shared with fine-tuning are in trainers/loop.py.
"""

import dataclasses
import os

from absl import logging
import jax
import jax.numpy as jnp

from retromae_jax.data.pretrain import batch_contract, pipeline
from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.interop import decoder as decoder_lib
from retromae_jax.interop import checkpoint_store
from retromae_jax.interop import export as export_lib
from retromae_jax.interop import hf as hf_interop
from retromae_jax.interop import workdir as workdir_layout
from retromae_jax.objectives import losses
from retromae_jax.objectives.registry import make_model
from retromae_jax.trainers import anchor as anchor_lib
from retromae_jax.trainers import checkpointer as checkpointer_lib
from retromae_jax.trainers import settings
from retromae_jax.trainers import flops
from retromae_jax.trainers import loop
from retromae_jax.trainers import metrics as metrics_lib
from retromae_jax.trainers import init_parts
from retromae_jax.trainers import optim
from retromae_jax.trainers import run_identity
from retromae_jax.trainers import sharding
from retromae_jax.trainers import step as step_lib
from retromae_jax.trainers import train_state
from retromae_jax.trainers import validation

# The whole batch's rows, beside the loss terms' denominators: the anchor term's microbatch share.
_ROWS = "rows"


def resolve_shape(config):
  """The tokenizer, with config.model's shape set from an initial model (init.hf_dir or
  init.checkpoint fixes the shape, not dropout, dtype or remat)."""
  tokenizer = tokenizer_lib.load_tokenizer(config.tokenizer)
  if config.init.hf_dir:
    loop.apply_model_shape(config, hf_interop.model_overrides(
        hf_interop.read_hf_config(config.init.hf_dir), config.model.extend_positions_to))
  elif config.init.checkpoint:
    loop.apply_model_shape(config, checkpoint_store.read_meta(config.init.checkpoint)[0]["model"])
  return tokenizer


def build_step(config, model_cfg, mesh, rules) -> step_lib.Step:
  """The update step of RetroMAE pretraining over `mesh`, nothing allocated: model, objective,
  optimizer, loss (and the anchor term) with its microbatches, abstract state and batch with
  their shardings, the analytic FLOPs."""
  input_settings = settings.pretrain_input(config)
  objective = input_settings.objective
  model = make_model(model_cfg, objective)
  logging.info("Objective: %s", objective)
  example = {name: jax.ShapeDtypeStruct(shape, dtype)
             for name, (shape, dtype) in batch_contract.batch_shapes(input_settings, 1).items()}
  # An initial model without an MLM head or decoder leaves them at their random init: named here,
  # and (optim.freeze_encoder_steps) trained alone first, so they do not disturb the encoder.
  new_parts = init_parts.new_parts(config, init_parts.model_parts(model, example))
  if new_parts and (config.init.hf_dir or config.init.checkpoint):
    logging.info("Not in the initial checkpoint, starting at random initialisation: %s%s",
                 ", ".join(new_parts), f" (trained alone for the first "
                 f"{config.optim.freeze_encoder_steps} steps)"
                 if config.optim.freeze_encoder_steps else "")
  tx, schedule = optim.make_optimizer(config.optim, config.total_steps, new_parts)
  schedules = {"lr": schedule}
  if optim.has_groups(config.optim):
    schedules["lr_encoder"] = optim.encoder_schedule(config.optim, config.total_steps)
  state, state_shardings, init_state = train_state.abstract_sharded_state(
      model, tx, example, mesh, rules)

  def loss_fn(params, batch, dropout_key, denominators=None, anchor=None):
    outputs = model.apply({"params": params}, batch, deterministic=False,
                          rngs={"dropout": dropout_key}, method="outputs")
    loss, aux = losses.objective_loss(outputs, batch, objective, denominators)
    if anchor is None:
      return loss, aux
    # config.anchor: near the starting encoder; a microbatch weighs its share of the rows.
    rows = batch["input_ids"].shape[0]
    share = rows / (denominators or {}).get(_ROWS, rows)
    term, term_aux = anchor_lib.pretrain_term(config, model, params, anchor, batch,
                                              model_cfg.sentence_vector, share)
    return loss + term, {**aux, **term_aux}

  def loss_and_grads(params, batch, dropout_key, accum_steps, anchor=None):
    """Loss and gradients of the whole batch, from accum_steps microbatches.

    Microbatch i takes rows i, i+k, i+2k, ...: with the batch split over devices in contiguous
    blocks, every microbatch is spread over all of them. The loss denominators are the whole
    batch's, so the sum over microbatches is the whole batch's loss.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
      return grad_fn(params, batch, dropout_key, None, anchor)
    denominators = {**losses.loss_denominators(batch, objective),
                    _ROWS: batch["input_ids"].shape[0]}
    micro = jax.tree.map(
        lambda x: x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1),
        batch)

    def add_microbatch(totals, inputs):
      i, microbatch = inputs
      out = grad_fn(params, microbatch, jax.random.fold_in(dropout_key, i), denominators, anchor)
      return jax.tree.map(jnp.add, totals, out), None

    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(
        grad_fn, params, jax.tree.map(lambda x: x[0], micro), dropout_key, denominators, anchor))
    totals, _ = jax.lax.scan(add_microbatch, zeros, (jnp.arange(accum_steps), micro))
    return totals

  update_step = loop.make_update_step(loss_and_grads, tx, schedules,
                                      lambda batch: batch["attention_mask"].sum(), config.seed,
                                      skip_nonfinite=config.divergence.skip_steps > 0,
                                      dropout_prng=config.dropout_prng)
  per_device = config.batch_size // sharding.data_parallel_size(mesh, rules)
  splits = tuple(k for k in range(1, per_device + 1) if per_device % k == 0)

  def fewer_rows(needed, available):
    # Activation memory shrinks with the microbatch: the smallest split that fits.
    wanted = config.grad_accum_steps * needed / available
    return next((k for k in splits if k >= wanted), per_device)

  flops_per_step = config.batch_size * flops.train_flops_per_example(
      model_cfg, objective, config.data.max_seq_length,
      encoder_len=example["encoder_input_ids"].shape[1],
      encoder_positions=example["encoder_positions"].shape[1] if "encoder_positions" in example
      else 0)
  return step_lib.Step(
      update_step=update_step, state=state, state_shardings=state_shardings,
      init_state=init_state,
      batch={k: jax.ShapeDtypeStruct((config.batch_size, *v.shape[1:]), v.dtype)
             for k, v in example.items()},
      batch_sharding={k: sharding.batch_sharding(mesh, rules) for k in example}, mesh=mesh,
      rules=rules, knob="accum_steps", setting=config.grad_accum_steps, settings=splits,
      smaller=fewer_rows, describe=lambda k: f"{k} microbatch(es)", model_flops=flops_per_step,
      anchored=anchor_lib.enabled(config))


def train_and_evaluate(config, workdir: str):
  # ---------------------------------------------------------------- Workdir, tokenizer, shape
  is_main = jax.process_index() == 0
  run = run_identity.of(config)  # as given: before an initial model fixes the shape
  os.makedirs(workdir, exist_ok=True)
  tokenizer = resolve_shape(config)

  # ---------------------------------------------------------------- Mesh
  mesh, rules = loop.make_mesh(config)
  validation.validate(config, sharding.data_parallel_size(mesh, rules), jax.process_count(),
                      shape_known=True)
  model_cfg = loop.resolve_model_config(config, tokenizer.get_vocab_size())
  logging.info("Model: %s", model_cfg)

  # ---------------------------------------------------------------- Model, sharded state, step
  step = build_step(config, model_cfg, mesh, rules)
  state = step.init(config.seed)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("Parameters: %.1fM (decoder %.1fM)", num_params / 1e6,
               sum(x.size for x in jax.tree.leaves(state.params.get("decoder", {}))) / 1e6)
  per_device = lambda tree: sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree))
  logging.info("Per device: parameters %.1f MiB, optimizer state %.1f MiB",
               per_device(state.params) / 2**20, per_device(state.opt_state) / 2**20)
  train_step = loop.compile_to_fit(step, auto=config.auto_microbatch, key="auto_microbatch",
                                   hint="lower the batch, set model.remat, or add devices")

  # ---------------------------------------------------------------- Checkpoint restore / init
  mngr = checkpoint_store.manager(workdir, config.checkpoint_keep,
                                  config.checkpoint_keep_period)
  input_settings = settings.pretrain_input(config)
  meta = checkpoint_store.make_meta(model_cfg, config.tokenizer,
                                   objective=dataclasses.asdict(input_settings.objective), run=run)

  def init_params(params):
    if config.init.checkpoint:  # encoder, MLM head and decoder; a fresh optimizer at step 0
      params, _, step_dir = checkpoint_store.restore_params(config.init.checkpoint, params)
      logging.info("Parameters initialised from %s", step_dir)
    if config.init.hf_dir:
      params = hf_interop.load_hf_bert(config.init.hf_dir, params,
                                       config.model.position_extension)
      logging.info("Encoder initialised from %s", config.init.hf_dir)
    if config.init.decoder_dir:
      params = {**params, "decoder": decoder_lib.load_decoder(config.init.decoder_dir,
                                                              params["decoder"])}
      logging.info("Decoder initialised from %s", config.init.decoder_dir)
    return params

  checkpointer = checkpointer_lib.Checkpointer(
      mngr, meta, every=config.checkpoint_every, last_step=config.total_steps,
      log_every=config.log_every)
  state, start_step = loop.restore_or_init(mngr, state, init_params)
  if anchor_lib.enabled(config):
    train_step.anchor = anchor_lib.starting_encoder(config, state.params, start_step, init_params)
  loop.write_config(config, workdir)

  # ---------------------------------------------------------------- Input
  # pretrain_batches closes its tf.data iterator at exit (a live one can hang TF's shutdown).
  data_stats = pipeline.PipelineStats()  # skipped lines, counted as they happen
  local_batches = pipeline.pretrain_batches(
      input_settings, tokenizer, process_index=jax.process_index(), process_count=jax.process_count(),
      start_step=start_step, stats=data_stats)
  batches = loop.global_batches(local_batches, step.batch_sharding)

  # ---------------------------------------------------------------- Evaluation
  # A resumed run rewrites the metrics logged after its checkpoint (a killed run may have logged
  # steps it never saved): metrics.jsonl always reads as one uninterrupted run.
  writer = metrics_lib.MetricsWriter(workdir, config.total_steps, resume_step=start_step)
  evaluator = settings.retrieval_evaluator(config, model_cfg, tokenizer, writer)
  if evaluator is not None and config.eval.at_start and start_step == 0:
    evaluator(0, state.params)

  # ---------------------------------------------------------------- Loop
  peak = flops.device_peak_flops(config) * jax.device_count()
  rates = lambda s: {"mfu": step.model_flops * s["steps_per_s"] / peak} if peak else {}
  state, preempted = loop.train(config, state, train_step, batches, start_step=start_step,
                                checkpointer=checkpointer, writer=writer, rates=rates,
                                evaluator=evaluator, skips=data_stats.skips)
  writer.close()
  if preempted:
    return state

  # ---------------------------------------------------------------- Export
  params = loop.gather_params(state.params)
  if is_main:
    export_lib.export_model(params, model_cfg, meta, workdir_layout.export_dir(workdir),
                            max_seq_length=config.data.max_seq_length,
                            pooling=model_cfg.sentence_vector)
  return state
