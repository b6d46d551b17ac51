"""encoder.masking=drop (MAE-style; this codebase's, not in the references): the encoder reads only the unmasked tokens,
compacted to the front of a narrower array, each at its ORIGINAL position. No hidden state exists
at a dropped position, so there is no L_enc: the decoder alone reconstructs the text.

Packed rows (data.pack): each document's kept tokens are compacted to the front of its OWN span
of the row, with its segment number (encoder_segment_ids), so that its [CLS] stays at the row
position where the decoders look for it. The encoder then reads all L positions: a row of
documents keeps L minus what their walks masked, which can be more than the unpacked width
L - C (a walk falls short of its budget when no remaining word fits), so no narrower width
holds every packed row. Packing still removes the padding; drop's saving of C positions goes.
"""

import numpy as np

from retromae_jax.objectives import contract


def drop_width(max_seq_length: int, capacity: int) -> int:
  """Width of the encoder's input under drop: what a full-length example leaves visible
  (L minus its mask budget C), at least [CLS] and [SEP]."""
  return max(2, max_seq_length - capacity)


def encoder_width(dims: contract.Dims) -> int:
  """L - C unpacked; packed rows need all L (see the module docstring)."""
  return dims.seq_len if dims.pack else drop_width(dims.seq_len, dims.capacity)


def fields(dims: contract.Dims) -> contract.Shapes:
  width = (dims.batch_size, encoder_width(dims))
  shapes = {
      "encoder_input_ids": (width, np.int32),  # the unmasked tokens ([CLS] ... [SEP]), then pad
      "encoder_position_ids": (width, np.int32),  # their original positions (0 on padding)
      "encoder_attention_mask": (width, np.int32),  # 1 on those tokens
  }
  if dims.pack:
    shapes["encoder_segment_ids"] = (width, np.int32)  # k on the k-th document's kept tokens
  return shapes


# Packed: each document's kept tokens (as many as its encoder_attention_mask has) from its offset.
_KEPT = "encoder_attention_mask"


def dropped_encoder_input(input_ids: np.ndarray, lengths: np.ndarray, masked: np.ndarray,
                          width: int, pad_id: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """The encoder's input under drop, and the final mask.

  masked [B, L] bool: the encoder's whole-word mask. Returns ({encoder_input_ids,
  encoder_position_ids, encoder_attention_mask}: int32 [B, width]; masked [B, L]). [CLS] and
  [SEP] are always kept. When the greedy walk left an example more unmasked text tokens than
  width - 2 (it fell short of its budget, or chose special tokens, which stay), its last ones
  are masked too: the returned mask is then exactly the complement of what the encoder reads.
  """
  batch, seq_len = input_ids.shape
  pos = np.arange(seq_len)
  lengths = np.asarray(lengths)[:, None]
  text = (pos >= 1) & (pos < lengths - 1)
  kept_text = text & ~masked
  kept_text &= np.cumsum(kept_text, axis=1) <= width - 2
  kept = kept_text | (pos == 0) | (pos == lengths - 1)
  # A stable sort puts the kept positions first, in their original order.
  order = np.argsort(~kept, axis=1, kind="stable")[:, :width]
  valid = np.arange(width) < kept.sum(axis=1, keepdims=True)
  fields = {
      "encoder_input_ids": np.where(valid, np.take_along_axis(input_ids, order, axis=1), pad_id),
      "encoder_position_ids": np.where(valid, order, 0),
      "encoder_attention_mask": valid,
  }
  return {k: v.astype(np.int32) for k, v in fields.items()}, text & ~kept


def build(draw) -> dict[str, np.ndarray]:
  spec = draw.spec
  width = drop_width(spec.max_seq_length, spec.encoder_capacity)
  fields, _ = dropped_encoder_input(draw.input_ids, draw.lengths, draw.encoder_masked, width,
                                    spec.pad_id)
  return fields


PART = contract.Part(
    name="drop", fields=fields, build=build, encoder_width=encoder_width,
    encoder_input=contract.EncoderInput(ids="encoder_input_ids", mask="encoder_attention_mask",
                                        positions="encoder_position_ids",
                                        segments="encoder_segment_ids"),
    packs={"encoder_input_ids": contract.Pack(contract.TOKENS, fill=contract.PAD, extent=_KEPT),
           "encoder_position_ids": contract.Pack(contract.TOKENS, extent=_KEPT),
           "encoder_attention_mask": contract.Pack(contract.TOKENS, extent=_KEPT),
           "encoder_segment_ids": contract.Pack(contract.SEGMENTS, extent=_KEPT)})
