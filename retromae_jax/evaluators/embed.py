"""Sentence embeddings from a HF BERT directory or one of our workdirs.

  python -m retromae_jax.tools.encode --model=PATH --input=FILE.jsonl --output=FILE.npy
      [--pooling=auto|cls|mean] [--normalize] [--max_len=N] [--batch_size=N]

Each input line is a JSON object whose `text` field is embedded; row i of the float32 [N, D]
output is the i-th non-blank line. `--pooling=cls` is RetroMAE's sentence vector, the last hidden
state at [CLS]; `--pooling=mean` averages the real tokens (sentence-transformers' mean pooling);
`--pooling=auto` (the default) is the one the model was trained with, as its sentence-transformers
pooling config says (ours: model.sentence_vector; all-MiniLM-L6-v2: mean), else cls.
`--normalize` scales each row to unit L2 norm.

On several devices each batch is split over them (data parallelism): over the mesh the params
already live on, or over all devices with the params replicated.

Texts are sorted by length and each batch is padded to a multiple of 8 tokens: short texts do not
pay for long ones, and the forward pass compiles once per distinct padded length (at most
max_len / 8 times, usually a few).

A long corpus logs a progress line (texts done / total, texts/s, ETA) at most every
PROGRESS_EVERY_S seconds, and a final line when it is done (process 0 only).
"""

import datetime
import functools
import time
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from retromae_jax.data import jsonl
from retromae_jax.interop import hf as hf_interop
from retromae_jax.interop import workdir
from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.models.bert import ModelConfig
from retromae_jax.models import pooling as pooling_lib
from retromae_jax.objectives.enhanced.model import RetroMAE

POOLINGS = pooling_lib.POOLINGS
POOLING_CHOICES = ("auto",) + POOLINGS  # auto: what the model was trained with (interop/workdir.resolve_pooling)
_LENGTH_MULTIPLE = 8
# Seconds between progress lines while a corpus is embedded (a final line always follows).
PROGRESS_EVERY_S = 10.0


def load_encoder(model_dir: str):
  """(model_dir, ModelConfig, params {'bert': ...}, tokenizer) for a HF BERT directory or workdir."""
  model_dir = workdir.resolve_model_dir(model_dir)
  overrides = hf_interop.model_overrides(hf_interop.read_hf_config(model_dir))
  cfg = ModelConfig(**overrides, dtype=jnp.float32, param_dtype=jnp.float32)
  # Shapes only: every encoder parameter is then read from the checkpoint, none initialised.
  dummy = jnp.zeros((1, _LENGTH_MULTIPLE), jnp.int32)
  target = jax.eval_shape(lambda: nn.unbox(RetroMAE(cfg).init(
      jax.random.key(0), dummy, dummy, method="encode"))["params"])
  params = hf_interop.load_hf_bert(model_dir, target)
  tok = tokenizer_lib.load_tokenizer(model_dir)
  return model_dir, cfg, params, tok


def embed_texts(model_dir: str, texts: Sequence[str], pooling: str = "cls",
                normalize: bool = False, max_len: int = 512, batch_size: int = 64) -> np.ndarray:
  """Embeds `texts` with the encoder in `model_dir`; returns float32 [len(texts), hidden].
  pooling 'auto': the model's own (its sentence-transformers pooling config; else cls)."""
  pooling = workdir.resolve_pooling(model_dir, pooling)
  _, cfg, params, tok = load_encoder(model_dir)
  return embed(cfg, params, tok, texts, pooling, normalize, max_len, batch_size)


@functools.lru_cache(maxsize=None)
def _forward(cfg: ModelConfig, pooling: str, normalize: bool, mesh: Mesh | None = None):
  """One jitted encoder + pooling function per (model shape, pooling, mesh): calls reuse it.

  With a mesh the embeddings come back replicated, so every process can read all of them.
  """
  model = RetroMAE(cfg)

  def forward(params, input_ids, attention_mask):
    hidden = model.apply({"params": params}, input_ids, attention_mask, method="encode")
    return pooling_lib.pool(hidden, attention_mask, pooling, normalize)
  return jax.jit(forward, out_shardings=None if mesh is None else NamedSharding(mesh, P()))


def _data_parallel(params):
  """(params, mesh) for embedding: the mesh the params already live on, a 1-D mesh over all
  devices with the params replicated onto it, or (params, None) on a single device.

  Batches are split over every axis of the mesh (pure data parallelism): encoding has no
  gradients or optimizer state, so there is nothing else worth splitting.
  """
  for leaf in jax.tree.leaves(params):
    if isinstance(getattr(leaf, "sharding", None), NamedSharding):
      return params, leaf.sharding.mesh
  if jax.device_count() == 1:
    return params, None
  mesh = Mesh(np.array(jax.devices()), ("batch",))
  replicated = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: jax.make_array_from_callback(
      np.shape(x), replicated, lambda idx, x=np.asarray(x): x[idx]), params), mesh


