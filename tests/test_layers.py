"""The package's structure as a checked contract.

- The layers (.importlinter, README "Layout"): a module imports only from its own layer or
  below; an arrow that runs back up fails here (import-linter, run as a program).
- The host never loads Flax, optax, Orbax or the models, nor starts a JAX backend: the input
  pipeline and the host half of every objective part (objectives/<part>/host.py) run in
  tf.data's threads and in preparation workers that must not start an accelerator runtime.
  Each is imported in a fresh interpreter. (TensorFlow itself imports the `jax` package when it
  is installed, so `jax` in sys.modules proves nothing; an initialised backend would.)
"""

import glob
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_import_layers_hold():
  lint = os.path.join(os.path.dirname(sys.executable), "lint-imports")
  result = subprocess.run([lint if os.path.exists(lint) else "lint-imports", "--no-cache"],
                          cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
  assert "BROKEN" not in result.stdout


def _module(path: str) -> str:
  return os.path.relpath(path, REPO)[:-len(".py")].replace(os.sep, ".")


HOST_MODULES = sorted(
    [_module(p) for p in glob.glob(os.path.join(REPO, "retromae_jax", "objectives", "*", "host.py"))]
    + [_module(p) for p in glob.glob(os.path.join(REPO, "retromae_jax", "data", "**", "*.py"),
                                     recursive=True)]
    + ["retromae_jax.objectives.registry", "retromae_jax.objectives.contract",
       "retromae_jax.objectives.settings", "retromae_jax.objectives.example_random",
       "retromae_jax.objectives.flop_formulas"])


LOADED = ("import sys\n"
          "def loaded():\n"
          "  names = [m for m in ('flax', 'optax', 'orbax') if m in sys.modules]\n"
          "  names += [m for m in sys.modules if m.startswith('retromae_jax.models')]\n"
          "  bridge = sys.modules.get('jax._src.xla_bridge')\n"
          "  if bridge is not None and bridge._backends:\n"
          "    names.append('a JAX backend')\n"
          "  return sorted(names)\n")


def test_host_modules_never_load_flax_nor_start_jax():
  assert len(HOST_MODULES) > 20  # every part's host.py and every input module
  code = (LOADED + "import importlib\n"
          f"for name in {HOST_MODULES!r}:\n"
          "  importlib.import_module(name)\n"
          "  if loaded():\n"
          "    print(name, 'loaded', loaded()); sys.exit(1)\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert result.returncode == 0, result.stdout + result.stderr[-2000:]


@pytest.mark.parametrize("code", ["import retromae_jax.objectives.enhanced.model",
                                  "import jax; jax.devices()"])
def test_the_check_can_fail(code):
  """What the check above looks for is seen: a model module, a started backend."""
  code = LOADED + code + "\nsys.exit(1 if loaded() else 0)"
  assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 1
