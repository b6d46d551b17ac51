"""Hugging Face BERT, RoBERTa and XLM-RoBERTa checkpoints in and out of our parameter tree.

One explicit name table (`_BERT_RULES`, plus each family's MLM-head names in `_FAMILIES`) ties
each of our parameters to its HF name and to the reshape between the two layouts: HF stores
`nn.Linear` weights as [out, in] and keeps every layer separate; we store kernels as [in, out],
split attention projections by head ([embed, heads, kv]) and stack the encoder layers on a
leading `layers` axis (nn.scan). Loading and saving both read
that one table, so they cannot drift apart. The three families share the encoder's names under
their own prefix (`bert.` / `roberta.`); the family comes from config.json's `model_type`.

A checkpoint's position table can be extended to a longer model.max_position_embeddings on load
(`extend_positions`): 'tile' copies the learned rows again and again (Longformer's recipe; a
position p > 512 starts from the embedding of p mod 512), 'interpolate' stretches them linearly.

Only the runtime libraries are used here (`safetensors` for tensors, json for configs); torch and
`transformers` models appear only in the tests that check us against them.
"""

import json
import os
import re
import shutil
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
from absl import logging
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.models.bert import DEFAULT_PAD, FAMILIES, OFFSET_POSITIONS

_CONFIG = "config.json"
_WEIGHTS = "model.safetensors"
_WEIGHTS_INDEX = "model.safetensors.index.json"

# What another model_type would need before it could load (shown in the error message).
_PORTING_NOTES = {
    "camembert": "positions offset by padding_idx + 1, `roberta.` and `lm_head.*` names",
    "distilbert": "no token-type embeddings, `distilbert.transformer.layer.*` names, a "
                  "`vocab_transform`/`vocab_layer_norm` MLM head",
    "electra": "an embedding projection when embedding_size != hidden_size, `electra.` names",
    "albert": "factorised embeddings and one shared layer",
    "deberta": "disentangled relative-position attention",
    "deberta-v2": "disentangled relative-position attention",
}


def _fail(path: str, message: str) -> ValueError:
  return ValueError(f"{path}: {message}")


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def _check_config(hf_config: dict, where: str) -> None:
  model_type = hf_config.get("model_type")
  if model_type is None:  # very old configs: trust an all-BERT `architectures` list
    archs = hf_config.get("architectures") or []
    model_type = "bert" if archs and all(a.startswith("Bert") for a in archs) else None
  if model_type not in _FAMILIES:
    needed = _PORTING_NOTES.get(
        model_type, "a name table in retromae_jax/interop/hf.py and any architectural "
        "differences in retromae_jax/models/bert.py")
    raise _fail(where, f"model_type is {model_type!r}, but only {', '.join(map(repr, _FAMILIES))} "
                f"checkpoints are supported (supporting {model_type!r} would need: {needed})")
  act = hf_config.get("hidden_act", "gelu")
  if act != "gelu":
    raise _fail(where, f"hidden_act is {act!r}; only 'gelu' (the exact erf form our layers use) "
                "is supported")
  pos = hf_config.get("position_embedding_type", "absolute")
  if pos != "absolute":
    raise _fail(where, f"position_embedding_type is {pos!r}; only 'absolute' is supported")
  if hf_config["hidden_size"] % hf_config["num_attention_heads"]:
    raise _fail(where, f"hidden_size {hf_config['hidden_size']} is not a multiple of "
                f"num_attention_heads {hf_config['num_attention_heads']}")


def _weights_file(hf_dir: str) -> str:
  for name in (_WEIGHTS, _WEIGHTS_INDEX):
    if os.path.isfile(os.path.join(hf_dir, name)):
      return os.path.join(hf_dir, name)
  others = sorted(f for f in os.listdir(hf_dir) if f.endswith((".bin", ".h5", ".msgpack", ".pt")))
  hint = f" (found {', '.join(others)}: re-save it with safe_serialization=True)" if others else ""
  raise _fail(os.path.join(hf_dir, _WEIGHTS), f"no such file, and no sharded {_WEIGHTS_INDEX} "
              f"either{hint}")


def _family(hf_config: dict) -> str:
  return hf_config.get("model_type") or "bert"  # _check_config let only all-BERT ones through


