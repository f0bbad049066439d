"""benchmarks/: paired.py's --set parsing, layers.py's layer list, compile_breakdown's checks,
throughput.py's profile and loop workers.

Timings are not tests.
"""
import os

import pytest

from benchmarks import paired
from decoders import polyphase


def test_parse_setting_reads_module_attribute_and_two_literals():
  module, attr, values = paired.parse_setting('decoders.polyphase.MATMUL_FIRST_MAX_RATIO=0,1')
  assert module is polyphase and attr == 'MATMUL_FIRST_MAX_RATIO' and values == (0, 1)
  assert paired.parse_setting('decoders.training.AUTO_BATCH_SPLITS=4, 2')[2] == (4, 2)


@pytest.mark.parametrize('text,match', [
    ('MATMUL_FIRST_MAX_RATIO=0,1', 'must look like'),
    ('decoders.polyphase.MATMUL_FIRST_MAX_RATIO', 'must look like'),
    ('decoders.polyphase.MATMUL_FIRST_MAX_RATIO=0', 'two comma-separated'),
    ('decoders.polyphase.MATMUL_FIRST_MAX_RATIO=a,b', 'two comma-separated'),
    ('decoders.polyphase.NO_SUCH_THING=0,1', 'no attribute'),
    ('decoders.no_such_module.X=0,1', 'cannot import'),
])
def test_parse_setting_errors_are_one_line(text, match):
  with pytest.raises(SystemExit, match=match) as info:
    paired.parse_setting(text)
  assert '\n' not in str(info.value)


def test_paired_variants_compile_under_their_own_value():
  # The step's loss is a jitted function traced once per argument shapes: without clearing JAX's
  # caches the second variant reused the first one's trace, and every A/B timed A twice.
  original = polyphase.IM2COL_MAX_C_IN
  try:
    programs = [paired.compile_variant('mnist', 'tconv_k3', polyphase, 'IM2COL_MAX_C_IN',
                                       value)[0].as_text() for value in (0, 4)]
    assert polyphase.IM2COL_MAX_C_IN == 4  # left at B
  finally:
    polyphase.IM2COL_MAX_C_IN = original
  # The encoder's first conv has C_in 1: its 9 im2col columns (4 batch parts of 32 images,
  # 32 * 14 * 14 output pixels each) exist only under B.
  assert 'f32[9,6272]' in programs[1] and 'f32[9,6272]' not in programs[0]


def test_layers_benchmark_times_every_conv_layer_on_its_input_shape():
  import jax.numpy as jnp
  from benchmarks import layers, throughput
  from configs import mnist
  from decoders import models
  config = mnist.get_config()
  model = models.build_model(config.model, throughput.DATASETS['mnist'], train_mean=0.3, seed=0)
  found = layers.layer_inputs(model, jnp.zeros((2, 28, 28, 1)))
  assert [(name, path, x.shape[1:]) for name, _, path, x in found] == [
      ('enc conv0 s2', ('convs', 0), (28, 28, 1)), ('enc conv1 s2', ('convs', 1), (14, 14, 32)),
      ('block0 TConv', ('blocks', 0), (7, 7, 64)), ('block1 TConv', ('blocks', 1), (14, 14, 32)),
      ('out conv', ('out', None), (28, 28, 32))]


def test_scaling_worker_shards_the_step_over_two_virtual_cpu_devices():
  from benchmarks import scaling
  kind, env, pinned = scaling.VARIANTS['jax, 2 devices']
  r = scaling.spawn(kind, 'mnist', 'tconv_k3', env, pinned, steps=1, warmup=0)
  assert 'err' not in r, r.get('err')
  assert r['devices'] == 2 and r['splits'] == 1 and r['ips'] > 0


def test_compile_breakdown_refuses_a_baseline_without_decoders(tmp_path):
  from benchmarks import compile_breakdown
  with pytest.raises(SystemExit, match='holds no decoders/') as info:
    compile_breakdown.main(['--baseline', str(tmp_path), '--repeat', '1'])
  assert '\n' not in str(info.value)


def test_profile_worker_runs_the_step_with_the_batch_splits_asked_for():
  from benchmarks import throughput
  name, options = throughput.BLOCKS['tconv_k3']
  r = throughput.profile_worker('mnist', name, options, 'auto', steps=1, top=3, batch_splits=1)
  assert r['splits'] == 1 and len(r['top']) == 3
  assert r['op_ms'] > 0 and sum(r['kinds'].values()) == pytest.approx(r['op_ms'], rel=0.01)
  assert any(kind.startswith('conv') or kind.startswith('matmul') for kind in r['kinds'])


