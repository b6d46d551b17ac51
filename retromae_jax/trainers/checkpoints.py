"""Orbax checkpoints of the full training state (encoder, MLM head AND decoder, optimizer, step).

Layout: <workdir>/checkpoints/<step>/{state, meta}. `state` is the TrainState pytree, written
asynchronously (training goes on while it is written) and atomically (Orbax writes to a temporary
directory and renames it when complete, so a crash mid-save leaves the previous checkpoint as the
latest). `meta` is JSON: the resolved model shape and the tokenizer, so a checkpoint can be
exported or used to initialise another run without the command line that made it.

The dropout key and the input pipeline are functions of (seed, step) (train.py, data/pipeline.py),
so the step in `state` is all the RNG and data position a bit-exact resume needs.
"""

import os
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from retromae_jax.data import tokenizer as tokenizer_lib

ITEMS = ("state", "meta")


def manager(workdir: str, config) -> ocp.CheckpointManager:
  # The training loop decides when to save (every checkpoint_every steps and at the end). Orbax
  # keeps the last `checkpoint_keep` and, forever, every step that is a multiple of
  # `checkpoint_keep_period` (0 = none).
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.checkpoint_keep, keep_period=config.checkpoint_keep_period or None,
      enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), options=options,
                               item_names=ITEMS)


def make_meta(model_cfg, tokenizer_spec: str, **extra) -> dict:
  """The JSON saved beside every state: the model's shape, the tokenizer's files (so that a
  checkpoint alone can be exported or continued: python -m retromae_jax.tools.export) and `extra`
  (the objective, the task)."""
  directory = tokenizer_lib.files_dir(tokenizer_spec)
  files = {}
  for path in tokenizer_lib.file_paths(tokenizer_spec):
    with open(path, encoding="utf-8") as f:
      files[os.path.basename(path)] = f.read()
  return {"model": {k: str(v) if k in ("dtype", "param_dtype") else v
                    for k, v in vars(model_cfg).items()},
          "tokenizer": directory, "tokenizer_files": files, **extra}


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict) -> bool:
  saved = mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
  logging.info("Checkpoint step %d: saving to %s/%d (in the background)", step, mngr.directory,
               step)
  return saved


# ---------------------------------------------------------------------------------------------
# Finding and checking a checkpoint
# ---------------------------------------------------------------------------------------------


def resolve(path: str) -> tuple[str, int]:
  """(checkpoints directory, step) named by a workdir, its checkpoints/ directory, or one step
  directory (<workdir>/checkpoints/<step>). A workdir or checkpoints/ means its latest step."""
  path = os.path.normpath(path)
  if os.path.isdir(os.path.join(path, "state")) or os.path.isdir(os.path.join(path, "meta")):
    name = os.path.basename(path)
    if not name.isdigit():
      raise ValueError(f"{path}: a step directory must be named by its step number")
    return os.path.dirname(path), int(name)
  directory = os.path.join(path, "checkpoints") if os.path.isdir(
      os.path.join(path, "checkpoints")) else path
  if not os.path.isdir(directory):
    raise ValueError(f"{path}: no such checkpoint, checkpoints/ or workdir directory")
  steps = ocp.CheckpointManager(
      directory, item_names=ITEMS, options=ocp.CheckpointManagerOptions(read_only=True)).all_steps()
  if not steps:
    raise ValueError(f"{directory}: no complete checkpoint (only finished saves count; an "
                     "interrupted one leaves a temporary directory that is ignored)")
  return directory, max(steps)


def _path_key(path) -> str:
  """'params/bert/encoder/query/kernel' for a key path of dicts, dataclasses or tuples."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return "/".join(parts)


def _shapes(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_key(p): (tuple(x.shape), str(np.dtype(x.dtype))) for p, x in leaves}


def stored_shapes(step_dir: str) -> dict[str, tuple[tuple[int, ...], str]]:
  """name -> (shape, dtype) of every array in <step_dir>/state, read from Orbax's metadata."""
  state_dir = os.path.join(step_dir, "state")
  if not os.path.isdir(state_dir):
    present = sorted(os.listdir(step_dir)) if os.path.isdir(step_dir) else []
    raise ValueError(f"{step_dir}: the checkpoint has no 'state' item (found: {present}); it is "
                     "incomplete or not one of ours")
  try:
    item = ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata
  except Exception as e:  # a corrupted or foreign metadata file: say where, keep the cause
    raise ValueError(f"{state_dir}: cannot read the checkpoint's metadata ({type(e).__name__}: "
                     f"{e})") from e
  if item is None:
    raise ValueError(f"{state_dir}: cannot read the checkpoint's metadata (missing or corrupted "
                     "files)")
  tree = item.tree
  return _shapes(tree)


