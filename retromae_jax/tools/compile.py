"""Compile the training step for a TPU slice on this machine, with no TPU: does it fit, how fast
can it be.

  python -m retromae_jax.tools.compile --config=configs/base.py --topology=v5e:2x4 \
      [--config.KEY=VALUE ...] [--fit] [--sweep=model.remat=none,dots,full] [--json=FILE]

The step is the one `python -m retromae_jax.main` runs with the same config (pretrain.build_step
or finetune.build_step: model, objective, optimizer, microbatches or gradient cache, dtype,
remat), its mesh (config.mesh) laid over the topology's devices; libtpu's compiler (the optional
extra requirements-tpu.txt) compiles it on abstract inputs. The report, per chip: bytes of
parameters, optimizer state, batch and the compiler's temporaries against the chip's HBM
(trainers/chips.py), compiled FLOPs next to the analytic count (trainers/flops.py), bytes
accessed, the collectives of the HLO, and the roofline bound on the step time (the larger of
FLOPs / peak and bytes / HBM bandwidth; collectives not included), hence an upper bound on MFU.

--fit: the fewest microbatches (pretraining) or the largest gradient-cache chunk (fine-tuning)
that fits. A step that does not fit prints its report, then one line on stderr, and exits 1.
"""

import json
import os
import sys

# libtpu looks for a TPU VM's metadata (and warns on stderr) when it loads; this machine is none.
# CPU is the default backend: nothing here runs, the topology's devices are only compiled for.
for _key, _value in (("JAX_PLATFORMS", "cpu"), ("TPU_SKIP_MDS_QUERY", "1"),
                     ("TPU_WORKER_HOSTNAMES", "localhost"),
                     ("TPU_ACCELERATOR_TYPE", "v5litepod-8"),
                     # Several compiles at once (a test beside a benchmark): libtpu's lock file
                     # guards a TPU, and none is used here.
                     ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
  os.environ.setdefault(_key, _value)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import jax  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from retromae_jax.tools import cli  # noqa: E402
from retromae_jax.tools import compile_report as report_lib  # noqa: E402
from retromae_jax.trainers import chips as chips_lib  # noqa: E402
from retromae_jax.trainers import finetune  # noqa: E402
from retromae_jax.trainers import loop  # noqa: E402
from retromae_jax.trainers import pretrain  # noqa: E402
from retromae_jax.trainers import sharding  # noqa: E402
from retromae_jax.trainers import validation  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/base.py",
                                          "Config file (configs/base.py[:preset]).")
_TOPOLOGY = flags.DEFINE_string("topology", "v5e:2x2", "TPU slice: v5e:2x4, v5e-8, v4-32, ...")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices (multi-slice over DCN).")
_FIT = flags.DEFINE_bool("fit", False, "Find the fewest microbatches / largest gradient-cache "
                         "chunk that fits.")
_SWEEP = flags.DEFINE_multi_string(
    "sweep", [], "KEY=V1,V2,...: one report row per value (e.g. model.remat=none,dots,full).")
_JSON = flags.DEFINE_string("json", "", "Also write the report as JSON to this file ('-': stdout).")
_HLO = flags.DEFINE_string("hlo", "", "Write each variant's compiled HLO to FILE.<n>.txt.")


def build_step(config, devices):
  """(trainers/step.Step, model config) as main builds them, over `devices`; 'auto' settings
  resolved as on a TPU (bf16 compute, the chunked vocabulary loss)."""
  with config.unlocked():
    if config.model.dtype == "auto":
      config.model.dtype = "bfloat16"
    if config.task == "pretrain" and config.model.vocab_loss == "auto":
      config.model.vocab_loss = "chunked"
  if config.task == "finetune":
    tokenizer = finetune.resolve_init(config)[2]
  else:
    tokenizer = pretrain.resolve_shape(config)
  mesh, rules = loop.make_mesh(config, devices)
  processes = len({d.process_index for d in devices})
  validation.validate(config, sharding.data_parallel_size(mesh, rules), processes,
                      shape_known=True)
  model_cfg = loop.resolve_model_config(config, tokenizer.get_vocab_size())
  build = finetune.build_step if config.task == "finetune" else pretrain.build_step
  return build(config, model_cfg, mesh, rules), model_cfg


