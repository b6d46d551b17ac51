"""Start-up checks of everything a run reads or writes, before anything is compiled: a missing or
empty data file, a cut model.safetensors, a BEIR folder whose qrels name unknown ids or a
checkpoint directory that cannot be written fail in seconds, in one line naming the path, rather
than after a minute of compiling or deep inside a tf.data traceback.

  check(config, workdir)   the checks the config's task needs (main.py calls it first)

Each check_* raises ValueError('<path>: what is wrong; what was expected').
"""

import gzip
import json
import os
import struct

from absl import logging

from retromae_jax.data import pairs_checks
from retromae_jax.data import source_spec, sources
from retromae_jax.data.evalsets import beir
from retromae_jax.data.pretrain import prepared
from retromae_jax.interop import decoder as decoder_interop
from retromae_jax.interop import checkpoint_store
from retromae_jax.interop import hf as hf_interop
from retromae_jax.trainers import run_identity
from retromae_jax.trainers import settings
from retromae_jax.interop import workdir as workdir_layout

# A corpus is not read whole at start-up: past this many lines without one usable document, the
# check gives up with a warning (the pipeline still fails, later, if there is none at all).
_SCAN_LINES = 100_000


def check(config, workdir: str) -> None:
  """Runs the checks of config.task ('pretrain' when absent) for `config` and `workdir`."""
  check_resume(config, workdir)
  check_writable(workdir_layout.checkpoints_dir(workdir))
  allow_missing_ids = config.eval.allow_missing_ids
  eval_folder = source_spec.beir_folder(config.eval.data) if config.eval.data else None
  if eval_folder:  # (pydoc is built in)
    check_beir(eval_folder, config.eval.split, allow_missing_ids)
  if config.task == "finetune":
    if config.init.model:
      init_dir = workdir_layout.resolve_model_dir(config.init.model)
      check_hf_dir(init_dir, tokenizer=not config.tokenizer)
      check_vocabulary(init_dir, config.tokenizer or init_dir)
    for source in pairs_checks.split_sources(config.data.train):
      if source.startswith("beir:"):
        check_beir(source_spec.beir_folder(source), config.data.split, allow_missing_ids)
    pairs_checks.check(settings.pairs_data(config))  # empty texts, no positive, short groups, hard negatives
    return
  check_data_source(config.data.source)
  if source_spec.is_prepared(config.data.source):
    check_prepared(config)
  if config.init.hf_dir:
    check_hf_dir(config.init.hf_dir, tokenizer=False)
    check_vocabulary(config.init.hf_dir, config.tokenizer)
  if config.init.decoder_dir:
    check_safetensors(os.path.join(config.init.decoder_dir, decoder_interop.DECODER_WEIGHTS))
  if config.init.checkpoint:
    _, step_dir = checkpoint_store.read_meta(config.init.checkpoint)
    checkpoint_store.stored_shapes(step_dir)  # the array index reads back (the data: at restore)


# ------------------------------------------------------------------------------ Workdir


def check_resume(config, workdir: str) -> None:
  """A workdir with checkpoints is resumed only by the same run (trainers/run_identity.py)."""
  directory = workdir_layout.checkpoints_dir(workdir)
  if not os.path.isdir(directory):
    return
  for step in checkpoint_store.complete_steps(directory):  # newest first
    step_dir = os.path.join(directory, str(step))
    try:
      meta = checkpoint_store.read_step_meta(step_dir)
    except ValueError as e:  # a damaged meta: restore_latest moves that step aside
      logging.warning("Resume check: %s; comparing with the step before", e)
      continue
    run_identity.check_resume(config, meta.get("run"), step_dir)
    return



def check_writable(directory: str) -> None:
  """`directory` exists (created if not) and takes a new file."""
  probe = os.path.join(directory, f".write_probe.{os.getpid()}")
  try:
    os.makedirs(directory, exist_ok=True)
    with open(probe, "w", encoding="utf-8") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ValueError(f"{directory}: cannot write checkpoints there ({type(e).__name__}: "
                     f"{e.strerror or e}); expected a writable directory") from None