def read_hf_config(hf_dir: str) -> dict:
  """Reads and validates `hf_dir/config.json` of a BERT-family checkpoint stored as safetensors."""
  path = os.path.join(hf_dir, _CONFIG)
  if not os.path.isfile(path):
    raise _fail(path, "no such file; expected a Hugging Face model directory")
  with open(path) as f:
    try:
      hf_config = json.load(f)
    except json.JSONDecodeError as e:
      raise _fail(path, f"not valid JSON ({e})") from None
  _check_config(hf_config, path)
  _weights_file(hf_dir)
  return hf_config


def model_overrides(hf_config: dict, max_length: int = 0) -> dict:
  """The `config.model` keys (also ModelConfig fields) that a HF config determines.

  max_length > the checkpoint's longest input: the position table grows to cover it (load_hf_bert
  then extends the stored rows; see `extend_positions`).
  """
  _check_config(hf_config, "config.json")
  family = _family(hf_config)
  pad = hf_config.get("pad_token_id")
  pad = DEFAULT_PAD[family] if pad is None else pad
  positions = hf_config.get("max_position_embeddings", 512)
  offset = pad + 1 if family in OFFSET_POSITIONS else 0
  if max_length + offset > positions:
    positions = max_length + offset
  return {
      "family": family,
      "pad_token_id": pad,
      "vocab_size": hf_config["vocab_size"],
      "hidden_size": hf_config["hidden_size"],
      "num_layers": hf_config["num_hidden_layers"],
      "num_heads": hf_config["num_attention_heads"],
      "intermediate_size": hf_config["intermediate_size"],
      "max_position_embeddings": positions,
      "type_vocab_size": hf_config.get("type_vocab_size", 2),
      "layer_norm_eps": hf_config.get("layer_norm_eps", 1e-12),
      "initializer_range": hf_config.get("initializer_range", 0.02),
      "dropout_rate": hf_config.get("hidden_dropout_prob", 0.1),
      "attention_dropout_rate": hf_config.get("attention_probs_dropout_prob", 0.1),
  }


# ---------------------------------------------------------------------------------------------
# The name table
# ---------------------------------------------------------------------------------------------


class _Rule(NamedTuple):
  ours: str  # '/'-joined path in our tree
  hf: str  # HF name; '{i}' marks a per-layer tensor stacked on our leading `layers` axis
  to_ours: Callable[[np.ndarray, int], np.ndarray]  # (hf tensor, num_heads) -> ours
  to_hf: Callable[[np.ndarray], np.ndarray]  # ours (one layer) -> hf tensor


def _same(x, *_):
  return x


def _transpose(x, *_):
  return x.T


def _qkv_kernel(w, heads):  # HF [H*Dh, D] -> [D, H, Dh]
  return w.T.reshape(w.shape[1], heads, -1)


def _qkv_bias(b, heads):  # [H*Dh] -> [H, Dh]
  return b.reshape(heads, -1)


def _attn_out_kernel(w, heads):  # HF [D, H*Dh] -> [H, Dh, D]
  return w.T.reshape(heads, -1, w.shape[0])


def _merge_heads_in(k):  # [D, H, Dh] -> HF [H*Dh, D]
  return k.reshape(k.shape[0], -1).T


def _merge_heads_out(k):  # [H, Dh, D] -> HF [D, H*Dh]
  return k.reshape(-1, k.shape[-1]).T


def _flatten(b):  # [H, Dh] -> [H*Dh]
  return b.reshape(-1)


def _layer_norm(ours: str, hf: str) -> list[_Rule]:
  # `weight`/`bias`; checkpoints written before 2019 call them `gamma`/`beta` (see _ALIASES).
  return [_Rule(f"{ours}/scale", f"{hf}.weight", _same, _same),
          _Rule(f"{ours}/bias", f"{hf}.bias", _same, _same)]


def _dense(ours: str, hf: str) -> list[_Rule]:
  return [_Rule(f"{ours}/kernel", f"{hf}.weight", _transpose, _transpose),
          _Rule(f"{ours}/bias", f"{hf}.bias", _same, _same)]


