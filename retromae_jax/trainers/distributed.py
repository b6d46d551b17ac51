"""Multi-process start-up on JAX's own runtime (jax.distributed): no home-made cluster layer.

- Explicit (CPU, GPU clusters, launch/local_multiprocess.sh, launch/slurm_gpu.sh): the
  environment names the coordinator, the process count and this process's id.
- TPU pods: `jax.distributed.initialize()` with no arguments discovers the slice's hosts.
- Otherwise: one process, nothing to do.
Must run before anything touches a JAX device.
"""

import os

from absl import logging
import jax

_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _on_multihost_tpu() -> bool:
  # Set by the TPU VM runtime; a single-host slice lists one worker.
  return len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1


def initialize():
  given = [name for name in _ENV if os.environ.get(name)]
  if given and len(given) != len(_ENV):
    raise ValueError(f"multi-process start-up: {sorted(set(_ENV) - set(given))} missing; set all "
                     f"of {list(_ENV)} or none")
  if given:
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))
  elif _on_multihost_tpu():
    jax.distributed.initialize()
  else:
    return
  logging.info("Process %d of %d; %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
