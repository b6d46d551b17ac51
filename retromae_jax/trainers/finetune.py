"""Contrastive fine-tuning (stage 2): one program, read top to bottom.

Sections: workdir, init, tokenizer and shape; mesh; model and sharded state; update step;
checkpoint restore / init; input; evaluation; loop; export. Everything comes from the config
(configs/finetune.py); the computation itself is models/biencoder.py, models/contrastive_loss.py
and trainers/gradient_cache.py, the data data/pairs.py, and the mechanics shared with pretraining
trainers/loop.py.

Outputs in the workdir: metrics.jsonl (+ tensorboard/), checkpoints/<step>, export/encoder (a HF
BertModel directory with the tokenizer, at the end), export/sentence-transformers (the same with
its prompts, pooling, similarity and a model card), export/best (the best evaluated step by
config.eval.metric, with best_eval.json). With eval.patience the run stops after that many
evaluations without a new best.
"""

import json
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from retromae_jax.data import mixture
from retromae_jax.data import pairs
from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.interop import checkpoint_store
from retromae_jax.interop import export as export_lib
from retromae_jax.interop import hf as hf_interop
from retromae_jax.interop import workdir as workdir_layout
from retromae_jax.interop import model_card
from retromae_jax.models import biencoder
from retromae_jax.trainers import anchor as anchor_lib
from retromae_jax.trainers import checkpointer as checkpointer_lib
from retromae_jax.trainers import flops
from retromae_jax.trainers import gradient_cache
from retromae_jax.trainers import loop
from retromae_jax.trainers import metrics as metrics_lib
from retromae_jax.trainers import optim
from retromae_jax.trainers import run_identity
from retromae_jax.trainers import sharding
from retromae_jax.trainers import step as step_lib
from retromae_jax.trainers import train_state
from retromae_jax.trainers import validation
from retromae_jax.trainers import settings


def resolve_init(config):
  """(init_dir, tokenizer_spec, tokenizer), with config.model's shape, pooling and temperature
  set from the initial model (a pretraining workdir stands for its export/encoder; its shape and
  tokenizer come along): main and tools/compile.py start here."""
  init_dir = workdir_layout.resolve_model_dir(config.init.model) if config.init.model else ""
  tokenizer_spec = config.tokenizer or init_dir or "default"
  tokenizer = tokenizer_lib.load_tokenizer(tokenizer_spec)
  if init_dir:
    loop.apply_model_shape(config, hf_interop.model_overrides(hf_interop.read_hf_config(init_dir),
                                                              config.model.extend_positions_to))
  with config.unlocked():
    # 'auto': the pooling the initial model was trained with (its sentence-transformers config).
    config.model.pooling = workdir_layout.resolve_pooling(init_dir, config.model.pooling)
    if not config.model.temperature:
      config.model.temperature = biencoder.DEFAULT_TEMPERATURE[config.model.similarity]
  return init_dir, tokenizer_spec, tokenizer


def contrastive_spec(config, model_cfg, rules) -> biencoder.Spec:
  """What the contrastive loss computes (models/biencoder.Spec), from the config."""
  matryoshka_dims, matryoshka_weights = settings.matryoshka(config.loss)
  return biencoder.Spec(model_cfg, config.model.pooling, config.model.similarity,
                        config.model.temperature, rules, matryoshka_dims=matryoshka_dims,
                        matryoshka_weights=matryoshka_weights, kd_weight=config.loss.kd_weight,
                        kd_temperature=config.loss.kd_temperature)


