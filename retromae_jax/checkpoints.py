"""Orbax checkpoints of the full training state (encoder, MLM head AND decoder, optimizer, step).

Layout: <workdir>/checkpoints/<step>/{state, meta}. `state` is the TrainState pytree, written
asynchronously (training goes on while it is written) and atomically (Orbax writes to a temporary
directory and renames it when complete, so a crash mid-save leaves the previous checkpoint as the
latest). `meta` is JSON: the resolved model shape and the run's config, so a checkpoint can be
read without the command line that made it.
"""

import os
import signal

import jax
import orbax.checkpoint as ocp


def manager(workdir: str, config) -> ocp.CheckpointManager:
  # The training loop decides when to save (every checkpoint_every steps and at the end).
  options = ocp.CheckpointManagerOptions(max_to_keep=config.checkpoint_keep,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), options=options,
                               item_names=("state", "meta"))


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict) -> bool:
  return mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """Restores the state at `step` onto the shardings carried by `abstract_state`'s leaves."""
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), abstract_state)
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  return restored.state, restored.meta


class PreemptionWatch:
  """Tells the loop when to save and stop: SIGTERM (a TPU maintenance event, a scheduler's stop).

  Multi-process runs use JAX's preemption service through Orbax (every process reaches the same
  sync step); a single process has no coordination service, so a SIGTERM handler sets a flag.
  """

  def __init__(self):
    self._requested = False
    if jax.process_count() == 1:
      signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self._requested = True

  def reached(self, mngr: ocp.CheckpointManager, step: int) -> bool:
    if jax.process_count() == 1:
      return self._requested
    return mngr.reached_preemption(step)
