"""TPU chips and slice names: what tools/compile.py compiles for and compares a step against.

Per chip: HBM capacity, dense bf16 peak FLOP/s and HBM bandwidth, from Google Cloud's system
architecture pages (retrieved 2026-12-06):
  v4:  https://cloud.google.com/tpu/docs/v4   (32 GiB, 275 TFLOP/s, 1,200 GB/s)
  v5e: https://cloud.google.com/tpu/docs/v5e  (16 GiB, 197 TFLOP/s, 819 GB/s)
  v5p: https://cloud.google.com/tpu/docs/v5p  (95 GiB, 459 TFLOP/s, 2,765 GB/s)
  v6e: https://cloud.google.com/tpu/docs/v6e  (32 GiB, 918 TFLOP/s, 1,640 GB/s)
The peak FLOP/s are trainers/flops.PEAK_FLOPS's (the MFU a run logs), looked up by device kind.

Slice names: 'v5e:2x4' is a topology as libtpu names it (chips per dimension); 'v5e-8' is the
Cloud accelerator type, which counts chips for v5e/v6e and TensorCores (2 per chip) for v4/v5p.
v4 and v5p run their two cores as one device ('megacore'), as jax shows them on a TPU VM.
"""

import dataclasses
import importlib.util

from retromae_jax.trainers import flops


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  device_kind: str  # as jax reports it
  hbm_bytes: int
  hbm_bytes_per_s: float
  dims: int  # of the torus: 2 (v5e, v6e) or 3 (v4, v5p)
  cores_per_chip: int  # what the accelerator type's number counts per chip
  chip_config: str  # libtpu's chip_config_name

  @property
  def peak_bf16_flops(self) -> float:
    return flops.PEAK_FLOPS[self.device_kind]


CHIPS = {
    "v4": Chip("v4", "TPU v4", 32 * 2**30, 1200e9, 3, 2, "megacore"),
    "v5e": Chip("v5e", "TPU v5 lite", 16 * 2**30, 819e9, 2, 1, "default"),
    "v5p": Chip("v5p", "TPU v5", 95 * 2**30, 2765e9, 3, 2, "megacore"),
    "v6e": Chip("v6e", "TPU v6 lite", 32 * 2**30, 1640e9, 2, 1, "default"),
}

# Chips in a slice -> its shape (the standard slice shapes of the Cloud docs).
SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
             128: (8, 16), 256: (16, 16)}
SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
             128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8)}


def parse_topology(name: str) -> tuple[Chip, str]:
  """(chip, libtpu topology name) of 'v5e:2x4' or 'v5e-8' (also 'v4-32', 'v5p-8', 'v6e-16').
  Raises ValueError('--topology: ...') on anything else."""
  expected = (f"expected CHIP:AxB[xC] or CHIP-N with CHIP one of {', '.join(CHIPS)} "
              f"(e.g. v5e:2x4, v5e-8, v4-32)")
  chip_name, sep, rest = name.partition(":") if ":" in name else name.partition("-")
  chip = CHIPS.get(chip_name)
  if chip is None or not sep or not rest:
    raise ValueError(f"--topology: {expected}, got {name!r}")
  if ":" in name:
    dims = rest.split("x")
    if len(dims) != chip.dims or not all(d.isdigit() and int(d) > 0 for d in dims):
      raise ValueError(f"--topology: {chip.name} takes {chip.dims} dimensions "
                       f"({'x'.join(['N'] * chip.dims)}), got {name!r}")
    return chip, name
  if not rest.isdigit() or int(rest) % chip.cores_per_chip:
    raise ValueError(f"--topology: {expected}, got {name!r}")
  chips = int(rest) // chip.cores_per_chip
  shape = (SHAPES_2D if chip.dims == 2 else SHAPES_3D).get(chips)
  if shape is None:
    raise ValueError(f"--topology: no standard {chip.name} slice of {chips} chips; name its "
                     f"shape instead (e.g. {chip.name}:{'x'.join(['2'] * chip.dims)})")
  return chip, f"{chip.name}:{'x'.join(map(str, shape))}"


# Chips per host in libtpu's default layout (x, y, z); a smaller slice names its own bounds.
HOST_BOUNDS = (2, 2, 1)


def topology_devices(name: str, num_slices: int):
  """(chip, libtpu topology name, devices) of a TPU slice, from libtpu's topology description
  (no TPU needed). Raises ValueError('--topology: ...') where libtpu is not installed."""
  chip, topology = parse_topology(name)
  if importlib.util.find_spec("libtpu") is None:
    raise ValueError("--topology: the TPU compiler (libtpu) is not installed: "
                     "pip install -r requirements-tpu.txt")
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  extra = {}
  shape = [int(d) for d in topology.split(":")[1].split("x")] + [1]
  if any(d < h for d, h in zip(shape, HOST_BOUNDS)):  # a slice smaller than one host (v5e-1)
    extra["chips_per_host_bounds"] = tuple(min(d, h) for d, h in zip(shape, HOST_BOUNDS))
  try:
    description = topologies.get_topology_desc(topology_name=topology, platform="tpu",
                                               chip_config_name=chip.chip_config,
                                               num_slices=num_slices, **extra)
  except jax.errors.JaxRuntimeError as e:  # libtpu's own refusal: its first line says why
    raise ValueError(f"--topology: libtpu cannot describe {topology} "
                     f"({str(e).splitlines()[0]})") from None
  return chip, topology, list(description.devices)
