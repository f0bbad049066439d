"""Quality parity: this project's AE against its PyTorch twin at equal steps, batch and weights.

  python -m benchmarks.quality_parity            # both datasets x tconv, resize_conv; full length
  python -m benchmarks.quality_parity --check    # 3 steps of both: same losses, same optimizer

For each (dataset, block), JAX trains through the real path (`training.train_and_evaluate` in a
temp workdir, restored with `training.restore_for_eval`, `evaluation.evaluate` on the test split)
and the PyTorch twin (`benchmarks.torch_model`) trains from the same initial weights
(`Run.initial_state`), on the same batches (`data.batch_indices`), with the same Adam (b1 0.9,
b2 0.999, eps 1e-8, eps outside the sqrt in both) and the same warmup-cosine schedule (a LambdaLR
of optax's formula, checked against the real optax optimizer in --check). Both test PSNRs are
10 log10(1 / mse) over every test pixel; both SSIMs are dm_pix's, averaged per image. The
requirement: JAX - PyTorch >= -0.3 dB. The table goes to --out and stdout (for BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import os
import sys
import tempfile
import time

from decoders import malloc

malloc.tune()  # as train.py does, before JAX starts its threads: the JAX wall times are train.py's

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import torch_model
from decoders import data, evaluation, training

TOLERANCE_DB = 0.3
BETAS, EPS = (0.9, 0.999), 1e-8  # optax.adam's defaults, passed to torch explicitly
_ssim = jax.jit(lambda a, b: dm_pix.ssim(a, b, max_val=1.0))


def make_config(dataset: str, block: str, args):
  """configs/<dataset>.py with the block, steps, batch and seed of this benchmark."""
  config = importlib.import_module(f'configs.{dataset}').get_config()
  config.model.upsample = block
  config.seed = args.seed
  config.num_steps = args.num_steps or config.num_steps
  config.batch_size = args.batch_size or config.batch_size
  config.eval_every = 0
  config.checkpoint_every = config.num_steps
  return config


def lr_factor(config):
  """`training.make_optimizer`'s schedule as a LambdaLR factor: lr(step) / learning_rate."""
  n = config.num_steps
  warmup = max(min(config.warmup_steps, n - 1), 0)

  def factor(step: int) -> float:
    if config.lr_schedule == 'constant':
      return min(step, max(warmup, 1)) / max(warmup, 1)
    if step < warmup:
      return step / warmup
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup, n - warmup) / (n - warmup)))

  return factor


def make_adam(config, parameters):
  opt = torch.optim.Adam(parameters, lr=config.learning_rate, betas=BETAS, eps=EPS)
  return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(config))


def twin(config, dataset, params) -> torch_model.AutoEncoder:
  """The PyTorch twin of the config's AE holding the JAX `params`."""
  block = config.model.upsample
  options = {k: dict(v) for k, v in config.model.upsample_options.items()}.get(block, {})
  model = torch_model.AutoEncoder(dataset.image_shape, widths=tuple(config.model.widths),
                                  latent_dim=config.model.latent_dim, block=block,
                                  options=options, train_mean=dataset.train_mean)
  model.load_jax(jax.tree.map(np.array, params))  # writable host copies: torch warns on others
  return model


def nchw(images) -> torch.Tensor:
  """uint8 (n, H, W, C) device array -> uint8 (n, C, H, W) torch tensor."""
  return torch.from_numpy(np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2)))


def torch_train(config, model, train: torch.Tensor, num_steps: int) -> list[float]:
  """`num_steps` Adam steps on `data.batch_indices` batches of uint8 NCHW `train`; the losses."""
  opt, schedule = make_adam(config, model.parameters())
  losses = []
  for step in range(num_steps):
    indices = data.batch_indices(config.seed, step, train.shape[0], config.batch_size)
    batch = train.index_select(0, torch.from_numpy(indices).long()).float() / 255.0
    opt.zero_grad(set_to_none=True)
    loss = F.mse_loss(model(batch), batch)
    loss.backward()
    opt.step()
    schedule.step()
    losses.append(loss.detach())
  return [float(l) for l in losses]


@torch.no_grad()
def torch_test_metrics(model, images, batch_size: int) -> dict[str, float]:
  """PSNR (mse over every pixel) and mean per-image SSIM, as `evaluation.evaluate` has them."""
  images = np.asarray(images)
  sse = ssim = 0.0
  for start in range(0, images.shape[0], batch_size):
    x = images[start:start + batch_size].astype(np.float32) / 255.0
    recon = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    sse += float(np.sum((recon.astype(np.float64) - x) ** 2))
    ssim += float(np.sum(np.asarray(_ssim(x, recon), np.float64)))
  mse = sse / images.size
  return {'psnr': evaluation.psnr_from_mse(mse), 'ssim': ssim / images.shape[0]}


