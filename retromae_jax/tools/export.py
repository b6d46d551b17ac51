"""Exports a training checkpoint for use outside this codebase.

  python -m retromae_jax.tools.export --checkpoint=WORKDIR_OR_STEP_DIR --out=DIR [--max_seq_length=N]

The library behind it: retromae_jax/interop/export.py.
"""


from absl import app, flags

from retromae_jax.interop import export
from retromae_jax.tools import cli


def _define_flags():
  flags.DEFINE_string("checkpoint", None, "A workdir (its latest checkpoint), its checkpoints/ "
                      "directory, or one step directory <workdir>/checkpoints/<step>.")
  flags.DEFINE_string("out", None, "Directory to write encoder/, sentence-transformers/, "
                      "decoder/ into.")
  flags.DEFINE_integer("max_seq_length", None, "sentence-transformers' truncation length "
                       "(default: the model's max_position_embeddings).")
  flags.mark_flags_as_required(["checkpoint", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  for name, directory in export.export_checkpoint(f.checkpoint, f.out, f.max_seq_length).items():
    print(f"{name}: {directory}")


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
