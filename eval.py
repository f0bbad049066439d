"""Evaluates trained runs: python eval.py --workdir=runs/a [--workdir=runs/b ...] [--split=val].

Each workdir alone rebuilds its run (config.json + the newest valid checkpoint). Writes
DIR/eval.json and DIR/figures/*.png, prints a summary per run and, for several runs, a markdown
comparison table. User errors print one line `eval.py: error: ...` and exit with code 2.
"""
from decoders import malloc

malloc.tune()  # before JAX starts its threads: XLA:CPU reuses its step buffers

import os
import sys

from absl import app, flags, logging

from decoders import cli, compile_cache

flags.DEFINE_multi_string('workdir', None, 'Run directory written by train.py; repeat it to '
                          'evaluate and compare several runs (required).')
flags.DEFINE_enum('split', 'test', ('test', 'val'), 'Split to evaluate.')
flags.DEFINE_integer('num_samples', None, 'Prior samples for the vae sample_* metrics '
                     '(default: config.eval.num_images for a vae, 0 for an ae).', lower_bound=0)
FLAGS = flags.FLAGS
SUMMARY = ('n', 'mse', 'psnr', 'ssim', 'checkerboard_db', 'alias_diagonal_db', 'spectral_error',
           'elbo', 'sample_checkerboard_db')


def _settings(config, workdir: str) -> dict:
  """The config values this eval reads, or ValueError if an old or hand-edited config lacks one."""
  try:
    return dict(data=(config.dataset, config.data.source, config.data.dir, config.data.val_size,
                      config.data.split_seed),
                batch_size=config.eval.batch_size, stride=config.eval.spectral_stride,
                likelihood_std=config.model.likelihood_std, num_images=config.eval.num_images,
                seed=config.seed, upsample=config.model.upsample, kind=config.model.kind)
  except (AttributeError, KeyError) as e:
    raise ValueError(f'{workdir}/config.json lacks a key eval needs: {e}') from e


def evaluate_run(workdir: str, split: str, num_samples, datasets: dict) -> dict:
  """Evaluates one run, writes its eval.json and figures; returns the eval.json record."""
  from decoders import data, evaluation, training  # after flags: keeps `--help` fast
  config, model, step, skipped = training.restore_for_eval(workdir)
  for bad_step, reason in skipped:
    print(f'eval.py: warning: {workdir}: skipped damaged checkpoint at step {bad_step}: {reason}',
          file=sys.stderr)
  s = _settings(config, workdir)
  if s['data'] not in datasets:  # the runs of a sweep share one dataset: load it once
    datasets[s['data']] = data.build_dataset(config)
  images = getattr(datasets[s['data']], split)
  if images.shape[0] == 0:
    raise ValueError(f'{workdir}: the {split} split is empty (data.val_size = 0); use --split=test')
  if num_samples is None:
    num_samples = s['num_images'] if s['kind'] == 'vae' else 0
  kwargs = dict(batch_size=s['batch_size'], stride=s['stride'])
  metrics, recon = evaluation.evaluate_with_reconstructions(
      model, images, likelihood_std=s['likelihood_std'], num_samples=num_samples,
      sample_seed=s['seed'], **kwargs)
  record = evaluation.build_record(config, model, metrics, step=step, split=split,
                                   workdir=workdir)
  evaluation.write_eval_json(os.path.join(workdir, 'eval.json'), record)
  title = f'{os.path.basename(os.path.normpath(workdir))}: {s["upsample"]}, step {step}'
  evaluation.save_figures(model, images, metrics, os.path.join(workdir, 'figures'),
                          num_images=s['num_images'], title=title, sample_seed=s['seed'],
                          reconstructions=recon, **kwargs)
  return record


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
    print(summary(records[-1]), flush=True)
  if len(records) > 1:
    print('\n' + evaluation.comparison_table(records))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser)
