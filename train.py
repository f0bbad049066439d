"""Trains one run: python train.py --config=configs/mnist.py --workdir=runs/mnist [--config.k=v].

Re-running the same command resumes from the newest valid checkpoint in --workdir.
"""
from decoders import malloc

malloc.tune()  # before JAX starts its threads: XLA:CPU reuses its step buffers

from absl import app, flags, logging
from ml_collections import config_flags

from decoders import cli, compile_cache

config_flags.DEFINE_config_file('config', None, 'Run config file (configs/*.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory: config, checkpoints, metrics, figures.')
flags.DEFINE_bool('overwrite', False,
                  'Continue a workdir whose config.json differs from --config (nothing is deleted).')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  config = cli.config_from_flag(FLAGS.config)
  if not FLAGS.workdir:
    cli.fail('--workdir=<dir> is required')
  compile_cache.enable()  # a rerun or resume loads its compiled programs from disk
  if config.multihost:
    import jax
    try:
      jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:  # no coordinator found, or it did not answer
      cli.fail(f'--config.multihost=True: jax.distributed.initialize() failed: {e} (on Cloud '
               'TPU and Slurm it reads the coordinator from the environment; elsewhere set '
               'JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)')
  from decoders import training  # imported after flags: keeps `--help` fast
  from decoders.data import DataError
  logging.set_verbosity(logging.WARNING)
  try:
    metrics = training.train_and_evaluate(config, FLAGS.workdir, overwrite=FLAGS.overwrite)
  except (training.RunError, DataError) as e:
    cli.fail(str(e))
  except OSError as e:  # a full disk, a vanished workdir: the last checkpoint is still there
    cli.fail(f'I/O error: {e}; run the same command again to resume from the last checkpoint')
  except training.Stopped as e:  # SIGTERM or Ctrl-C: the step reached is saved
    cli.fail(str(e), 128 + e.signum)
  except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
    cli.fail('interrupted; run the same command again to resume from the last checkpoint', 130)
  except Exception as e:  # pylint: disable=broad-except  # an XLA allocation failure is one line
    message = cli.out_of_memory(e)
    if message is None:
      raise
    cli.fail(message + '; the last checkpoint (if any) is kept')
  if not metrics:
    print(f'{FLAGS.workdir} already holds the finished run (step {config.num_steps}); nothing to '
          f'do. Evaluate it: python eval.py --workdir={FLAGS.workdir}')
  else:
    print(f'val psnr {metrics["psnr"]:.2f} dB, ssim {metrics["ssim"]:.4f}, '
          f'checkerboard {metrics["checkerboard_db"]:+.1f} dB vs data '
          f'-> {FLAGS.workdir}; next: python eval.py --workdir={FLAGS.workdir}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser)
