"""Which top-level parts of the model ('bert', 'mlm_head', 'decoder') the initial checkpoints of
config.init provide, read from the files' names only (no tensor is loaded). The optimizer trains
the others as new parts (optim.freeze_encoder_steps), and the start-up log names them: a
sentence-transformers checkpoint such as all-MiniLM-L6-v2 has no MLM head, so that head starts
random just like the decoder."""

import json
import os

import jax
import jax.numpy as jnp
from safetensors import safe_open

from retromae_jax.interop import checkpoint_store

_HF_MLM_HEAD = "cls.predictions.bias"


def hf_tensor_names(hf_dir: str) -> set[str]:
  """The tensor names of a HF directory's model.safetensors (or its sharded index)."""
  index = os.path.join(hf_dir, "model.safetensors.index.json")
  if os.path.isfile(index):
    with open(index, encoding="utf-8") as f:
      return set(json.load(f)["weight_map"])
  path = os.path.join(hf_dir, "model.safetensors")
  if not os.path.isfile(path):
    raise ValueError(f"config.init.hf_dir: {path} does not exist")
  with safe_open(path, framework="np") as f:
    return set(f.keys())


def provided_parts(init_config) -> set[str]:
  """The top-level parameter keys config.init's sources fill in."""
  provided = set()
  if init_config.checkpoint:
    _, step_dir = checkpoint_store.read_meta(init_config.checkpoint)
    provided |= set(checkpoint_store.abstract_params(step_dir))
  if init_config.hf_dir:
    provided.add("bert")
    if _HF_MLM_HEAD in hf_tensor_names(init_config.hf_dir):
      provided.add("mlm_head")
  if init_config.decoder_dir:
    provided.add("decoder")
  return provided


def new_parts(config, model_parts) -> list[str]:
  """The parts of `model_parts` (the model's top-level parameter keys) that config.init does not
  provide: they start at their random initialisation. Raises when optim.freeze_encoder_steps is
  set but there is nothing to freeze (no init checkpoint)."""
  provided = provided_parts(config.init)
  missing = sorted(set(model_parts) - provided)
  if config.optim.freeze_encoder_steps and not provided & set(model_parts):
    raise ValueError("config.optim.freeze_encoder_steps: nothing to freeze, the model starts from "
                     "scratch; set config.init.hf_dir or config.init.checkpoint, or set it to 0")
  return missing


def model_parts(model, example: dict) -> list[str]:
  """The top-level parameter keys of `model` (shapes only: nothing is initialised)."""
  def init(rng):
    zeros = {k: jnp.zeros(v.shape, v.dtype) for k, v in example.items()}
    return model.init({"params": rng, "dropout": rng}, zeros, deterministic=True)["params"]
  return sorted(jax.eval_shape(init, jax.random.key(0)))
