"""decoder.kind=tsdae (TSDAE, Wang et al. 2021): the part added by following docs/objectives.md
"Adding an objective" (its folder retromae_jax/objectives/tsdae/, these tests, one registry entry).

Against a NumPy reference written from the paper's description (test_objectives.py's loop-by-loop
layers), the defining property (the text reaches the decoder only through h), and packing as
every part is tested (test_packing.py: each document of a packed batch has its losses alone).
"""

import jax
import numpy as np
import pytest

import test_objectives as ref
import test_packing
from retromae_jax.objectives import losses
from retromae_jax.objectives.autoregressive.host import next_token_targets
from retromae_jax.objectives.settings import ObjectiveConfig

TSDAE = ObjectiveConfig(decoder_kind="tsdae", decoder_layers=2)


def reference_tsdae_logits(params, batch):
  """[B, L, V]: E(x) (position 0 keeps [CLS]), per layer causal self-attention over the real
  tokens, cross-attention to h alone, feed-forward; the shared head."""
  out = []
  for b in range(ref.B):
    real = batch["attention_mask"][b].astype(bool)
    h = ref._encoder(params, batch["encoder_input_ids"][b], real)[0]
    x = ref._embed(params, batch["input_ids"][b])
    causal = np.tril(np.ones((ref.L, ref.L), bool)) & real[None, :]
    for i in range(TSDAE.decoder_layers):
      p = ref._layer_params(params["decoder"]["layers"], i)
      x = ref._attend(p, "", x, x, causal)
      x = ref._attend(p, "cross_", x, h[None], np.ones((ref.L, 1), bool))
      x = ref._ffn(p, x)
    out.append(ref._head(params, x))
  return np.stack(out)


def test_tsdae_decoder_matches_numpy_reference():
  batch, lengths = ref._batch()
  batch["decoder_targets"] = next_token_targets(batch["input_ids"], lengths)
  model, params = ref._init(TSDAE, batch)
  got = ref._decoder_logits(model, params, batch)
  expected = reference_tsdae_logits(jax.tree.map(lambda a: np.asarray(a, np.float64), params),
                                    batch)
  real = batch["attention_mask"].astype(bool)
  np.testing.assert_allclose(got[real], expected[real], atol=2e-4, rtol=1e-4)
  # Its loss: L_enc + L_dec, the decoder predicting each next text token x_2..x_{n-2}.
  outputs = model.apply({"params": params}, batch, deterministic=True, method="outputs")
  _, metrics = losses.objective_loss(outputs, batch, TSDAE)
  assert set(metrics) == {"enc_loss", "enc_acc", "enc_tokens", "dec_loss", "dec_acc",
                          "dec_tokens"}
  assert int(metrics["dec_tokens"]) == (lengths - 2).sum()


def test_tsdae_reads_the_encoder_through_h_alone():
  batch, _ = ref._batch()
  model, params = ref._init(TSDAE, batch)
  hidden, key_mask, _ = model.apply({"params": params}, batch, True, method="run_encoder")
  decode = lambda states: np.asarray(model.apply(
      {"params": params}, states, key_mask, batch, True, method="decode"))
  before = decode(hidden)
  np.testing.assert_array_equal(decode(hidden.at[:, 1:].add(1.0)), before)  # not the tokens
  real = batch["attention_mask"].astype(bool)
  assert np.abs(decode(hidden.at[:, 0].add(1.0)) - before).max(-1)[real].min() > 1e-3


@pytest.mark.parametrize("overrides", [{"decoder.kind": "tsdae", "encoder.masking": "drop"}],
                         ids=["tsdae,drop"])
def test_tsdae_packs(tok, chunks40, overrides):
  test_packing.test_every_part_gives_each_document_the_losses_it_has_alone(tok, chunks40,
                                                                           overrides)


tok = test_packing.tok
chunks40 = test_packing.chunks40