def embed(cfg: ModelConfig, params: dict, tok, texts: Sequence[str], pooling: str = "cls",
          normalize: bool = False, max_len: int = 512, batch_size: int = 64,
          label: str = "embed") -> np.ndarray:
  """Embeds `texts` with in-memory encoder params ({'bert': ...}) and a `tokenizers.Tokenizer`.

  `label` starts the progress lines (e.g. 'corpus', 'queries').
  """
  if pooling not in POOLINGS:
    raise ValueError(f"pooling: expected one of {POOLINGS}, got {pooling!r}")
  if batch_size < 1:
    raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
  max_len = min(max_len, cfg.max_length)
  tok.no_padding()
  tok.enable_truncation(max_len)  # counts the [CLS]/[SEP] the post-processor adds
  if not texts:
    return np.zeros((0, cfg.hidden_size), np.float32)
  ids = [e.ids for e in tok.encode_batch(list(texts))]
  cls_id = tok.token_to_id("[CLS]")
  if cls_id is not None and ids[0][:1] != [cls_id]:
    raise ValueError("embed: the tokenizer does not add [CLS]/[SEP] (it has no post-processor)")

  params, mesh = _data_parallel(params)
  forward = _forward(cfg, pooling, normalize, mesh)
  order = np.argsort([len(x) for x in ids], kind="stable")
  rows = min(batch_size, len(ids))  # every batch has this many rows: one shape per length
  if mesh is not None:  # and a multiple of the devices, which each take an equal share
    rows = -(-rows // mesh.size) * mesh.size
    batch_sharding = NamedSharding(mesh, P(mesh.axis_names))
  out = np.zeros((len(ids), cfg.hidden_size), np.float32)
  progress = _Progress(label, len(ids), sum(len(x) for x in ids))
  done_tokens = 0
  for start in range(0, len(ids), rows):
    chosen = order[start:start + rows]
    length = -(-max(len(ids[i]) for i in chosen) // _LENGTH_MULTIPLE) * _LENGTH_MULTIPLE
    length = min(length, cfg.max_length)
    batch_ids = np.zeros((rows, length), np.int32)
    batch_mask = np.zeros((rows, length), np.int32)
    for row, i in enumerate(chosen):
      batch_ids[row, :len(ids[i])] = ids[i]
      batch_mask[row, :len(ids[i])] = 1
    if mesh is not None:
      batch_ids, batch_mask = (jax.make_array_from_callback(x.shape, batch_sharding,
                                                            lambda idx, x=x: x[idx])
                               for x in (batch_ids, batch_mask))
    out[chosen] = np.asarray(forward(params, batch_ids, batch_mask))[:len(chosen)]
    done_tokens += sum(len(ids[i]) for i in chosen)
    progress.update(start + len(chosen), done_tokens)
  return out


class _Progress:
  """Progress lines for embed(): texts done / total, texts/s and ETA.

  `update` is called after a batch's embeddings are on the host (np.asarray returned), so the
  rates count finished work, not work merely dispatched to the device. Compilation is in them:
  it is part of what the caller waits for. The ETA divides the tokens left by the tokens/s so
  far: texts go in order of length, so the texts left are the longer ones.
  """

  def __init__(self, label: str, total_texts: int, total_tokens: int):
    self.label = label
    self.total_texts = total_texts
    self.total_tokens = total_tokens
    self.enabled = jax.process_index() == 0
    self.start = self.last_log = time.perf_counter()

  def update(self, done_texts: int, done_tokens: int):
    now = time.perf_counter()
    if done_texts < self.total_texts and now - self.last_log < PROGRESS_EVERY_S:
      return
    self.last_log = now
    if not self.enabled:
      return
    elapsed = max(now - self.start, 1e-9)
    if done_texts == self.total_texts:
      when = f"done in {datetime.timedelta(seconds=round(elapsed))}"
    else:
      left = (self.total_tokens - done_tokens) * elapsed / max(done_tokens, 1)
      when = f"ETA {datetime.timedelta(seconds=round(left))}"
    logging.info("%s: %d/%d texts (%.0f%%) | %.1f texts/s | %s", self.label, done_texts,
                 self.total_texts, 100 * done_texts / self.total_texts, done_texts / elapsed, when)


def read_texts(path: str) -> list[str]:
  """The `text` field of every non-blank line of a jsonl file."""
  texts = []
  for line_no, record in jsonl.records(path):
    if not isinstance(record.get("text"), str):
      raise ValueError(f"{path}:{line_no}: expected a JSON object with a string 'text' field")
    texts.append(record["text"])
  return texts