def parity_point(dataset: str, block: str, args) -> dict:
  """Trains and tests both models for one (dataset, block); one table row."""
  config = make_config(dataset, block, args)
  ds = data.build_dataset(config)
  row = dict(dataset=dataset, block=block, steps=config.num_steps, batch=config.batch_size)
  with tempfile.TemporaryDirectory(prefix='quality_parity_') as workdir:
    params = training.Run(config, workdir, ds).initial_state['params']
    model = twin(config, ds, params)  # copied before JAX trains: identical initial weights
    t0 = time.perf_counter()
    training.train_and_evaluate(config, workdir)
    row['jax_wall_s'] = time.perf_counter() - t0
    with open(os.path.join(workdir, 'train_summary.json')) as f:
      row['jax_train_s'] = json.load(f)['train_s']
    c, jax_model, _, _ = training.restore_for_eval(workdir)
    metrics = evaluation.evaluate(jax_model, ds.test, batch_size=c.eval.batch_size,
                                  stride=c.eval.spectral_stride,
                                  likelihood_std=c.model.likelihood_std)
  row.update(jax_psnr=metrics[evaluation.PSNR], jax_ssim=metrics[evaluation.SSIM])
  t0 = time.perf_counter()
  losses = torch_train(config, model, nchw(ds.train), config.num_steps)
  row['torch_train_s'] = time.perf_counter() - t0
  tm = torch_test_metrics(model, ds.test, config.eval.batch_size)
  row.update(torch_psnr=tm['psnr'], torch_ssim=tm['ssim'], torch_final_loss=losses[-1])
  row['diff'] = row['jax_psnr'] - row['torch_psnr']
  print(json.dumps(row), file=sys.stderr, flush=True)
  return row


def report(rows, args, started: str) -> str:
  cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo')
              if l.startswith('model name')), 'unknown CPU')
  load = ', '.join(f'{x:.1f}' for x in os.getloadavg())
  lines = [
      f'## Quality parity: JAX vs the PyTorch twin ({started})', '',
      f'`{" ".join(["python -m benchmarks.quality_parity"] + sys.argv[1:])}`', '',
      f'{cpu}, {os.cpu_count()} cores (load average {load} at the end); jax {jax.__version__}, '
      f'torch {torch.__version__} ({torch.get_num_threads()} threads). Same initial weights '
      f'(seed {args.seed}), same batches, same Adam and warmup-cosine schedule; test PSNR = '
      f'10 log10(1 / mse) over the whole test split; "ok" = JAX - PyTorch >= -{TOLERANCE_DB} dB. '
      'JAX wall = train_and_evaluate (training, val evals, figures); JAX train = its train_s '
      '(includes compilation, not the val evals nor the one checkpoint save after the last '
      'step); torch train = its training loop.', '',
      '| dataset | block | steps | batch | JAX test PSNR | PyTorch test PSNR | JAX - PyTorch '
      '(dB) | ok | JAX SSIM | PyTorch SSIM | JAX wall s | JAX train s | torch train s |',
      '|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|']
  for r in rows:
    ok = 'yes' if r['diff'] >= -TOLERANCE_DB else 'no'
    lines.append(f"| {r['dataset']} | {r['block']} | {r['steps']} | {r['batch']} | "
                 f"{r['jax_psnr']:.2f} | {r['torch_psnr']:.2f} | {r['diff']:+.2f} | {ok} | "
                 f"{r['jax_ssim']:.4f} | {r['torch_ssim']:.4f} | {r['jax_wall_s']:.0f} | "
                 f"{r['jax_train_s']:.0f} | {r['torch_train_s']:.0f} |")
  return '\n'.join(lines) + '\n'


