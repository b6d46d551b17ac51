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


# The random stream every objective draws first: the encoder's whole-word mask
# (data/pretrain/masking.Draw). A part's own streams are in Part.streams.
SHARED_STREAMS = {"encoder_mask": 1}


@dataclasses.dataclass(frozen=True)
class Pack:
  """How one field of a document masked alone (one per row) is put back at its place in a packed
  row (data/pretrain/packing.pack_field).

  how: TOKENS: a token-aligned [B, L, ...] field: the document's first entries written from its
    offset in the row, `fill` elsewhere (PAD = the tokenizer's pad id); `extent`: the field of
    the document alone whose nonzero entries count them (default: all its tokens).
  SLOTS: a [B, C] list (an entry is empty where `valid`'s is IGNORE): the document's entries
    appended to its row's list, `fill` after; `shift`: entries are positions, moved by the
    document's offset.
  POOL: the bit-packed [B, P, ceil(L/8)] decoder pool: each document's bits moved to its tokens.
  SEGMENTS: a packed-only field: the document's segment number over its first `extent` entries
    (from its offset, as TOKENS), 0 elsewhere.
  """
  how: str
  fill: int | str = 0
  extent: str = ""
  valid: str = ""
  shift: bool = False


TOKENS, SLOTS, POOL, SEGMENTS = "tokens", "slots", "pool", "segments"
PAD = "pad"
PACK_IDS = Pack(TOKENS, fill=PAD)  # ids: the pad id past the documents
PACK_LABELS = Pack(TOKENS, fill=IGNORE)  # targets: IGNORE past the documents
PACK_ZEROS = Pack(TOKENS)  # anything else token-aligned: 0 past the documents
PACK_POOL = Pack(POOL)

# What a loss term's sum is divided by (LossTerm.per): the batch's labelled targets, or its
# documents (rows; a packed row's segments).
PER_TOKEN, PER_DOCUMENT = "tokens", "documents"


@dataclasses.dataclass(frozen=True)
class LossTerm:
  """One term of the objective's loss, declared by the part that contributes it
  (objectives/losses.objective_loss adds up the selected parts' terms).

  name: its metrics' prefix ('enc': enc_loss, enc_acc, enc_tokens); logits: the model output it
  reads; targets: the batch field it is scored against; per: PER_TOKEN or PER_DOCUMENT (with
  gradient accumulation, the whole batch's count); weight(objective): its factor in the total;
  loss: 'module:function' with (logits, batch, term, denominator) -> (loss, {metric: value}),
  imported on the device side only; '' = the token cross-entropy over targets != IGNORE
  (objectives/losses.token_cross_entropy).
  """
  name: str
  logits: str
  targets: str
  per: str = PER_TOKEN
  weight: Callable[[Any], float] = lambda objective: 1.0
  loss: str = ""


@dataclasses.dataclass(frozen=True)
class EncoderInput:
  """The batch fields the encoder reads (an encoder part's): ids, key mask, position ids and
  segment ids (the last two may be absent: default positions, one document per row)."""
  ids: str
  mask: str
  positions: str
  segments: str


@dataclasses.dataclass(frozen=True)
class EncoderHead:
  """A part's use of the encoder's MLM head at listed slots: the logits at batch[at] ([B, C]
  positions of the encoder's input), as the model output `output`."""
  at: str
  output: str


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
  build(draw) -> {name: array}: those fields for one batch (draw: data/pretrain/masking.Draw: the
    padded ids, their words, the encoder's drawn mask, the spec and the documents' streams;
    parts draw in registry order).
  streams: {name: number}: the random streams its builder reads (draw.token_bits(name),
    draw.whole_word_mask(ratio, name)). A number is a document's stream for good (masks stay
    reproducible): a new part takes numbers no part uses (registry.random_streams checks).
  checks(config) -> [(key, ok, expected)]: the keys the part owns, checked whether it is selected
    or not (a key of a part not selected must stay at its default: it would silently do nothing).
  losses: the loss terms it contributes (LossTerm).
  head_positions(encoder_len, encoder_positions) -> where the part needs the encoder's MLM head
    (the head runs once, over the widest need).
  forward_flops(cfg, objective, seq_len, encoder_len) -> the part's own matmul FLOPs per example.
  encoder_width(dims) -> the encoder's input width (encoder parts only).
  encoder_input: the fields the encoder reads (encoder parts only).
  encoder_head: the slots where it reads the encoder's MLM head (L_enc).
  encoder_pool: 'module:function' with (logits [B, Le, V], key_mask, segment_ids, positions) ->
    {output: array}: it reads the head at EVERY encoder position (bag of words); segment_ids
    and positions are the encoder input's (None: one document per row).
  model: 'module:Class' of the Flax model (decoder parts and mlm), imported only when built.
  enabled(objective) -> bool: whether an option (bag_of_words) is on.
  packs: {field: Pack} for every field it adds, when data.pack is on; None: the part does not
    support packing (data.pack=True is refused at start-up).
  """
  name: str
  fields: Callable[[Dims], Shapes] = _no_fields
  build: Callable[[Any], dict[str, np.ndarray]] = lambda draw: {}
  streams: dict[str, int] = dataclasses.field(default_factory=dict)
  checks: Callable[[Any], list[Check]] = _no_checks
  losses: tuple[LossTerm, ...] = ()
  head_positions: Callable[[int, int], int] = lambda encoder_len, encoder_positions: 0
  forward_flops: Callable[..., float] = lambda cfg, objective, seq_len, encoder_len: 0
  encoder_width: Callable[[Dims], int] | None = None
  encoder_input: EncoderInput | None = None
  encoder_head: EncoderHead | None = None
  encoder_pool: str = ""
  model: str = ""
  enabled: Callable[[Any], bool] = lambda objective: True
  packs: dict[str, Pack] | None = None


def one_of(values) -> str:
  return f"expected one of {', '.join(values)}"


def is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)
