"""objective.kind=mlm: the plain MLM baseline, the encoder and its MLM head alone (no decoder).

Everything it computes is the shared encoder pass (objectives/pretraining_model.py): L_enc at
the encoder-masked positions, and DupMAE's bag-of-words term when objective.bow_weight > 0.
"""

from retromae_jax.objectives.pretraining_model import PretrainingModel


class MaskedLM(PretrainingModel):
  """Parameters: {'bert', 'mlm_head'}; no decoder."""