def variants(config, sweeps: list[str]):
  """(name, config) pairs: the config as given, then one per value of each --sweep."""
  out = [("as configured", config)]
  for sweep in sweeps:
    key, sep, values = sweep.partition("=")
    if not sep or not values:
      raise cli.UserError(f"--sweep: expected KEY=V1,V2,..., got {sweep!r}")
    *parents, leaf = key.split(".")
    for value in values.split(","):
      c = config.copy_and_resolve_references()
      node = c
      for p in parents:
        node = node.get(p)
        if node is None:
          break
      if node is None or leaf not in node:
        raise cli.UserError(f"--sweep: config has no key {key!r}")
      with c.unlocked():
        old = node[leaf]
        node[leaf] = (value if isinstance(old, str) else value.lower() in ("1", "true")
                      if isinstance(old, bool) else type(old)(value))
      out.append((f"{key}={value}", c))
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  chip, topology, devices = chips_lib.topology_devices(_TOPOLOGY.value, _NUM_SLICES.value)
  rows, failed = [], None
  for name, config in variants(_CONFIG.value, _SWEEP.value):
    step, model_cfg = build_step(config, devices)
    if _FIT.value:
      try:
        report = report_lib.fit(step, chip, model_cfg, len(devices))
      except report_lib.DoesNotFit as e:
        report = e.args[0]
    else:
      report = report_lib.analyse(step, step.setting, chip, model_cfg, len(devices),
                                  f"{_HLO.value}.{len(rows)}.txt" if _HLO.value else "")
    rows.append((name, report))
    if not report["fits"] and failed is None:
      failed = (name, report)
    # Each variant is minutes of compiling: its row is logged (and the JSON written) at once.
    logging.warning("%s", report_lib.table(rows[-1:]).splitlines()[-1])
    result = _result(topology, chip, devices, rows)
    if _JSON.value and _JSON.value != "-":
      with open(_JSON.value, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
  print(f"{topology} x{_NUM_SLICES.value}: {len(devices)} chips of {chip.name} "
        f"({report_lib.gib(chip.hbm_bytes)} GiB HBM, {chip.peak_bf16_flops / 1e12:.0f} TFLOP/s "
        f"bf16, {chip.hbm_bytes_per_s / 1e9:.0f} GB/s), libtpu {result['libtpu']}")
  print(report_lib.table(rows), flush=True)
  if _JSON.value == "-":
    print(json.dumps(result, indent=1))
  if failed is not None:
    name, r = failed
    print(f"config.batch_size: does not fit ({name}): "
          f"{report_lib.gib(r['bytes_per_chip']['peak'])} GiB per chip with "
          f"{r['setting']['describe']}, more than the {report_lib.gib(r['hbm_bytes'])} GiB "
          f"of a {chip.name}: add microbatches (--fit), set model.remat, shard the state "
          f"(mesh.fsdp) or use more chips", file=sys.stderr, flush=True)
    sys.exit(1)


def _result(topology, chip, devices, rows) -> dict:
  return {"topology": topology, "num_slices": _NUM_SLICES.value, "chips": len(devices),
          "hosts": len({d.process_index for d in devices}), "chip": chip.name,
          "device_kind": devices[0].device_kind, "jax": jax.__version__,
          "libtpu": _libtpu_version(), "task": _CONFIG.value.task,
          "reports": [{"variant": name, **r} for name, r in rows]}


def _libtpu_version() -> str:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  try:
    return metadata.version("libtpu")
  except metadata.PackageNotFoundError:
    return "unknown"


if __name__ == "__main__":
  cli.run(main)
