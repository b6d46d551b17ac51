"""decoder.kind=cross_attention (this codebase's, not in the references): basic decoding's [MASK]-ed input, each layer
cross-attending to a memory: decoder.cross_attend_to 'sentence' (h alone, a one-vector
bottleneck) or 'tokens' (every encoder state). The model:
retromae_jax/objectives/cross_attention/model.py.
"""

from retromae_jax.objectives.basic import host as basic

from retromae_jax.objectives import contract
from retromae_jax.objectives.flop_formulas import decoder_forward_flops

CROSS_ATTEND_TO = ("sentence", "tokens")


def checks(config) -> list[contract.Check]:
  dec = config.decoder
  return [
      ("decoder.cross_attend_to", dec.cross_attend_to in CROSS_ATTEND_TO,
       contract.one_of(CROSS_ATTEND_TO)),
      ("decoder.cross_attend_to",
       dec.cross_attend_to == "sentence" or dec.kind == "cross_attention",
       "only the cross_attention decoder has a memory to choose; expected 'sentence'"),
  ]


def forward_flops(cfg, objective, seq_len: int, encoder_len: int) -> float:
  memory = 1 if objective.cross_attend_to == "sentence" else encoder_len
  return decoder_forward_flops(cfg, objective, seq_len, memory_tokens=memory)


PART = contract.Part(
    name="cross_attention", fields=basic.fields, build=basic.build, streams=basic.PART.streams,
    checks=checks, losses=basic.LOSSES, forward_flops=forward_flops,
    model="retromae_jax.objectives.cross_attention.model:CrossAttentionDecoding",
    packs=basic.PACKS)
