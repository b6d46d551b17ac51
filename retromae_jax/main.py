"""Entry point: `python -m retromae_jax.main --config=configs/base.py[:preset] --workdir=DIR`.

The config's `task` picks the program: 'pretrain' (RetroMAE, retromae_jax/trainers/pretrain.py; the default
when the config has no `task`, as configs/base.py) or 'finetune' (contrastive fine-tuning,
retromae_jax/trainers/finetune.py; configs/finetune.py).

Any config key can be overridden: `--config.data.source=jsonl:/data/*.jsonl --config.batch_size=64`.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from retromae_jax.trainers import validation as config_check
from retromae_jax.trainers import distributed
from retromae_jax.trainers import finetune
from retromae_jax.trainers import pretrain as train

TASKS = {"pretrain": (config_check.validate, train.train_and_evaluate),
         "finetune": (finetune.validate, finetune.train_and_evaluate)}

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/base.py", "Config file (configs/base.py[:preset]).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, metrics and the export go (default workdirs/<preset>).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  task = config.get("task", "pretrain")
  if task not in TASKS:
    raise ValueError(f"config.task: expected one of {sorted(TASKS)}, got {task!r}")
  validate, run = TASKS[task]
  validate(config)
  distributed.initialize()
  workdir = _WORKDIR.value or f"workdirs/{config.preset}"
  logging.info("Workdir: %s (task %s)", workdir, task)
  run(config, workdir)


if __name__ == "__main__":
  app.run(main)
