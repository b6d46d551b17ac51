"""The registry of objective parts, and an objective put together from them (objectives/__init__).

Everything that depends on the objective reads it here: the batch layout (batch_shapes), the
host's fields and their packing (data/pretrain/masking.make_batch calls parts()' builders and
reads their Pack declarations), the random streams (random_streams), the FLOP count
(trainers/flops.py), the start-up checks (config_checks), the loss terms (loss_terms, read by
objectives/losses.py), the encoder's input (encoder_part) and the model (make_model).
"""

import importlib

from retromae_jax.objectives import contract
from retromae_jax.objectives.autoregressive import host as autoregressive
from retromae_jax.objectives.bag_of_words import host as bag_of_words
from retromae_jax.objectives.basic import host as basic
from retromae_jax.objectives.corrupt import host as corrupt
from retromae_jax.objectives.cross_attention import host as cross_attention
from retromae_jax.objectives.drop import host as drop
from retromae_jax.objectives.enhanced import host as enhanced
from retromae_jax.objectives.mlm import host as mlm
from retromae_jax.objectives.tsdae import host as tsdae
from retromae_jax.objectives.settings import MAX_DECODER_LAYERS, ObjectiveConfig


def _table(*parts: contract.Part) -> dict[str, contract.Part]:
  return {part.name: part for part in parts}


ENCODERS = _table(corrupt.PART, drop.PART)  # encoder.masking
DECODERS = _table(enhanced.PART, basic.PART, cross_attention.PART,  # decoder.kind
                  autoregressive.PART, tsdae.PART)
# objective.kind: 'retromae' = an encoder part and DECODERS[decoder.kind]; 'mlm' = no decoder.
KINDS = ("retromae", mlm.PART.name)
OPTIONS = (bag_of_words.PART,)  # added to any objective when part.enabled(objective)


def _lookup(table: dict[str, contract.Part], name: str, key: str) -> contract.Part:
  if name not in table:
    raise ValueError(f"config.{key}: {contract.one_of(table)}, got {name!r}")
  return table[name]


def encoder_part(objective: ObjectiveConfig) -> contract.Part:
  return _lookup(ENCODERS, objective.encoder_masking, "encoder.masking")


def model_part(objective: ObjectiveConfig) -> contract.Part:
  """The part that names the model: the decoder's, or the MLM baseline's."""
  if objective.kind not in KINDS:
    raise ValueError(f"config.objective.kind: {contract.one_of(KINDS)}, got {objective.kind!r}")
  if objective.kind == mlm.PART.name:
    return mlm.PART
  return _lookup(DECODERS, objective.decoder_kind, "decoder.kind")


def parts(objective: ObjectiveConfig) -> tuple[contract.Part, ...]:
  """The objective's parts in batch (and random-draw) order: encoder, decoder or mlm, options."""
  options = tuple(part for part in OPTIONS if part.enabled(objective))
  return (encoder_part(objective), model_part(objective), *options)


def loss_terms(objective: ObjectiveConfig) -> tuple[contract.LossTerm, ...]:
  """The loss terms of the objective's parts, in part order (objectives/losses.objective_loss)."""
  return tuple(term for part in parts(objective) for term in part.losses)


def random_streams() -> dict[str, int]:
  """name -> number of every random stream a registered part draws from (and the shared
  encoder mask's); a number used under two names is refused here, at import."""
  streams = dict(contract.SHARED_STREAMS)
  for part in (*ENCODERS.values(), *DECODERS.values(), mlm.PART, *OPTIONS):
    for name, number in part.streams.items():
      clash = [other for other, n in streams.items() if n == number and other != name]
      if clash or streams.get(name, number) != number:
        raise ValueError(f"objective part {part.name!r}: random stream {name!r}={number} "
                         f"clashes with {clash or [name]}; take a number no part uses")
      streams[name] = number
  return streams


def load(path: str):
  """The object named by 'module:name' (a part's model, encoder pool or loss), imported now:
  the host pipeline never needs them."""
  module, name = path.split(":")
  return getattr(importlib.import_module(module), name)


def batch_shapes(objective: ObjectiveConfig, dims: contract.Dims) -> contract.Shapes:
  """name -> (shape, dtype) of every array of the objective's batch, in the order built."""
  shapes = contract.shared_fields(dims)
  for part in parts(objective):
    shapes |= part.fields(dims)
  return shapes


def encoder_width(objective: ObjectiveConfig, dims: contract.Dims) -> int:
  return encoder_part(objective).encoder_width(dims)


def head_positions(objective: ObjectiveConfig, encoder_len: int, encoder_positions: int) -> int:
  """Where the encoder's MLM head runs: the widest need of any part (all positions cover C)."""
  return max(part.head_positions(encoder_len, encoder_positions) for part in parts(objective))


def parts_forward_flops(cfg, objective: ObjectiveConfig, seq_len: int,
                        encoder_len: int) -> float:
  """Every part's own matmul FLOPs per example (the decoder's, where there is one)."""
  return sum(part.forward_flops(cfg, objective, seq_len, encoder_len)
             for part in parts(objective))


def config_checks(config, objective: ObjectiveConfig) -> list[contract.Check]:
  """(key, ok, expected) for the objective, decoder and encoder sections: the keys every
  objective shares, then each registered part's own keys (selected or not). `objective`: the
  same sections as resolved (trainers/settings.objective)."""
  o, dec, enc = config.objective, config.decoder, config.encoder
  checks = [
      ("objective.kind", o.kind in KINDS, contract.one_of(KINDS)),
      ("decoder.kind", dec.kind in DECODERS, contract.one_of(DECODERS)),
      ("decoder.num_layers",
       contract.is_int(dec.num_layers) and 1 <= dec.num_layers <= MAX_DECODER_LAYERS,
       f"expected 1..{MAX_DECODER_LAYERS}"),
      ("encoder.masking", enc.masking in ENCODERS, contract.one_of(ENCODERS)),
  ]
  for part in (*ENCODERS.values(), *DECODERS.values(), mlm.PART, *OPTIONS):
    checks += part.checks(config)
  return checks + pack_checks(config.data.pack, objective)


def pack_checks(pack, objective: ObjectiveConfig) -> list[contract.Check]:
  """data.pack=True needs every selected part to pack its fields (contract.Part.packs)."""
  if not isinstance(pack, bool):
    return [("data.pack", False, "expected True or False")]
  if not pack:
    return []
  try:
    selected = parts(objective)
  except ValueError:
    return []  # an unknown part is reported by its own key's check
  unpacked = [part.name for part in selected if part.packs is None]
  return [("data.pack", not unpacked,
           f"the objective's part(s) {', '.join(unpacked)} do not support packed rows; set "
           "--config.data.pack=False")]


def model_class(objective: ObjectiveConfig) -> type:
  """The Flax model class of the objective, imported here (the host pipeline never needs it).
  An objective with an unknown part is refused, naming its key."""
  _, part, *_ = parts(objective)
  return load(part.model)


def make_model(cfg, objective: ObjectiveConfig = ObjectiveConfig()):
  """The model of `objective` (config objective.kind / decoder.kind): a
  pretraining_model.PretrainingModel subclass, with `cfg` (models/bert.ModelConfig)."""
  return model_class(objective)(cfg, objective)
