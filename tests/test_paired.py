"""benchmarks/paired.py: the --set argument (the timing itself is a benchmark, not a test)."""
import pytest

from benchmarks import paired
from decoders import polyphase


def test_parse_setting_reads_module_attribute_and_two_literals():
  module, attr, values = paired.parse_setting('decoders.polyphase.MATMUL_FIRST_MAX_RATIO=0,1')
  assert module is polyphase and attr == 'MATMUL_FIRST_MAX_RATIO' and values == (0, 1)
  assert paired.parse_setting('decoders.training.AUTO_BATCH_SPLITS=4, 2')[2] == (4, 2)


@pytest.mark.parametrize('text,match', [
    ('MATMUL_FIRST_MAX_RATIO=0,1', 'must look like'),
    ('decoders.polyphase.MATMUL_FIRST_MAX_RATIO', 'must look like'),
    ('decoders.polyphase.MATMUL_FIRST_MAX_RATIO=0', 'two comma-separated'),
    ('decoders.polyphase.MATMUL_FIRST_MAX_RATIO=a,b', 'two comma-separated'),
    ('decoders.polyphase.NO_SUCH_THING=0,1', 'no attribute'),
    ('decoders.no_such_module.X=0,1', 'cannot import'),
])
def test_parse_setting_errors_are_one_line(text, match):
  with pytest.raises(SystemExit, match=match) as info:
    paired.parse_setting(text)
  assert '\n' not in str(info.value)
