"""decoders.metrics_io: metrics.jsonl and TensorBoard events hold what was written; no torch."""
import json
import os
import struct
import subprocess
import sys

from tensorboardX.proto import event_pb2

from decoders import metrics_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_events(workdir, session_starts=None):
  """(step, tag, value) of every scalar in the TFRecord event files of workdir.

  session_starts: a list to which the step of each SessionLog START event is appended (TensorBoard
  hides earlier files' events from that step on).
  """
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
      if session_starts is not None and event.HasField('session_log'):
        session_starts.append(event.step)
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


def test_resumed_writer_drops_what_the_killed_run_logged_after_its_checkpoint(tmp_path):
  """A run killed at step 7 after a checkpoint at 4 resumes from 4 and logs 5-7 again."""
  workdir = str(tmp_path)
  killed = metrics_io.MetricWriter(workdir)
  for step in range(8):
    killed.write(step, {'train/loss': 1.0 / (step + 1)})
    if step == 4:
      killed.flush()  # the checkpoint
  # Killed: never closed. TensorBoard holds every step up to the checkpoint.
  assert [step for step, _, _ in read_events(workdir)][:5] == list(range(5))
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 8, "train/lo')  # a line cut short by the kill
  resumed = metrics_io.MetricWriter(workdir, resume_step=4)
  for step in range(5, 10):
    resumed.write(step, {'train/loss': 0.0})
  resumed.close()
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert [row['step'] for row in rows] == list(range(10))
  assert [row['train/loss'] for row in rows[4:6]] == [0.2, 0.0]
  starts = []
  read_events(workdir, starts)
  assert 5 in starts  # TensorBoard hides the killed run's events from step 5 on
  # A run restarted from step 0 (no checkpoint) logs everything again, its untrained eval too.
  metrics_io.MetricWriter(workdir, resume_step=0).close()
  assert open(tmp_path / 'metrics.jsonl').read() == ''


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


def test_progress_bar_shows_the_numbers_of_the_step_it_reached(capsys):
  progress = metrics_io.Progress(0, 10)
  progress._bar.mininterval = 0  # redraw at every update, as after a slow log interval
  progress.update(5, {'train/loss': 0.125, 'train/psnr': 18.5, 'train/images_per_s': 900.0})
  drawn = capsys.readouterr().err.split('\r')[-1]
  assert '5/10' in drawn and 'loss=0.125' in drawn and 'psnr=18.50' in drawn, drawn
  progress.close()
