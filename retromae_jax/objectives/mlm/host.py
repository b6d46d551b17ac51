"""objective.kind=mlm: the plain MLM baseline, the encoder and its MLM head alone (no decoder, so
no decoder field). The model: retromae_jax/objectives/pretraining_model.py (the encoder side every
objective shares)."""

from retromae_jax.objectives import contract


def checks(config) -> list[contract.Check]:
  if config.objective.kind != "mlm":
    return []
  dec, enc = config.decoder, config.encoder
  return [
      # The MLM baseline has no decoder: a decoder setting would silently do nothing.
      ("decoder.kind", dec.kind == "enhanced",
       "objective.kind='mlm' has no decoder; leave decoder.kind at 'enhanced'"),
      ("decoder.num_layers", dec.num_layers == 1,
       "objective.kind='mlm' has no decoder; leave decoder.num_layers at 1"),
      # Under drop the encoder predicts nothing: the MLM baseline would have no loss left.
      ("encoder.masking", enc.masking != "drop",
       "objective.kind='mlm' needs 'corrupt' (under 'drop' no encoder state exists at a masked "
       "position, so nothing would be predicted)"),
  ]


PART = contract.Part(name="mlm", checks=checks,
                     model="retromae_jax.objectives.mlm.model:MaskedLM", packs={})