def test_compile_phases_sum_the_compile_threads_top_level_events_and_count_kernels():
  from types import SimpleNamespace as NS
  from benchmarks import compile_breakdown
  ms = lambda name, t: NS(name=name, duration_ns=int(t * 1e6))
  compiler = NS(name='tf_PjRtCompilerThreadPool/1', events=[
      ms('HLO passes through layout assignment (jit_train_step)', 100),
      ms('HLO passes after layout assignment (jit_train_step)', 50),
      ms('HLO passes nested pipeline', 999),  # not top level: not counted
      ms('ThunkEmitter::EmitEntryComputation', 600), ms('ThunkEmitter::ConsumeKernels', 300),
      ms('JitCompiler::Compile', 1400)])
  codegen = NS(name='tf_xla-cpu-codegen/2', events=[
      ms('FusionCompiler::Compile', 10), ms('FusionCompiler::Compile', 12),
      ms('JitCompiler::Compile', 5000)])  # another thread's event of that name: not counted
  phases = compile_breakdown._compile_phases(NS(planes=[NS(lines=[compiler, codegen])]))
  assert phases == pytest.approx({'hlo passes': 0.15, 'emit': 0.6, 'collect': 0.3, 'llvm': 1.4,
                                  'kernels': 2})


def test_loop_worker_times_the_bare_step_in_the_same_process():
  from benchmarks import throughput
  data_dir = os.environ.get('DECODERS_DATA_DIR') or os.path.join(
      os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'shared',
      'data')
  assert throughput.loop_intervals(300) == (50, 100) and throughput.loop_intervals(6) == (2, 2)
  r = throughput.loop_worker(6, data_dir, bare_steps=2, warmup=1)
  assert r['steps'] == 6 and r['first_s'] > 0 and r['bare_ips'] > 0
  # Logged every 2 steps, a 6-step loop has log intervals after the first: a steady state.
  assert r['ips_steady'] > 0 and r['ips_no_first'] > 0


def test_report_from_json_pairs_each_repeats_jax_and_torch_compile_runs(tmp_path, capsys):
  import json
  from benchmarks import throughput
  run = lambda ips, **kw: dict(ips=ips, compile_s=1.0, first_s=1.5, cores_busy=1.9, **kw)
  saved = dict(started='2026-12-07T00:00:00+00:00', args=dict(
      datasets=['mnist'], blocks=['tconv_k3'], baseline='', compare_malloc=False,
      compare_splits=[], loop_steps=300), runs={
          'peak': [dict(jax=100.0, torch=90.0)] * 2,
          'mnist|tconv_k3|jax': [run(100.0, splits=4), run(200.0, splits=4)],
          'mnist|tconv_k3|torch:eager': [run(50.0), run(50.0)],
          'mnist|tconv_k3|torch:compile': [run(50.0), run(400.0)],
          'loop': [dict(ips=90.0, ips_no_first=110.0, ips_steady=100.0, first_s=2.0,
                        bare_ips=100.0),
                   dict(ips=90.0, ips_no_first=180.0, ips_steady=150.0, first_s=2.0,
                        bare_ips=200.0)]})
  path = tmp_path / 'run.json'
  path.write_text(json.dumps(saved))
  throughput.main(['--from_json', str(path)])
  out = capsys.readouterr().out.splitlines()
  row = next(l for l in out if l.startswith('| mnist'))
  # Medians 150 / 225 = 0.67x; per repeat 100 / 50 = 2.00x and 200 / 400 = 0.50x.
  assert '| 0.67x | 1.25x (0.50-2.00) |' in row
  # The loop against the bare step of its own process: 110 / 100 and 180 / 200 without the first
  # step, 100 / 100 and 150 / 200 in steady state; against the step workers' median, 145 / 150.
  assert any(l.startswith('Full loop') and 'checkpoint every 100, log every 50' in l for l in out)
  assert '- the same without the first step: 145 (110-180) = 0.97 x bare' in out
  assert ('- against the bare step timed after the loop in the same process (150 (100-200) '
          'img/s), median (min-max) of the per-process ratios: without the first step 1.00x '
          '(0.90-1.10), steady state 0.88x (0.75-1.00)') in out
  (tmp_path / 'other.json').write_text('{"runs": {}}')
  for bad in (tmp_path / 'missing.json', tmp_path / 'other.json'):
    with pytest.raises(SystemExit, match='is not a run saved with --json') as info:
      throughput.main(['--from_json', str(bad)])
    assert '\n' not in str(info.value)
