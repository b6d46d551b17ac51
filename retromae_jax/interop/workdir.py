"""Where a run keeps what it writes: the one place that knows a workdir's layout.

  <workdir>/
    config.json             the run's resolved config (written once the start-up checks pass)
    run.lock                held for the run's life (trainers/workdir_lock.py)
    metrics.jsonl           one JSON line per logged step and evaluation; tensorboard/ beside it
    checkpoints/<step>/     Orbax checkpoints (interop/checkpoint_store.py)
    export/encoder/         the final encoder as a Hugging Face BertModel directory
    export/sentence-transformers/   the same as a sentence-transformers model (pooling, prompts)
    export/decoder/         the pretraining decoder (interop/decoder.py), when the objective has one
    export/best/            fine-tuning: the best evaluated step's encoder, and best_eval.json

A model is named by a HF directory or by a workdir (its export/encoder); the pooling it was
trained with is read from the sentence-transformers folder beside it.
"""

import json
import os

from retromae_jax.interop import hf as hf_interop
from retromae_jax.models import pooling as pooling_lib

CONFIG = "config.json"
LOCK = "run.lock"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
EXPORT = "export"
ENCODER = "encoder"
SENTENCE_TRANSFORMERS = "sentence-transformers"
DECODER = "decoder"
BEST = "best"
BEST_EVAL = "best_eval.json"


def checkpoints_dir(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINTS)


def export_dir(workdir: str) -> str:
  return os.path.join(workdir, EXPORT)


def encoder_dir(workdir: str) -> str:
  return os.path.join(workdir, EXPORT, ENCODER)


def best_dir(workdir: str) -> str:
  return os.path.join(workdir, EXPORT, BEST)


def is_hf_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "config.json")) and any(
      os.path.isfile(os.path.join(path, n))
      for n in ("model.safetensors", "model.safetensors.index.json"))


def resolve_model_dir(path: str) -> str:
  """The HF BERT directory to embed with: `path` itself, or `<workdir>/export/encoder`."""
  export = encoder_dir(path)
  if is_hf_dir(export):
    return export
  if is_hf_dir(path):
    return path
  if not os.path.isdir(path):
    raise ValueError(f"--model: {path} does not exist")
  config_path = os.path.join(path, "config.json")
  try:
    with open(config_path, encoding="utf-8") as f:
      is_hf = "model_type" in json.load(f)
  except (OSError, ValueError):
    is_hf = False
  if is_hf:
    hf_interop.read_hf_config(path)  # raises, naming the missing model.safetensors
  if os.path.isdir(checkpoints_dir(path)) or os.path.isfile(config_path):
    raise ValueError(f"{path} is a workdir without an exported encoder ({export}); run training to "
                     "the end (it exports on completion) or export the encoder first")
  raise ValueError(f"--model: {path} has neither config.json + model.safetensors (a HF BERT "
                   "directory) nor export/encoder (a workdir)")


# Where the pooling a model was trained with is written down: a sentence-transformers folder's
# 1_Pooling/config.json (e.g. all-MiniLM-L6-v2: mean), found in the model directory itself, beside
# our exported encoder/ (export/sentence-transformers), or in a workdir's export/.
_ST_POOLING = os.path.join("1_Pooling", "config.json")
_PLACES = ("", os.path.join("..", SENTENCE_TRANSFORMERS), os.path.join(EXPORT, SENTENCE_TRANSFORMERS))


def pooling_of(model_dir: str) -> str | None:
  """'cls' or 'mean' as the sentence-transformers pooling config near `model_dir` says; None when
  there is none (or it names another mode)."""
  for place in _PLACES:
    path = os.path.normpath(os.path.join(model_dir, place, _ST_POOLING))
    if not os.path.isfile(path):
      continue
    with open(path, encoding="utf-8") as f:
      try:
        modes = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if modes.get("pooling_mode_cls_token"):
      return "cls"
    if modes.get("pooling_mode_mean_tokens"):
      return "mean"
    return None
  return None


def resolve_pooling(model_dir: str, pooling: str) -> str:
  """`pooling`, or for 'auto' the one the model was trained with ('cls' when nothing says)."""
  if pooling == "auto":
    return (pooling_of(model_dir) if model_dir else None) or "cls"
  if pooling not in pooling_lib.POOLINGS:
    raise ValueError(f"pooling: expected auto or one of {pooling_lib.POOLINGS}, got {pooling!r}")
  return pooling
