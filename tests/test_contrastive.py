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


def _torch_losses():
  """sentence-transformers' MatryoshkaLoss(MultipleNegativesRankingLoss) and DistillKLDivLoss,
  fed fixed embeddings through a stand-in model (their forward reads only 'sentence_embedding')."""
  import warnings
  warnings.filterwarnings("ignore", category=DeprecationWarning)
  import torch
  from sentence_transformers.sentence_transformer import losses

  class Fixed(torch.nn.Module):
    def forward(self, features):
      return {"sentence_embedding": features["embedding"]}

    def get_embedding_dimension(self):
      return 16

    _get_untruncated_embedding_dimension = get_embedding_dimension

  return torch, losses, Fixed()


def _columns(torch, q, p, group):
  """sentence-transformers' columns (anchor, positive, negative_1, ...) of q [B, D], p [B*G, D]."""
  p = p.reshape(len(q), group, -1)
  return [{"embedding": torch.tensor(q)}] + [{"embedding": torch.tensor(p[:, j])}
                                             for j in range(group)]


def test_matryoshka_loss_is_sentence_transformers_matryoshka_of_mnrl():
  """MNRL's scale 20 on cosine similarity = our cosine with temperature 0.05; its candidates are
  every positive and negative of the batch, as ours; Matryoshka truncates and re-normalises."""
  torch, losses, model = _torch_losses()
  rng = np.random.default_rng(3)
  q, p = rng.normal(size=(5, 16)).astype(np.float32), rng.normal(size=(15, 16)).astype(np.float32)
  dims, weights = (16, 8, 4), (1.0, 0.5, 2.0)
  reference = losses.MatryoshkaLoss(model, losses.MultipleNegativesRankingLoss(model, scale=20.0),
                                    list(dims), list(weights))
  expected = float(reference(_columns(torch, q, p, 3), None))
  spec = contrastive.Spec(TINY, temperature=0.05, matryoshka_dims=dims,
                          matryoshka_weights=weights)
  targets = {"passage_valid": None, "in_batch_negatives": None, "teacher_scores": None}
  # represent() hands the loss unit vectors (cosine): the prefixes are re-normalised from them.
  loss, _ = contrastive_loss.objective(spec, jnp.asarray(_normalized(q)),
                                       jnp.asarray(_normalized(p)), targets)
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  # Without dims: the plain MNRL.
  plain = float(losses.MultipleNegativesRankingLoss(model, scale=20.0)(_columns(torch, q, p, 3), None))
  loss, _ = contrastive_loss.objective(contrastive.Spec(TINY, temperature=0.05),
                                       jnp.asarray(_normalized(q)), jnp.asarray(_normalized(p)),
                                       targets)
  assert float(loss) == pytest.approx(plain, rel=1e-5)


def _flag_embedding_kl_div(q, p, temperature, teacher, kd_temperature, valid=None):
  """FlagEmbedding's distill_loss('kl_div'), by hand in float64: -mean_i sum_j t_ij log s_ij over
  the query's own group, t = softmax(teacher / kd_temperature), s = softmax(q.p / temperature);
  invalid passages leave both softmaxes."""
  b, g = teacher.shape
  q, p = np.asarray(q, np.float64), np.asarray(p, np.float64).reshape(b, g, -1)
  total = 0.0
  for i in range(b):
    keep = np.ones(g, bool) if valid is None else valid.reshape(b, g)[i]
    s = (p[i][keep] @ q[i]) / temperature
    t = np.asarray(teacher[i][keep], np.float64) / kd_temperature
    log_s = s - s.max() - np.log(np.exp(s - s.max()).sum())
    t = np.exp(t - t.max()) / np.exp(t - t.max()).sum()
    total -= (t * log_s).sum()
  return total / b


