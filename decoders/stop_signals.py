"""SIGTERM and Ctrl-C as a request to stop cleanly, shared by the training loop and the sweep.

The first SIGTERM or SIGINT is recorded (the caller finishes what it is doing, saves, and stops);
after it, more SIGTERMs are recorded too and otherwise ignored (a scheduler and a sweep may both
send one), and a second Ctrl-C raises KeyboardInterrupt at once.
"""
from __future__ import annotations

import signal
import threading
from typing import Callable

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
  """Catches SIGNALS from construction until `restore()`; `received` lists their numbers.

  Args:
    enabled: False leaves the default handlers alone (as does a thread other than the main one,
      where Python cannot install handlers).
    on_signal: called with each recorded signal's number, in the main thread.
  """

  def __init__(self, *, enabled: bool = True, on_signal: Callable[[int], None] | None = None):
    self.received: list[int] = []
    self._on_signal = on_signal
    self._previous = {}
    if enabled and threading.current_thread() is threading.main_thread():
      # getsignal gives None for a handler not set from Python: restore the default then.
      self._previous = {signum: signal.getsignal(signum) or signal.SIG_DFL for signum in SIGNALS}
      for signum in SIGNALS:
        signal.signal(signum, self._handle)

  def _handle(self, signum, _frame):
    if self.received and signum == signal.SIGINT:
      raise KeyboardInterrupt  # the second Ctrl-C: stop now, whatever is running
    self.received.append(signum)
    if self._on_signal is not None:
      self._on_signal(signum)

  def restore(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
