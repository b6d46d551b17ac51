"""Writes the offline retrieval set (data/evalsets/pydoc_set.py) as a BEIR folder:

  python -m retromae_jax.tools.pydoc_set --out=DIR
"""

import json

from absl import flags, logging

from retromae_jax.data.evalsets import pydoc_set
from retromae_jax.tools import cli

flags.DEFINE_string("out", None, "Folder to write the BEIR set into.")
flags.mark_flag_as_required("out")


def main(argv):
  del argv
  info = pydoc_set.build(flags.FLAGS.out)
  logging.info("Wrote %s: %s", flags.FLAGS.out, info)
  print(json.dumps(info), flush=True)


if __name__ == "__main__":
  cli.run(main)
