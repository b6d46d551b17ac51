"""The frame of every objective's model: the encoder pass and its MLM head, which every objective
shares, and the hook where a decoder part adds its module (mlm/model.py adds none).

Encoder input (config encoder.masking):
- 'corrupt' (the reference default): the whole sequence, the masked words corrupted 80/10/10 in place;
  the MLM head runs at the masked positions and gives L_enc.
- 'drop' (MAE-style, an option): the encoder reads only the unmasked tokens, compacted to
  the front of a narrower array, each with its ORIGINAL position embedding. No hidden state
  exists at a dropped position, so there is no L_enc: the decoder alone reconstructs the text.
With objective.bow_weight > 0 the head also runs at every encoder position and the logits are
max-pooled over positions 1.. for DupMAE's bag-of-words loss (DupMAE; losses.py).
"""

import flax.linen as nn
import jax.numpy as jnp

from retromae_jax.models.bert import BertModel, MLMHead, ModelConfig
from retromae_jax.objectives.settings import ObjectiveConfig

# DupMAE pushes padding positions down by this much before the max-pool (not -inf: a row of
# padding stays finite).
BOW_PAD_PENALTY = -1000.0


def optional_field(batch, name):
  """batch[name], or None where the batch has no such field (packed rows' segment_ids and
  positions); read by indexing, so that a batch can tell which fields the step reads."""
  return batch[name] if name in batch else None


def bag_of_words_pool(logits, key_mask):
  """[B, V]: max over positions 1..L-1 of the logits [B, L, V], padding pushed down by 1000."""
  penalty = jnp.where(key_mask[:, 1:, None].astype(bool), 0.0, BOW_PAD_PENALTY)
  return (logits[:, 1:] + penalty).max(axis=1)


class PretrainingModel(nn.Module):
  """Parameters: {'bert', 'mlm_head'}; subclasses add the module named 'decoder'."""
  cfg: ModelConfig
  objective: ObjectiveConfig = ObjectiveConfig()

  def setup(self):
    self.bert = BertModel(self.cfg)
    self.mlm_head = MLMHead(self.cfg)
    decoder = self.make_decoder()
    if decoder is not None:
      self.decoder = decoder

  def make_decoder(self) -> nn.Module | None:
    return None

  def encode(self, input_ids, attention_mask, deterministic: bool = True):
    """Last hidden states [B, L, D] of the encoder alone (for embedding and fine-tuning)."""
    return self.bert(input_ids, attention_mask, deterministic)

  @property
  def word_embeddings(self):
    return self.bert.embeddings.word_embeddings.embedding

  def run_encoder(self, batch, deterministic: bool):
    """Returns (hidden [B, Le, D], its key mask [B, Le], outputs {name: logits}).

    outputs: 'encoder_logits' [B, C, V] at batch['encoder_positions'] (corrupt only) and
    'bow_logits' [B, V] (bag of words on).
    """
    obj = self.objective
    if obj.encoder_masking == "drop":
      key_mask = batch["encoder_attention_mask"]
      hidden = self.bert(batch["encoder_input_ids"], key_mask, deterministic,
                         position_ids=batch["encoder_position_ids"])
    else:
      key_mask = batch["attention_mask"]
      # Packed rows (data.pack): positions restart and attention stays in each document.
      hidden = self.bert(batch["encoder_input_ids"], key_mask, deterministic,
                         position_ids=optional_field(batch, "positions"),
                         segment_ids=optional_field(batch, "segment_ids"))
    outputs = {}
    # Under drop no state exists at a masked position: no L_enc.
    positions = batch["encoder_positions"] if obj.encoder_masking == "corrupt" else None
    if obj.bag_of_words:
      # Every position's logits are needed for the max-pool: [B, Le, V] in memory.
      logits = self.mlm_head(hidden, self.word_embeddings)
      outputs["bow_logits"] = bag_of_words_pool(logits, key_mask)
      if positions is not None:
        outputs["encoder_logits"] = jnp.take_along_axis(logits, positions[..., None], axis=1)
    elif positions is not None:
      # The head runs only where L_enc needs vocabulary logits.
      masked_hidden = jnp.take_along_axis(hidden, positions[..., None], axis=1)
      outputs["encoder_logits"] = self.mlm_head(masked_hidden, self.word_embeddings)
    return hidden, key_mask, outputs

  def decode(self, hidden, key_mask, batch, deterministic: bool):
    """Decoder logits [B, L, V] from the encoder's hidden states; None without a decoder."""
    del hidden, key_mask, batch, deterministic
    return None

  def outputs(self, batch, deterministic: bool = False) -> dict:
    """Every logit the objective's loss reads (losses.objective_loss), by name."""
    hidden, key_mask, outputs = self.run_encoder(batch, deterministic)
    decoder_logits = self.decode(hidden, key_mask, batch, deterministic)
    if decoder_logits is not None:
      outputs["decoder_logits"] = decoder_logits
    return outputs

  def __call__(self, batch, deterministic: bool = False) -> dict:
    """The training forward (what init traces): `outputs`."""
    return self.outputs(batch, deterministic)
