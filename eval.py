"""Evaluates trained runs: python eval.py --workdir=runs/a [--workdir=runs/b ...] [--split=val].

Each workdir alone rebuilds its run (config.json + the newest valid checkpoint). The test split
writes DIR/eval.json and DIR/figures/*.png (the files the sweep reads); --split=val writes
DIR/eval_val.json and DIR/figures_val/*.png and leaves the test split's files alone. Prints a
summary per run and, for several runs, a markdown comparison table. A run stopped before
config.num_steps is still evaluated (its last checkpoint), with a warning line. User errors,
file-system errors included, print one line `eval.py: error: ...` and exit with code 2.
"""
from decoders import malloc

malloc.tune()  # before JAX starts its threads: XLA:CPU reuses its step buffers

import os
import sys

from absl import app, flags, logging

from decoders import cli, compile_cache

flags.DEFINE_multi_string('workdir', None, 'Run directory written by train.py; repeat it to '
                          'evaluate and compare several runs (required).')
flags.DEFINE_enum('split', 'test', ('test', 'val'), 'Split to evaluate: test writes eval.json '
                  'and figures/, val writes eval_val.json and figures_val/ in the workdir.')
flags.DEFINE_integer('num_samples', None, 'Prior samples for the vae sample_* metrics '
                     '(default: config.eval.num_images for a vae, 0 for an ae).', lower_bound=0)
FLAGS = flags.FLAGS
SUMMARY = ('n', 'mse', 'psnr', 'ssim', 'checkerboard_db', 'alias_diagonal_db', 'spectral_error',
           'elbo', 'sample_checkerboard_db')


def output_paths(workdir: str, split: str) -> tuple[str, str]:
  """(eval json path, figures folder) of one split: eval.json and figures/ for the test split,
  which the sweep reads, eval_<split>.json and figures_<split>/ for another."""
  suffix = '' if split == 'test' else f'_{split}'
  return os.path.join(workdir, f'eval{suffix}.json'), os.path.join(workdir, f'figures{suffix}')


def _settings(config, workdir: str) -> dict:
  """The config values this eval reads, or ValueError if an old or hand-edited config lacks one."""
  try:
    return dict(data=(config.dataset, config.data.source, config.data.dir, config.data.val_size,
                      config.data.split_seed),
                batch_size=config.eval.batch_size, stride=config.eval.spectral_stride,
                likelihood_std=config.model.likelihood_std, num_images=config.eval.num_images,
                seed=config.seed, upsample=config.model.upsample, kind=config.model.kind,
                num_steps=config.num_steps)
  except (AttributeError, KeyError) as e:
    raise ValueError(f'{workdir}/config.json lacks a key eval needs: {e}') from e


def _data_error(error, config, workdir: str) -> str:
  """data.py's DataError text, with its advice to set data.dir (a train.py flag) replaced by what
  eval.py can act on: $DECODERS_DATA_DIR, or the data.dir that the run's config.json names."""
  from decoders import data
  message = str(error)
  how_to_get = data.HOW_TO_GET
  if how_to_get not in message:
    return message
  if config.data.dir:
    hint = (f'{os.path.join(workdir, "config.json")} names data.dir={config.data.dir!r}, which '
            f'eval.py reads (${data.DATA_DIR_ENV} counts only when data.dir is empty): put '
            f'{config.dataset}.npz there, or point data.dir in config.json at its folder')
  else:
    hint = (f'set ${data.DATA_DIR_ENV} to a folder holding {config.dataset}.npz in the layout of '
            'shared/data/README.md')
  return message.replace(how_to_get, hint)