def abstract_params(step_dir: str):
  """The parameter tree stored in `step_dir` as ShapeDtypeStructs without shardings (what
  restore_params reads back as host NumPy arrays)."""
  return traverse_util.unflatten_dict(
      {k[len("params/"):]: jax.ShapeDtypeStruct(shape, dtype)
       for k, (shape, dtype) in stored_shapes(step_dir).items() if k.startswith("params/")},
      sep="/")


def check_matches(step_dir: str, target, prefix: str = "") -> None:
  """Raises a ValueError naming every difference (missing/unexpected keys, shapes, dtypes)
  between the arrays stored under `prefix` in `step_dir` and the `target` tree."""
  stored = {k: v for k, v in stored_shapes(step_dir).items() if k.startswith(prefix)}
  wanted = _shapes(target)
  params_first = lambda keys: sorted(keys, key=lambda k: (not k.startswith("params/"), k))
  problems = [f"missing {k}" for k in params_first(set(wanted) - set(stored))]
  problems += [f"unexpected {k}" for k in params_first(set(stored) - set(wanted))]
  problems += [f"{k}: checkpoint {stored[k][0]} {stored[k][1]}, model {wanted[k][0]} "
               f"{wanted[k][1]}" for k in params_first(set(stored) & set(wanted))
               if stored[k] != wanted[k]]
  if problems:
    shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} differences)"
                                       if len(problems) > 8 else "")
    raise ValueError(f"{step_dir}: the checkpoint does not fit this model ({prefix or 'state'}): "
                     f"{shown}")


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


# ---------------------------------------------------------------------------------------------
# Restoring
# ---------------------------------------------------------------------------------------------


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """Restores the state at `step` onto the shardings carried by `abstract_state`'s leaves (any
  mesh or process count: Orbax reads each device's slice); returns (state, meta)."""
  step_dir = os.path.join(str(mngr.directory), str(step))
  check_matches(step_dir, abstract_state)
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(abstract_state)), meta=ocp.args.JsonRestore()))
  except Exception as e:
    raise ValueError(f"{step_dir}: restore failed ({type(e).__name__}: {e})") from e
  return restored.state, restored.meta


def restore_params(path: str, target_params):
  """Only the parameters of the checkpoint named by `path` (see `resolve`), onto the shardings
  of `target_params` (arrays or ShapeDtypeStructs with shardings; None shardings = host NumPy);
  returns (params, meta, step_dir). Optimizer state is not read."""
  directory, step = resolve(path)
  step_dir = os.path.join(directory, str(step))
  check_matches(step_dir, {"params": target_params}, prefix="params")
  target = {"params": target_params}
  restore_args = jax.tree.map(
      lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding) if getattr(x, "sharding", None)
      else ocp.RestoreArgs(restore_type=np.ndarray), target)
  mngr = ocp.CheckpointManager(directory, item_names=ITEMS,
                               options=ocp.CheckpointManagerOptions(read_only=True))
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                     partial_restore=True),
        meta=ocp.args.JsonRestore()))
  except Exception as e:
    raise ValueError(f"{step_dir}: restore failed ({type(e).__name__}: {e})") from e
  if restored.meta is None:
    raise ValueError(f"{step_dir}: the checkpoint has no 'meta' item (model shape, tokenizer)")
  return restored.state["params"], restored.meta, step_dir


def read_meta(path: str) -> tuple[dict, str]:
  """(meta, step_dir) of the checkpoint named by `path`, without reading any array."""
  directory, step = resolve(path)
  step_dir = os.path.join(directory, str(step))
  meta_dir = os.path.join(step_dir, "meta")
  if not os.path.isdir(meta_dir):
    raise ValueError(f"{step_dir}: the checkpoint has no 'meta' item (model shape, tokenizer)")
  mngr = ocp.CheckpointManager(directory, item_names=ITEMS,
                               options=ocp.CheckpointManagerOptions(read_only=True))
  try:
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  except Exception as e:
    raise ValueError(f"{meta_dir}: cannot read ({type(e).__name__}: {e})") from e
  return meta, step_dir


def save_if_due(mngr: ocp.CheckpointManager, step: int, state, meta: dict, config,
                preemption: "PreemptionWatch") -> bool:
  """Saves every `config.checkpoint_every` steps, at the last step, and when preempted (then
  waits until the save is complete); returns True when the run must stop now (preempted)."""
  preempted = preemption.reached(mngr, step)
  if step % config.checkpoint_every == 0 or step == config.total_steps or preempted:
    save(mngr, step, state, meta)
  if preempted:
    mngr.wait_until_finished()
    logging.warning("Preempted: saved step %d; the same command resumes from it", step)
  return preempted


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
