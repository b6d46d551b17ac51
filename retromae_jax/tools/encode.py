"""Sentence embeddings from a HF BERT directory or one of our workdirs.

  python -m retromae_jax.tools.encode --model=PATH --input=FILE.jsonl --output=FILE.npy
      [--pooling=auto|cls|mean] [--normalize] [--max_len=N] [--batch_size=N]

The library behind it: retromae_jax/evaluators/embed.py.
"""

import os

import numpy as np
from absl import flags, logging

from retromae_jax.evaluators import embed
from retromae_jax.tools import cli


def _define_flags():
  flags.DEFINE_string("model", None, "HF BERT directory, or a workdir with export/encoder.")
  flags.DEFINE_string("input", None, "jsonl file; the `text` field of each line is embedded.")
  flags.DEFINE_string("output", None, "Where to write the float32 [N, D] .npy array.")
  flags.DEFINE_enum("pooling", "auto", embed.POOLING_CHOICES, "auto: the model's own (its "
                    "sentence-transformers pooling config; else cls); cls: [CLS] hidden state; "
                    "mean: average over real tokens.")
  flags.DEFINE_bool("normalize", False, "L2-normalise each embedding.")
  flags.DEFINE_integer("max_len", 512, "Truncate texts to this many tokens, [CLS]/[SEP] "
                       "included (capped at max_position_embeddings).")
  flags.DEFINE_integer("batch_size", 64, "Texts per forward pass.")
  flags.mark_flags_as_required(["model", "input", "output"])


def main(argv):
  del argv
  f = flags.FLAGS
  texts = embed.read_texts(f.input)
  if not texts:
    raise cli.UserError(f"{f.input}: no line to embed; expected jsonl lines {{\"text\": ...}}")
  embeddings = embed.embed_texts(f.model, texts, f.pooling, f.normalize, f.max_len, f.batch_size)
  os.makedirs(os.path.dirname(os.path.abspath(f.output)), exist_ok=True)
  np.save(f.output, embeddings)
  logging.info("Wrote %s: %d x %d float32", f.output, *embeddings.shape)


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
