"""decoders.metrics_io: metrics.jsonl and TensorBoard events hold what was written; no torch."""
import json
import os
import struct
import subprocess
import sys

from tensorboardX.proto import event_pb2

from decoders import metrics_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_events(workdir):
  """(step, tag, value) of every scalar in the TFRecord event files of workdir."""
  scalars = []
  for name in sorted(os.listdir(workdir)):
    if not name.startswith('events.out.tfevents'):
      continue
    with open(os.path.join(workdir, name), 'rb') as f:
      data = f.read()
    offset = 0
    while offset < len(data):  # record: u64 length, u32 crc, payload, u32 crc
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      scalars += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
  return scalars


def test_metric_writer_writes_jsonl_and_tensorboard_scalars(tmp_path):
  writer = metrics_io.MetricWriter(str(tmp_path))
  writer.write(10, {'train/loss': 0.25, 'train/psnr': 18, 'flag': True, 'name': 'x'})
  writer.write(20, {'train/loss': float('nan'), 'train/psnr': 19.5})
  writer.close()
  lines = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert lines[0] == {'step': 10, 'train/loss': 0.25, 'train/psnr': 18.0}
  assert lines[1]['step'] == 20 and lines[1]['train/psnr'] == 19.5
  assert lines[1]['train/loss'] != lines[1]['train/loss']  # NaN kept in the log
  # TensorBoard gets the finite scalars only.
  assert read_events(str(tmp_path)) == [(10, 'train/loss', 0.25), (10, 'train/psnr', 18.0),
                                        (20, 'train/psnr', 19.5)]


def test_metric_writer_does_not_import_torch(tmp_path):
  """tensorboardX would import PyTorch (seconds at every run's start); torch stays importable."""
  code = ('import sys\n'
          'from decoders import metrics_io\n'
          f'w = metrics_io.MetricWriter({str(tmp_path)!r})\n'
          'w.write(1, {"a": 1.0}); w.close()\n'
          'assert "torch" not in sys.modules, "the writer imported torch"\n'
          'import torch\n'
          'print(torch.ones(2).sum().item())\n')
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == '2.0'
  assert read_events(str(tmp_path)) == [(1, 'a', 1.0)]


def test_metric_writer_in_a_process_that_holds_torch(tmp_path):
  import torch  # noqa: F401  (already imported: the writer must not touch sys.modules['torch'])
  writer = metrics_io.MetricWriter(str(tmp_path))
  writer.write(3, {'b': 2.0})
  writer.close()
  assert sys.modules['torch'] is torch
  assert read_events(str(tmp_path)) == [(3, 'b', 2.0)]


def test_write_json_is_atomic(tmp_path):
  path = str(tmp_path / 'r.json')
  metrics_io.write_json(path, {'b': 1, 'a': [1, 2]})
  assert json.load(open(path)) == {'a': [1, 2], 'b': 1}
  assert os.listdir(tmp_path) == ['r.json']
