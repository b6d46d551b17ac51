"""The contrastive loss and its gradients: against a NumPy transcription of the formula, across
8 devices against 1, and the gradient cache against the plain step."""

import json
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retromae_jax.models import biencoder as contrastive
from retromae_jax.models import contrastive_loss
from retromae_jax.trainers import gradient_cache
from retromae_jax.data import tokenizer as tokenizer_lib
from retromae_jax.models.bert import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# These tests compare computations, not their speed: XLA's backend optimisations (LLVM) are
# switched off, which compiles about 3x faster on the CPU.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
TINY = ModelConfig(vocab_size=30522, hidden_size=32, num_layers=2, num_heads=2,
                   intermediate_size=64, max_position_embeddings=64)


def reference_loss(q, p, temperature, valid=None, normalize=False):
  """FlagEmbedding's loss, in float64 NumPy: softmax over q.p / t, target of query i = i*G."""
  q, p = np.asarray(q, np.float64), np.asarray(p, np.float64)
  if normalize:
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
  group = len(p) // len(q)
  losses = []
  for i in range(len(q)):
    scores = np.array([q[i] @ p[j] / temperature for j in range(len(p))
                       if valid is None or valid[j] or j == i * group])
    target = i * group if valid is None else int(np.sum(valid[:i * group]))
    top = scores.max()
    losses.append(top + np.log(np.exp(scores - top).sum()) - scores[target])
  return float(np.mean(losses))


def _normalized(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_loss_is_the_reference_formula(similarity):
  rng = np.random.default_rng(0)
  q, p = rng.normal(size=(6, 16)), rng.normal(size=(18, 16))  # B=6, G=3
  temperature = contrastive.DEFAULT_TEMPERATURE[similarity]
  if similarity == "cosine":  # represent() normalises before the loss
    q_in, p_in = _normalized(q), _normalized(p)
  else:
    q_in, p_in = q, p
  loss, aux = contrastive_loss.contrastive_loss(jnp.float32(q_in), jnp.float32(p_in), temperature)
  expected = reference_loss(q, p, temperature, normalize=similarity == "cosine")
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  scores = q_in @ p_in.T
  assert float(aux["accuracy"]) == pytest.approx(np.mean(scores.argmax(1) == np.arange(6) * 3))

  # Invalid passages (missing negatives) leave every softmax; a query's positive is always valid.
  valid = rng.random(18) < 0.5
  valid[::3] = True
  loss, _ = contrastive_loss.contrastive_loss(jnp.float32(q_in), jnp.float32(p_in), temperature,
                                              jnp.asarray(valid))
  expected = reference_loss(q, p, temperature, valid, normalize=similarity == "cosine")
  assert float(loss) == pytest.approx(expected, rel=1e-5)


def _compiled(fn, *args):
  return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)


def _tiny_params():
  example = {"input_ids": jnp.zeros((1, 8), jnp.int32), "attention_mask": jnp.ones((1, 8), jnp.int32)}
  return nn.unbox(contrastive.BiEncoder(TINY).init(jax.random.key(0), example)["params"])


def _random_batch(rng, b=8, g=3, lq=8, lp=16):
  """A batch of the pairs contract with random ids and ragged lengths."""
  def tokens(shape):
    lengths = rng.integers(3, shape[-1] + 1, size=shape[:-1])
    mask = (np.arange(shape[-1]) < lengths[..., None]).astype(np.int32)
    return rng.integers(1000, 30000, size=shape).astype(np.int32) * mask, mask
  q_ids, q_mask = tokens((b, lq))
  p_ids, p_mask = tokens((b, g, lp))
  valid = np.ones((b, g), bool)
  valid[1, 1:] = False  # a query with no negatives
  return {"query_input_ids": q_ids, "query_attention_mask": q_mask, "passage_input_ids": p_ids,
          "passage_attention_mask": p_mask, "passage_valid": valid}


def test_gradient_cache_gives_the_plain_gradients_with_dropout():
  """Dropout keys belong to rows of the global batch, so chunking changes nothing."""
  spec = contrastive.Spec(TINY, pooling="cls", similarity="cosine", temperature=0.05)
  params, batch = _tiny_params(), _random_batch(np.random.default_rng(1))
  key = jax.random.key(7)

  def both(params, batch, key):
    return (gradient_cache.value_and_grad(spec, params, batch, key),
            gradient_cache.value_and_grad(spec, params, batch, key, chunk_size=4))

  both = _compiled(both, params, batch, key)
  ((loss, aux), grads), ((c_loss, c_aux), c_grads) = both(params, batch, key)
  assert float(c_loss) == pytest.approx(float(loss), rel=1e-6)
  assert float(c_aux["accuracy"]) == float(aux["accuracy"])
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads))
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    c = c_grads
    for k in path:
      c = c[k.key]
    # Some gradients are zero in exact arithmetic (key biases: softmax is shift-invariant), so
    # the tolerance is relative to each leaf and to the largest gradient.
    np.testing.assert_allclose(c, g, rtol=1e-5, atol=1e-6 * scale,
                               err_msg=jax.tree_util.keystr(path))
  # Dropout is really on: other keys, another loss.
  ((other, _), _), _ = both(params, batch, jax.random.key(8))
  assert abs(float(other) - float(loss)) > 1e-4