def check_optimizer(config, seed: int = 0) -> tuple[float, np.ndarray]:
  """`training.make_optimizer` vs torch Adam + LambdaLR over num_steps steps of random gradients.

  Gradient 0 is constant 1, so its Adam update is -lr(step) / (1 + eps): optax's schedule read
  off the real optimizer. Returns max |update difference| / learning_rate (float32 moments: expect
  ~1e-5) and the (optax, torch) lr of every step. The torch parameter is reset to 0 before each
  step so its update is not rounded against a growing value (Adam's update ignores it).
  """
  grads = np.random.default_rng(seed).normal(size=(config.num_steps, 64)).astype(np.float32)
  grads[:, 0] = 1.0
  tx = training.make_optimizer(config)
  update = jax.jit(tx.update)
  state = tx.init(jnp.zeros(64))
  param = torch.zeros(64, requires_grad=True)
  opt, schedule = make_adam(config, [param])
  worst_update, lrs = 0.0, []
  for g in grads:
    lr = opt.param_groups[0]['lr']
    u, state = update(jnp.asarray(g), state)
    u = np.asarray(u)
    with torch.no_grad():
      param.zero_()
    param.grad = torch.from_numpy(g.copy())
    opt.step()
    schedule.step()
    worst_update = max(worst_update, float(np.abs(u - param.detach().numpy()).max()))
    lrs.append((-float(u[0]) * (1 + EPS), lr))
  return worst_update / config.learning_rate, np.array(lrs)


def check(args) -> None:
  """Few steps of both models from identical weights and batches: equal losses and weights."""
  for dataset in args.datasets:
    for block in args.blocks:
      config = make_config(dataset, block, args)
      ds = data.build_dataset(config)
      run = training.Run(config, tempfile.gettempdir(), ds)  # writes nothing
      state = run.initial_state
      model = twin(config, ds, state['params'])
      start = [p.detach().clone() for p in model.parameters()]
      step_fn, images = run.step_fn(), jax.device_put(ds.train, run.replicated)
      jax_losses = []
      for step in range(args.check_steps):
        state, metrics = step_fn(state, images, run.indices(step))
        jax_losses.append(float(metrics['loss']))
      torch_losses = torch_train(config, model, nchw(ds.train), args.check_steps)
      after = twin(config, ds, state['params'])  # the JAX weights after the steps, in torch
      with torch.no_grad():  # Adam amplifies rounding where |grad| ~ eps: compare in L2
        norm = lambda xs: float(torch.sqrt(sum(torch.sum(x ** 2) for x in xs)))
        weights = list(model.parameters())
        moved = norm(p - q for p, q in zip(weights, start))
        weight_diff = norm(p - q for p, q in zip(weights, after.parameters())) / moved
      diffs = ' '.join(f'{abs(a - b):.1e}' for a, b in zip(jax_losses, torch_losses))
      print(f'{dataset:8s} {block:12s} loss jax {jax_losses[-1]:.6f} torch {torch_losses[-1]:.6f}'
            f' | |loss diff| per step: {diffs} | weights: |jax - torch| / |moved| = '
            f'{weight_diff:.1e} (L2)')
  config = make_config(args.datasets[0], args.blocks[0], args)
  update_err, lrs = check_optimizer(config)
  lr_err = np.abs(lrs[:, 0] - lrs[:, 1]).max() / config.learning_rate
  print(f'optax vs torch optimizer over {config.num_steps} steps: max |update diff| / lr = '
        f'{update_err:.1e}; schedule: max |lr diff| / lr = {lr_err:.1e}')
  n, w = config.num_steps, config.warmup_steps
  for step in sorted({0, 1, w - 1, w, w + 1, n // 2, n - 1} & set(range(n))):
    print(f'  lr(step {step:4d}): optax {lrs[step, 0]:.6e}  torch {lrs[step, 1]:.6e}')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--datasets', default='mnist,cifar10')
  parser.add_argument('--blocks', default='tconv,resize_conv')
  parser.add_argument('--num_steps', type=int, default=0, help="0: the config's")
  parser.add_argument('--batch_size', type=int, default=0, help="0: the config's")
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default='benchmarks/quality_parity.md')
  parser.add_argument('--check', action='store_true', help='few steps of both; compare losses')
  parser.add_argument('--check_steps', type=int, default=3)
  args = parser.parse_args(argv)
  args.datasets, args.blocks = args.datasets.split(','), args.blocks.split(',')
  torch.set_num_threads(2)
  if args.check:
    check(args)
    return
  started = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
  rows = [parity_point(d, b, args) for d in args.datasets for b in args.blocks]
  text = report(rows, args, started)
  with open(args.out, 'w') as f:
    f.write(text)
  print(text)


if __name__ == '__main__':
  try:
    main()
  except (data.DataError, training.RunError) as e:  # no data folder, bad config: one line
    sys.exit(f'quality_parity: error: {e}')