def build_step(config, model_cfg, mesh, rules) -> step_lib.Step:
  """The contrastive update step over `mesh`, nothing allocated: bi-encoder, optimizer, loss
  with its gradient cache (and the anchor term), abstract state and batch with their shardings,
  the analytic FLOPs."""
  model = biencoder.BiEncoder(model_cfg)
  tx, schedule = optim.make_optimizer(config.optim, config.total_steps)
  example = {name: jax.ShapeDtypeStruct((1, config.data.passage_max_len), jnp.int32)
             for name in ("input_ids", "attention_mask")}
  state, state_shardings, init_state = train_state.abstract_sharded_state(
      model, tx, example, mesh, rules)
  spec = contrastive_spec(config, model_cfg, rules)
  d = config.data
  shapes = pairs.batch_shapes(config.batch_size, d.group_size, d.query_max_len,
                              d.passage_max_len)
  dropout = model_cfg.dropout_rate > 0 or model_cfg.attention_dropout_rate > 0

  def loss_and_grads(params, batch, dropout_key, chunk_size, anchor=None):
    # Dropout depends on (seed, step, row of the global batch) only: not on the mesh or the
    # gradient cache's chunks.
    out = gradient_cache.value_and_grad(spec, params, batch, dropout_key if dropout else None,
                                        chunk_size)
    if anchor is None:
      return out
    # config.anchor: near the starting encoder, its own pass (outside the gradient cache).
    (loss, aux), grads = out
    (term, term_aux), term_grads = jax.value_and_grad(
        lambda p: anchor_lib.finetune_term(config, spec, p, anchor, batch), has_aux=True)(params)
    return (loss + term, {**aux, **term_aux}), jax.tree.map(jnp.add, grads, term_grads)

  update_step = loop.make_update_step(
      loss_and_grads, tx, {"lr": schedule},
      lambda b: b["query_attention_mask"].sum() + b["passage_attention_mask"].sum(), config.seed,
      skip_nonfinite=config.divergence.skip_steps > 0,
      dropout_prng=config.dropout_prng)
  num_data_parallel = sharding.data_parallel_size(mesh, rules)
  # Gradient-cache chunks of queries, from none (0: the plain step) to the smallest.
  chunks = tuple(c for c in range(config.batch_size, 0, -1)
                 if config.batch_size % c == 0 and c % num_data_parallel == 0)

  def smaller_chunks(needed, available):
    # Activations shrink with the chunk; the global batch (and its negatives) stays whole.
    wanted = config.batch_size * available / needed
    return max((c for c in chunks if c <= wanted), default=num_data_parallel)

  return step_lib.Step(
      update_step=update_step, state=state, state_shardings=state_shardings,
      init_state=init_state,
      batch={k: jax.ShapeDtypeStruct(s, t) for k, (s, t) in shapes.items()},
      batch_sharding={k: sharding.batch_sharding(mesh, rules) for k in shapes}, mesh=mesh,
      rules=rules, knob="chunk_size", setting=config.gradient_cache.chunk_size,
      settings=(0, *chunks), smaller=smaller_chunks,
      describe=lambda c: f"gradient cache chunk {c or 'off'}",
      model_flops=flops.contrastive_train_flops(
          model_cfg, config.batch_size, d.group_size, d.query_max_len, d.passage_max_len),
      anchored=anchor_lib.enabled(config))