def _bert_rules() -> list[_Rule]:
  rules = [
      _Rule(f"bert/embeddings/{n}/embedding", f"embeddings.{n}.weight", _same, _same)
      for n in ("word_embeddings", "position_embeddings", "token_type_embeddings")]
  rules += _layer_norm("bert/embeddings/LayerNorm", "embeddings.LayerNorm")
  layer = "encoder.layer.{i}"
  for n in ("query", "key", "value"):
    rules += [_Rule(f"bert/encoder/{n}/kernel", f"{layer}.attention.self.{n}.weight",
                    _qkv_kernel, _merge_heads_in),
              _Rule(f"bert/encoder/{n}/bias", f"{layer}.attention.self.{n}.bias",
                    _qkv_bias, _flatten)]
  rules += [_Rule("bert/encoder/attention_output/kernel", f"{layer}.attention.output.dense.weight",
                  _attn_out_kernel, _merge_heads_out),
            _Rule("bert/encoder/attention_output/bias", f"{layer}.attention.output.dense.bias",
                  _same, _same)]
  rules += _layer_norm("bert/encoder/attention_LayerNorm", f"{layer}.attention.output.LayerNorm")
  rules += _dense("bert/encoder/intermediate", f"{layer}.intermediate.dense")
  rules += _dense("bert/encoder/output", f"{layer}.output.dense")
  rules += _layer_norm("bert/encoder/output_LayerNorm", f"{layer}.output.LayerNorm")
  return rules


def _mlm_rules(dense: str, layer_norm: str, bias: str) -> list[_Rule]:
  return (_dense("mlm_head/dense", dense) + _layer_norm("mlm_head/LayerNorm", layer_norm)
          + [_Rule("mlm_head/bias", bias, _same, _same)])


class _Family(NamedTuple):
  prefix: str  # of the encoder's tensors in a *ForMaskedLM checkpoint
  mlm_rules: list[_Rule]
  tied_decoder: str  # the MLM head's output matrix, tied to the word embeddings in ours
  masked_lm: str  # `architectures` of an export with the MLM head, and without it
  encoder_only: str


_BERT_RULES = _bert_rules()
_ROBERTA_HEAD = _mlm_rules("lm_head.dense", "lm_head.layer_norm", "lm_head.bias")
_FAMILIES = {
    "bert": _Family("bert.", _mlm_rules("cls.predictions.transform.dense",
                                        "cls.predictions.transform.LayerNorm",
                                        "cls.predictions.bias"),
                    "cls.predictions.decoder.weight", "BertForMaskedLM", "BertModel"),
    "roberta": _Family("roberta.", _ROBERTA_HEAD, "lm_head.decoder.weight", "RobertaForMaskedLM",
                       "RobertaModel"),
    "xlm-roberta": _Family("roberta.", _ROBERTA_HEAD, "lm_head.decoder.weight",
                           "XLMRobertaForMaskedLM", "XLMRobertaModel"),
}
assert tuple(_FAMILIES) == FAMILIES
_ALIASES = ((re.compile(r"LayerNorm\.weight$"), "LayerNorm.gamma"),
            (re.compile(r"LayerNorm\.bias$"), "LayerNorm.beta"))


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


class _Checkpoint:
  """Lazy access to the tensors of a single or sharded safetensors checkpoint, by name."""

  def __init__(self, hf_dir: str):
    path = _weights_file(hf_dir)
    if path.endswith(".json"):
      with open(path) as f:
        weight_map = json.load(f)["weight_map"]
      self.files = {k: os.path.join(hf_dir, v) for k, v in weight_map.items()}
    else:
      with safe_open(path, framework="np") as f:
        self.files = {k: path for k in f.keys()}
    self.where = path
    self.used: set[str] = set()

  def find(self, name: str) -> str | None:
    """The stored name for `name` (trying the gamma/beta spelling), or None."""
    if name in self.files:
      return name
    for pattern, old in _ALIASES:
      legacy = pattern.sub(old, name)
      if legacy != name and legacy in self.files:
        return legacy
    return None

  def get(self, name: str) -> np.ndarray:
    self.used.add(name)
    with safe_open(self.files[name], framework="np") as f:
      stored = f.get_slice(name).get_dtype()
      if stored != "BF16" and not stored.startswith("F8"):
        return f.get_tensor(name)
    # numpy has no bfloat16/float8: read those through JAX, which hands back ml_dtypes arrays.
    with safe_open(self.files[name], framework="flax") as f:
      return np.asarray(f.get_tensor(name))

  def num_layers(self, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"encoder\.layer\.(\d+)\.")
    found = {int(m.group(1)) for m in map(pattern.match, self.files) if m}
    return max(found) + 1 if found else 0


def _prefix(ckpt: _Checkpoint, family: str) -> str:
  """`bert.`/`roberta.` in a *ForMaskedLM checkpoint, '' in a bare BertModel/RobertaModel one."""
  own = _FAMILIES[family].prefix
  for prefix in (own, ""):
    if f"{prefix}embeddings.word_embeddings.weight" in ckpt.files:
      return prefix
  sample = ", ".join(sorted(ckpt.files)[:5])
  raise _fail(ckpt.where, f"no `{own}embeddings.word_embeddings.weight` or "
              f"`embeddings.word_embeddings.weight`; is this a {family} checkpoint? "
              f"(first keys: {sample})")


