"""TSDAE (Wang et al. 2021) from the objective registry's parts: configs/base.py's model and
schedule for PRESET, with

  encoder.masking=drop, data.encoder_mask_ratio=0.6   ~60% of the tokens deleted: the encoder
                                                      reads the rest (no encoder loss)
  decoder.kind=autoregressive, attention_span=0       a causal decoder conditioned only on the
                                                      sentence vector h rebuilds every token
  data.pack=False                                     (these parts do not pack)

  python -m retromae_jax.main --config=configs/tsdae.py:minilm --workdir=DIR \
      --config.init.hf_dir=... --config.model.sentence_vector=mean ...

How it differs from the paper's: TSDAE's decoder cross-attends to h in every layer and has the
encoder's depth with tied weights; ours reads h as its first position (as SEED-Encoder) and has
decoder.num_layers (1) untied layers. Deletion is per token (WordPiece), TSDAE's per word.
The alternative, decoder.kind=cross_attention with cross_attend_to=sentence, cross-attends to h
but reads a [MASK]-ed copy bidirectionally and predicts only the masked positions.
"""

from configs import base

TSDAE = {"encoder.masking": "drop", "data.encoder_mask_ratio": 0.6,
         "decoder.kind": "autoregressive", "decoder.attention_span": 0, "data.pack": False}


def get_config(preset: str = "base"):
  c = base.get_config(preset)
  for key, value in TSDAE.items():
    section, name = key.split(".")
    c[section][name] = value
  return c
