"""The RetroMAE decoder's own parameters on disk, to continue pretraining with a trained decoder.

  DIR/decoder.safetensors  float32 tensors named by our parameter paths (e.g. 'query/kernel')
  DIR/decoder.json         {'format', 'model', 'objective'}: what built them

Written by `python -m retromae_jax.tools.export` and at the end of pretraining (save_decoder);
read back by `--config.init.decoder_dir=DIR` (load_decoder), with the encoder from
`--config.init.hf_dir`.
"""

import json
import os

import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from retromae_jax.interop import hf as hf_interop

DECODER_CONFIG = "decoder.json"
DECODER_WEIGHTS = "decoder.safetensors"
_DECODER_FORMAT = "retromae_jax.decoder/1"


def save_decoder(decoder_params: dict, meta: dict, out_dir: str) -> str:
  """The decoder's parameters by path (e.g. 'attention/query/kernel') plus what built them."""
  flat = traverse_util.flatten_dict(decoder_params, sep="/")
  os.makedirs(out_dir, exist_ok=True)
  save_file({k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in flat.items()},
            os.path.join(out_dir, DECODER_WEIGHTS))
  with open(os.path.join(out_dir, DECODER_CONFIG), "w", encoding="utf-8") as f:
    json.dump({"format": _DECODER_FORMAT, "model": meta.get("model", {}),
               "objective": meta.get("objective", {})}, f, indent=2)
  return out_dir


def load_decoder(decoder_dir: str, target: dict) -> dict:
  """The decoder saved by save_decoder, checked against and placed like `target` (the model's
  freshly initialised params['decoder'])."""
  config_path = os.path.join(decoder_dir, DECODER_CONFIG)
  weights_path = os.path.join(decoder_dir, DECODER_WEIGHTS)
  for path in (config_path, weights_path):
    if not os.path.isfile(path):
      raise ValueError(f"init.decoder_dir: {path} does not exist (expected a directory written "
                       "by `python -m retromae_jax.tools.export`)")
  with open(config_path, encoding="utf-8") as f:
    found = json.load(f).get("format")
  if found != _DECODER_FORMAT:
    raise ValueError(f"{config_path}: format {found!r}, expected {_DECODER_FORMAT!r}")
  stored = load_file(weights_path)
  wanted = traverse_util.flatten_dict(target, sep="/")
  problems = [f"missing {k}" for k in sorted(set(wanted) - set(stored))]
  problems += [f"unexpected {k}" for k in sorted(set(stored) - set(wanted))]
  problems += [f"{k}: stored {stored[k].shape}, model {tuple(wanted[k].shape)}"
               for k in sorted(set(stored) & set(wanted)) if stored[k].shape != wanted[k].shape]
  if problems:
    raise ValueError(f"{weights_path}: does not fit this model's decoder: "
                     + "; ".join(problems[:8]))
  # Each value goes where the target leaf lives (its sharding) with its dtype.
  placed = {k: hf_interop.place(stored[k], v) for k, v in wanted.items()}
  return traverse_util.unflatten_dict(placed, sep="/")
