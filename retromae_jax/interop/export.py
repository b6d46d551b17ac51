"""Exports a training checkpoint for use outside this codebase.

  python -m retromae_jax.tools.export --checkpoint=WORKDIR_OR_STEP_DIR --out=DIR [--max_seq_length=N]

writes
  DIR/encoder/                HF BERT (`BertForMaskedLM`: encoder + MLM head, config, tokenizer);
                              `transformers.AutoModel(ForMaskedLM)` loads it
  DIR/sentence-transformers/  the same encoder plus modules.json, the model's sentence vector as
                              pooling (model.sentence_vector: cls or mean) and normalisation:
                              `SentenceTransformer(DIR/sentence-transformers)` embeds like
                              `python -m retromae_jax.tools.encode --pooling=auto --normalize`
  DIR/decoder/                the RetroMAE decoder's own parameters (safetensors, names are our
                              parameter paths) and decoder.json; `--config.init.decoder_dir=`
                              re-imports it (with `--config.init.hf_dir=DIR/encoder`) to continue
                              pretraining with the trained decoder (interop/decoder.py)

Only the parameters are read (not the optimizer state), onto the host. The checkpoint's `meta`
item carries the model shape and the tokenizer files, so nothing else from the training run is
needed.
"""

import json
import os
import shutil

import jax.numpy as jnp
from absl import logging

from retromae_jax.interop import checkpoint_store
from retromae_jax.interop import decoder as decoder_lib
from retromae_jax.interop import hf as hf_interop
from retromae_jax.interop import workdir
from retromae_jax.models import pooling as pooling_lib
from retromae_jax.models.bert import ModelConfig

def model_config_from_meta(meta: dict, where: str) -> ModelConfig:
  fields = dict(meta.get("model") or {})
  if not fields:
    raise ValueError(f"{where}: the checkpoint's meta has no 'model' section")
  known = {f for f in ModelConfig.__dataclass_fields__}
  fields = {k: v for k, v in fields.items() if k in known}
  for key in ("dtype", "param_dtype"):
    if key in fields:
      fields[key] = jnp.dtype(fields[key])
  return ModelConfig(**fields)


def write_tokenizer(meta: dict, out_dir: str) -> None:
  """Writes the tokenizer files the checkpoint carries (meta['tokenizer_files'])."""
  files = meta.get("tokenizer_files") or {}
  if not files:
    raise ValueError("the checkpoint's meta carries no tokenizer files")
  os.makedirs(out_dir, exist_ok=True)
  for name, text in files.items():
    with open(os.path.join(out_dir, os.path.basename(name)), "w", encoding="utf-8") as f:
      f.write(text)


def export_encoder(params: dict, cfg: ModelConfig, meta: dict, out_dir: str) -> str:
  hf_interop.save_hf_bert({k: v for k, v in params.items() if k in ("bert", "mlm_head")}, cfg,
                          out_dir)
  write_tokenizer(meta, out_dir)
  return out_dir


def export_sentence_transformers(encoder_dir: str, out_dir: str, hidden_size: int,
                                 max_seq_length: int, pooling: str = "cls", *,
                                 similarity: str = "cosine", prompts: dict | None = None,
                                 matryoshka_dims=(), model_card: str = "") -> str:
  """A sentence-transformers folder: the HF encoder at its root, then `pooling` (the model's
  sentence vector: CLS, RetroMAE's / BGE's, or mean) and, for cosine similarity, L2
  normalisation. Written as plain JSON: sentence-transformers (and torch) are not dependencies
  of this package.

  prompts: {name: instruction}, e.g. {'query': data.query_instruction, 'passage': ...}:
  `model.encode(texts, prompt_name='query')` prepends it, as training did (no default prompt:
  a plain encode adds nothing). similarity: 'cosine' or 'dot' (similarity_fn_name).
  matryoshka_dims: the prefix sizes the model was trained for, recorded as `matryoshka_dims`
  (sentence-transformers ignores the key; `truncate_dim` stays unset: the full vector by
  default). model_card: the README.md text (interop/model_card.py), if any."""
  os.makedirs(out_dir, exist_ok=True)
  for name in os.listdir(encoder_dir):
    shutil.copyfile(os.path.join(encoder_dir, name), os.path.join(out_dir, name))
  modules = [
      {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
      {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
  ]
  if similarity == "cosine":
    modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize"})
  pooling = pooling_lib.sentence_transformers_config(pooling, hidden_size)
  model_config = {"similarity_fn_name": similarity, "prompts": dict(prompts or {}),
                  "default_prompt_name": None}
  if matryoshka_dims:
    model_config["matryoshka_dims"] = [int(d) for d in matryoshka_dims]
  files = {
      "modules.json": modules,
      "sentence_bert_config.json": {"max_seq_length": max_seq_length, "do_lower_case": False},
      "config_sentence_transformers.json": model_config,
      os.path.join("1_Pooling", "config.json"): pooling,
  }
  os.makedirs(os.path.join(out_dir, "1_Pooling"), exist_ok=True)
  if similarity == "cosine":
    os.makedirs(os.path.join(out_dir, "2_Normalize"), exist_ok=True)
  for name, content in files.items():
    with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
      json.dump(content, f, indent=2)
  if model_card:
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
      f.write(model_card)
  return out_dir


def export_model(params: dict, cfg: ModelConfig, meta: dict, out_dir: str, *,
                 max_seq_length: int, pooling: str, similarity: str = "cosine",
                 prompts: dict | None = None, matryoshka_dims=(), model_card: str = "") -> dict:
  """The one export of a model, for both programs and the export tool: out_dir/encoder (HF),
  out_dir/sentence-transformers (export_sentence_transformers' options) and, when the params
  have one, out_dir/decoder. Returns {name: directory}."""
  written = {}
  written[workdir.ENCODER] = export_encoder(params, cfg, meta,
                                            os.path.join(out_dir, workdir.ENCODER))
  written[workdir.SENTENCE_TRANSFORMERS] = export_sentence_transformers(
      written[workdir.ENCODER], os.path.join(out_dir, workdir.SENTENCE_TRANSFORMERS),
      cfg.hidden_size, max_seq_length, pooling, similarity=similarity, prompts=prompts,
      matryoshka_dims=matryoshka_dims, model_card=model_card)
  if workdir.DECODER in params:
    written[workdir.DECODER] = decoder_lib.save_decoder(
        params[workdir.DECODER], meta, os.path.join(out_dir, workdir.DECODER))
  logging.info("Exported to %s: %s", out_dir, ", ".join(f"{name}/" for name in written))
  return written


def export_checkpoint(path: str, out_dir: str, max_seq_length: int | None = None) -> dict:
  """Writes encoder/, sentence-transformers/ and (when the model has one) decoder/ under
  out_dir from the checkpoint named by `path`; returns {name: directory}."""
  directory, step = checkpoint_store.resolve(path)
  step_dir = os.path.join(directory, str(step))
  params, meta, _ = checkpoint_store.restore_params(step_dir,
                                                    checkpoint_store.abstract_params(step_dir))
  cfg = model_config_from_meta(meta, step_dir)
  return export_model(params, cfg, meta, out_dir, max_seq_length=max_seq_length or cfg.max_length,
                      pooling=cfg.sentence_vector)
