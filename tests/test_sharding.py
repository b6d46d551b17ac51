"""Sharding on 8 fake CPU devices: the rules table really places parameters and optimizer state,
and training losses do not depend on the mesh (dropout keys depend only on seed and step) nor on
the memory levers (remat, gradient accumulation)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, devices: int) -> str:
  env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices))
  proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stdout.strip().splitlines()[-1]


def test_parameters_and_optimizer_state_are_sharded_as_the_rules_say():
  out = _python("""
      import json, jax, optax
      from jax.sharding import PartitionSpec as P
      from configs import base
      from retromae_jax.trainers import optim
      from retromae_jax.trainers import sharding
      from retromae_jax.trainers import train_state
      from retromae_jax.data.pretrain import batch_contract
      from retromae_jax.trainers import settings as settings_lib
      from retromae_jax.objectives.enhanced.model import RetroMAE
      config = base.get_config("smoke")
      config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 8, 1
      mesh = sharding.make_mesh(config.mesh)
      rules = sharding.LOGICAL_AXIS_RULES["fsdp_tensor"]
      tx, _ = optim.make_optimizer(config.optim, 10)
      example = {k: jax.ShapeDtypeStruct(s, d)
                 for k, (s, d) in batch_contract.batch_shapes(settings_lib.pretrain_input(config), 1).items()}
      state, _ = train_state.create_sharded_state(
          RetroMAE(settings_lib.model(config, 30522)), tx, example, mesh, rules, 0)
      p = state.params
      mu = state.opt_state[1][0].mu  # chain(clip, adamw): adam's first moment
      leaves = jax.tree.leaves(p)
      total = sum(x.nbytes for x in leaves)
      per_device = sum(x.addressable_shards[0].data.nbytes for x in leaves)
      print(json.dumps({
          "word": str(p["bert"]["embeddings"]["word_embeddings"]["embedding"].sharding.spec),
          "query": str(p["bert"]["encoder"]["query"]["kernel"].sharding.spec),
          "ffn_out": str(p["decoder"]["output"]["kernel"].sharding.spec),
          "mu_word": str(mu["bert"]["embeddings"]["word_embeddings"]["embedding"].sharding.spec),
          "count": str(state.opt_state[1][0].count.sharding.spec),
          "fraction": per_device / total}))
      """, devices=8)
  got = json.loads(out)
  # The rules: embed -> fsdp; vocab, heads, mlp -> tensor (size 1 here); moments follow params.
  assert got["word"] == "P('tensor', 'fsdp')"  # [vocab, embed]
  assert got["query"] == "P(None, 'fsdp', 'tensor', None)"  # [layers, embed, heads, kv]
  assert got["ffn_out"] == "P('tensor', 'fsdp')"  # [mlp, embed]
  assert got["mu_word"] == got["word"]
  assert got["count"] == "P()"
  # Every parameter has an embed axis except biases of heads/mlp/vocab: about 1/8 per device.
  assert 1 / 8 <= got["fraction"] < 1 / 8 + 0.02


def _losses(workdir, devices, mesh, *extra, return_log=False):
  env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices))
  cmd = [sys.executable, "-m", "retromae_jax.main", "--config=configs/base.py:smoke",
         f"--workdir={workdir}", "--config.batch_size=8", "--config.data.max_seq_length=32",
         "--config.total_steps=3", "--config.log_every=1", "--config.checkpoint_every=2",
         f"--config.mesh.data={mesh[0]}", f"--config.mesh.fsdp={mesh[1]}",
         f"--config.mesh.tensor={mesh[2]}", *extra]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    losses = [(r["enc_loss"], r["dec_loss"]) for r in map(json.loads, f)]
  return (losses, proc.stderr) if return_log else losses


# Eight heads and a vocabulary padded to a multiple of 128, so that every mesh axis, tensor
# included, divides the model: one single-device reference serves every mesh.
TENSOR_SIZES = ("--config.model.num_heads=8", "--config.model.vocab_multiple=128")


@pytest.fixture(scope="module")
def one_device_losses(tmp_path_factory):
  return _losses(str(tmp_path_factory.mktemp("one_device")), 1, (1, 1, 1), *TENSOR_SIZES)


@pytest.fixture(scope="module")
def run_2x2x2(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("mesh_2x2x2"))
  return workdir, _losses(workdir, 8, (2, 2, 2), *TENSOR_SIZES)


# (2,2,2) mixes the three axes; (1,8,1) is FSDP alone, (1,1,8) tensor parallelism alone (heads,
# MLP and the padded vocabulary split 8 ways). Plain data parallelism, the simplest, is @slow.
@pytest.mark.parametrize("mesh", [pytest.param((8, 1, 1), marks=pytest.mark.slow), (2, 2, 2),
                                  (1, 8, 1), (1, 1, 8)])
def test_losses_do_not_depend_on_the_mesh(tmp_path, mesh, one_device_losses, run_2x2x2):
  reference = one_device_losses
  sharded = (run_2x2x2[1] if mesh == (2, 2, 2)
             else _losses(str(tmp_path / "mesh"), 8, mesh, *TENSOR_SIZES))
  assert len(reference) == len(sharded) == 3
  for (ref_enc, ref_dec), (enc, dec) in zip(reference, sharded):
    assert enc == pytest.approx(ref_enc, rel=1e-5)
    assert dec == pytest.approx(ref_dec, rel=1e-5)


def test_a_mesh_that_does_not_divide_the_model_fails_naming_the_parameter(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "retromae_jax.main", "--config=configs/base.py:smoke",
       f"--workdir={tmp_path}", "--config.batch_size=8", "--config.mesh.data=1",
       "--config.mesh.tensor=8"], cwd=ROOT, env=dict(os.environ, JAX_NUM_CPU_DEVICES="8"),
      capture_output=True, text=True, timeout=600)
  assert proc.returncode != 0
  assert ("config.mesh: ['bert']['embeddings']['word_embeddings']['embedding'] dimension 0 "
          "(vocab, 30522) is not divisible by mesh axes tensor = 8; set "
          "config.model.vocab_multiple") in proc.stderr


@pytest.mark.parametrize("devices,mesh", [(1, (1, 1, 1)), (8, (1, 8, 1))])
def test_checkpoint_of_one_mesh_resumes_on_another(tmp_path, devices, mesh, run_2x2x2):
  """The step-2 checkpoint of the (2,2,2) run restores on 1 device and on (1,8,1), and step 3
  gives the (2,2,2) run's step-3 losses (parameters, Adam moments and step all came through)."""
  workdir = str(tmp_path / "moved")
  shutil.copytree(run_2x2x2[0], workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "3"))
  resumed, log = _losses(workdir, devices, mesh, *TENSOR_SIZES, return_log=True)
  assert f"Resuming from {workdir}/checkpoints/2" in log  # not a fresh run that agrees anyway
  assert len(resumed) == 3  # steps 1-2 from the first run, step 3 rewritten by the resumed one
  (ref_enc, ref_dec), (enc, dec) = run_2x2x2[1][2], resumed[2]
  assert enc == pytest.approx(ref_enc, rel=1e-5)
  assert dec == pytest.approx(ref_dec, rel=1e-5)


NO_DROPOUT = ("--config.model.dropout_rate=0", "--config.model.attention_dropout_rate=0")


@pytest.fixture(scope="module")
def plain_losses(tmp_path_factory):
  return _losses(str(tmp_path_factory.mktemp("plain")), 1, (1, 1, 1), *NO_DROPOUT)


@pytest.mark.parametrize("lever", ["--config.model.remat=full",
                                   pytest.param("--config.model.remat=dots",
                                                marks=pytest.mark.slow),
                                   "--config.grad_accum_steps=2"])
def test_memory_levers_keep_the_losses(tmp_path, lever, plain_losses):
  # Without dropout (microbatches draw their own dropout keys), remat and gradient accumulation
  # must give the plain step's losses at every step, the updates included.
  plain = plain_losses
  levered = _losses(str(tmp_path / "lever"), 1, (1, 1, 1), *NO_DROPOUT, lever)
  for (ref_enc, ref_dec), (enc, dec) in zip(plain, levered):
    assert enc == pytest.approx(ref_enc, rel=1e-5)
    assert dec == pytest.approx(ref_dec, rel=1e-5)
