"""Entry point: `python -m retromae_jax.main --config=configs/base.py[:preset] --workdir=DIR`.

The config's `task` picks the program: 'pretrain' (RetroMAE, retromae_jax/trainers/pretrain.py;
the default when the config has no `task`, as configs/base.py) or 'finetune' (contrastive
fine-tuning, retromae_jax/trainers/finetune.py; configs/finetune.py).

Any config key can be overridden: `--config.data.source=jsonl:/data/*.jsonl --config.batch_size=64`.
The console shows our own lines (progress, one line per checkpoint save, evaluation) and every
warning; --third_party_logs brings back the INFO lines of the libraries (Orbax, JAX, TF).
"""

import logging as std_logging
import os
import re
import sys

# TensorFlow's C++ start-up notes (CPU instruction sets, oneDNN) are no news to a user.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from retromae_jax.trainers import checkpoints  # noqa: E402
from retromae_jax.trainers import distributed  # noqa: E402
from retromae_jax.trainers import divergence  # noqa: E402
from retromae_jax.trainers import finetune  # noqa: E402
from retromae_jax.trainers import preflight  # noqa: E402
from retromae_jax.trainers import pretrain  # noqa: E402

TASKS = {"pretrain": pretrain.train_and_evaluate, "finetune": finetune.train_and_evaluate}

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/base.py", "Config file (configs/base.py[:preset]).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, metrics and the export go (default workdirs/<preset>).")
_THIRD_PARTY_LOGS = flags.DEFINE_bool(
    "third_party_logs", False, "Also show the INFO lines of libraries (Orbax logs ~40 per save).")

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class _OwnLinesAndWarnings(std_logging.Filter):
  """Passes our INFO lines and everyone's warnings and errors."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or record.pathname.startswith(_PACKAGE_DIR)


# Our errors: the message is the whole story (what, where, what was expected), one line.
_OURS = (ValueError, checkpoints.SaveFailed, divergence.Diverged)


def _our_message(error: BaseException) -> str | None:
  """The one-line message of one of our errors, also when tf.data ran the code that raised it
  (a ValueError in a pipeline function reaches us wrapped in a TF error, inside its traceback)."""
  if isinstance(error, _OURS):
    return str(error)
  if type(error).__module__.startswith("tensorflow"):
    found = re.findall(r"^ValueError: (.+)$", str(error), flags=re.MULTILINE)
    if found:
      return found[-1]
  return None


def main(argv):
  try:
    _main(argv)
  except Exception as e:  # pylint: disable=broad-except
    message = _our_message(e)
    if message is None:
      raise  # a bug: its traceback is the useful part
    logging.flush()
    sys.stdout.flush()
    print(message, file=sys.stderr, flush=True)
    # Not sys.exit: Orbax's and tf.data's threads can wait forever on a broken disk, or print
    # tracebacks while the interpreter shuts down; the last line of stderr must stay ours.
    os._exit(1)


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _THIRD_PARTY_LOGS.value:
    logging.get_absl_handler().addFilter(_OwnLinesAndWarnings())
  config = _CONFIG.value
  task = config.get("task", "pretrain")
  if task not in TASKS:
    raise ValueError(f"config.task: expected one of {sorted(TASKS)}, got {task!r}")
  distributed.initialize()
  # Absolute: orbax refuses relative checkpoint paths (a relative --workdir failed at its first
  # save).
  workdir = os.path.abspath(_WORKDIR.value or f"workdirs/{config.preset}")
  logging.info("Workdir: %s (task %s)", workdir, task)
  preflight.check(config, workdir)  # files and directories, in seconds, before compiling
  TASKS[task](config, workdir)


if __name__ == "__main__":
  app.run(main)