def test_distillation_term_is_flag_embeddings_kl_div_and_sentence_transformers_kl():
  torch, losses, model = _torch_losses()
  rng = np.random.default_rng(4)
  q = _normalized(rng.normal(size=(4, 16))).astype(np.float32)
  p = _normalized(rng.normal(size=(12, 16))).astype(np.float32)
  teacher = rng.normal(size=(4, 3)).astype(np.float32) * 3
  got = float(contrastive_loss.distill_loss(jnp.asarray(q), jnp.asarray(p), 0.05,
                                            jnp.asarray(teacher), 2.0))
  assert got == pytest.approx(_flag_embedding_kl_div(q, p, 0.05, teacher, 2.0), rel=1e-5)
  # sentence-transformers' DistillKLDivLoss is KL(t || s) * student_temperature^2; FlagEmbedding's
  # form is the cross-entropy, KL plus the teacher's entropy (a constant).
  kl = losses.DistillKLDivLoss(model, student_temperature=0.05, teacher_temperature=2.0)
  st = float(kl(_columns(torch, q, p, 3), torch.tensor(teacher)))
  t = np.exp(teacher / 2.0) / np.exp(teacher / 2.0).sum(1, keepdims=True)
  entropy = float(-(t * np.log(t)).sum(1).mean())
  assert got == pytest.approx(st / 0.05 ** 2 + entropy, rel=1e-5)
  # Unfilled negative slots leave both distributions.
  valid = np.array([True, True, False] * 2 + [True, False, False] + [True] * 3)
  got = float(contrastive_loss.distill_loss(jnp.asarray(q), jnp.asarray(p), 0.05,
                                            jnp.asarray(teacher), 2.0, jnp.asarray(valid)))
  assert got == pytest.approx(_flag_embedding_kl_div(q, p, 0.05, teacher, 2.0, valid), rel=1e-5)

  # In the objective: cross-entropy + kd_weight * the term, summed over Matryoshka prefixes.
  spec = contrastive.Spec(TINY, temperature=0.05, kd_weight=0.7, kd_temperature=2.0,
                          matryoshka_dims=(16, 8))
  targets = {"passage_valid": None, "in_batch_negatives": None,
             "teacher_scores": jnp.asarray(teacher)}
  loss, aux = contrastive_loss.objective(spec, jnp.asarray(q), jnp.asarray(p), targets)
  expected = sum(reference_loss(q[:, :d], p[:, :d], 0.05, normalize=True)
                 + 0.7 * _flag_embedding_kl_div(_normalized(q[:, :d]), _normalized(p[:, :d]),
                                                0.05, teacher, 2.0) for d in (16, 8))
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert float(aux["kd_loss"]) == pytest.approx(_flag_embedding_kl_div(q, p, 0.05, teacher, 2.0),
                                                rel=1e-5)


def test_without_in_batch_negatives_a_query_sees_its_own_group_only():
  rng = np.random.default_rng(5)
  q, p = rng.normal(size=(4, 16)), rng.normal(size=(12, 16))  # B=4, G=3
  flags = np.array([True, False, True, False])
  loss, _ = contrastive_loss.contrastive_loss(jnp.float32(q), jnp.float32(p), 0.5, None,
                                              jnp.asarray(flags))
  expected = []
  for i in range(4):
    candidates = np.arange(12) if flags[i] else np.arange(3 * i, 3 * i + 3)
    scores = p[candidates] @ q[i] / 0.5
    target = int(np.flatnonzero(candidates == 3 * i)[0])
    expected.append(np.log(np.exp(scores - scores.max()).sum()) + scores.max() - scores[target])
  assert float(loss) == pytest.approx(np.mean(expected), rel=1e-5)


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
  """Dropout keys belong to rows of the global batch, so chunking changes nothing; the teacher
  scores, Matryoshka prefixes and the in-batch switch reach the cached loss too."""
  spec = contrastive.Spec(TINY, pooling="cls", similarity="cosine", temperature=0.05,
                          matryoshka_dims=(32, 8), kd_weight=0.5, kd_temperature=0.1)
  params, batch = _tiny_params(), _random_batch(np.random.default_rng(1))
  batch["teacher_scores"] = np.random.default_rng(2).normal(size=(8, 3)).astype(np.float32)
  batch["in_batch_negatives"] = np.arange(8) % 3 > 0
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