# ------------------------------------------------------------------------------ Data sources


def check_data_source(source: str) -> None:
  """jsonl:/text: sources: files match, are non-empty, and hold at least one usable document."""
  try:
    parsed = source_spec.parse(source, "data.source", "", schemes=("jsonl", "text"), bare=())
  except ValueError:
    return  # pydoc is built in; tfds, prepared and unknown schemes are checked where read
  scheme, pattern = parsed.scheme, parsed.arg
  import tensorflow as tf  # gfile: local paths and gs:// alike (already imported by the pipeline)

  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise ValueError(f"data.source {source!r}: no file matches {pattern!r}")
  sizes = {f: tf.io.gfile.stat(f).length for f in files}
  if not any(sizes.values()):
    raise ValueError(f"data.source {source!r}: every matching file is empty ({len(files)} files, "
                     f"first {files[0]})")
  parse = sources.jsonl_texts if scheme == "jsonl" else sources.plain_texts
  skips, seen = sources.SkipCounter(), 0
  for path in files:
    for lines in _line_batches(path):
      if parse(lines, skips):
        return
      seen += len(lines)
      if seen >= _SCAN_LINES:
        logging.warning("data.source %r: no usable document in the first %d lines (skipped: %s)",
                        source, seen, skips.as_dict())
        return
  raise ValueError(f"data.source {source!r}: no usable document in {len(files)} file(s), "
                   f"{seen} lines (skipped: {_nonzero(skips)}); expected "
                   + ('lines {"text": "..."}' if scheme == "jsonl" else "one document per line"))


def _line_batches(path: str, size: int = 256):
  import tensorflow as tf

  with tf.io.gfile.GFile(path, "rb") as raw:
    f = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
    batch = []
    try:
      for line in f:
        batch.append(line.rstrip(b"\r\n"))
        if len(batch) == size:
          yield batch
          batch = []
    except (OSError, EOFError) as e:  # a cut or corrupt .gz
      raise ValueError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    if batch:
      yield batch


def _nonzero(skips: sources.SkipCounter) -> str:
  return ", ".join(f"{k} {v}" for k, v in skips.as_dict().items() if v) or "none"


def check_prepared(config) -> None:
  """Every corpus of a prepared: source is whole (sizes, record counts, the row plan and its
  checksums, prepared.json's totals) and fits the config (lengths, mask ratio, tokenizer)."""
  from retromae_jax.data import tokenizer as tokenizer_lib

  tokenizer = tokenizer_lib.load_tokenizer(config.tokenizer)
  for path, _ in prepared.parse_source(config.data.source):
    corpus = prepared.PreparedCorpus(path)  # sizes and record counts
    corpus.verify(checksums=True)  # the row plan and document index, read whole
    corpus.check_compatible(settings.pretrain_input(config), tokenizer)


# ------------------------------------------------------------------------------ Hugging Face


def check_hf_dir(hf_dir: str, tokenizer: bool) -> None:
  """config.json valid for BERT, every safetensors file whole, and (`tokenizer`) its files."""
  if not os.path.isdir(hf_dir):
    raise ValueError(f"{hf_dir}: no such directory; expected a Hugging Face model directory")
  hf_interop.read_hf_config(hf_dir)  # config.json, and that weights exist
  index = os.path.join(hf_dir, "model.safetensors.index.json")
  if os.path.isfile(index):
    try:
      with open(index, encoding="utf-8") as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    except (ValueError, KeyError) as e:
      raise ValueError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from None
    headers = {os.path.join(hf_dir, shard): check_safetensors(os.path.join(hf_dir, shard))
               for shard in shards}
  else:
    path = os.path.join(hf_dir, "model.safetensors")
    headers = {path: check_safetensors(path)}
  check_hf_shapes(hf_dir, headers)
  if tokenizer and not any(os.path.isfile(os.path.join(hf_dir, n))
                           for n in ("tokenizer.json", "vocab.txt")):
    raise ValueError(f"{hf_dir}: no tokenizer.json or vocab.txt; expected the model's tokenizer "
                     "files beside it (or set config.tokenizer)")


