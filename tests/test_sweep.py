"""decoders.sweep: every point of every sweep fits the locked config; a tiny sweep runs and resumes."""
import glob
import json
import os
import subprocess
import sys
import types

import pytest

from decoders import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get('DECODERS_DATA_DIR') or os.path.join(ROOT, '..', 'shared', 'data')
SWEEP_FILES = sorted(glob.glob(os.path.join(ROOT, 'configs', 'sweeps', '*.py')))


def presets(path):
  namespace = {}
  exec(open(path).read(), namespace)  # only to list its presets
  return sorted(namespace.get('PRESETS', {'': None}))


@pytest.mark.parametrize('spec', [f'{path}:{preset}' if preset else path
                                  for path in SWEEP_FILES if not path.endswith('__init__.py')
                                  for preset in presets(path)])
def test_every_point_applies_to_the_locked_config(spec):
  points = sweep.load_sweep(spec)  # raises SweepError on a misspelled key
  assert points and len({p['name'] for p in points}) == len(points)


def test_reference_ablation_covers_the_issue():
  points = sweep.load_sweep(os.path.join(ROOT, 'configs/sweeps/ablation.py:full'))
  groups = {p['group'] for p in points}
  assert len(points) == 7 * 2 * 3 and len(groups) == 14  # 7 blocks x 2 datasets x 3 seeds
  assert len(sweep.load_sweep(os.path.join(ROOT, 'configs/sweeps/ablation.py:quick'))) == 42
  assert {'mnist-tconv_k3', 'cifar10-resize_bilinear', 'mnist-last_tconv_k3'} <= groups


def write_sweep(tmp_path, body):
  path = tmp_path / 'tiny.py'
  path.write_text(body)
  return str(path)


def test_misspelled_key_fails(tmp_path):
  path = write_sweep(tmp_path, "def get_sweep():\n  return [{'name': 'a', 'config': "
                               "'configs/mnist.py', 'model.upsampel': 'tconv'}]\n")
  with pytest.raises(sweep.SweepError, match='upsampel'):
    sweep.load_sweep(path)


@pytest.mark.parametrize('key,bad', [('model.upsampel', "'upsampel'; did you mean \"upsample\"?"),
                                     ('modle.upsample', "'modle'; did you mean \"model\"?"),
                                     ('model.upsample_options.tconv.kernel_sise',
                                      "'kernel_sise'; did you mean \"kernel_size\"?")])
def test_misspelled_key_reads_as_train_py_words_it(key, bad, tmp_path):
  path = write_sweep(tmp_path, "def get_sweep():\n  return [{'name': 'a', 'config': "
                               f"'configs/mnist.py', '{key}': 3}}]\n")
  with pytest.raises(sweep.SweepError) as error:
    sweep.load_sweep(path)
  # Not ml_collections' repr of the locked config (escaped quotes, literal \n, every field).
  assert str(error.value) == f'point a: cannot set {key}=3: unknown config key {bad}'


def test_empty_sweep_fails(tmp_path):
  with pytest.raises(sweep.SweepError, match='no points'):
    sweep.load_sweep(write_sweep(tmp_path, 'def get_sweep():\n  return []\n'))


TINY = f'''
def get_sweep():
  common = {{'config': 'configs/mnist.py', 'num_steps': 6, 'batch_size': 16, 'log_every': 3,
            'checkpoint_every': 3, 'eval_every': 0, 'warmup_steps': 0, 'data.val_size': 64,
            'eval.num_val': 64, 'eval.batch_size': 512, 'eval.num_images': 4,
            'model.widths': (4, 8), 'model.latent_dim': 4}}
  return [dict(common, name=f'{{u}}-s{{s}}', group=u, seed=s, **{{'model.upsample': u}})
          for u in ('tconv', 'resize_conv') for s in (0, 1)]
'''


def run_sweep_cli(*args, cwd=ROOT):
  env = dict(os.environ, DECODERS_DATA_DIR=DATA_DIR, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, '-m', 'decoders.sweep', *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=900)


def test_dry_run_prints_one_command_per_point(tmp_path):
  out = run_sweep_cli(f'--sweep={write_sweep(tmp_path, TINY)}', f'--workdir={tmp_path / "s"}',
                      '--dry_run')
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  # From the repository root, where train.py is, with the sweep's absolute workdir.
  assert len(lines) == 4 and all(
      l.startswith(f'cd {ROOT} && python train.py') and 'eval.py' in l for l in lines)
  assert f'--workdir={tmp_path / "s" / "tconv-s0"}' in lines[0]
  assert not (tmp_path / 's').exists()


