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

# TensorFlow's C++ start-up notes (CPU instruction sets, oneDNN) are no news to a user.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from retromae_jax.interop import checkpoint_store  # noqa: E402
from retromae_jax.tools import cli  # noqa: E402
from retromae_jax.trainers import distributed  # noqa: E402
from retromae_jax.trainers import divergence  # noqa: E402
from retromae_jax.trainers import finetune  # noqa: E402
from retromae_jax.trainers import preflight  # noqa: E402
from retromae_jax.trainers import pretrain  # noqa: E402
from retromae_jax.trainers import workdir_lock  # noqa: E402

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


def main(argv):
  # Our errors (bad config, input, a failed save, divergence) end in one line, bugs with their
  # traceback (tools/cli.py); a lock still held is released first.
  cli.one_line_errors(_main, ours=(checkpoint_store.SaveFailed, divergence.Diverged),
                      before_exit=workdir_lock.release_all)(argv)


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _THIRD_PARTY_LOGS.value:
    logging.get_absl_handler().addFilter(_OwnLinesAndWarnings())
  config = _CONFIG.value
  task = config.task
  if task not in TASKS:
    raise ValueError(f"config.task: expected one of {sorted(TASKS)}, got {task!r}")
  distributed.initialize()
  # Absolute: orbax refuses relative checkpoint paths (a relative --workdir failed at its first
  # save).
  workdir = os.path.abspath(_WORKDIR.value or f"workdirs/{config.preset}")
  logging.info("Workdir: %s (task %s)", workdir, task)
  with workdir_lock.hold(workdir):  # one run per workdir, for the run's life
    preflight.check(config, workdir)  # files, directories and a resume's identity, before compiling
    TASKS[task](config, workdir)


if __name__ == "__main__":
  app.run(main)
