"""The pretraining objectives: one registry that the pipeline, the masking, the packing, the FLOP
count, the start-up checks, the loss and the model factory all read.

An objective is put together from parts, each chosen by one config key, each one folder
<part>/ with host.py (NumPy only: fields, shapes, host builder, random streams, packing, checks,
FLOPs, loss terms, declared as one contract.Part) and, for a part with a network, model.py (its
Flax module, a pretraining_model.PretrainingModel):
  encoder.masking    corrupt/ (80/10/10 in place, as RetroMAE) | drop/ (MAE-style)
  objective.kind     retromae (an encoder part + a decoder part) | mlm/ (no decoder)
  decoder.kind       enhanced/ (RetroMAE's) | basic/ | cross_attention/ | autoregressive/ | tsdae/
  objective.bow_weight > 0   bag_of_words/ (DupMAE)
registry.py lists the parts and puts an objective together; losses.py adds up the loss terms
the parts declare; pretraining_model.py is the encoder pass every model shares. The host never
imports a model.py (tests/test_layers.py checks it in a fresh interpreter).

Adding an objective (docs/objectives.md, "Adding an objective"): one folder here, one entry in
registry.py, and its tests.
"""
