"""The mechanics both training programs share (pretrain.py, finetune.py).

The programs differ in their model, loss, data and evaluation; everything else is here, once:
the mesh, the update step's frame, compiling a step that fits in memory, restore-or-init, global
batches, the logging window (timed to the completion of its steps), the loop with its saves and
preemption, and gathering the parameters for an export.
"""

import contextlib
import os
import time
from typing import Callable, Iterator

from absl import logging
import jax
import numpy as np
import optax
from jax.experimental import multihost_utils

from retromae_jax.interop import workdir as workdir_layout
from retromae_jax.interop import checkpoint_store
from retromae_jax.trainers import divergence
from retromae_jax.trainers import sharding
from retromae_jax.trainers import train_state
from retromae_jax.trainers import settings

# The model keys that an initial model (a HF directory's config.json, a checkpoint's meta) fixes:
# its shape. Everything else (dropout, dtype, remat) stays the config's choice.
SHAPE_KEYS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
              "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
              "initializer_range", "family", "pad_token_id")


def apply_model_shape(config, source: dict) -> None:
  """Sets config.model's shape keys from `source` (keys it lacks stay as configured)."""
  with config.unlocked():
    config.model.update({k: source[k] for k in SHAPE_KEYS if k in source})


def resolve_model_config(config, vocab_size: int):
  """The model's static config (models/bert.py) for a tokenizer of `vocab_size` tokens, once the
  config is final."""
  # Tensor parallelism splits the vocabulary: model.vocab_multiple pads it (Megatron-style; the
  # extra rows are never a target nor an input, their logits just learn to stay low).
  multiple = config.model.vocab_multiple
  model_cfg = settings.model(config, -(-vocab_size // multiple) * multiple)
  if vocab_size > model_cfg.vocab_size:
    raise ValueError(f"config.tokenizer: {vocab_size} tokens, more than the model's vocabulary "
                     f"({model_cfg.vocab_size}, config.model.vocab_size)")
  return model_cfg


def write_config(config, workdir: str) -> None:
  """<workdir>/config.json (process 0): the final config, written once the run has passed its
  checks and restored its state (a refused run rewrites nothing in the workdir)."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, workdir_layout.CONFIG), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))


# ---------------------------------------------------------------------------------- Mesh


def make_mesh(config, devices=None):
  """(mesh, logical axis rules) from config.mesh and config.sharding_rules, over `devices`
  (default: all of this run's; tools/compile.py passes a TPU topology's)."""
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = sharding.LOGICAL_AXIS_RULES[config.sharding_rules]
  logging.info("Mesh %s over %d devices (%s), %d process(es)", dict(mesh.shape),
               mesh.devices.size, mesh.devices.flat[0].device_kind,
               len({d.process_index for d in mesh.devices.flat}))
  return mesh, rules


# ---------------------------------------------------------------------------------- Update step


# config.dropout_prng -> the JAX key implementation of dropout's keys.
DROPOUT_PRNGS = {"threefry": "threefry2x32", "rbg": "rbg"}


def make_update_step(loss_and_grads: Callable, tx, schedules: dict, count_tokens: Callable,
                     seed: int, skip_nonfinite: bool = False, dropout_prng: str = "threefry"):
  """update_step(state, batch, **static) -> (state, metrics), a pure function to jit.

  loss_and_grads(params, batch, dropout_key, **static) -> ((loss, aux), grads);
  schedules: {metric name: learning-rate schedule} ('lr', and 'lr_encoder' for a second group);
  count_tokens(batch) -> the real tokens the step trained on (for tokens/s);
  skip_nonfinite (config.divergence.skip_steps > 0): a step whose loss or gradient norm is not
  finite leaves the parameters and optimizer state as they were (divergence.keep_if_finite).
  dropout_prng (config.dropout_prng): the key implementation of dropout's keys (DROPOUT_PRNGS).
  """
  dropout_root = jax.random.key(seed + 1, impl=DROPOUT_PRNGS[dropout_prng])

  def update_step(state, batch, **static):
    # Dropout depends only on (seed, step): not on the mesh or on where the run resumed.
    dropout_key = jax.random.fold_in(dropout_root, state.step)
    (loss, aux), grads = loss_and_grads(state.params, batch, dropout_key, **static)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(loss=loss, grad_norm=optax.global_norm(grads), tokens=count_tokens(batch),
                   **{name: schedule(state.step) for name, schedule in schedules.items()}, **aux)
    new_state = train_state.TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    if skip_nonfinite:
      return divergence.keep_if_finite(new_state, state, metrics)
    return new_state, metrics

  return update_step


def compile_to_fit(step, *, auto: bool, key: str, hint: str):
  """The compiled step (trainers/step.Step) with its knob as configured, or, when that needs more
  memory than a device has and `auto` is on, at step.smaller(needed_bytes, available_bytes):
  the same global batch and loss computed in smaller pieces (microbatches, gradient-cache
  chunks) rather than an out-of-memory crash. key and hint make the error if even the smaller
  setting does not fit.
  """
  compiled, needed = step.compile(step.setting)
  available = train_state.device_memory_bytes()
  if not (auto and available and needed > available):
    return compiled
  setting = step.smaller(needed, available)
  logging.warning("The step needs %.1f GiB per device, %.1f GiB available: %s (config.%s)",
                  needed / 2**30, available / 2**30, step.describe(setting), key)
  compiled, needed = step.compile(setting)
  if needed > available:
    raise ValueError(f"config.batch_size: even {step.describe(setting)} needs "
                     f"{needed / 2**30:.1f} GiB per device, more than the "
                     f"{available / 2**30:.1f} GiB available: {hint}")
  return compiled


# ---------------------------------------------------------------------------------- Restore / init


def restore_or_init(mngr, state, init_params: Callable):
  """(state, start_step): the newest intact checkpoint of the workdir (a damaged newer one is
  moved aside: checkpoint_store.restore_latest), else `state` with its params replaced by
  init_params(params) (an initial model, or the random init as it is).

  Every restore reads onto the shardings of the freshly built state: a checkpoint written on
  another mesh or process count loads all the same (Orbax reads each device's slice).
  """
  restored, start_step = checkpoint_store.restore_latest(mngr, state)
  if start_step:
    logging.info("Resuming from %s/%d", mngr.directory, start_step)
    return restored, start_step
  return state.replace(params=init_params(state.params)), 0


def global_batches(local_batches: Iterator[dict], batch_sharding: dict) -> Iterator[dict]:
  """Each process's rows assembled into global arrays laid out by `batch_sharding`."""
  for local in local_batches:
    yield {k: jax.make_array_from_process_local_data(s, local[k])
           for k, s in batch_sharding.items()}


def gather_params(params):
  """The full parameters on every host (every process takes part: they may span hosts)."""
  return multihost_utils.process_allgather(params, tiled=True)


# ---------------------------------------------------------------------------------- Logging window


class LoggingWindow:
  """The steps since the last logged line and the wall time they took to FINISH.

  JAX dispatches a step and returns at once; the clock is read only after the window's metrics
  have been fetched, which waits for its last step (and, through the state, every step before
  it). The time includes the input pipeline and checkpoint saves, i.e. what the wall clock
  shows; only evaluation is left out (`paused`), as it is no training.
  """

  def __init__(self):
    self.metrics = []
    self.start = time.perf_counter()

  def add(self, step_metrics: dict):
    self.metrics.append(step_metrics)

  @contextlib.contextmanager
  def paused(self):
    start = time.perf_counter()
    yield
    self.start += time.perf_counter() - start

  def close(self) -> dict:
    """The window's scalars (means; learning rates at its last step; rates); starts the next
    window."""
    metrics = jax.device_get(self.metrics)  # blocks until the window's work is done
    seconds = time.perf_counter() - self.start
    scalars = {k: float(metrics[-1][k]) if k.startswith("lr") else
               float(np.mean([m[k] for m in metrics])) for k in metrics[0] if k != "tokens"}
    scalars["tokens_per_s"] = float(sum(m["tokens"] for m in metrics)) / seconds
    scalars["steps_per_s"] = len(metrics) / seconds
    self.metrics, self.start = [], time.perf_counter()
    return scalars


# ---------------------------------------------------------------------------------- Loop


def train(config, state, train_step, batches: Iterator[dict], *, start_step: int, checkpointer,
          writer, rates: Callable[[dict], dict] = lambda scalars: {}, evaluator=None,
          skips=None):
  """Runs steps start_step+1 .. config.total_steps; returns (state, preempted).

  Logs every config.log_every steps, the first and the last (the first line gives the ETA of a
  slow run at once), with rates(scalars) added (MFU, queries/s) and the running counts of
  `skips` (a data.sources.SkipCounter: skipped input lines, also logged when they change);
  saves by checkpointer.save_if_due (trainers/checkpointer.py); runs evaluator(step, params)
  where evaluator.due(step), and stops after an evaluation that sets evaluator.stop (early
  stopping).

  Faults stop the run (docs/reliability.md): a non-finite step raises divergence.Diverged
  (never saved), a failed save checkpoint_store.SaveFailed, both at the next step boundary.
  """
  checkpointer.watch_preemption()
  guard = divergence.Guard(config.divergence, checkpointer.mngr)
  window = None
  step = start_step
  with checkpointer.on_failure():
    while step < config.total_steps:
      batch = next(batches)
      if window is None:
        window = LoggingWindow()  # the pipeline's start-up (first batch read) is no step
      state, step_metrics = train_step(state, batch)
      step += 1
      guard.observe(step, step_metrics)
      window.add(step_metrics)
      if step % config.log_every == 0 or step in (start_step + 1, config.total_steps):
        scalars = window.close()
        scalars.update(rates(scalars))
        if skips is not None:
          scalars.update(skips.metrics())
          if report := skips.report():
            logging.warning("%s", report)
        writer.write(step, scalars)
        writer.progress(step, scalars)
      if checkpointer.save_if_due(step, state, guard.check):
        return state, True
      if evaluator is not None and evaluator.due(step):
        with window.paused():
          evaluator(step, state.params)
        if getattr(evaluator, "stop", False):
          logging.info("Stopping early at step %d (the evaluator asked to)", step)
          break
    guard.check()  # what the caller exports must be finite too
    checkpointer.wait_until_saved()
  return state, False