def test_empty_negatives_train_against_in_batch_passages_only(tmp_path):
  from retromae_jax.data import pairs  # imports TensorFlow: not in the 8-device subprocess
  data = tmp_path / "pairs.jsonl"
  lines = [{"query": f"what does function {i} return", "pos": [f"function {i} returns {i * 7}"],
            "neg": [f"function {i} raises an error"] if i % 2 else []} for i in range(4)]
  lines[3].pop("neg")  # missing altogether
  data.write_text("".join(json.dumps(line) + "\n" for line in lines))
  examples = pairs.load_examples(f"jsonl:{data}")
  batches = pairs.GroupBatches(examples, tokenizer_lib.load_tokenizer("default"), batch_size=4,
                               group_size=3, query_max_len=16, passage_max_len=16, seed=0)
  batch = batches(0)
  by_query = {e.uid: e for e in batches.rows(0)}
  for row, example in enumerate(batches.rows(0)):
    assert batch["passage_valid"][row].tolist() == [True, bool(example.neg), False]
  assert len(by_query) == 4

  spec = contrastive.Spec(TINY, temperature=0.02)
  params = _tiny_params()

  def loss_and_vectors(params, batch):
    q = contrastive.represent(spec, params, batch["query_input_ids"],
                              batch["query_attention_mask"])
    p = contrastive.represent(spec, params, batch["passage_input_ids"].reshape(12, 16),
                              batch["passage_attention_mask"].reshape(12, 16))
    return contrastive_loss.loss_fn(spec, params, batch)[0], q, p

  loss, q, p = _compiled(loss_and_vectors, params, batch)(params, batch)
  expected = reference_loss(q, p, 0.02, batch["passage_valid"].reshape(12))
  assert np.isfinite(float(loss))
  assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_global_loss_and_gradients_on_8_devices_equal_1_device():
  """The batch split over a (data 2, fsdp 2, tensor 2) mesh: every query still sees every
  passage of the global batch, and dropout does not depend on the layout."""
  code = textwrap.dedent("""
      import json, jax, jax.numpy as jnp, numpy as np, flax.linen as nn, optax
      import ml_collections
      from retromae_jax.models import biencoder as contrastive
      from retromae_jax.trainers import gradient_cache
      from retromae_jax.trainers import sharding
      from retromae_jax.trainers import train_state
      from tests.test_contrastive import TINY, _random_batch
      assert jax.device_count() == 8
      mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2}))
      rules = sharding.LOGICAL_AXIS_RULES["fsdp_tensor"]
      example = {k: jax.ShapeDtypeStruct((1, 8), jnp.int32) for k in ("input_ids", "attention_mask")}
      state, _ = train_state.create_sharded_state(contrastive.BiEncoder(TINY), optax.sgd(0.1), example,
                                            mesh, rules, 0)
      batch = _random_batch(np.random.default_rng(1))
      key = jax.random.key(7)

      def run(spec, params, batch):
        return jax.jit(lambda p, b: gradient_cache.value_and_grad(spec, p, b, key))(params, batch)

      sharded = {k: jax.device_put(v, sharding.batch_sharding(mesh, rules))
                 for k, v in batch.items()}
      with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        (loss8, _), grads8 = run(contrastive.Spec(TINY, temperature=0.05, rules=rules),
                                 state.params, sharded)
      single = jax.device_put(jax.device_get(state.params), jax.devices()[0])
      (loss1, _), grads1 = run(contrastive.Spec(TINY, temperature=0.05), single, batch)
      diff = max(float(jnp.abs(jax.device_get(a) - b).max())
                 for a, b in zip(jax.tree.leaves(grads8), jax.tree.leaves(grads1)))
      scale = max(float(jnp.abs(b).max()) for b in jax.tree.leaves(grads1))
      print(json.dumps({"loss8": float(loss8), "loss1": float(loss1), "diff": diff,
                        "scale": scale,
                        "devices": len(sharded["passage_input_ids"].sharding.device_set)}))
      """)
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="8")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  assert got["devices"] == 8
  assert got["loss8"] == pytest.approx(got["loss1"], rel=1e-5)
  assert got["diff"] <= 1e-5 * got["scale"]
