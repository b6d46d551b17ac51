"""Orbax checkpoints of the full training state: writing, finding, reading back, and telling a
damaged checkpoint from one that does not fit (storage only; when to save is the run's
checkpointer, retromae_jax/trainers/checkpointer.py).

Layout: <workdir>/checkpoints/<step>/{state, meta}. `state` is the TrainState pytree, written
asynchronously (training goes on while it is written) and atomically (Orbax writes to a temporary
directory and renames it when complete, so a crash mid-save leaves the previous checkpoint as the
latest). `meta` is JSON: the resolved model shape, the tokenizer and the run's identity
(trainers/run_identity.py), so a checkpoint can be exported, used to initialise another run or
resumed without the command line that made it.

The dropout key and the input pipeline are functions of (seed, step) (train.py, data/pretrain/pipeline.py),
so the step in `state` is all the RNG and data position a bit-exact resume needs.

Faults stop loudly and lose nothing (docs/reliability.md):
  - a save that cannot start raises SaveFailed naming the directory and the cause (one that
    fails in Orbax's background thread is reported by the checkpointer at the next step);
  - a checkpoint that cannot be read back (cut short, overwritten, non-finite) raises Damaged
    naming the step and, where it can be told, the file; at resume (restore_latest) it is moved
    aside to <step>.damaged and the newest intact step is restored instead.
"""

import gc
import logging as std_logging
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import traverse_util
from jax.experimental import multihost_utils

from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.interop import workdir as workdir_layout

ITEMS = ("state", "meta")
DAMAGED_SUFFIX = ".damaged"  # not a step name for Orbax: a moved-aside step is never listed


class Damaged(ValueError):
  """A checkpoint that exists but cannot be read back whole: cut short, overwritten, missing an
  item, or holding non-finite values. (A checkpoint that reads back but does not fit the model
  is a plain ValueError: the config changed, the files are fine.)"""


class SaveFailed(RuntimeError):
  """A checkpoint could not be written (disk full, directory gone or not writable). The run stops:
  training on would only lose more steps than the last complete checkpoint holds."""


def manager(workdir: str, keep: int, keep_period: int = 0) -> ocp.CheckpointManager:
  """The run's manager of <workdir>/checkpoints. The caller decides when to save; Orbax keeps the
  last `keep` and, forever, every step that is a multiple of `keep_period` (0 = none)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, keep_period=keep_period or None, enable_async_checkpointing=True)
  return ocp.CheckpointManager(workdir_layout.checkpoints_dir(workdir), options=options,
                               item_names=ITEMS)


def _read_only(directory: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(directory, item_names=ITEMS,
                               options=ocp.CheckpointManagerOptions(read_only=True))


def make_meta(model_cfg, tokenizer_spec: str, **extra) -> dict:
  """The JSON saved beside every state: the model's shape, the tokenizer's files (so that a
  checkpoint alone can be exported or continued: python -m retromae_jax.tools.export) and `extra`
  (the objective, the task, the run's identity)."""
  files = {}
  for path in tokenizer_lib.file_paths(tokenizer_spec):
    with open(path, encoding="utf-8") as f:
      files[os.path.basename(path)] = f.read()
  return {"model": {k: str(v) if k in ("dtype", "param_dtype") else v
                    for k, v in vars(model_cfg).items()},
          "tokenizer": tokenizer_lib.files_dir(tokenizer_spec), "tokenizer_files": files,
          **extra}


def start_save(mngr: ocp.CheckpointManager, step: int, state, meta: dict) -> bool:
  """Starts writing `state` at `step` (Orbax finishes in the background); raises SaveFailed if the
  write cannot start, or if the previous one failed (Orbax waits for it first)."""
  try:
    return mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
  except Exception as e:  # OSError, tensorstore's ValueError, ...: all mean "not saved"
    raise save_failed(mngr, e) from e


def first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0] if text else ''}"


def save_failed(mngr: ocp.CheckpointManager, cause: BaseException | str) -> SaveFailed:
  """SaveFailed naming the directory, the cause and the newest complete checkpoint."""
  cause = cause if isinstance(cause, str) else first_line(cause)
  complete = steps_on_disk(mngr)
  last = f"step {max(complete)}" if complete else "none"
  return SaveFailed(f"{mngr.directory}: saving a checkpoint failed ({cause}); the newest "
                    f"complete checkpoint is {last}")


