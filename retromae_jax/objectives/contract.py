"""What a part of an objective declares (Part), and the sizes the batch contract is made of (Dims).

The batch contract (data/pretrain/pipeline.py) is the shared fields below plus each selected part's,
in the registry's order: encoder part, decoder part (or mlm), options. Every field has a fixed
shape, so the jitted step compiles once.
"""

import dataclasses
from typing import Any, Callable

import numpy as np

# The label of a position without a loss, on the host and on the device (optax's and HF's
# ignore_index).
IGNORE = -100

Shapes = dict[str, tuple[tuple[int, ...], Any]]  # name -> (shape, NumPy dtype)
Check = tuple[str, bool, str]  # (config key below `config.`, ok, what was expected)


@dataclasses.dataclass(frozen=True)
class Dims:
  """B rows of L = data.max_seq_length tokens; C = the encoder's masked slots per row
  (max(1, round(L * data.encoder_mask_ratio))); P = data.decoder_pool_size."""
  batch_size: int
  seq_len: int
  capacity: int
  pool_size: int
  pack: bool = False  # data.pack: several documents per row (data/pretrain/packing.py)


def shared_fields(dims: Dims) -> Shapes:
  """The fields of every objective, first in every batch; packed rows add each token's segment
  (k for the row's k-th document, 0 for padding) and its position inside the segment."""
  rows = (dims.batch_size, dims.seq_len)
  shapes = {"input_ids": (rows, np.int32), "attention_mask": (rows, np.int32)}
  if dims.pack:
    shapes |= {"segment_ids": (rows, np.int32), "positions": (rows, np.int32)}
  return shapes


# How a field of a document masked alone is put back at its place in a packed row
# (data/pretrain/packing.py): token-aligned [B, L] fields filled past the documents with the pad id, with
# IGNORE or with 0; the encoder's masked slots (positions and targets together); the bit-packed
# decoder pool.
PACK_IDS, PACK_LABELS, PACK_ZEROS, PACK_SLOTS, PACK_POOL = "ids", "labels", "zeros", "slots", "pool"


def _no_fields(dims: Dims) -> Shapes:
  del dims
  return {}


def _no_checks(config) -> list[Check]:
  del config
  return []


@dataclasses.dataclass(frozen=True)
class Part:
  """One part of an objective, selected by its `name` as the value of one config key.

  fields(dims) -> {name: (shape, dtype)}: what the part adds to the batch, in order.
  build(draw) -> {name: array}: those fields for one batch (draw: data/masking.Draw, the padded
    ids, their words, the encoder's drawn mask, the spec and the RNG; parts draw in registry
    order, so the stream of random numbers is fixed by the objective).
  checks(config) -> [(key, ok, expected)]: the keys the part owns, checked whether it is selected
    or not (a key of a part not selected must stay at its default: it would silently do nothing).
  head_positions(encoder_len, encoder_positions) -> where the part needs the encoder's MLM head
    (the head runs once, over the widest need).
  forward_flops(cfg, objective, seq_len, encoder_len) -> the part's own matmul FLOPs per example.
  encoder_width(dims) -> the encoder's input width (encoder parts only).
  model: 'module:Class' of the Flax model (decoder parts and mlm), imported only when built.
  enabled(objective) -> bool: whether an option (bag_of_words) is on.
  packs: how each of its fields is packed (PACK_*), when data.pack is on; None: the part does
    not support packing (data.pack=True is refused at start-up).
  """
  name: str
  fields: Callable[[Dims], Shapes] = _no_fields
  build: Callable[[Any], dict[str, np.ndarray]] = lambda draw: {}
  checks: Callable[[Any], list[Check]] = _no_checks
  head_positions: Callable[[int, int], int] = lambda encoder_len, encoder_positions: 0
  forward_flops: Callable[..., float] = lambda cfg, objective, seq_len, encoder_len: 0
  encoder_width: Callable[[Dims], int] | None = None
  model: str = ""
  enabled: Callable[[Any], bool] = lambda objective: True
  packs: dict[str, str] | None = None


def one_of(values) -> str:
  return f"expected one of {', '.join(values)}"


def is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)
