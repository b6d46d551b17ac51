"""The anti-forgetting term in both trainers (config.anchor; the term: models/anchor_loss.py).

  anchor.weight       0 = off; else the term's weight in the training loss
  anchor.kind         'vectors' (each text's sentence vector keeps its direction) or
                      'similarities' (the in-batch similarity distribution is kept)
  anchor.temperature  of the similarity distributions

The starting model is a frozen copy of the encoder as initialised (init.hf_dir / init.checkpoint
in pretraining, init.model in fine-tuning; a resumed run loads it again from the same place), or
of anchor.model when set (an HF BERT directory or a workdir: e.g. the general model a RetroMAE
stage started from, when fine-tuning that stage's output). Its
vectors are computed on the fly, every step, on the step's own texts: one forward pass of the
frozen copy and one of the trained encoder, both without dropout (the trained one with its
backward). Pretraining reads the batch's clean texts (input_ids: each document of a packed row
apart); fine-tuning its queries and positives. The frozen copy is an argument of the compiled
step beside the state (AnchoredStep), not a constant baked into the program.
"""

import jax
import jax.numpy as jnp

from retromae_jax.models import anchor_loss
from retromae_jax.models import biencoder
from retromae_jax.models import pooling
from retromae_jax.trainers import train_state
from retromae_jax.interop import workdir as workdir_layout


def enabled(config) -> bool:
  return config.anchor.weight > 0


def checks(config, has_init: bool) -> list[tuple[str, bool, str]]:
  a = config.anchor
  pretrain_packed = config.task == "pretrain" and config.data.pack
  return [
      ("anchor.weight", a.weight >= 0, "expected >= 0 (0 = off)"),
      ("anchor.kind", a.kind in anchor_loss.KINDS, f"expected one of {anchor_loss.KINDS}"),
      ("anchor.temperature", a.temperature > 0, "expected > 0"),
      ("anchor.weight", a.weight == 0 or has_init or bool(a.model),
       "the term keeps the encoder near the model it starts from: set init.hf_dir or "
       "init.checkpoint (pretraining), init.model (fine-tuning), or anchor.weight=0"),
      ("anchor.kind", a.weight == 0 or a.kind == "vectors" or not pretrain_packed,
       "'similarities' compares a batch's documents, which packed rows do not line up: set "
       "--config.anchor.kind=vectors or --config.data.pack=False"),
  ]


def starting_encoder(config, params, start_step: int, init_params):
  """The frozen encoder: anchor.model's ('' = the initial model: `params` at step 0, loaded
  again by init_params on a resumed run), copied (the state's own arrays are donated)."""
  if config.anchor.model:
    from retromae_jax.interop import hf as hf_interop
    params = hf_interop.load_hf_bert(workdir_layout.resolve_model_dir(config.anchor.model), params,
                                     config.model.position_extension)
  elif start_step:
    params = init_params(params)
  return jax.tree.map(jnp.copy, params["bert"])


class AnchoredStep:
  """train_step(state, batch) of a program whose compiled step also reads the frozen encoder.

  Set `anchor` (starting_encoder) before the first call. The frozen copy is
  donated and handed back by every call (no copy per step)."""

  def __init__(self, compiled):
    self.compiled, self.anchor = compiled, None

  def __call__(self, state, batch):
    (state, self.anchor), metrics = self.compiled((state, self.anchor), batch)
    return state, metrics

  def __getattr__(self, name):
    # The compiled program's analyses (memory_analysis, cost_analysis, as_text) are this step's:
    # tools/compile.py reports an anchored step like any other.
    return getattr(self.compiled, name)


def paired(step_fn, state, state_shardings):
  """step_fn(state, batch, anchor=frozen encoder) as the function a compiler sees:
  (pair_step, pair, pair_shardings) with pair = (state, frozen) handed back by every call."""

  def pair_step(pair, batch):
    state, frozen = pair
    new_state, metrics = step_fn(state, batch, anchor=frozen)
    return (new_state, frozen), metrics

  return (pair_step, (state, state.params["bert"]),
          (state_shardings, state_shardings.params["bert"]))