def steps_on_disk(mngr: ocp.CheckpointManager) -> list[int]:
  mngr.reload()  # the directory as it is now, not as the manager last listed it
  return list(mngr.all_steps())


# ---------------------------------------------------------------------------------------------
# Finding and checking a checkpoint
# ---------------------------------------------------------------------------------------------


def complete_steps(directory: str) -> list[int]:
  """The steps of the checkpoints/ `directory` whose save completed, newest first. Local to the
  calling process (no manager: a CheckpointManager's constructor is a collective of every
  process, which a check that only some processes make would leave waiting)."""
  return sorted(ocp.step.checkpoint_steps(directory), reverse=True)


def read_step_meta(step_dir: str) -> dict:
  """The `meta` item of one step directory, read by this process alone (see complete_steps)."""
  meta_dir = os.path.join(step_dir, "meta")
  try:
    return ocp.JsonCheckpointHandler().restore(epath.Path(meta_dir))
  except Exception as e:  # a missing or damaged item: say where, keep the cause
    raise ValueError(f"{meta_dir}: cannot read ({first_line(e)})") from e


def resolve(path: str) -> tuple[str, int]:
  """(checkpoints directory, step) named by a workdir, its checkpoints/ directory, or one step
  directory (<workdir>/checkpoints/<step>). A workdir or checkpoints/ means its latest step."""
  path = os.path.normpath(path)
  if os.path.isdir(os.path.join(path, "state")) or os.path.isdir(os.path.join(path, "meta")):
    name = os.path.basename(path)
    if not name.isdigit():
      raise ValueError(f"{path}: a step directory must be named by its step number")
    return os.path.dirname(path), int(name)
  directory = workdir_layout.checkpoints_dir(path) if os.path.isdir(
      workdir_layout.checkpoints_dir(path)) else path
  if not os.path.isdir(directory):
    raise ValueError(f"{path}: no such checkpoint, checkpoints/ or workdir directory")
  steps = _read_only(directory).all_steps()
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
    raise Damaged(f"{step_dir}: the checkpoint has no 'state' item (found: {present}); it is "
                  "incomplete or not one of ours")
  try:
    item = ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata
  except Exception as e:  # a corrupted or foreign metadata file: say where, keep the cause
    raise Damaged(f"{state_dir}: cannot read the checkpoint's metadata ({type(e).__name__}: "
                  f"{first_line(e)})") from e
  if item is None:
    raise Damaged(f"{state_dir}: cannot read the checkpoint's metadata (missing or corrupted "
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


def _damaged(step_dir: str, error: BaseException) -> Damaged:
  """Damaged naming the step and, where the error lets it be told, the damaged file."""
  chain = [error]  # TensorStore's own message is the innermost cause: it says what failed where
  while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 8:
    chain.append(cause)
  found = _damaged_file(step_dir, "\n".join(str(e) for e in chain))
  where = f"damaged file {found}" if found else "the damaged file could not be told"
  return Damaged(f"{step_dir}: the checkpoint cannot be read ({where}; {first_line(chain[-1])})")


def _collect_quietly() -> None:
  """A failed read leaves TensorStore coroutines that Python reports as they are collected, at
  exit if not before: dozens of tracebacks of the failure already reported in one line, after
  the run's last line. Collects them now, silently."""
  hook, sys.unraisablehook = sys.unraisablehook, lambda _: None
  asyncio_log = std_logging.getLogger("asyncio")
  disabled, asyncio_log.disabled = asyncio_log.disabled, True
  try:
    gc.collect()
  finally:
    sys.unraisablehook, asyncio_log.disabled = hook, disabled


def _damaged_file(step_dir: str, message: str) -> str | None:
  """The file of `step_dir` an Orbax / TensorStore read error points at: a path it names, or the
  one data file of the size it reports ('... is not valid for value of size N': a cut file)."""
  for path in re.findall(r"[\"'](/[^\"']+)[\"']", message):
    if os.path.isfile(path) and os.path.abspath(path).startswith(os.path.abspath(step_dir)):
      return path
  size = re.search(r"value of size (\d+)", message)
  if size:
    files = [os.path.join(root, name) for root, _, names in os.walk(step_dir) for name in names]
    same = [f for f in files if os.path.getsize(f) == int(size.group(1))]
    if len(same) == 1:
      return same[0]
  return None


def nonfinite_arrays(tree) -> list[str]:
  """Names of the floating-point arrays of `tree` holding a NaN or an infinity (global arrays:
  the answer is the same on every process)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  floats = [(p, x) for p, x in leaves if jnp.issubdtype(x.dtype, jnp.inexact)]
  # Host arrays (restore_params for an export) are checked where they are, not copied to a device.
  finite = {i: bool(np.isfinite(x).all()) for i, (_, x) in enumerate(floats)
            if isinstance(x, np.ndarray)}
  on_device = [i for i in range(len(floats)) if i not in finite]
  if on_device:
    finite.update(zip(on_device, jax.device_get(_all_finite([floats[i][1] for i in on_device]))))
  return [_path_key(p) for i, (p, _) in enumerate(floats) if not finite[i]]


@jax.jit
def _all_finite(arrays):
  # One program for the whole tree, not one per array: dozens of small sharded reductions
  # dispatched back to back deadlock XLA:CPU's in-process all-reduce on 8 host devices
  # (jaxlib 0.10: "Termination timeout for `all reduce`", the process aborts); one is faster too.
  return jnp.stack([jnp.isfinite(x).all() for x in arrays])


def _check_finite(step_dir: str, tree) -> None:
  bad = nonfinite_arrays(tree)
  if bad:
    raise Damaged(f"{step_dir}: the checkpoint holds non-finite values ({len(bad)} arrays, first "
                  f"{bad[0]}); it was written by a run that diverged")


def restore_latest(mngr: ocp.CheckpointManager, abstract_state):
  """(state, step) of the newest checkpoint that reads back whole and finite; (None, 0) when
  there is no checkpoint. A damaged newer one is logged in one line and moved aside to
  <step>.damaged (kept for inspection, never deleted); a checkpoint that does not fit the model
  raises (the config changed: the files are fine). Raises Damaged when no checkpoint is intact."""
  moved = []
  for step in sorted(steps_on_disk(mngr), reverse=True):
    step_dir = os.path.join(str(mngr.directory), str(step))
    try:
      state, _ = restore(mngr, step, abstract_state)
      problem = None
    except Damaged as e:
      state, problem = None, str(e)
    if problem is not None:
      _collect_quietly()
    if jax.process_count() > 1:  # every process reads its own slices: all must have succeeded
      failed = np.flatnonzero(multihost_utils.process_allgather(np.int32(problem is not None)))
      if failed.size and problem is None:
        problem = f"{step_dir}: process(es) {failed.tolist()} could not read their part"
    if problem is None:
      return state, step
    aside = _move_aside(step_dir)
    logging.error("%s; moved to %s; trying the previous checkpoint", problem, aside)
    moved.append(aside)
    mngr.reload()
  if moved:
    raise Damaged(f"{mngr.directory}: no intact checkpoint left (moved aside: {', '.join(moved)}); "
                  "run again to start from step 0, or restore one of them by hand")
  return None, 0


def _move_aside(step_dir: str) -> str:
  aside, n = step_dir + DAMAGED_SUFFIX, 1
  while os.path.exists(aside):
    aside, n = f"{step_dir}{DAMAGED_SUFFIX}.{n}", n + 1
  if jax.process_index() == 0:
    os.rename(step_dir, aside)
  multihost_utils.sync_global_devices(f"checkpoints: moved {step_dir} aside")
  return aside


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """Restores the state at `step` onto the shardings carried by `abstract_state`'s leaves (any
  mesh or process count: Orbax reads each device's slice); returns (state, meta)."""
  step_dir = os.path.join(str(mngr.directory), str(step))
  check_matches(step_dir, abstract_state)
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(abstract_state)), meta=ocp.args.JsonRestore()))
  except Exception as e:
    raise _damaged(step_dir, e) from e
  _check_finite(step_dir, restored.state)
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
  mngr = _read_only(directory)
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                     partial_restore=True),
        meta=ocp.args.JsonRestore()))
  except Exception as e:
    raise _damaged(step_dir, e) from e
  _check_finite(step_dir, restored.state)
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
  mngr = _read_only(directory)
  try:
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  except Exception as e:
    raise ValueError(f"{meta_dir}: cannot read ({type(e).__name__}: {e})") from e
  return meta, step_dir


