"""The vocabulary head's gradients (models/bert.vocab_logits, model.vocab_head): the 'fused' path
(weight and bias gradients as plain dots) gives the loss, accuracy and gradients of an
independent float64 NumPy cross-entropy over the full logits, with ignored labels; it equals
JAX's own derivative ('autodiff') in bf16 and in each objective's use of the head; microbatch
gradients accumulated in a scan add up to the batch's; and it holds on a sharded mesh with the
vocabulary split over 'tensor'."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retromae_jax.objectives import losses
from retromae_jax.models.bert import vocab_logits
from retromae_jax.objectives.settings import ObjectiveConfig
from retromae_jax.objectives.registry import make_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, L, D, V = 4, 5, 8, 38  # B, D and V divide over a (2, 2, 2) mesh
IGNORE = -100


def _inputs(seed=0):
  """hidden [B, L, D], embeddings [V, D], bias [V], labels [B, L] with a third ignored."""
  rng = np.random.default_rng(seed)
  hidden = rng.normal(size=(B, L, D)).astype(np.float32)
  embeddings = rng.normal(size=(V, D)).astype(np.float32)
  bias = rng.normal(size=(V,)).astype(np.float32)
  labels = rng.integers(0, V, (B, L)).astype(np.int32)
  labels[rng.random((B, L)) < 0.33] = IGNORE
  labels[0, 0] = IGNORE
  return hidden, embeddings, bias, labels


def numpy_cross_entropy(hidden, embeddings, bias, labels):
  """(mean loss, accuracy, d hidden, d embeddings, d bias) in float64: softmax cross-entropy
  over the full logits at labels != -100, divided by their count; its gradient is
  (softmax - onehot) / count on those rows, 0 elsewhere."""
  h, w, b = (np.asarray(x, np.float64) for x in (hidden, embeddings, bias))
  logits = h @ w.T + b  # [B, L, V]
  valid = labels != IGNORE
  count = valid.sum()
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  safe = np.where(valid, labels, 0)
  picked = np.take_along_axis(log_probs, safe[..., None], -1)[..., 0]
  loss = -(picked * valid).sum() / count
  accuracy = ((logits.argmax(-1) == labels) & valid).sum() / count
  onehot = np.arange(V) == safe[..., None]
  dlogits = (np.exp(log_probs) - onehot) * (valid[..., None] / count)
  flat = dlogits.reshape(-1, V)
  return (loss, accuracy, dlogits @ w, flat.T @ h.reshape(-1, D), flat.sum(0))


def head_loss(gradients):
  """(loss, accuracy) of masked_cross_entropy over vocab_logits, as a function of the head's
  inputs."""
  def loss(hidden, embeddings, bias, labels):
    logits = vocab_logits(hidden, embeddings, bias, gradients)
    mean, accuracy, _ = losses.masked_cross_entropy(logits, labels)
    return mean, accuracy
  return loss


def loss_and_gradients(gradients, hidden, embeddings, bias, labels):
  grad_fn = jax.value_and_grad(head_loss(gradients), argnums=(0, 1, 2), has_aux=True)
  (loss, accuracy), grads = jax.jit(grad_fn)(hidden, embeddings, bias, labels)
  return loss, accuracy, grads


def assert_close(got, want, rtol=1e-5):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert np.abs(got - want).max() <= rtol * max(np.abs(want).max(), 1e-30), (got, want)


@pytest.mark.parametrize("gradients", ["fused", "autodiff"])
def test_loss_accuracy_and_gradients_match_numpy(gradients):
  inputs = _inputs()
  loss, accuracy, grads = loss_and_gradients(gradients, *inputs)
  want_loss, want_accuracy, *want_grads = numpy_cross_entropy(*inputs)
  assert_close(loss, want_loss)
  assert_close(accuracy, want_accuracy)
  for got, want in zip(grads, want_grads):
    assert_close(got, want)


def test_ignored_rows_get_no_gradient():
  hidden, embeddings, bias, labels = _inputs()
  _, _, (d_hidden, _, _) = loss_and_gradients("fused", hidden, embeddings, bias, labels)
  assert np.all(np.asarray(d_hidden)[labels == IGNORE] == 0)


def test_bf16_fused_equals_autodiff_in_value_and_dtype():
  hidden, embeddings, bias, labels = _inputs()
  as_bf16 = lambda x: jnp.asarray(x, jnp.bfloat16)
  results = {g: loss_and_gradients(g, as_bf16(hidden), as_bf16(embeddings), bias, labels)
             for g in ("fused", "autodiff")}
  fused, autodiff = results["fused"], results["autodiff"]
  assert float(fused[0]) == float(autodiff[0])  # the same forward
  for got, want in zip(fused[2], autodiff[2]):
    assert got.dtype == want.dtype  # bf16, bf16, float32 (the bias)
    assert_close(got, want, rtol=1e-2)  # bf16 products, summed in another order


def test_microbatch_gradients_add_up_to_the_batch_gradients():
  # As pretrain.loss_and_grads accumulates: a scan over microbatches, each divided by the whole
  # batch's labelled-token count.
  hidden, embeddings, bias, labels = _inputs()
  _, _, want = loss_and_gradients("fused", hidden, embeddings, bias, labels)
  count = losses.labelled_tokens(jnp.asarray(labels))

  def microbatch_gradients(total, microbatch):
    rows, row_labels = microbatch
    loss = lambda h, w, b: losses.masked_cross_entropy(vocab_logits(h, w, b), row_labels,
                                                       count)[0]
    grads = jax.grad(loss, argnums=(0, 1, 2))(rows, embeddings, bias)
    return jax.tree.map(jnp.add, total, grads[1:]), grads[0]

  halves = lambda x: x.reshape(2, B // 2, *x.shape[1:])
  zeros = (jnp.zeros_like(embeddings), jnp.zeros_like(bias))
  (d_embeddings, d_bias), d_hidden = jax.jit(lambda: jax.lax.scan(
      microbatch_gradients, zeros, (halves(hidden), halves(labels))))()
  for got, expected in zip((d_hidden.reshape(hidden.shape), d_embeddings, d_bias), want):
    assert_close(got, expected)


def _objectives_fixtures():
  """tests/test_objectives.py: its batch (every objective's fields) and random parameters."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import test_objectives  # pylint: disable=import-outside-toplevel
  return test_objectives


@pytest.mark.parametrize("objective", [
    ObjectiveConfig(),  # enhanced decoder
    ObjectiveConfig(bow_weight=0.1),  # DupMAE's bag of words: the head at every position
    # The other decoders call the head as the enhanced one does; this one has no L_enc.
    ObjectiveConfig(decoder_kind="cross_attention", encoder_masking="drop"),
    ObjectiveConfig(kind="mlm"),  # no decoder
], ids=["enhanced", "bow", "cross_attention_drop", "mlm"])
def test_every_objective_gets_the_gradients_of_autodiff(objective):
  fixtures = _objectives_fixtures()
  batch, lengths = fixtures._batch()
  if objective.encoder_masking == "drop":
    masked = np.zeros(batch["input_ids"].shape, bool)
    masked[:, 2:4] = True
    fields, _ = fixtures.dropped_encoder_input(batch["input_ids"], lengths, masked,
                                               width=batch["input_ids"].shape[1], pad_id=0)
    batch.update(fields)
  model, params = fixtures._init(objective, batch)

  def loss_and_grads(gradients):
    cfg = dataclasses.replace(model.cfg, vocab_head=gradients)
    variant = make_model(cfg, objective)

    def loss_fn(params):
      outputs = variant.apply({"params": params}, batch, deterministic=True, method="outputs")
      return losses.objective_loss(outputs, batch, objective)
    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)

  (loss, metrics), grads = loss_and_grads("fused")
  (want_loss, want_metrics), want_grads = loss_and_grads("autodiff")
  assert_close(loss, want_loss)
  for name, value in want_metrics.items():
    assert_close(metrics[name], value)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    assert_close(got, want)


_SHARDED = """
    import json, jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import sys
    sys.path.insert(0, "tests")
    import test_vocab_head as t
    inputs = t._inputs(seed=1)
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    # The rules table's layout: batch over (data, fsdp), the vocabulary over tensor.
    specs = (P(("data", "fsdp")), P("tensor", "fsdp"), P("tensor"), P(("data", "fsdp")))
    placed = [jax.device_put(x, NamedSharding(mesh, s)) for x, s in zip(inputs, specs)]
    single = t.loss_and_gradients("fused", *inputs)
    sharded = t.loss_and_gradients("fused", *placed)
    flat = lambda r: [np.asarray(x, np.float64).ravel().tolist() for x in (r[0], r[1], *r[2])]
    print(json.dumps({"single": flat(single), "sharded": flat(sharded),
                      "embedding_spec": str(sharded[2][1].sharding.spec)}))
"""


def test_sharded_vocabulary_gives_the_single_device_gradients():
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="8")
  proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_SHARDED)], cwd=ROOT, env=env,
                        capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  assert got["embedding_spec"].startswith("P('tensor'")  # the vocabulary stays split
  for sharded, single in zip(got["sharded"], got["single"]):
    assert_close(sharded, single)