POSITION_EXTENSIONS = ("tile", "interpolate")


def extend_positions(table: np.ndarray, rows: int, offset: int, method: str = "tile") -> np.ndarray:
  """A position table [rows, D] grown from `table` [n, D], whose first `offset` rows are not
  positions (RoBERTa's padding_idx + 1 rows) and are kept as they are.

  'tile': learned position p' = p mod (n - offset), so each new stretch starts again from the
  learned start (Longformer's copy initialisation); positions the checkpoint covered keep their
  rows, so short inputs give the checkpoint's outputs. 'interpolate': linear interpolation of the
  learned rows over the longer range (p' = p * (n - offset - 1) / (rows - offset - 1)), as ViTs
  resize theirs; every position moves, so it needs more training to recover.
  """
  if method not in POSITION_EXTENSIONS:
    raise ValueError(f"model.position_extension: expected one of {', '.join(POSITION_EXTENSIONS)}, "
                     f"got {method!r}")
  learned = table[offset:]
  wanted = rows - offset
  if method == "tile":
    grown = learned[np.arange(wanted) % len(learned)]
  else:
    where = np.linspace(0.0, len(learned) - 1, wanted)
    low = np.floor(where).astype(np.int64)
    high = np.minimum(low + 1, len(learned) - 1)
    frac = (where - low)[:, None].astype(np.float32)
    grown = learned[low] * (1 - frac) + learned[high] * frac
  return np.concatenate([table[:offset], grown.astype(table.dtype)])


def place(value: np.ndarray, target) -> Any:
  """`value` with the target's dtype, and on the target's devices/sharding if it is a jax.Array."""
  value = np.asarray(value).astype(target.dtype, copy=False)
  if isinstance(target, jax.Array):
    if target.is_fully_addressable:
      return jax.device_put(value, target.sharding)
    return jax.make_array_from_callback(value.shape, target.sharding, lambda idx: value[idx])
  return value


