"""A workdir belongs to one run: a lock file held for the run's life.

<workdir>/run.lock holds the holder's host, pid and start time, and is locked with fcntl (POSIX
record locks: the kernel releases them when the process ends however it ends, SIGKILL
included, and NFS carries them between hosts). A second run on the workdir refuses at once,
naming the holder; a lock file left by a run that died without removing it (its lock is gone
with it) is reported, with its host and pid, and taken over.

Multi-process runs take one lock: process 0 takes it, the others wait for its answer and stop
with it when it fails.
"""

import contextlib
import datetime
import fcntl
import json
import os
import socket

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from retromae_jax.interop import workdir as workdir_layout

LOCK_FILE = workdir_layout.LOCK


class Busy(ValueError):
  """Another live run holds the workdir."""


def _describe(holder: dict) -> str:
  return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started "
          f"{holder.get('started', '?')}")


def _read(fd: int) -> dict:
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 4096).decode("utf-8", "replace")
  try:
    return json.loads(text) if text.strip() else {}
  except ValueError:
    return {"host": "?", "pid": f"? (unreadable lock file: {text[:40]!r})"}


def _take(path: str) -> int:
  """Locks `path`, writes our identity into it, returns its descriptor; raises Busy."""
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = _read(fd)
      os.close(fd)
      raise Busy(f"{os.path.dirname(path)}: in use by another run ({_describe(holder)}; lock "
                 f"{path}); wait for it to end, or use another --workdir") from None
    # A run that ended between our open and our lock removed the file: lock the new one.
    try:
      same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
  stale = _read(fd)
  if stale:
    logging.warning("%s: stale lock of a run that ended without releasing it (%s); taken over",
                    path, _describe(stale))
  me = {"host": socket.gethostname(), "pid": os.getpid(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  os.ftruncate(fd, 0)
  os.lseek(fd, 0, os.SEEK_SET)
  os.write(fd, json.dumps(me).encode("utf-8"))
  os.fsync(fd)
  return fd


_held: list[tuple[str, int]] = []  # (path, fd) of the locks this process holds


def release_all() -> None:
  """Removes and unlocks the locks this process holds (also on the os._exit path of main.py)."""
  while _held:
    path, fd = _held.pop()
    with contextlib.suppress(OSError):
      os.remove(path)  # removed while still locked: no one takes a file that is going away
    os.close(fd)


@contextlib.contextmanager
def hold(workdir: str):
  """Holds <workdir>/run.lock for the block (process 0 of a multi-process run; every process
  fails together when it cannot)."""
  error = None
  if jax.process_index() == 0:
    try:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, LOCK_FILE)
      _held.append((path, _take(path)))
    except (Busy, OSError) as e:
      error = e
  if jax.process_count() > 1:
    failed = bool(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if failed and error is None:
      error = Busy(f"{workdir}: process 0 could not take the workdir's lock (its log says why)")
  if isinstance(error, OSError):
    raise ValueError(f"{workdir}: cannot take the workdir's lock ({type(error).__name__}: "
                     f"{error.strerror or error})") from None
  if error is not None:
    raise error
  try:
    yield
  finally:
    release_all()
