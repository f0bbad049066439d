"""Shared by the entry points: flag parsing that turns every user error into one line + exit 2."""
from __future__ import annotations

import os
import sys

from absl import flags

USAGE_ERRORS = (flags.Error, KeyError, AttributeError, TypeError, ValueError, OSError,
                ImportError, SyntaxError)


def fail(message: str, code: int = 2):
  """Prints `<program>: error: <first line of message>` on stderr and exits with `code`."""
  program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'decoders'
  line = ' '.join(str(message).strip().split('\n')[:1]) or 'unknown error'
  print(f'{program}: error: {line}', file=sys.stderr)
  sys.exit(code)


def describe(error: BaseException) -> str:
  """A one-line description of a user error raised while parsing flags or loading a config."""
  text = str(error).strip().strip('"').split('\n')[0]
  if isinstance(error, KeyError):
    return f'unknown config key {text}' if text else 'unknown config key'
  if isinstance(error, flags.Error):
    return text
  return f'{type(error).__name__}: {text}' if not isinstance(error, ValueError) else text


def flags_parser(argv):
  """An absl `flags_parser` for app.run: one line and exit 2 instead of a traceback or usage."""
  try:
    return flags.FLAGS(argv)
  except USAGE_ERRORS as e:  # ml_collections raises KeyError/AttributeError for typo'd keys
    fail(describe(e))


def config_from_flag(value):
  """Returns the parsed --config, or fails with one line (ml_collections defers load errors)."""
  if value is None:
    fail('--config=configs/<name>.py is required')
  try:
    value.keys()  # first access raises the deferred error of a missing or broken config file
  except USAGE_ERRORS as e:
    fail(' '.join(str(e).split()))
  return value