def load_hf_bert(hf_dir: str, target_params: dict, position_extension: str = "tile") -> dict:
  """Returns a copy of `target_params` with `bert` (and `mlm_head`, if the checkpoint has one:
  `cls.predictions.*` / `lm_head.*`) read from the HF BERT/RoBERTa/XLM-R checkpoint in `hf_dir`.

  `target_params` is an unboxed parameter tree holding a top-level `bert` subtree (a freshly
  initialised RetroMAE, or any model that embeds our BertModel as `bert`); its leaves may be arrays
  or `jax.ShapeDtypeStruct`s (from `jax.eval_shape`). Loaded values take the target leaf's dtype and,
  for jax.Arrays, its sharding. Every shape is checked before anything is returned. A target
  position table longer than the checkpoint's is grown with `extend_positions(position_extension)`.
  """
  hf_config = read_hf_config(hf_dir)
  family = _FAMILIES[_family(hf_config)]
  overrides = model_overrides(hf_config)
  offset = overrides["pad_token_id"] + 1 if _family(hf_config) in OFFSET_POSITIONS else 0
  ckpt = _Checkpoint(hf_dir)
  prefix = _prefix(ckpt, _family(hf_config))
  flat = traverse_util.flatten_dict(target_params, sep="/")
  if "bert/encoder/query/kernel" not in flat:
    raise ValueError("load_hf_bert: target_params has no bert/encoder/query/kernel; expected "
                     f"our BertModel's tree under a top-level 'bert' (got {sorted(target_params)})")

  rules = [(r, prefix + r.hf) for r in _BERT_RULES]
  head_bias = family.mlm_rules[-1].hf
  if ckpt.find(head_bias) is not None and any(k.startswith("mlm_head/") for k in flat):
    rules += [(r, r.hf) for r in family.mlm_rules]
  absent = [r.ours for r, _ in rules if r.ours not in flat]
  if absent:
    raise ValueError(f"load_hf_bert: target_params lacks {', '.join(absent)}")

  where = ckpt.where
  num_layers, _, heads, _ = flat["bert/encoder/query/kernel"].shape
  stored_layers = ckpt.num_layers(prefix)
  if stored_layers != num_layers:
    raise _fail(where, f"the checkpoint has {stored_layers} encoder layers, target_params has "
                f"{num_layers}; build the model from model_overrides(read_hf_config(dir))")

  # Gather everything first, so that one error lists every problem.
  missing, mismatched, loaded = [], [], {}
  for rule, hf in rules:
    names = [hf.format(i=i) for i in range(num_layers)] if "{i}" in hf else [hf]
    found = [ckpt.find(n) for n in names]
    if None in found:
      missing.extend(n for n, f in zip(names, found) if f is None)
      continue
    parts = [ckpt.get(n) for n in found]
    expected = tuple(flat[rule.ours].shape)
    if rule.ours.endswith("position_embeddings/embedding") and 0 < len(parts[0]) < expected[0]:
      logging.info("%s: position table extended from %d to %d rows (%s)", where,
                   len(parts[0]), expected[0], position_extension)
      parts = [extend_positions(parts[0], expected[0], offset, position_extension)]
    try:
      parts = [rule.to_ours(p, heads) for p in parts]
      value = np.stack(parts) if "{i}" in hf else parts[0]
      got = value.shape
    except ValueError:  # not even reshapeable to our layout: report the stored shape
      got = f"{parts[0].shape} as stored"
    if got != expected:
      mismatched.append(f"{hf} -> {rule.ours}: expected {expected}, got {got}")
      continue
    loaded[rule.ours] = value
  if missing:
    raise _fail(where, f"{len(missing)} tensor(s) missing: {', '.join(missing[:10])}"
                + (" ..." if len(missing) > 10 else ""))
  if mismatched:
    raise _fail(where, "shape mismatch between checkpoint and target_params (key, expected, got): "
                + "; ".join(mismatched))

  _check_tied_decoder(ckpt, loaded, family.tied_decoder)
  unused = sorted(set(ckpt.files) - ckpt.used - {f"{p}embeddings.position_ids"
                                                 for p in ("", family.prefix)})
  if unused:
    logging.info("%s: %d checkpoint tensor(s) not used (a pooler is expected to be): %s",
                 where, len(unused), ", ".join(unused))
  at_init = sorted({k.split("/")[0] for k in flat if k not in loaded})
  if at_init:
    why = f" (the checkpoint has no {head_bias} MLM head)" if "mlm_head" in at_init else ""
    logging.info("%s: left at initialisation: %s%s", where, ", ".join(at_init), why)
  out = {k: (place(loaded[k], v) if k in loaded else v) for k, v in flat.items()}
  return traverse_util.unflatten_dict(out, sep="/")


def _check_tied_decoder(ckpt: _Checkpoint, loaded: dict, decoder_name: str) -> None:
  """Our output projection is the word embedding matrix; say so if the checkpoint's is not."""
  name = ckpt.find(decoder_name)
  if name is None or "mlm_head/bias" not in loaded:
    return
  decoder = ckpt.get(name)
  words = loaded["bert/embeddings/word_embeddings/embedding"]
  if decoder.shape != words.shape or not np.allclose(decoder, words):
    logging.warning("%s differs from the word embeddings; our MLM head ties them, so the "
                    "checkpoint's separate decoder matrix is ignored", decoder_name)


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def _pad_token_id(model_cfg, family: str) -> int:
  pad = getattr(model_cfg, "pad_token_id", -1)  # config.model says -1 for the family's default
  return pad if pad >= 0 else DEFAULT_PAD[family]


def _special_token_ids(tokenizer_dir: str | None, family: str, pad_token_id: int) -> dict:
  """pad (and for RoBERTa-style families bos/eos) ids for config.json, from the tokenizer when
  there is one. A RoBERTa-style pad must be the model's: it decides the position ids."""
  tok = tokenizer_lib.load_tokenizer(tokenizer_dir) if tokenizer_dir else None
  if family not in OFFSET_POSITIONS:
    pad = tok.token_to_id("[PAD]") if tok else None
    return {"pad_token_id": 0 if pad is None else pad}
  ids = {"pad_token_id": pad_token_id, "bos_token_id": 0, "eos_token_id": 2}
  if tok:
    special = tokenizer_lib.special_ids(tok)
    if special.pad != pad_token_id:
      raise ValueError(f"{tokenizer_dir}: the tokenizer's pad id is {special.pad} but the model's "
                       f"pad_token_id is {pad_token_id} (its position ids start there)")
    ids.update(bos_token_id=special.cls, eos_token_id=special.sep)
  return ids


