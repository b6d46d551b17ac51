"""The frame of every objective's model: the encoder pass and its MLM head, which every objective
shares, and the hook where a decoder part adds its module (mlm/model.py adds none).

What the encoder reads and where its head runs are the selected parts' declarations
(objectives/contract.Part: encoder_input, encoder_head, encoder_pool): encoder.masking=corrupt
reads the whole corrupted row and reads the head at its masked slots (L_enc); drop reads only
the kept tokens, compacted, and has no L_enc; the bag-of-words option reads the head at every
position and max-pools it (bag_of_words/model.py).

Packed rows (data.pack): the decoders read each document's sentence vector h at its own [CLS]
(the encoder keeps each document's [CLS] at its row position, packed or not) and attend inside
its segment: sentence_vectors, with_sentence_vectors and self_attention_mask below.
"""

import flax.linen as nn
import jax.numpy as jnp

from retromae_jax.models import pooling
from retromae_jax.models.bert import BertModel, MLMHead, ModelConfig, segment_mask, segment_starts
from retromae_jax.objectives import registry
from retromae_jax.objectives.settings import ObjectiveConfig


def optional_field(batch, name):
  """batch[name], or None where the batch has no such field (packed rows' segment_ids and
  positions); read by indexing, so that a batch can tell which fields the step reads."""
  return batch[name] if name in batch else None


def row_layout(batch):
  """(segment_ids, positions) [B, L] of packed rows; (None, None) with one document per row."""
  return optional_field(batch, "segment_ids"), optional_field(batch, "positions")


def sentence_vectors(hidden, positions):
  """[B, L, D]: at each token of a packed row, its own document's [CLS] state (h)."""
  return jnp.take_along_axis(hidden, segment_starts(positions)[..., None], axis=1)


def with_sentence_vectors(x, hidden, batch):
  """The decoder's input stream x [B, L, D] with each document's [CLS] entry replaced by its h:
  [h, E(x_1), ..., E(x_{n-1})] per document. `hidden`: PretrainingModel.sentence_states (h at
  each document's first encoder position; unpacked: the row's first)."""
  positions = optional_field(batch, "positions")
  if optional_field(batch, "segment_ids") is None:
    return jnp.concatenate([hidden[:, :1].astype(x.dtype), x[:, 1:]], axis=1)
  h = sentence_vectors(hidden, positions)
  return jnp.where((positions == 0)[..., None], h.astype(x.dtype), x)


def self_attention_mask(batch):
  """A decoder's bidirectional self-attention over the real tokens: [B, 1, 1, L] keys, or in
  packed rows [B, 1, L, L] (inside each document)."""
  segment_ids = optional_field(batch, "segment_ids")
  if segment_ids is None:
    return batch["attention_mask"].astype(bool)[:, None, None, :]
  return segment_mask(segment_ids)


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

  def vocab_output(self, x):
    """The shared MLM head over states x [..., D], for a loss term: logits [..., V], or under
    model.vocab_loss=chunked the vocab_loss.Projection that the term scores in blocks of
    positions (objectives/losses.token_cross_entropy), so that no [tokens, V] logits exist."""
    return self.mlm_head(x, self.word_embeddings, defer=self.cfg.vocab_loss == "chunked")

  def sentence_states(self, hidden, key_mask, batch):
    """`hidden` [B, Le, D] with each document's first state (where the decoders read h) being
    its sentence vector (model.sentence_vector): the [CLS] state itself ('cls'), or ('mean') the
    mean over the document's own encoder tokens, as models/pooling.py defines it; in packed rows
    each document's own (the encoder's segments; under drop a document's kept tokens stay in
    its own stretch of the row)."""
    if self.cfg.sentence_vector == "cls":
      return hidden
    segments, _ = self.encoder_layout(batch)
    if segments is None:  # one document per row: one segment, the real tokens
      segments = key_mask.astype(jnp.int32)
    return pooling.segment_mean(hidden, key_mask, segments)

  def encoder_layout(self, batch):
    """(segment_ids, positions) of the encoder's input; None each where the batch has none."""
    reads = registry.encoder_part(self.objective).encoder_input
    return optional_field(batch, reads.segments), optional_field(batch, reads.positions)

  def run_encoder(self, batch, deterministic: bool):
    """Returns (hidden [B, Le, D], its key mask [B, Le], outputs {name: logits}).

    outputs: what the parts read of the MLM head, under the names they declare: with the
    defaults 'encoder_logits' [B, C, V] at batch['encoder_positions'] (corrupt), 'bow_logits'
    (bag of words on).
    """
    parts = registry.parts(self.objective)
    reads = registry.encoder_part(self.objective).encoder_input
    key_mask = batch[reads.mask]
    segment_ids, positions = self.encoder_layout(batch)
    hidden = self.bert(batch[reads.ids], key_mask, deterministic, position_ids=positions,
                       segment_ids=segment_ids)
    heads = [part.encoder_head for part in parts if part.encoder_head is not None]
    pools = [registry.load(part.encoder_pool) for part in parts if part.encoder_pool]
    outputs = {}
    if pools:
      # Every position's logits are needed: [B, Le, V] in memory, the slots read from them.
      logits = self.mlm_head(hidden, self.word_embeddings)
      for pool in pools:
        outputs.update(pool(logits, key_mask, segment_ids, positions))
      for head in heads:
        outputs[head.output] = jnp.take_along_axis(logits, batch[head.at][..., None], axis=1)
    else:
      # The head runs only where a loss needs vocabulary logits.
      for head in heads:
        slots = jnp.take_along_axis(hidden, batch[head.at][..., None], axis=1)
        outputs[head.output] = self.vocab_output(slots)
    return hidden, key_mask, outputs

  def decode(self, hidden, key_mask, batch, deterministic: bool):
    """Decoder logits [B, L, V] from the encoder's hidden states (vocab_output: a Projection
    under model.vocab_loss=chunked); None without a decoder."""
    del hidden, key_mask, batch, deterministic
    return None

  def outputs(self, batch, deterministic: bool = False) -> dict:
    """Every logit the objective's loss terms read (losses.objective_loss), by name (a
    vocab_loss.Projection in place of logits under model.vocab_loss=chunked)."""
    hidden, key_mask, outputs = self.run_encoder(batch, deterministic)
    decoder_logits = self.decode(hidden, key_mask, batch, deterministic)
    if decoder_logits is not None:
      # A decoder part declares one loss term, over its decoder's logits: their name.
      (name,) = {term.logits for term in registry.model_part(self.objective).losses}
      outputs[name] = decoder_logits
    return outputs

  def __call__(self, batch, deterministic: bool = False) -> dict:
    """The training forward (what init traces): `outputs`."""
    return self.outputs(batch, deterministic)
