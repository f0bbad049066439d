"""Shared by the entry points: flag parsing that turns every user error into one line + exit 2."""
from __future__ import annotations

import ast
import os
import re
import sys
import traceback

from absl import flags

USAGE_ERRORS = (flags.Error, KeyError, AttributeError, TypeError, ValueError, OSError,
                ImportError, SyntaxError)


def fail(message: str, code: int = 2):
  """Prints `<program>: error: <first line of message>` on stderr and exits with `code`."""
  program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'decoders'
  line = ' '.join(str(message).strip().split('\n')[:1]) or 'unknown error'
  print(f'{program}: error: {line}', file=sys.stderr)
  sys.exit(code)


def _unquoted(text: str) -> str:
  """ml_collections wraps a key error's message in repr() (escaped quotes, a literal '\\n')."""
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text
  return value if isinstance(value, str) else text


def describe(error: BaseException) -> str:
  """A one-line description of a user error raised while parsing flags or loading a config.

  A typo'd `--config.model.upsampel=...` reaches here as ml_collections' AttributeError or
  KeyError, whose text is `'upsampel'` plus a `Did you mean "upsample"` line: it becomes
  `unknown config key 'upsampel'; did you mean "upsample"?`.
  """
  text = _unquoted(str(error).strip())
  lines = [line.strip() for line in text.split('\n') if line.strip()]
  first = lines[0].strip('"') if lines else ''
  hint = next((line for line in lines[1:] if line.startswith('Did you mean')), '')
  if isinstance(error, (KeyError, AttributeError)) and re.fullmatch(r"'[^']*'", first):
    suggestion = re.match(r'Did you mean (".*?")', hint)
    return (f'unknown config key {first}'
            + (f'; did you mean {suggestion.group(1)}?' if suggestion else ''))
  if isinstance(error, KeyError):
    return f'unknown config key {first}' if first else 'unknown config key'
  if isinstance(error, flags.Error):
    if 'Traceback (most recent call last)' in text:  # a config file that raised: its last line
      return f"{first.rstrip(':')}: {lines[-1]}"
    return first
  return f'{type(error).__name__}: {first}' if not isinstance(error, ValueError) else first


def flags_parser(argv):
  """An absl `flags_parser` for app.run: one line and exit 2 instead of a traceback or usage."""
  try:
    return flags.FLAGS(argv)
  except USAGE_ERRORS as e:  # ml_collections raises KeyError/AttributeError for typo'd keys
    fail(describe(e))
  except Exception as e:  # pylint: disable=broad-except  # a config file's own code raised
    where = traceback.extract_tb(e.__traceback__)[-1]
    fail(f'{type(e).__name__}: {e} ({os.path.basename(where.filename)}, line {where.lineno})')


def config_from_flag(value):
  """Returns the parsed --config, or fails with one line (ml_collections defers load errors)."""
  if value is None:
    fail('--config=configs/<name>.py is required')
  try:
    value.keys()  # first access raises the deferred error of a missing or broken config file
  except USAGE_ERRORS as e:
    missing = re.search(r'Attempted \[Relative path\]: (\S+) \[Errno 2\]', ' '.join(str(e).split()))
    fail(f'--config file not found: {missing.group(1)}' if missing else ' '.join(str(e).split()))
  return value


def out_of_memory(error: BaseException) -> str | None:
  """One line for XLA's RESOURCE_EXHAUSTED (an allocation failed), else None.

  A too-large batch is a user error like any other: it deserves a hint, not a traceback.
  """
  text = str(error)
  if 'RESOURCE_EXHAUSTED' not in text:
    return None
  first = next((line.strip() for line in text.splitlines() if 'RESOURCE_EXHAUSTED' in line), '')
  return (f'out of memory ({first}); reduce --config.batch_size or --config.eval.batch_size, '
          'or use a device with more memory')
