"""Entry point: `python -m retromae_jax.main --config=configs/base.py[:preset] --workdir=DIR`.

Any config key can be overridden: `--config.data.source=jsonl:/data/*.jsonl --config.batch_size=64`.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from retromae_jax import config_check
from retromae_jax import distributed
from retromae_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/base.py", "Config file (configs/base.py[:preset]).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, metrics and the export go (default workdirs/<preset>).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  config_check.validate(config)
  distributed.initialize()
  workdir = _WORKDIR.value or f"workdirs/{config.preset}"
  logging.info("Workdir: %s", workdir)
  train.train_and_evaluate(config, workdir)


if __name__ == "__main__":
  app.run(main)