def save_hf_bert(params: dict, model_cfg, out_dir: str, tokenizer_dir: str | None = None) -> str:
  """Writes `params['bert']` (and `params['mlm_head']`) as a HF directory of model_cfg's family
  (BERT, RoBERTa or XLM-RoBERTa); returns out_dir.

  `model_cfg` is our ModelConfig (or `config.model`; sizes are cross-checked against the params).
  With an MLM head the directory is a `*ForMaskedLM` checkpoint (`bert.*` + `cls.predictions.*`,
  or `roberta.*` + `lm_head.*`; the decoder matrix is tied to the word embeddings, so it is not
  stored); without one it is a bare `BertModel`/`RobertaModel` checkpoint. Either way it has no
  pooler: `AutoModel` will report `pooler.dense.*` as newly initialised, which RetroMAE/BGE-style
  CLS pooling never uses.
  `tokenizer_dir` (a directory, or a tokenizer.json file) is copied alongside when given.
  """
  flat = traverse_util.flatten_dict(params, sep="/")
  family_name = getattr(model_cfg, "family", "bert")
  family = _FAMILIES[family_name]
  with_head = any(k.startswith("mlm_head/") for k in flat)
  words = flat["bert/embeddings/word_embeddings/embedding"]
  num_layers = flat["bert/encoder/query/kernel"].shape[0]
  sizes = {"vocab_size": words.shape[0], "hidden_size": words.shape[1], "num_layers": num_layers,
           "num_heads": flat["bert/encoder/query/kernel"].shape[2],
           "intermediate_size": flat["bert/encoder/intermediate/kernel"].shape[-1],
           "max_position_embeddings": flat["bert/embeddings/position_embeddings/embedding"].shape[0],
           "type_vocab_size": flat["bert/embeddings/token_type_embeddings/embedding"].shape[0]}
  for key, value in sizes.items():
    declared = getattr(model_cfg, key)
    if declared not in (value, -1):
      raise ValueError(f"save_hf_bert: model_cfg.{key} is {declared} but the params have {value}")

  prefix = family.prefix if with_head else ""
  tensors = {}
  for rule in _BERT_RULES + (family.mlm_rules if with_head else []):
    value = np.asarray(jax.device_get(flat[rule.ours]), dtype=np.float32)
    hf = (prefix + rule.hf) if rule.ours.startswith("bert/") else rule.hf
    if "{i}" in hf:
      for i in range(num_layers):
        tensors[hf.format(i=i)] = np.ascontiguousarray(rule.to_hf(value[i]))
    else:
      tensors[hf] = np.ascontiguousarray(rule.to_hf(value))

  hf_config = {
      "architectures": [family.masked_lm if with_head else family.encoder_only],
      "model_type": family_name,
      "vocab_size": sizes["vocab_size"],
      "hidden_size": sizes["hidden_size"],
      "num_hidden_layers": num_layers,
      "num_attention_heads": sizes["num_heads"],
      "intermediate_size": sizes["intermediate_size"],
      "hidden_act": "gelu",
      "hidden_dropout_prob": float(model_cfg.dropout_rate),
      "attention_probs_dropout_prob": float(model_cfg.attention_dropout_rate),
      "max_position_embeddings": sizes["max_position_embeddings"],
      "type_vocab_size": sizes["type_vocab_size"],
      "initializer_range": float(model_cfg.initializer_range),
      "layer_norm_eps": float(model_cfg.layer_norm_eps),
      **_special_token_ids(tokenizer_dir, family_name, _pad_token_id(model_cfg, family_name)),
      "position_embedding_type": "absolute",
      "tie_word_embeddings": True,
      "dtype": "float32",
  }
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, _CONFIG), "w") as f:
    json.dump(hf_config, f, indent=2)
  save_file(tensors, os.path.join(out_dir, _WEIGHTS), metadata={"format": "pt"})

  if tokenizer_dir:
    if os.path.isfile(tokenizer_dir):
      sources = [tokenizer_dir]
    else:
      sources = [os.path.join(tokenizer_dir, n) for n in tokenizer_lib.TOKENIZER_FILES
                 if os.path.isfile(os.path.join(tokenizer_dir, n))]
      if not sources:
        raise ValueError(f"{tokenizer_dir}: none of "
                         f"{', '.join(tokenizer_lib.TOKENIZER_FILES)} found")
    for src in sources:
      shutil.copyfile(src, os.path.join(out_dir, os.path.basename(src)))
  logging.info("Wrote %s (%d tensors%s)", out_dir, len(tensors), ", tokenizer" if tokenizer_dir else "")
  return out_dir
