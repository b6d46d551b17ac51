"""Prepare a corpus once for training by index (data/pretrain/prepare.py says what is written):

  python -m retromae_jax.tools.prepare --source=SOURCE --out=DIR \
      [--config=configs/base.py --config.data.max_seq_length=512 ...] [--num_workers=N] \
      [--engine=beam -- BEAM_PIPELINE_OPTIONS]
"""

import json

from absl import app, flags, logging
from ml_collections import config_flags

from retromae_jax.data.pretrain import prepare
from retromae_jax.tools import cli
from retromae_jax.trainers import settings

config_flags.DEFINE_config_file("config", "configs/base.py", "configs/base.py[:PRESET]")
flags.DEFINE_string("source", None, "a raw data.source: jsonl:GLOB, text:GLOB, ...")
flags.DEFINE_string("out", None, "output directory: new, empty, or an interrupted prepare of "
                    "the same settings (resumed shard by shard)")
flags.DEFINE_integer("num_workers", 0, "output shards (= worker processes for the local "
                     "engine); 0 = one per CPU core")
flags.DEFINE_enum("engine", "local", ["local", "beam"], "local: processes of this machine; "
                  "beam: Apache Beam, pipeline options after `--` (data/pretrain/prepare_beam.py)")
flags.mark_flags_as_required(["source", "out"])


def main(argv):
  f = flags.FLAGS
  if len(argv) > 1 and f.engine != "beam":
    raise app.UsageError(f"unexpected arguments {argv[1:]} (only --engine=beam takes pipeline "
                         "options, after `--`)")
  meta = prepare.prepare(f.source, f.out, settings.pretrain_input(f.config), f.num_workers,
                         f.engine, tuple(argv[1:]))
  logging.info("prepare: wrote %s in %.1f s", f.out, meta["seconds"])
  print(json.dumps({"out": f.out, **meta["stats"], "seconds": meta["seconds"]}))


if __name__ == "__main__":
  cli.run(main)
