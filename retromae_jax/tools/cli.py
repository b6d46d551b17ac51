"""How every program of the package ends: a user's error in one line, a bug with its traceback.

  cli.run(main)                       instead of absl's app.run(main), in each tool
  cli.run(main, ours=(SaveFailed,))   more exception types that are the user's news, not bugs

A user error (a ValueError with our one-line message naming the file or flag and what was
expected; a missing or unreadable path) prints that line on stderr and exits 1, with no
traceback. Anything else is a bug: it keeps its traceback (absl prints it).
"""

import os
import re
import sys

from absl import app
from absl import logging

# Missing paths are the user's: they print as '<path>: <what the system says>'.
_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


class UserError(ValueError):
  """An error whose message is the whole story for the user (what, where, what was expected)."""


def user_message(error: BaseException, ours: tuple = ()) -> str | None:
  """The one-line message of a user's error, else None (a bug). Also finds our ValueError when
  tf.data ran the code that raised it (it reaches us wrapped in a TF error, in its traceback)."""
  if isinstance(error, _PATH_ERRORS) and error.filename:
    return f"{error.filename}: {error.strerror or error}"
  if isinstance(error, (ValueError, *ours)):
    lines = str(error).strip().splitlines()
    return " ".join(line.strip() for line in lines) or type(error).__name__
  if type(error).__module__.startswith("tensorflow"):
    found = re.findall(r"^ValueError: (.+)$", str(error), flags=re.MULTILINE)
    if found:
      return found[-1]
  return None


def exit_with(message: str, before_exit=None) -> None:
  """Prints `message` as the last line of stderr and exits 1 at once."""
  logging.flush()
  sys.stdout.flush()
  print(message, file=sys.stderr, flush=True)
  if before_exit is not None:
    before_exit()
  # Not sys.exit: Orbax's, tf.data's or a worker pool's threads can wait forever on a broken
  # disk, or print tracebacks while the interpreter shuts down; the last line must stay ours.
  os._exit(1)


def one_line_errors(main, ours: tuple = (), before_exit=None):
  """`main` whose user errors end the program in one line (module docstring)."""

  def wrapped(argv):
    try:
      return main(argv)
    except Exception as e:  # pylint: disable=broad-except
      message = user_message(e, ours)
      if message is None:
        raise  # a bug: its traceback is the useful part
      exit_with(message, before_exit)

  return wrapped


def run(main, ours: tuple = (), before_exit=None) -> None:
  """absl's app.run(main) with one-line user errors."""
  app.run(one_line_errors(main, ours, before_exit))
