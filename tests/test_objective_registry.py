"""The objective registry (retromae_jax/objectives/registry.py) is the single source of the batch
layout: for every registered part, the fields it declares are exactly the fields the host builds
on real text and exactly the fields the training step (model, loss and its denominators) reads;
an unknown part fails at start-up with one line naming the key."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import base
from retromae_jax.data.pretrain import batch_contract, chunking, masking
from retromae_jax.trainers import settings
from retromae_jax.data import sources
from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.objectives import losses
from retromae_jax.models.bert import ModelConfig
from retromae_jax.objectives import registry
from retromae_jax.trainers import validation

L, B = 32, 8
# How each option and objective kind is switched on (a new one must be added here to be tested).
SWITCH_ON = {"bag_of_words": {"objective.bow_weight": 0.1}, "retromae": {}, "mlm":
             {"objective.kind": "mlm"}}


def _every_part():
  """One config override per registered part, read from the registry's own tables."""
  overrides = [{"encoder.masking": name} for name in registry.ENCODERS]
  overrides += [{"decoder.kind": name} for name in registry.DECODERS]
  overrides += [SWITCH_ON[kind] for kind in registry.KINDS]
  overrides += [SWITCH_ON[part.name] for part in registry.OPTIONS]
  return overrides


def _config(overrides):
  config = base.get_config("smoke")
  config.data.max_seq_length = L
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value
  config.data.pack = _packs(config)  # packed rows where every part supports them
  return config


def _packs(config) -> bool:
  try:
    return all(part.packs is not None
               for part in registry.parts(settings.objective(config)))
  except ValueError:  # an unknown part: its own check reports it
    return True


@pytest.fixture(scope="module")
def text():
  """B chunks of the standard library's docstrings (the embedded pydoc source), padded to L."""
  tok = tokenizer_lib.load_tokenizer("default")
  ids = tokenizer_lib.special_ids(tok)
  chunks = list(chunking.chunk_documents(
      sources.pydoc_texts()[:100], tok, max_seq_length=L, min_chunk_tokens=8,
      is_continuation=tokenizer_lib.continuation_table(tok)))[:B]
  input_ids = np.full((B, L), ids.pad, np.int32)
  for row, chunk in enumerate(chunks):
    input_ids[row, :len(chunk) + 2] = [ids.cls, *chunk, ids.sep]
  return tok, input_ids, np.array([len(c) + 2 for c in chunks])


class _Reads(dict):
  """A batch that records which of its fields are read."""

  def __init__(self, *args):
    super().__init__(*args)
    self.read = set()

  def __getitem__(self, name):
    self.read.add(name)
    return super().__getitem__(name)


@pytest.mark.parametrize("overrides", _every_part(), ids=lambda o: ",".join(map(str, o.values()))
                         or "retromae")
def test_declared_fields_are_what_the_host_builds_and_the_step_reads(text, overrides):
  tok, input_ids, lengths = text
  config = _config(overrides)
  validation.validate(config)
  objective = settings.objective(config)
  declared = batch_contract.batch_shapes(settings.pretrain_input(config), B)

  built = masking.make_batch(input_ids, lengths, batch_contract.masking_spec(settings.pretrain_input(config), tok),
                             np.random.default_rng(0))
  assert list(built) == list(declared)  # same order: the pipeline maps outputs by position
  for name, (shape, dtype) in declared.items():
    assert built[name].shape == shape and built[name].dtype == dtype, name

  cfg = ModelConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, num_layers=1, num_heads=2,
                    intermediate_size=32, max_position_embeddings=L)
  model = registry.make_model(cfg, objective)
  batch = _Reads(built)

  def step_reads():  # traced only (shapes), as the training step reads the batch
    params = nn.unbox(model.init(jax.random.key(0), batch, deterministic=True))["params"]
    outputs = model.apply({"params": params}, batch, deterministic=True, method="outputs")
    return losses.objective_loss(outputs, batch, objective,
                                 losses.loss_denominators(batch, objective))

  jax.eval_shape(step_reads)
  # input_ids, the shared original text, is read by the parts that need it (the enhanced and
  # autoregressive decoders, the bag of words); objectives whose encoder and decoder read their
  # own copies (mlm, basic, cross_attention) leave it to the evaluators and the inspector. (It
  # used to be read here only for its row count, by a bag-of-words denominator computed for
  # every objective.)
  assert batch.read | {"input_ids"} == set(declared)


@pytest.mark.parametrize("key,value", [("objective.kind", "clm"), ("decoder.kind", "causal"),
                                       ("encoder.masking", "mae")])
def test_an_unknown_part_fails_at_start_up_naming_the_key(key, value):
  config = _config({key: value})
  message = rf"^config\.{key}: expected one of .*, got '{value}'$"
  with pytest.raises(ValueError, match=message):
    validation.validate(config)
  # The registry itself refuses it too, with the same line, wherever it is asked first.
  objective = settings.objective(config)
  with pytest.raises(ValueError, match=message):
    batch_contract.batch_shapes(settings.pretrain_input(config), B)
  with pytest.raises(ValueError, match=message):
    registry.make_model(ModelConfig(), objective)


def test_validation_accepts_exactly_the_registered_names():
  for key, names in (("encoder.masking", registry.ENCODERS), ("decoder.kind", registry.DECODERS),
                     ("objective.kind", registry.KINDS)):
    for name in names:
      validation.validate(_config({key: name}))
    message = _validation_error(_config({key: "unregistered"}))
    assert message == f"config.{key}: expected one of {', '.join(names)}, got 'unregistered'"


def _validation_error(config) -> str:
  with pytest.raises(ValueError) as error:
    validation.validate(config)
  return str(error.value)


def test_random_streams_are_declared_by_the_parts_and_keep_their_numbers(monkeypatch):
  # The numbers the masks were drawn with before the parts declared them: a document's masks
  # (and every test pinning them) stay bit-identical.
  assert masking.STREAMS == {"encoder_mask": 1, "corrupt": 2, "decoder_pool": 3,
                             "decoder_choice": 4, "decoder_mask": 5}
  clashing = dataclasses.replace(registry.DECODERS["tsdae"], streams={"tsdae_order": 3})
  monkeypatch.setitem(registry.DECODERS, "tsdae", clashing)
  with pytest.raises(ValueError, match=r"'tsdae': random stream 'tsdae_order'=3 clashes with "
                                       r"\['decoder_pool'\]"):
    registry.random_streams()
