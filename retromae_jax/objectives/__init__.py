"""The pretraining objectives, host side: one registry that the pipeline, the masking, the FLOP
count, the start-up checks and the model factory all read (NumPy only: no JAX, no Flax).

An objective is put together from parts, each chosen by one config key:
  encoder.masking    corrupt.py (80/10/10 in place, as RetroMAE) | drop.py (MAE-style)
  objective.kind     retromae (an encoder part + a decoder part) | mlm.py (no decoder)
  decoder.kind       enhanced.py (RetroMAE's) | basic.py | cross_attention.py | autoregressive.py
  objective.bow_weight > 0   bag_of_words.py (DupMAE)
Each part file declares, in one place (contract.Part): the batch fields it adds and their
shapes, the host-side function that builds them, where it runs the MLM head and its own FLOPs,
the checks of the config keys it owns, and (decoder parts) its Flax module, by import path: the
host pipeline never imports models/. registry.py lists the parts and puts an objective together.

Adding an objective: one part file here (plus, for a new network, its Flax module under
retromae_jax/models/objectives/), one line in registry.py, and its tests.
"""