def train_and_evaluate(config, workdir: str):
  # ---------------------------------------------------------------- Workdir, init, tokenizer, shape
  is_main = jax.process_index() == 0
  run = run_identity.of(config)  # as given: before an initial model fixes the shape
  os.makedirs(workdir, exist_ok=True)
  init_dir, tokenizer_spec, tokenizer = resolve_init(config)

  # ---------------------------------------------------------------- Mesh
  mesh, rules = loop.make_mesh(config)
  num_data_parallel = sharding.data_parallel_size(mesh, rules)
  validation.validate(config, num_data_parallel, jax.process_count(), shape_known=True)
  model_cfg = loop.resolve_model_config(config, tokenizer.get_vocab_size())
  logging.info("Model: %s; %s pooling, %s similarity, temperature %g; init %s", model_cfg,
               config.model.pooling, config.model.similarity, config.model.temperature,
               init_dir or "random")

  # ---------------------------------------------------------------- Model, sharded state, step
  step = build_step(config, model_cfg, mesh, rules)
  state = step.init(config.seed)
  logging.info("Parameters: %.1fM", sum(x.size for x in jax.tree.leaves(state.params)) / 1e6)
  spec = contrastive_spec(config, model_cfg, rules)
  d = config.data
  train_step = loop.compile_to_fit(
      step, auto=config.gradient_cache.auto and not config.gradient_cache.chunk_size,
      key="gradient_cache.auto",
      hint="shorten data.passage_max_len, set model.remat, or add devices")

  # ---------------------------------------------------------------- Checkpoint restore / init
  mngr = checkpoint_store.manager(workdir, config.checkpoint_keep,
                                  config.checkpoint_keep_period)
  meta = checkpoint_store.make_meta(model_cfg, tokenizer_spec, task="finetune", run=run)

  def init_params(params):
    if init_dir:
      params = hf_interop.load_hf_bert(init_dir, params, config.model.position_extension)
      logging.info("Encoder initialised from %s", init_dir)
    return params

  checkpointer = checkpointer_lib.Checkpointer(
      mngr, meta, every=config.checkpoint_every, last_step=config.total_steps,
      log_every=config.log_every)
  state, start_step = loop.restore_or_init(mngr, state, init_params)
  if anchor_lib.enabled(config):
    train_step.anchor = anchor_lib.starting_encoder(config, state.params, start_step, init_params)
  loop.write_config(config, workdir)

  # ---------------------------------------------------------------- Input
  # One GroupBatches per dataset of data.train; each step's batch comes from one of them, drawn
  # by weight (data/mixture.py). Every process turns a dataset's epochs at the same step: an
  # epoch uses the smallest share's size.
  datasets = mixture.parse(d.train)
  # data.hard_negatives is for BEIR sources; beside them, jsonl sources (their own negatives)
  # do without it, and alone they refuse it (pairs.load_examples).
  mined = lambda ds: ("" if len(datasets) > 1 and ds.source.startswith("jsonl:")
                      else d.hard_negatives)
  selfsup = dict(d.selfsup, seed=config.seed, data_dir=d.data_dir)
  shares = [pairs.load_examples(ds.source, d.split, mined(ds), jax.process_index(),
                                jax.process_count(), require_scores=config.loss.kd_weight > 0,
                                selfsup=selfsup)
            for ds in datasets]
  epoch_sizes = np.asarray(multihost_utils.process_allgather(
      np.int32([len(x) for x in shares]))).reshape(-1, len(shares)).min(axis=0)
  per_dataset = []
  for ds, examples, epoch_size in zip(datasets, shares, epoch_sizes):
    per_dataset.append(pairs.GroupBatches(
        examples, tokenizer, batch_size=config.batch_size // jax.process_count(),
        group_size=d.group_size, query_max_len=d.query_max_len,
        passage_max_len=d.passage_max_len, seed=config.seed,
        query_instruction=(d.query_instruction if ds.query_instruction is None
                           else ds.query_instruction),
        passage_instruction=(d.passage_instruction if ds.passage_instruction is None
                             else ds.passage_instruction),
        process_index=jax.process_index(), epoch_size=int(epoch_size),
        in_batch_negatives=ds.in_batch_negatives is not False))
    logging.info("Data %s (weight %g): %d examples per process and epoch, %d steps per epoch",
                 ds.source, ds.weight, epoch_size, per_dataset[-1].steps_per_epoch)
  group_batches = mixture.MixedBatches(per_dataset, [ds.weight for ds in datasets], config.seed)
  with_negatives = int(np.sum(multihost_utils.process_allgather(
      np.int32(sum(bool(x.neg) for examples in shares for x in examples)))))
  if d.group_size > 1 and not with_negatives:
    logging.warning("config.data.group_size is %d but no example has negatives: every negative "
                    "slot is an empty passage (masked out of the loss, but encoded). "
                    "group_size=1 trains the same loss faster; or mine negatives "
                    "(python -m retromae_jax.tools.mine) and set data.hard_negatives", d.group_size)
  batches = loop.global_batches(pairs.group_batches(group_batches, start_step, d.prefetch),
                                step.batch_sharding)

  # ---------------------------------------------------------------- Evaluation
  best_dir = workdir_layout.best_dir(workdir)
  best_eval = os.path.join(best_dir, workdir_layout.BEST_EVAL)
  best = {}
  if os.path.isfile(best_eval):  # a resumed run keeps its best so far
    with open(best_eval, encoding="utf-8") as f:
      best = json.load(f)

  since_best = [0]  # evaluations in a row without a new best (eval.patience)

  def keep_best(step, params, result):
    """Exports a new best; returns True when eval.patience evaluations brought none."""
    metric = config.eval.metric
    if not best or result[metric] > best["value"]:
      since_best[0] = 0
      best.update(step=step, metric=metric, value=result[metric], result=result)
      params = loop.gather_params(params)
      if is_main:
        export_lib.export_encoder(params, model_cfg, meta, best_dir)
        with open(best_eval, "w", encoding="utf-8") as f:
          json.dump(best, f, indent=1)
      logging.info("New best %s %.4f at step %d: exported to %s", metric, best["value"], step,
                   best_dir)
      return False
    since_best[0] += 1
    patience = config.eval.get("patience", 0)
    if patience and since_best[0] >= patience:
      logging.info("Early stopping: %d evaluations without a better %s than %.4f (step %d, "
                   "exported to %s)", since_best[0], metric, best["value"], best["step"],
                   best_dir)
      return True
    return False

  writer = metrics_lib.MetricsWriter(workdir, config.total_steps, resume_step=start_step)
  evaluator = settings.retrieval_evaluator(config, model_cfg, tokenizer, writer,
                                                      on_result=keep_best)
  if evaluator is not None and config.eval.at_start and start_step == 0:
    evaluator(0, state.params)

  # ---------------------------------------------------------------- Loop
  peak = flops.device_peak_flops(config) * jax.device_count()
  rates = lambda s: {"queries_per_s": config.batch_size * s["steps_per_s"],
                     **({"mfu": step.model_flops * s["steps_per_s"] / peak} if peak else {})}
  state, preempted = loop.train(config, state, train_step, batches, start_step=start_step,
                                checkpointer=checkpointer, writer=writer, rates=rates,
                                evaluator=evaluator)
  if preempted:
    writer.close()
    return state

  # ---------------------------------------------------------------- Export
  params = loop.gather_params(state.params)
  if is_main:  # the sentence-transformers export records the pooling (--pooling=auto reads it)
    prompts = {"query": d.query_instruction, "passage": d.passage_instruction}
    card = model_card.render(
        base_model=config.init.model, train_data=[ds.source for ds in datasets], spec=spec,
        steps=int(state.step), eval_data=config.eval.data,
        rows=model_card.eval_rows(os.path.join(workdir, workdir_layout.METRICS)), prompts=prompts,
        max_seq_length=d.passage_max_len, exported_step=int(state.step))
    export_lib.export_model(
        params, model_cfg, meta, workdir_layout.export_dir(workdir),
        max_seq_length=d.passage_max_len, pooling=config.model.pooling,
        similarity=config.model.similarity, prompts=prompts, matryoshka_dims=spec.matryoshka_dims,
        model_card=card)
  writer.close()
  return state
