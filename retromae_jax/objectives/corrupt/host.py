"""encoder.masking=corrupt (the default, as RetroMAE): the encoder reads the whole sequence with
its masked words corrupted 80/10/10 ([MASK] / a random id / kept) and predicts them (L_enc)."""

import numpy as np

from retromae_jax.objectives import example_random
from retromae_jax.objectives import contract


def fields(dims: contract.Dims) -> contract.Shapes:
  rows, slots = (dims.batch_size, dims.seq_len), (dims.batch_size, dims.capacity)
  return {
      "encoder_input_ids": (rows, np.int32),  # input_ids after the corruption of the masked words
      "encoder_positions": (slots, np.int32),  # the masked positions, ascending, padded with 0
      "encoder_targets": (slots, np.int32),  # their ORIGINAL ids, padded with -100
  }


def build(draw) -> dict[str, np.ndarray]:
  """80/10/10 corruption of the encoder's masked tokens, and their positions and targets."""
  input_ids, enc_masked, spec = draw.input_ids, draw.encoder_masked, draw.spec
  seq_len = input_ids.shape[1]
  pos = np.arange(seq_len)
  bits = draw.token_bits("corrupt")  # one draw per token: the rule from 32 bits, the id from 32
  choice = example_random.low_fraction(bits)
  random_ids = example_random.below(bits, spec.vocab_size).astype(np.int32)
  corrupted = np.where(choice < 0.8, np.int32(spec.mask_id),
                       np.where(choice < 0.9, random_ids, input_ids))
  encoder_input_ids = np.where(enc_masked, corrupted, input_ids)
  # Masked positions in ascending order, padded to the fixed capacity (position 0, label IGNORE).
  capacity = spec.encoder_capacity
  sort_key = np.where(enc_masked, pos, seq_len)
  positions = np.sort(sort_key, axis=1)[:, :capacity]
  valid = positions < seq_len
  positions = np.where(valid, positions, 0)
  encoder_targets = np.where(valid, np.take_along_axis(input_ids, positions, axis=1),
                             contract.IGNORE)
  return {
      "encoder_input_ids": encoder_input_ids.astype(np.int32),
      "encoder_positions": positions.astype(np.int32),
      "encoder_targets": encoder_targets.astype(np.int32),
  }


PART = contract.Part(
    name="corrupt", fields=fields, build=build, streams={"corrupt": 2},
    losses=(contract.LossTerm("enc", logits="encoder_logits", targets="encoder_targets"),),
    head_positions=lambda encoder_len, encoder_positions: encoder_positions,
    encoder_width=lambda dims: dims.seq_len,
    # The whole row, packed or not (packed rows: positions restart, attention stays in each
    # document).
    encoder_input=contract.EncoderInput(ids="encoder_input_ids", mask="attention_mask",
                                        positions="positions", segments="segment_ids"),
    encoder_head=contract.EncoderHead(at="encoder_positions", output="encoder_logits"),
    packs={"encoder_input_ids": contract.PACK_IDS,
           # A packed row lists its documents' masked slots one after the other.
           "encoder_positions": contract.Pack(contract.SLOTS, valid="encoder_targets",
                                              shift=True),
           "encoder_targets": contract.Pack(contract.SLOTS, fill=contract.IGNORE,
                                            valid="encoder_targets")})
