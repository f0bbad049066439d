"""decoders/stop_signals.py: the first SIGTERM / SIGINT is recorded, a second Ctrl-C interrupts.

The end-to-end behaviour (train.py saving the step it reached, a sweep stopping) is in
tests/test_reliability.py, with real subprocesses.
"""
import signal

import pytest

from decoders import stop_signals


def test_signals_are_recorded_forwarded_and_the_handlers_restored():
  before = {s: signal.getsignal(s) for s in stop_signals.SIGNALS}
  seen = []
  stop = stop_signals.StopSignals(on_signal=seen.append)
  try:
    signal.raise_signal(signal.SIGTERM)
    signal.raise_signal(signal.SIGTERM)  # a repeated SIGTERM is recorded, not fatal
    assert stop.received == seen == [signal.SIGTERM, signal.SIGTERM]
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C after a stop request interrupts at once
      signal.raise_signal(signal.SIGINT)
    assert stop.received == [signal.SIGTERM, signal.SIGTERM]
  finally:
    stop.restore()
  assert {s: signal.getsignal(s) for s in stop_signals.SIGNALS} == before


def test_a_first_ctrl_c_is_a_stop_request_not_an_interrupt():
  stop = stop_signals.StopSignals()
  try:
    signal.raise_signal(signal.SIGINT)
    assert stop.received == [signal.SIGINT]
  finally:
    stop.restore()


def test_disabled_leaves_the_handlers_alone():
  before = {s: signal.getsignal(s) for s in stop_signals.SIGNALS}
  stop = stop_signals.StopSignals(enabled=False)
  assert {s: signal.getsignal(s) for s in stop_signals.SIGNALS} == before
  stop.restore()
  assert stop.received == []