# HF tensor names (after any 'bert.' / 'roberta.' prefix) -> the config.json keys of their shape.
_SHAPE_OF = {
    "embeddings.word_embeddings.weight": ("vocab_size", "hidden_size"),
    "embeddings.position_embeddings.weight": ("max_position_embeddings", "hidden_size"),
    "embeddings.token_type_embeddings.weight": ("type_vocab_size", "hidden_size"),
    "encoder.layer.0.intermediate.dense.weight": ("intermediate_size", "hidden_size"),
}


def check_hf_shapes(hf_dir: str, headers: dict[str, dict]) -> None:
  """The tensors' shapes (safetensors headers, `headers`: file -> header) agree with
  config.json: the vocabulary, hidden, position, token-type and FFN sizes and the layer count."""
  config_path = os.path.join(hf_dir, "config.json")
  hf_config = hf_interop.read_hf_config(hf_dir)
  layers = set()
  for path, header in headers.items():
    for name, tensor in header.items():
      if name == "__metadata__":
        continue
      parts = name.split(".")
      if "layer" in parts and parts.index("layer") + 1 < len(parts):
        index = parts[parts.index("layer") + 1]
        if index.isdigit() and "encoder" in parts:
          layers.add(int(index))
      for suffix, keys in _SHAPE_OF.items():
        if name == suffix or name.endswith("." + suffix):
          expected = tuple(int(hf_config.get(k, 2 if k == "type_vocab_size" else -1))
                           for k in keys)
          if tuple(tensor["shape"]) != expected:
            said = ", ".join(f"{k}={hf_config.get(k)}" for k in keys)
            raise ValueError(f"{path}: {name} has shape {tuple(tensor['shape'])}, {config_path} "
                             f"says {said} {expected}; the weights and the config are of "
                             "different models")
  if layers and max(layers) + 1 != hf_config["num_hidden_layers"]:
    raise ValueError(f"{hf_dir}: the weights hold {max(layers) + 1} encoder layers, {config_path} "
                     f"says num_hidden_layers={hf_config['num_hidden_layers']}")


def check_vocabulary(hf_dir: str, tokenizer_spec: str) -> None:
  """The tokenizer's ids fit the model's vocabulary (config.json's vocab_size)."""
  from retromae_jax.data import tokenizer as tokenizer_lib  # loads tokenizers' Rust library

  tokens = tokenizer_lib.load_tokenizer(tokenizer_spec or "default").get_vocab_size()
  vocab = hf_interop.read_hf_config(hf_dir)["vocab_size"]
  if tokens > vocab:
    raise ValueError(f"config.tokenizer {tokenizer_spec or 'default'!r}: {tokens} tokens, more "
                     f"than the model's vocab_size {vocab} ({os.path.join(hf_dir, 'config.json')}"
                     "); use the model's own tokenizer")


def check_safetensors(path: str) -> dict:
  """The header parses and every tensor's bytes lie inside the file (a cut download does not)."""
  if not os.path.isfile(path):
    raise ValueError(f"{path}: no such file")
  size = os.path.getsize(path)
  try:
    with open(path, "rb") as f:
      (header_len,) = struct.unpack("<Q", f.read(8))
      if header_len > size - 8:
        raise ValueError(f"header of {header_len} bytes in a file of {size}")
      header = json.loads(f.read(header_len))
  except (struct.error, ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not a readable safetensors file ({e}); re-download or re-export "
                     "it") from None
  end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
  if 8 + header_len + end > size:
    raise ValueError(f"{path}: cut short ({size} bytes, its header describes "
                     f"{8 + header_len + end}); re-download or re-export it")
  return header


# ------------------------------------------------------------------------------ BEIR


def check_beir(beir_dir: str, split: str, allow_missing_ids: bool) -> None:
  """The split's qrels name only queries and documents that exist (beir.check_ids)."""
  if not os.path.isdir(beir_dir):
    raise ValueError(f"{beir_dir}: no such directory; expected a BEIR folder (corpus.jsonl, "
                     "queries.jsonl, qrels/)")
  beir.check_ids(beir_dir, split, allow_missing_ids)