def compile_ahead(step_fn, state, state_shardings, global_example, batch_sharding, mesh, rules,
                  what: str):
  """train_state.compile_ahead for step_fn(state, batch, anchor=frozen encoder): returns
  (AnchoredStep, bytes per device)."""
  pair_step, pair, pair_shardings = paired(step_fn, state, state_shardings)
  compiled, needed = train_state.compile_ahead(
      pair_step, pair, pair_shardings, global_example, batch_sharding, mesh, rules,
      what + ", with the anchor term")
  return AnchoredStep(compiled), needed


def _weighted(config, term, scale=1.0):
  return config.anchor.weight * term * scale, {"anchor_loss": term * scale}


def pretrain_term(config, model, params, frozen, batch, sentence_vector: str, scale=1.0):
  """(weighted term, metrics) of a pretraining batch: each document's sentence vector of its
  clean text (batch['input_ids']), trained encoder against the frozen one. scale: this
  microbatch's share of the batch (gradient accumulation sums the microbatches)."""
  positions, segment_ids = batch.get("positions"), batch.get("segment_ids")
  mask = batch["attention_mask"]

  def vectors(encoder):
    hidden = model.apply({"params": {"bert": encoder}}, batch["input_ids"], mask, True,
                         position_ids=positions, segment_ids=segment_ids,
                         method=lambda m, *a, **k: m.bert(*a, **k))
    if segment_ids is None:  # a row = a document
      return pooling.sentence_vector(hidden, mask, sentence_vector), jnp.ones(mask.shape[0])
    # Packed rows: each document's vector at its [CLS] (positions restart at 0 in each).
    if sentence_vector == "mean":
      per_token = pooling.segment_mean(hidden, mask, segment_ids)
    else:
      per_token = jnp.take_along_axis(hidden, (jnp.arange(mask.shape[1]) - positions)[..., None],
                                      axis=1)
    starts = (positions == 0) & (segment_ids > 0)
    return per_token.reshape(-1, per_token.shape[-1]), starts.reshape(-1)

  student, weights = vectors(params["bert"])
  teacher, _ = vectors(jax.lax.stop_gradient(frozen))
  a = config.anchor
  if a.kind == "vectors":
    term = anchor_loss.vector_loss(student, teacher, weights)
  else:
    term = anchor_loss.similarity_loss(student, student, teacher, teacher, weights, weights,
                                       a.temperature, same_set=True)
  return _weighted(config, term, scale)


def finetune_term(config, spec: biencoder.Spec, params, frozen, batch):
  """(weighted term, metrics) of a fine-tuning batch: its queries and positives (the domain's
  texts under data.train=selfsup:SOURCE), trained encoder against the frozen one."""
  queries = (batch["query_input_ids"], batch["query_attention_mask"])
  positives = (batch["passage_input_ids"][:, 0], batch["passage_attention_mask"][:, 0])

  def vectors(encoder, texts):
    return biencoder.represent(spec, {"bert": encoder}, *texts)  # no keys: no dropout

  frozen = jax.lax.stop_gradient(frozen)
  s_q, s_p = vectors(params["bert"], queries), vectors(params["bert"], positives)
  t_q, t_p = vectors(frozen, queries), vectors(frozen, positives)
  valid_q = jnp.ones(s_q.shape[0])
  valid_p = batch["passage_valid"][:, 0]
  a = config.anchor
  if a.kind == "vectors":
    term = anchor_loss.vector_loss(jnp.concatenate([s_q, s_p]), jnp.concatenate([t_q, t_p]),
                                   jnp.concatenate([valid_q, valid_p.astype(jnp.float32)]))
  else:
    term = anchor_loss.similarity_loss(s_q, s_p, t_q, t_p, valid_q, valid_p, a.temperature,
                                       same_set=False)
  return _weighted(config, term)