def test_tiny_sweep_runs_skips_finished_and_aggregates(tmp_path):
  spec, sweep_dir = write_sweep(tmp_path, TINY), tmp_path / 's'
  # Started elsewhere than the repository root, with a relative --workdir: the points' runs land
  # in the sweep directory all the same.
  out = run_sweep_cli(f'--sweep={spec}', '--workdir=s', '--jobs=2', cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  for name in ('tconv-s0', 'tconv-s1', 'resize_conv-s0', 'resize_conv-s1'):
    with open(sweep_dir / name / 'eval.json') as f:
      assert json.load(f)['step'] == 6
    with open(sweep_dir / name / 'sweep_wall.json') as f:
      assert json.load(f)['wall_s'] > 1.0  # two Python processes that import JAX
  table = (sweep_dir / 'results.md').read_text()
  assert table.splitlines()[0].endswith('| train_s | wall_s |')
  assert '| tconv | 2 |' in table and '| resize_conv | 2 |' in table
  again = run_sweep_cli(f'--sweep={spec}', f'--workdir={sweep_dir}')
  assert again.returncode == 0 and '4 already finished, 0 to run' in again.stderr
  out = subprocess.run([sys.executable, '-m', 'decoders.figures', f'--out={tmp_path / "f"}',
                        f'--sweep_dir={sweep_dir}',
                        '--only=ablation_chart,sweep_spectra,sweep_reconstructions'],
                       cwd=ROOT, env=dict(os.environ, DECODERS_DATA_DIR=DATA_DIR),
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  for name in ('ablation_chart', 'sweep_spectra', 'sweep_reconstructions'):
    assert (tmp_path / 'f' / f'{name}.png').stat().st_size > 10_000
  # A point is finished only with its own config and a test-split eval.json.
  point = sweep.load_sweep(spec)[0]
  workdir = str(sweep_dir / point['name'])
  assert sweep.is_finished(point, workdir)
  assert not sweep.is_finished(dict(point, num_steps=9), workdir)  # the sweep file changed
  assert not sweep.is_finished(dict(point, **{'model.latent_dim': 8}), workdir)
  with open(os.path.join(workdir, 'eval.json')) as f:
    record = json.load(f)
  # An eval.json of the val split, as eval.py --split=val wrote it before eval_val.json existed.
  with open(os.path.join(workdir, 'eval.json'), 'w') as f:
    json.dump(dict(record, split='val'), f)
  assert not sweep.is_finished(point, workdir)
  assert sweep._read(workdir)['psnr'] is None  # val numbers never fill the test columns


@pytest.mark.parametrize('args,match', [
    (['--sweep=configs/sweeps/nope.py'], 'not found'),
    (['--sweep=configs/sweeps/ablation.py:huge'], 'unknown preset'),
    (['--sweep=configs/sweeps/ablation.py', '--jobs=0'], 'jobs'),
])
def test_bad_sweep_invocations(args, match, tmp_path):
  out = run_sweep_cli(*args, f'--workdir={tmp_path}')
  assert out.returncode == 2 and 'Traceback' not in out.stderr
  assert len(out.stderr.strip().splitlines()) == 1 and match in out.stderr


def run_main(monkeypatch, capsys, spec, workdir, dry_run=False):
  """sweep.main in this process (its flags exist only under __main__): (exit code, out, err)."""
  monkeypatch.setattr(sweep, 'FLAGS', types.SimpleNamespace(
      sweep=spec, workdir=str(workdir), jobs=1, dry_run=dry_run), raising=False)
  def no_training(point, *_):
    raise AssertionError(f'point {point["name"]} started')
  monkeypatch.setattr(sweep, 'run_point', no_training)
  try:
    sweep.main(['sweep'])
    code = 0
  except SystemExit as e:
    code = e.code
  out = capsys.readouterr()
  return code, out.out, out.err


def test_misspelled_key_fails_the_sweep_in_one_line(monkeypatch, capsys, tmp_path):
  spec = write_sweep(tmp_path, "def get_sweep():\n  return [{'name': 'a', 'config': "
                               "'configs/mnist.py'}, {'name': 'b', 'config': 'configs/mnist.py', "
                               "'model.upsampel': 'tconv'}]\n")
  code, _, err = run_main(monkeypatch, capsys, spec, tmp_path / 's')
  assert code == 2 and len(err.splitlines()) == 1 and not (tmp_path / 's').exists()
  assert err.strip().endswith("error: point b: cannot set model.upsampel='tconv': unknown config "
                              'key \'upsampel\'; did you mean "upsample"?')


@pytest.mark.parametrize('data_dir,match', [
    (None, 'no data folder for mnist.npz: data.dir is empty and $DECODERS_DATA_DIR is not set'),
    ('empty', 'mnist.npz not found: looked for '),
])
def test_missing_data_fails_before_any_point(data_dir, match, monkeypatch, capsys, tmp_path):
  if data_dir is None:
    monkeypatch.delenv('DECODERS_DATA_DIR', raising=False)
    sweep_dir = tmp_path / 's'
  else:  # an earlier sweep's directory: left as it was
    (tmp_path / data_dir).mkdir()
    monkeypatch.setenv('DECODERS_DATA_DIR', str(tmp_path / data_dir))
    sweep_dir = tmp_path / 'earlier'
    (sweep_dir / 'tconv-s0').mkdir(parents=True)
    (sweep_dir / 'results.md').write_text('earlier')
  before = sorted(sweep_dir.rglob('*')) if sweep_dir.exists() else None
  code, _, err = run_main(monkeypatch, capsys, write_sweep(tmp_path, TINY), sweep_dir)
  assert code == 2 and len(err.splitlines()) == 1 and 'Traceback' not in err
  assert f'error: point tconv-s0 and 3 more: {match}' in err and 'DECODERS_DATA_DIR' in err
  assert (sorted(sweep_dir.rglob('*')) if sweep_dir.exists() else None) == before
  if before:
    assert (sweep_dir / 'results.md').read_text() == 'earlier'


def test_finished_points_need_no_data(monkeypatch, capsys, tmp_path):
  monkeypatch.delenv('DECODERS_DATA_DIR', raising=False)
  spec, sweep_dir = write_sweep(tmp_path, TINY), tmp_path / 's'
  points = sweep.load_sweep(spec)
  def finish(point):  # as a finished run leaves its workdir
    workdir = sweep_dir / point['name']
    workdir.mkdir(parents=True)
    config = sweep.requested_config(point)
    (workdir / 'config.json').write_text(json.dumps(config))
    (workdir / 'eval.json').write_text(json.dumps({'split': 'test', 'step': config['num_steps']}))
  for point in points[:-1]:
    finish(point)
  code, _, err = run_main(monkeypatch, capsys, spec, sweep_dir)
  assert code == 2 and f'error: point {points[-1]["name"]}: no data folder for mnist.npz' in err
  finish(points[-1])  # nothing left to run: the table is rebuilt without data
  code, out, err = run_main(monkeypatch, capsys, spec, sweep_dir)
  assert code == 0 and '4 already finished, 0 to run' in err and '| tconv | 0 |' in out


def test_data_is_checked_once_per_dataset_and_folder(monkeypatch, tmp_path):
  from decoders import data
  reads = []
  monkeypatch.setattr(data, 'npz_path', lambda name, folder: reads.append((name, folder)))
  # A relative $DECODERS_DATA_DIR is relative to the repository root, where train.py runs.
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv('DECODERS_DATA_DIR', 'data_here')
  points = sweep.load_sweep(os.path.join(ROOT, 'configs/sweeps/ablation.py:quick'))
  tfds = dict(points[0], name='tfds', **{'data.source': 'tfds'})
  sweep.check_data(points + [tfds])
  assert sorted(reads) == [('cifar10', os.path.join(ROOT, 'data_here')),
                           ('mnist', os.path.join(ROOT, 'data_here'))]
  reads.clear()
  sweep.check_data([tfds])
  assert not reads


def test_dry_run_needs_no_data(monkeypatch, capsys, tmp_path):
  monkeypatch.delenv('DECODERS_DATA_DIR', raising=False)
  code, out, err = run_main(monkeypatch, capsys, write_sweep(tmp_path, TINY), tmp_path / 's',
                            dry_run=True)
  assert code == 0 and len(out.strip().splitlines()) == 4, err
  assert not (tmp_path / 's').exists()