def evaluate_run(workdir: str, split: str, num_samples, datasets: dict) -> dict:
  """Evaluates one run, writes its eval json and figures (`output_paths`); returns the record.

  The figures are written before the eval json, so a run whose figures cannot be written keeps
  its earlier eval json (the sweep's sign of a finished point).
  """
  from decoders import data, evaluation, training  # after flags: keeps `--help` fast
  config, model, step, skipped = training.restore_for_eval(workdir)
  for bad_step, reason in skipped:
    print(f'eval.py: warning: {workdir}: skipped damaged checkpoint at step {bad_step}: {reason}',
          file=sys.stderr)
  s = _settings(config, workdir)
  if step < s['num_steps']:
    print(f'eval.py: warning: {workdir}: ' + (
        f'evaluating step {step} of {s["num_steps"]}, its newest valid checkpoint' if skipped else
        f'the run is unfinished (step {step} of {s["num_steps"]}); evaluating its last '
        'checkpoint'), file=sys.stderr, flush=True)
  if s['data'] not in datasets:  # the runs of a sweep share one dataset: load it once
    try:
      datasets[s['data']] = data.build_dataset(config)
    except data.DataError as e:
      raise data.DataError(_data_error(e, config, workdir)) from e
  images = getattr(datasets[s['data']], split)
  if images.shape[0] == 0:
    raise ValueError(f'{workdir}: the {split} split is empty (data.val_size = 0); use --split=test')
  json_path, figures_dir = output_paths(workdir, split)
  os.makedirs(figures_dir, exist_ok=True)  # a blocked output path fails before the evaluation
  if num_samples is None:
    num_samples = s['num_images'] if s['kind'] == 'vae' else 0
  kwargs = dict(batch_size=s['batch_size'], stride=s['stride'])
  metrics, recon = evaluation.evaluate_with_reconstructions(
      model, images, likelihood_std=s['likelihood_std'], num_samples=num_samples,
      sample_seed=s['seed'], **kwargs)
  record = evaluation.build_record(config, model, metrics, step=step, split=split,
                                   workdir=workdir)
  title = f'{os.path.basename(os.path.normpath(workdir))}: {s["upsample"]}, step {step}'
  evaluation.save_figures(model, images, metrics, figures_dir, num_images=s['num_images'],
                          title=title, sample_seed=s['seed'], reconstructions=recon, **kwargs)
  evaluation.write_eval_json(json_path, record)
  return record


def _os_error(error: OSError, workdir: str) -> str:
  """One line naming the path: '<path>: <reason>' (read-only workdir, full disk, a file in the
  way of a folder, ...)."""
  paths = [p for p in (error.filename, error.filename2) if p is not None]
  reason = error.strerror or type(error).__name__
  if not paths:
    return f'{workdir}: {reason}' + (f' ({error})' if str(error) != reason else '')
  return f'{" -> ".join(map(str, paths))}: {reason}'


def summary(record: dict) -> str:
  """A few aligned lines: what was evaluated, then the headline metrics."""
  lines = [f"{record['workdir']}: {record['dataset']} {record['kind']} {record['upsample']}, "
           f"seed {record['seed']}, step {record['step']}, {record['params']:,} params, "
           f"{record['split']} split"]
  lines += [f'  {name:<24} {record[name]:.6g}' for name in SUMMARY if name in record]
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS.workdir:  # checked here, not by absl, for the one-line error and exit code 2
    cli.fail('--workdir=<dir> is required (repeat it to compare several runs)')
  logging.set_verbosity(logging.WARNING)
  compile_cache.enable()
  from decoders import evaluation
  records, datasets = [], {}
  for workdir in FLAGS.workdir:
    try:
      records.append(evaluate_run(workdir, FLAGS.split, FLAGS.num_samples, datasets))
    except ValueError as e:  # training.RunError, data.DataError, bad config values
      cli.fail(' '.join(str(e).split()))
    except OSError as e:  # read-only workdir, full disk, a file where figures/ goes, ...
      cli.fail(' '.join(_os_error(e, workdir).split()))
    print(summary(records[-1]), flush=True)
  if len(records) > 1:
    print('\n' + evaluation.comparison_table(records))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser)
