"""Writes the pipeline's batches in the dense reference view, for eyeballing and cross-checks.

  python -m retromae_jax.tools.inspect --config=configs/base.py:smoke --out=batches.npz \
      [--num_batches=N] [--config.KEY=VALUE ...]

Arrays (concatenated over batches; B rows each):
  input_ids, attention_mask   as in the batch contract (retromae_jax/data/pretrain/pipeline.py)
  encoder_input_ids           the corrupted encoder input
  encoder_labels     [B, L]   original id where encoder-masked, -100 elsewhere
  decoder_input_ids  [B, L]   = input_ids (the decoder reads the uncorrupted text)
  decoder_attention  [B, L, L] uint8, 1 = query row i may attend to key j
  decoder_labels     [B, L]   = decoder_targets
and with data.pack (the default):
  segment_ids        [B, L]   k on the row's k-th document, 0 on padding
  positions          [B, L]   each token's position inside its document
  encoder_attention  [B, L, L] uint8, 1 = token i may attend to token j (its own document)
"""

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.data.pretrain import pipeline
from retromae_jax.objectives.settings import ObjectiveConfig
from retromae_jax.trainers import settings
from retromae_jax.objectives.contract import IGNORE
from retromae_jax.tools import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/base.py:PRESET")
_OUT = flags.DEFINE_string("out", None, "the .npz file to write")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 1, "batches to write")
flags.mark_flags_as_required(["config", "out"])


def dense_view(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The batch contract's compact arrays -> the dense reference view (module docstring)."""
  # The device's own expansion (imports JAX, so only here: the pipeline never needs it), not a
  # NumPy copy that could drift from what training computes.
  from retromae_jax.models.bert import segment_mask
  from retromae_jax.models.decoder_mask import decoder_attention

  encoder_labels = np.full(batch["input_ids"].shape, IGNORE, np.int32)
  rows = np.arange(len(encoder_labels))[:, None]
  valid = batch["encoder_targets"] != IGNORE
  encoder_labels[np.broadcast_to(rows, valid.shape)[valid], batch["encoder_positions"][valid]] = (
      batch["encoder_targets"][valid])
  segment_ids = batch.get("segment_ids")
  visible = decoder_attention(batch["decoder_pool"], batch["decoder_choice"],
                              batch["attention_mask"], segment_ids)
  packed = {}
  if segment_ids is not None:
    packed = {"segment_ids": segment_ids, "positions": batch["positions"],
              "encoder_attention": np.asarray(segment_mask(segment_ids))[:, 0].astype(np.uint8)}
  return packed | {
      "input_ids": batch["input_ids"],
      "attention_mask": batch["attention_mask"],
      "encoder_input_ids": batch["encoder_input_ids"],
      "encoder_labels": encoder_labels,
      "decoder_input_ids": batch["input_ids"],
      "decoder_attention": np.asarray(visible).astype(np.uint8),
      "decoder_labels": batch["decoder_targets"],
  }


def main(argv):
  del argv
  config = _CONFIG.value
  input_settings = settings.pretrain_input(config)
  objective = input_settings.objective
  if objective != ObjectiveConfig(decoder_layers=objective.decoder_layers):
    raise app.UsageError("the dense view is the default objective's (enhanced decoder, corrupt "
                         f"encoder, no bag of words); got {objective}")
  batches = pipeline.pretrain_batches(input_settings, tokenizer_lib.load_tokenizer(config.tokenizer))
  views = [dense_view(next(batches)) for _ in range(_NUM_BATCHES.value)]
  arrays = {name: np.concatenate([v[name] for v in views]) for name in views[0]}
  np.savez_compressed(_OUT.value, **arrays)
  print(f"wrote {_OUT.value}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


if __name__ == "__main__":
  cli.run(main)
