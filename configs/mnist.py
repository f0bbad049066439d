"""MNIST autoencoder: the default run. Every default of a run lives in this file.

  python train.py --config=configs/mnist.py --workdir=runs/mnist
  python train.py --config=configs/mnist.py --config.model.upsample=resize_conv --workdir=runs/x
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.dataset = 'mnist'  # 'mnist' | 'cifar10'
  c.seed = 0  # model init, batch order and VAE noise all derive from it
  c.batch_size = 128  # global batch, split across all devices
  c.batch_splits = 0  # run the batch as this many independent parts per step (0 = auto: parts of >= 32 on one CPU device, at most 4; else 1)
  c.num_steps = 1500  # training steps (not epochs)
  c.learning_rate = 2e-3  # peak Adam learning rate
  c.lr_schedule = 'cosine'  # 'cosine' (decay to 0 at num_steps) | 'constant'
  c.warmup_steps = 50  # linear warmup from 0 to learning_rate
  c.log_every = 50  # steps between console/metrics.jsonl/TensorBoard lines
  c.eval_every = 500  # steps between validation evals (0 = only at the end)
  c.checkpoint_every = 500  # steps between checkpoints (and always at the end)
  c.keep_checkpoints = 3  # newest checkpoints kept on disk
  c.multihost = False  # call jax.distributed.initialize() first (GPU clusters, TPU pods)

  c.model = ml_collections.ConfigDict()
  c.model.kind = 'ae'  # 'ae' | 'vae'
  c.model.upsample = 'tconv'  # a block of decoders.upsample.UPSAMPLERS, or one per stage: 'resize_conv,tconv'
  c.model.impl = 'auto'  # every conv's implementation: 'auto' | 'reference' (XLA's convs and autodiff) | 'polyphase'; a block's 'impl' in upsample_options overrides it (config files only)
  c.model.widths = (32, 64)  # encoder channels per stride-2 stage; the decoder mirrors them
  c.model.latent_dim = 32  # size of the dense latent code
  c.model.likelihood_std = 0.1  # vae: std of the Gaussian pixel likelihood in the ELBO
  c.model.upsample_options = ml_collections.ConfigDict()  # per block, passed to its constructor
  c.model.upsample_options.tconv = dict(kernel_size=3)  # k3 s2 p1 op1; 4 = k4 s2 p1
  c.model.upsample_options.resize_conv = dict(method='nearest')  # nearest | bilinear | bicubic | lanczos3
  c.model.upsample_options.subpixel = dict(init='icnr')  # 'icnr' | 'default'
  c.model.upsample_options.tconv_blur = dict(kernel_size=3, blur_taps=3)  # binomial [1,2,1] blur

  c.data = ml_collections.ConfigDict()
  c.data.source = 'npz'  # 'npz' (offline files) | 'tfds' (tensorflow_datasets.data_source)
  c.data.dir = ''  # folder of mnist.npz / cifar10.npz ('' = $DECODERS_DATA_DIR); tfds data_dir
  c.data.val_size = 5000  # validation images carved from train
  c.data.split_seed = 0  # fixed, so runs with different seeds share one train/val split

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 500  # eval batch (the last partial batch is masked, never dropped)
  c.eval.num_val = 5000  # val images used by the periodic eval during training
  c.eval.spectral_stride = 2  # stride whose aliasing frequencies the checkerboard score reads
  c.eval.num_images = 64  # images in the reconstruction / sample grids
  return c.lock()
