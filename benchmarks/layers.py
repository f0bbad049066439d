"""Per-layer forward and forward+backward times of the benchmark model, JAX against PyTorch.

  python -m benchmarks.layers                                  # every block, MNIST and CIFAR-10
  python -m benchmarks.layers --datasets cifar10 --blocks tconv_k4,subpixel --repeat 5

Each conv layer of `benchmarks/throughput.py`'s AE (batch 128), alone, on its input shape in
the train step, with the JAX model's weights copied into the PyTorch twin
(`benchmarks/torch_model.py`, eager, channels_last): the jitted JAX layer with the batch run as
`batch_splits` parts (as `train.py` runs the step; `training.batch_splits`) and as one batch,
and the PyTorch layer. Forward+backward is the output and the input and weight gradients for a
fixed cotangent. Times are the median of `--repeat` timed blocks of `--calls` calls.

What it is for: which layer a whole-step ratio (`benchmarks/throughput.py`) comes from, with no
profiler in the way (jax.profiler roughly doubles this model's step time on XLA:CPU, and with
batch splits its per-op times overlap). A layer's time alone does not predict the step's: the
step's layers share two cores and memory bandwidth, so a change that speeds a layer up here is
kept only if `benchmarks/paired.py` shows the step faster. Numbers go into BENCHMARKS.md with
command and date.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

from benchmarks import throughput


def _median_ms(fn, *, calls: int, repeat: int) -> float:
  for _ in range(2):
    fn()
  blocks = []
  for _ in range(repeat):
    t = time.perf_counter()
    for _ in range(calls):
      fn()
    blocks.append(1e3 * (time.perf_counter() - t) / calls)
  return statistics.median(blocks)


def _value_and_vjp(fn, cotangent, *args):
  """fn(*args) and its VJP: the output is returned too, or XLA would drop the forward."""
  import jax
  y, vjp = jax.vjp(fn, *args)
  return y, vjp(cotangent)


def layer_inputs(model, batch):
  """(name, JAX module, index path into the PyTorch twin, input) for each conv layer."""
  import jax
  out, x = [], batch
  for i, conv in enumerate(model.encoder.convs):
    out.append((f'enc conv{i} s2', conv, ('convs', i), x))
    x = jax.nn.relu(conv(x))
  z = model.encoder.dense(x.reshape(x.shape[0], -1))
  decoder = model.decoder
  x = jax.nn.relu(decoder.dense(z)).reshape(z.shape[0], *decoder.grid)
  for i, block in enumerate(decoder.blocks):
    out.append((f'block{i} {type(block).__name__}', block, ('blocks', i), x))
    x = jax.nn.relu(block(x))
  out.append(('out conv', decoder.out, ('out', None), x))
  return out


def time_layers(dataset: str, name: str, *, calls: int, repeat: int) -> list[dict]:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from flax import nnx
  from configs import cifar10, mnist
  from benchmarks import torch_model
  from decoders import models, training
  block, options = throughput.BLOCKS[name]
  shape = throughput.DATASETS[dataset]
  config = (mnist if dataset == 'mnist' else cifar10).get_config()
  with config.unlocked():
    config.model.upsample = block
    config.model.upsample_options[block] = options
  model = models.build_model(config.model, shape, train_mean=0.3, seed=0)
  twin = torch_model.AutoEncoder(shape, widths=throughput.WIDTHS, latent_dim=throughput.LATENT,
                                 block=block, options=options, train_mean=0.3)
  twin.load_jax(nnx.state(model, nnx.Param))
  splits = training.batch_splits(config, jax.devices())
  rng = np.random.default_rng(0)
  batch = jnp.asarray(rng.random((throughput.BATCH,) + shape, np.float32))
  rows = []
  for label, module, (attr, index), x in layer_inputs(model, batch):
    graphdef, params = nnx.split(module)

    def apply(params, x, parts):
      layer = nnx.merge(graphdef, params)
      return jnp.concatenate([layer(p) for p in jnp.split(x, parts)])

    y = apply(params, x, 1)
    g = jnp.asarray(rng.standard_normal(y.shape, np.float32))
    row = dict(layer=label, input='x'.join(map(str, x.shape[1:])), splits=splits)
    for parts, key in ((splits, 'split'), (1, 'one')):
      fwd = jax.jit(lambda p, x, parts=parts: apply(p, x, parts))
      bwd = jax.jit(lambda p, x, g, parts=parts: _value_and_vjp(
          lambda p, x: apply(p, x, parts), g, p, x))
      row[f'jax_fwd_{key}'] = _median_ms(lambda: jax.block_until_ready(fwd(params, x)),
                                         calls=calls, repeat=repeat)
      row[f'jax_bwd_{key}'] = _median_ms(lambda: jax.block_until_ready(bwd(params, x, g)),
                                         calls=calls, repeat=repeat)
    layer = getattr(twin, attr) if index is None else getattr(twin, attr)[index]
    to_torch = lambda a: torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(a), (
        0, 3, 1, 2)))).contiguous(memory_format=torch.channels_last)
    xt, gt = to_torch(x).requires_grad_(), to_torch(g)

    def torch_fwd():
      with torch.no_grad():
        layer(xt)

    def torch_bwd():
      xt.grad = None
      layer.zero_grad(set_to_none=True)
      layer(xt).backward(gt)

    row['torch_fwd'] = _median_ms(torch_fwd, calls=calls, repeat=repeat)
    row['torch_bwd'] = _median_ms(torch_bwd, calls=calls, repeat=repeat)
    time.sleep(0.2)  # PyTorch's OpenMP workers spin after a call; let them sleep before JAX
    rows.append(row)
    print(dataset, name, row, flush=True)
  return rows


def report(results) -> str:
  lines = ['| dataset | block | layer | input (H x W x C) | JAX fwd ms, split / one | torch fwd '
           '| JAX fwd+bwd ms, split / one | torch fwd+bwd | JAX split / torch, fwd+bwd |',
           '|---|---|---|---|---:|---:|---:|---:|---:|']
  for (dataset, name), rows in results.items():
    for r in rows:
      lines.append(f"| {dataset} | {name} | {r['layer']} | {r['input']} | "
                   f"{r['jax_fwd_split']:.2f} / {r['jax_fwd_one']:.2f} | {r['torch_fwd']:.2f} | "
                   f"{r['jax_bwd_split']:.2f} / {r['jax_bwd_one']:.2f} | {r['torch_bwd']:.2f} | "
                   f"{r['jax_bwd_split'] / r['torch_bwd']:.2f}x |")
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--datasets', default='mnist,cifar10')
  parser.add_argument('--blocks', default=','.join(throughput.BLOCKS))
  parser.add_argument('--repeat', type=int, default=5, help='timed blocks per measurement')
  parser.add_argument('--calls', type=int, default=10, help='calls per timed block')
  args = parser.parse_args(argv)
  datasets, blocks = args.datasets.split(','), args.blocks.split(',')
  unknown = sorted(set(blocks) - set(throughput.BLOCKS))
  unknown_data = sorted(set(datasets) - set(throughput.DATASETS))
  if unknown or unknown_data:
    raise SystemExit(f'layers: unknown block(s) {unknown} / dataset(s) {unknown_data}; valid: '
                     f'{", ".join(throughput.BLOCKS)} / {", ".join(throughput.DATASETS)}')
  throughput.tune_malloc()
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  started = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
  t = time.perf_counter()
  results = {(d, b): time_layers(d, b, calls=args.calls, repeat=args.repeat)
             for d in datasets for b in blocks}
  cpu = throughput.cpu_name()
  print(f'\n## {started}: `python -m benchmarks.layers {" ".join(sys.argv[1:])}`\n{cpu}, '
        f'{os.cpu_count()} cores, torch threads {torch.get_num_threads()}; batch '
        f'{throughput.BATCH}; median of {args.repeat} x {args.calls} calls; '
        f'{(time.perf_counter() - t) / 60:.1f} min\n\n{report(results)}')


if __name__ == '__main__':
  main()
