"""The device mesh and the one table that maps the model's logical axes onto it.

Axes of the mesh: `data` (pure data parallelism), `fsdp` (data parallelism whose replicas also
split parameters and optimizer state, ZeRO-3 style), `tensor` (heads, MLP and vocabulary split
across devices). The model only names axes by meaning (bert.py); this table decides where they
live. A mesh axis can serve one array dimension only: when a rule's mesh axis is already taken
(e.g. `embed` -> fsdp on an activation whose batch already uses fsdp) that dimension stays
unsharded, which is what activations want.
"""

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# name -> rules. Select with config.sharding_rules.
LOGICAL_AXIS_RULES = {
    "fsdp_tensor": (
        ("batch", ("data", "fsdp")),
        ("length", None),
        ("embed", "fsdp"),
        ("vocab", "tensor"),
        ("heads", "tensor"),
        ("mlp", "tensor"),
        ("kv", None),
        ("hidden", None),
        ("pos", None),
        ("type", None),
        ("layers", None),
    ),
}


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
  """Builds the (data, fsdp, tensor) mesh; one size may be -1 (= the remaining devices).

  devices: the devices to lay it over (default: all of this run's; tools/compile.py passes a TPU
  topology's devices, with no TPU attached)."""
  sizes = [mesh_config.data, mesh_config.fsdp, mesh_config.tensor]
  n = len(devices) if devices is not None else jax.device_count()
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh: at most one of data/fsdp/tensor may be -1, got {sizes}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if n % known:
      raise ValueError(f"config.mesh: {sizes} does not divide the {n} devices")
    sizes[sizes.index(-1)] = n // known
  if int(np.prod(sizes)) != n:
    raise ValueError(f"config.mesh: data*fsdp*tensor = {int(np.prod(sizes))} but there are "
                     f"{n} devices (use -1 for one axis to take the rest)")
  # jax.make_mesh orders devices so that the innermost (last) axis gets the fastest links.
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def batch_sharding(mesh, rules) -> NamedSharding:
  """Where the leading (example) dimension of a batch lives: the rules table's `batch` entry."""
  return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch",), rules))


def data_parallel_size(mesh, rules) -> int:
  """How many ways a global batch is split (the mesh axes that `batch` maps to)."""
  axes = batch_sharding(mesh, rules).spec[0]
  axes = (axes,) if isinstance(axes, str) else (axes or ())
  return int(np.prod([mesh.shape[a] for a in axes]))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_divisible(params, shardings, logical_specs) -> None:
  """Raises a one-line error naming the first parameter dimension that its mesh axes do not
  divide (jax.Array shardings must split every dimension evenly)."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, leaf), sharding, logical in zip(
      flat, jax.tree.leaves(shardings), jax.tree.leaves(
          logical_specs, is_leaf=lambda x: isinstance(x, P))):
    for dim, (size, axes, name) in enumerate(zip(leaf.shape, sharding.spec, logical)):
      axes = (axes,) if isinstance(axes, str) else (axes or ())
      parts = int(np.prod([sharding.mesh.shape[a] for a in axes]))
      if size % parts:
        hint = ("; set config.model.vocab_multiple to a multiple of it" if name == "vocab"
                else "; pick model sizes it divides or another mesh")
        raise ValueError(
            f"config.mesh: {jax.tree_util.keystr(path)} dimension {dim} ({name}, {size}) is "
            f"not divisible by mesh axes {'x'.join(axes)} = {parts}{hint}")
