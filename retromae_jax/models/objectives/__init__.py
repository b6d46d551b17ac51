"""The Flax models of the pretraining objectives beside the default enhanced decoder
(retromae_jax/models/retromae.py); what each objective is, host side, and which of these
modules it uses: retromae_jax/objectives/ (the registry).

Every objective shares the encoder (BertModel), its MLM head and the host data pipeline; each
adds at most one module named `decoder`. Chosen by the config (configs/base.py):

  objective.kind     retromae (encoder + decoder) | mlm (encoder and MLM head only)
  decoder.kind       enhanced (the reference default) | basic | cross_attention | autoregressive
  decoder.num_layers 1..12
  encoder.masking    corrupt (80/10/10 in place) | drop (the encoder reads only unmasked tokens)
  objective.bow_weight  DupMAE's bag-of-words loss weight (DupMAE); 0 = off

Modules: mlm.py (the shared encoder side, alone the MLM baseline), layers.py (decoder layer
stacks), basic.py, cross_attention.py, autoregressive.py. The static ObjectiveConfig:
retromae_jax/objectives/config.py; objectives/registry.make_model picks the model class.
"""
