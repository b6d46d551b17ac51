"""TSDAE (Wang, Reimers and Gurevych 2021) from the objective registry's parts: configs/base.py's
model and schedule for PRESET, with

  encoder.masking=drop, data.encoder_mask_ratio=0.6   ~60% of the tokens deleted: the encoder
                                                      reads the rest (no encoder loss)
  decoder.kind=tsdae                                  a causal decoder that sees the text only
                                                      through cross-attention to the sentence
                                                      vector h rebuilds every token
                                                      (objectives/tsdae/)
Rows are packed (data.pack, the default): every part packs, each document its own h.

  python -m retromae_jax.main --config=configs/tsdae.py:minilm --workdir=DIR \
      --config.init.hf_dir=... --config.model.sentence_vector=mean ...

How it differs from the paper's: TSDAE's decoder has the encoder's depth with tied weights;
ours has decoder.num_layers (1) untied layers (sharing the embeddings and the MLM head).
Deletion is per token (WordPiece), TSDAE's per word.
"""

from configs import base

TSDAE = {"encoder.masking": "drop", "data.encoder_mask_ratio": 0.6, "decoder.kind": "tsdae"}


def get_config(preset: str = "base"):
  c = base.get_config(preset)
  for key, value in TSDAE.items():
    section, name = key.split(".")
    c[section][name] = value
  return c
