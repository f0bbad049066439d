"""The reference ablation: upsampling blocks x {MNIST, CIFAR-10} x 3 seeds.

  python -m decoders.sweep --sweep=configs/sweeps/ablation.py:quick --workdir=runs/ablation_quick
  python -m decoders.sweep --sweep=configs/sweeps/ablation.py:full --workdir=runs/ablation

`quick` is sized for a 2-core CPU (see README for its measured wall time): 200 steps at batch
32, seeds 0, 1 and 2. `full` is sized for one GPU: the configs' default schedule (1500 steps,
batch 128).
Expected: k3 s2 tconv decoders show checkerboard at init (+dB vs the data at the diagonal
alias), nearest resize-conv and ICNR sub-pixel far less; training pulls all toward the data.
"""

BASE = {'mnist': 'configs/mnist.py', 'cifar10': 'configs/cifar10.py'}

# label -> overrides selecting the decoder's upsampling (per-stage lists are comma-separated).
BLOCKS = {
    'tconv_k3': {'model.upsample': 'tconv', 'model.upsample_options.tconv.kernel_size': 3},
    'tconv_k4': {'model.upsample': 'tconv', 'model.upsample_options.tconv.kernel_size': 4},
    'resize_nearest': {'model.upsample': 'resize_conv',
                       'model.upsample_options.resize_conv.method': 'nearest'},
    'resize_bilinear': {'model.upsample': 'resize_conv',
                        'model.upsample_options.resize_conv.method': 'bilinear'},
    'subpixel_icnr': {'model.upsample': 'subpixel', 'model.upsample_options.subpixel.init': 'icnr'},
    'tconv_blur': {'model.upsample': 'tconv_blur'},
    # "last stage only": nearest resize-conv everywhere except a k3 s2 tconv in the last stage.
    'last_tconv_k3': {'model.upsample': 'resize_conv,tconv',
                      'model.upsample_options.resize_conv.method': 'nearest',
                      'model.upsample_options.tconv.kernel_size': 3},
}

# preset -> (overrides of every point, seeds).
PRESETS = {
    'quick': ({'num_steps': 200, 'batch_size': 32, 'warmup_steps': 10, 'log_every': 50,
               'eval_every': 0, 'checkpoint_every': 200, 'eval.num_val': 500}, (0, 1, 2)),
    'full': ({}, (0, 1, 2)),
}


def get_sweep(preset='full'):
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; valid: {", ".join(PRESETS)}')
  overrides, seeds = PRESETS[preset]
  return [{'name': f'{dataset}-{label}-s{seed}', 'group': f'{dataset}-{label}',
           'config': BASE[dataset], 'seed': seed, **blocks, **overrides}
          for dataset in BASE for label, blocks in BLOCKS.items() for seed in seeds]
