"""The project's AE (`decoders.models`, kind 'ae') in PyTorch: the benchmark oracle only.

Same architecture, layer by layer, in PyTorch's NCHW layout:

  encoder: [Conv2d k3 s2 p1 -> ReLU] per width -> flatten -> Linear(latent_dim)
  decoder: Linear -> ReLU -> (widths[-1], h, w) -> [upsample x2 -> ReLU] per stage
           -> Conv2d k3 p1 -> sigmoid, output bias starting at logit(mean training pixel)
  loss: MSE; optimizer: Adam.

Blocks (`decoders.upsample`): tconv = ConvTranspose2d(k, 2, p, op); resize_conv =
F.interpolate(x2, mode) + Conv2d(k3, p1); subpixel = Conv2d(out*4, k3, p1) + PixelShuffle(2);
tconv_blur = ConvTranspose2d + fixed depthwise binomial blur (zero padding taps // 2).

The only differences from the JAX model are layout: flatten / unflatten run in (C, H, W) order
instead of (H, W, C), a permutation of the two dense layers' weights that `load_jax` applies, so
both models compute the same function from the same weights (`python -m benchmarks.throughput
check` verifies the loss and every gradient). PyTorch is never a runtime dependency of `decoders`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def binomial_filter(taps: int) -> np.ndarray:
  row = np.array([1.0])
  for _ in range(taps - 1):
    row = np.convolve(row, [1.0, 1.0])
  return np.outer(row, row) / row.sum() ** 2


def _transposed_padding(kernel: int, factor: int) -> tuple[int, int]:
  op = (kernel - factor) % 2
  return (kernel - factor + op) // 2, op


class TConv(nn.Module):

  def __init__(self, i, o, *, kernel_size=3, blur_taps=0):
    super().__init__()
    p, op = _transposed_padding(kernel_size, 2)
    self.t = nn.ConvTranspose2d(i, o, kernel_size, 2, p, output_padding=op)
    self.blur_taps = blur_taps
    if blur_taps:
      blur = torch.tensor(binomial_filter(blur_taps), dtype=torch.float32)
      self.register_buffer('blur', blur.expand(o, 1, blur_taps, blur_taps).contiguous())

  def forward(self, x):
    y = self.t(x)
    if self.blur_taps:
      y = F.conv2d(y, self.blur, padding=self.blur_taps // 2, groups=y.shape[1])
    return y


class ResizeConv(nn.Module):

  def __init__(self, i, o, *, method='nearest'):
    super().__init__()
    self.method = method
    self.conv = nn.Conv2d(i, o, 3, padding=1)

  def forward(self, x):
    extra = {} if self.method == 'nearest' else {'align_corners': False}
    return self.conv(F.interpolate(x, scale_factor=2, mode=self.method, **extra))


class SubPixel(nn.Module):

  def __init__(self, i, o):
    super().__init__()
    self.conv = nn.Conv2d(i, o * 4, 3, padding=1)
    self.shuffle = nn.PixelShuffle(2)

  def forward(self, x):
    return self.shuffle(self.conv(x))


def make_block(name: str, i: int, o: int, options: dict) -> nn.Module:
  if name == 'tconv':
    return TConv(i, o, kernel_size=options.get('kernel_size', 3))
  if name == 'tconv_blur':
    return TConv(i, o, kernel_size=options.get('kernel_size', 3),
                 blur_taps=options.get('blur_taps', 3))
  if name == 'resize_conv':
    return ResizeConv(i, o, method=options.get('method', 'nearest'))
  if name == 'subpixel':
    return SubPixel(i, o)
  raise ValueError(f'no PyTorch block for {name!r}')


class AutoEncoder(nn.Module):
  """PyTorch twin of `decoders.models.AutoEncoder(kind='ae')` for one block at every stage."""

  def __init__(self, image_shape, *, widths, latent_dim, block, options, train_mean):
    super().__init__()
    h, w, c = image_shape
    chans = (c,) + tuple(widths)
    self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, 2, 1) for a, b in zip(chans, chans[1:]))
    self.grid = (widths[-1], h >> len(widths), w >> len(widths))
    self.enc_dense = nn.Linear(math.prod(self.grid), latent_dim)
    self.dec_dense = nn.Linear(latent_dim, math.prod(self.grid))
    up = tuple(reversed(widths)) + (widths[0],)
    self.blocks = nn.ModuleList(make_block(block, a, b, options) for a, b in zip(up, up[1:]))
    self.out = nn.Conv2d(widths[0], c, 3, padding=1)
    mean = min(max(train_mean, 1e-3), 1 - 1e-3)
    with torch.no_grad():
      self.out.bias.fill_(math.log(mean / (1 - mean)))

  def forward(self, x):
    for conv in self.convs:
      x = F.relu(conv(x))
    z = self.enc_dense(x.flatten(1))
    x = F.relu(self.dec_dense(z)).view(-1, *self.grid)
    for block in self.blocks:
      x = F.relu(block(x))
    return torch.sigmoid(self.out(x))

  @torch.no_grad()
  def load_jax(self, params) -> None:
    """Copies the weights of a JAX `decoders.models.AutoEncoder` (its nnx.Param state)."""
    t = lambda a: torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32)))
    conv_w = lambda k: t(np.transpose(np.asarray(k), (3, 2, 0, 1)))    # (k,k,i,o) -> (o,i,k,k)
    tconv_w = lambda k: t(np.transpose(np.asarray(k), (2, 3, 0, 1)))   # (k,k,i,o) -> (i,o,k,k)
    enc, dec = params['encoder'], params['decoder']
    for i, conv in enumerate(self.convs):
      p = enc['convs'][i]
      conv.weight.copy_(conv_w(p['kernel'][...]))
      conv.bias.copy_(t(p['bias'][...]))
    c, h, w = self.grid
    # JAX flattens (h, w, c); this model (c, h, w): permute the dense rows / columns.
    perm = np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).ravel()
    self.enc_dense.weight.copy_(t(np.asarray(enc['dense']['kernel'][...])[perm].T))
    self.enc_dense.bias.copy_(t(enc['dense']['bias'][...]))
    self.dec_dense.weight.copy_(t(np.asarray(dec['dense']['kernel'][...])[:, perm].T))
    self.dec_dense.bias.copy_(t(np.asarray(dec['dense']['bias'][...])[perm]))
    for i, block in enumerate(self.blocks):
      p = dec['blocks'][i]
      if isinstance(block, TConv):
        p = p['tconv'] if 'tconv' in p else p
        block.t.weight.copy_(tconv_w(p['kernel'][...]))
        block.t.bias.copy_(t(p['bias'][...]))
      else:
        block.conv.weight.copy_(conv_w(p['kernel'][...]))
        block.conv.bias.copy_(t(p['bias'][...]))
    self.out.weight.copy_(conv_w(dec['out']['kernel'][...]))
    self.out.bias.copy_(t(dec['out']['bias'][...]))


def make_train_step(model: AutoEncoder, learning_rate: float):
  """step(images_uint8_nchw, indices) -> loss: gather, /255, forward, MSE, backward, Adam.

  Mirrors `decoders.training.train_step`, which gathers its batch from device-resident uint8
  images; the learning rate is constant here (the JAX step's schedule is a few scalar ops).
  """
  opt = torch.optim.Adam(model.parameters(), learning_rate)

  def step(images, indices):
    batch = images.index_select(0, indices).float() / 255.0
    opt.zero_grad(set_to_none=True)
    loss = F.mse_loss(model(batch), batch)
    loss.backward()
    opt.step()
    return loss

  return step
