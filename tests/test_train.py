"The trainer's promises that a notebook cell cannot prove well: exact resume, atomic checkpoints under a real crash, bad input."
import json, os, signal, subprocess, sys, textwrap
from pathlib import Path
import pytest, torch, torch.nn as nn
from sd_scratch.core import atomic_save_safetensors, load_safetensors
from sd_scratch.train import (TrainConfig, LatentCache, Trainer, draw_batch, min_snr_weight, read_log, random_latent_cache,
                              load_run_config, build_data, recipe_encoders)
from sd_scratch.unet import UNetConfig, UNet2DCondition


TINY_UNET = dict(in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1, cross_attn_levels=(False, True),
                 num_heads=2, cross_attention_dim=16, norm_groups=8)


def tiny_model(hidden=16):
    "The smallest real UNet2DCondition."
    return UNet2DCondition(UNetConfig(**{**TINY_UNET, 'block_out_channels': (hidden, 2 * hidden)}))


def random_cache(): return random_latent_cache(n=32, latent_size=8, n_captions=4, context_len=6, context_dim=16)


CFG = dict(steps=8, batch_size=4, grad_accum_steps=2, lr=2e-3, warmup_steps=2, device='cpu', cfg_dropout=0.2, ema_decay=0.99)


def make_trainer(out_dir=None, init_seed=0, **kw):
    torch.manual_seed(init_seed)
    return Trainer(tiny_model(**kw), random_cache(), TrainConfig(**CFG), out_dir=out_dir, progress=False)


def test_resume_is_exact(tmp_path):
    full = make_trainer(tmp_path/'full')
    losses_full = [r['loss'] for r in full.fit()]
    first = make_trainer(tmp_path/'resumed')
    losses_a = [r['loss'] for r in first.fit(until=3)]                 # writes tmp_path/resumed/checkpoint.safetensors
    second = make_trainer(tmp_path/'resumed', init_seed=1)            # a different init: the checkpoint must overwrite it
    assert second.load_checkpoint(tmp_path/'resumed'/'checkpoint.safetensors') == 3
    losses_b = [r['loss'] for r in second.fit()]
    assert losses_a + losses_b == losses_full                         # same losses, exactly
    for (k, v), (k2, v2) in zip(full.model.state_dict().items(), second.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k                      # same weights, bit for bit
    for k, v in full.ema.shadow.items(): assert torch.equal(v, second.ema.shadow[k]), k
    o1, o2 = full.optimizer.state_dict()['state'], second.optimizer.state_dict()['state']
    for pid in o1:
        for name in o1[pid]: assert torch.equal(o1[pid][name], o2[pid][name]), (pid, name)
    # the log of the resumed run reads as one run
    assert [r['loss'] for r in read_log(tmp_path/'resumed'/'log.jsonl')] == losses_full
    assert [r['step'] for r in read_log(tmp_path/'resumed'/'log.jsonl')] == list(range(CFG['steps']))


def test_resume_drops_log_lines_of_redone_steps(tmp_path):
    tr = make_trainer(tmp_path)
    tr.fit(until=2); tr.save_checkpoint(tmp_path/'at2.safetensors')
    tr.fit(until=5)                                                   # steps 2..4 logged, then "crash"
    again = make_trainer(tmp_path)
    again.load_checkpoint(tmp_path/'at2.safetensors')
    assert [r['step'] for r in read_log(tmp_path/'log.jsonl')] == [0, 1]


def test_different_model_config_is_refused(tmp_path):
    make_trainer(tmp_path).save_checkpoint(tmp_path/'a.safetensors')
    other = make_trainer(hidden=24)
    with pytest.raises(ValueError, match='different model config'):
        other.load_checkpoint(tmp_path/'a.safetensors')


def test_non_checkpoint_is_refused(tmp_path):
    atomic_save_safetensors({'w': torch.ones(2)}, tmp_path/'w.safetensors')
    with pytest.raises(ValueError, match='not a sd_scratch training checkpoint'):
        make_trainer().load_checkpoint(tmp_path/'w.safetensors')


def test_nan_loss_stops_with_step(tmp_path):
    tr = make_trainer()
    tr.fit(until=2)
    with torch.no_grad():
        for p in tr.model.parameters(): p.fill_(float('nan'))
    before = {k: v.clone() for k, v in tr.ema.shadow.items()}
    with pytest.raises(FloatingPointError, match='loss is nan at step 2'):
        tr.fit()
    assert tr.step == 2
    for k, v in tr.ema.shadow.items(): assert torch.equal(v, before[k])   # the EMA never saw the NaN


CRASH = textwrap.dedent("""
    import os, signal, sys, torch
    import sd_scratch.core as T
    path = sys.argv[1]
    real = T.save_file
    def dying_write(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)                 # write the whole new file to the temporary name...
        data = open(filename, 'rb').read()
        open(filename, 'wb').write(data[:len(data) // 2])          # ...tear it in half...
        os.kill(os.getpid(), signal.SIGKILL)                       # ...and die before the rename, like a power cut
    T.save_file = dying_write
    T.atomic_save_safetensors({'w': torch.full((1000,), 2.0)}, path, {'version': 'new'})
""")


def test_atomic_write_survives_a_killed_process(tmp_path):
    target = tmp_path/'checkpoint.safetensors'
    atomic_save_safetensors({'w': torch.ones(1000)}, target, {'version': 'old'})
    r = subprocess.run([sys.executable, '-c', CRASH, str(target)], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    tensors, meta = load_safetensors(target)                         # the previous checkpoint, intact and loadable
    assert meta['version'] == 'old' and torch.equal(tensors['w'], torch.ones(1000))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != target.name]
    assert leftovers and all(n.endswith('.tmp') for n in leftovers)   # the torn file only ever had a temporary name


def test_trainer_checkpoint_survives_a_crash_mid_save(tmp_path, monkeypatch):
    import sd_scratch.core as T
    tr = make_trainer(tmp_path)
    tr.fit(until=2)                                                   # checkpoint at step 2
    real = T.save_file
    def torn(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata); Path(filename).write_bytes(b'torn'); raise OSError('disk full')
    monkeypatch.setattr(T, 'save_file', torn)
    with pytest.raises(OSError, match='disk full'): tr.fit(until=4)
    monkeypatch.setattr(T, 'save_file', real)
    again = make_trainer(tmp_path)
    assert again.load_checkpoint(tmp_path/'checkpoint.safetensors') == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ['checkpoint.safetensors', 'log.jsonl']


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown TrainConfig keys: \['bach_size', 'learning_rate'\]"):
        TrainConfig.from_dict(dict(learning_rate=1e-4, bach_size=8))
    (tmp_path/'c.json').write_text(json.dumps(dict(steps=5, typo=1)))
    with pytest.raises(ValueError, match=r"unknown TrainConfig keys: \['typo'\]"):
        TrainConfig.from_json(tmp_path/'c.json')
    with pytest.raises(ValueError, match='batch_size=6 is not divisible by grad_accum_steps=4'):
        TrainConfig(batch_size=6, grad_accum_steps=4)
    run = load_run_config(dict(base='tiny', data=str(tmp_path/'missing.safetensors')))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        build_data(run, recipe_encoders(run))
    with pytest.raises(ValueError, match='cfg_dropout'):
        TrainConfig(cfg_dropout=1.5)
    with pytest.raises(ValueError, match='steps must be a positive int'):
        TrainConfig(steps=0)


def test_latent_cache_round_trip(tmp_path):
    c = random_cache()
    c.save(tmp_path/'cache.safetensors')
    d = LatentCache.load(tmp_path/'cache.safetensors')
    assert d.captions == c.captions and torch.equal(d.latents, c.latents) and torch.equal(d.contexts, c.contexts)
    run = load_run_config(dict(base='tiny', data=str(tmp_path/'cache.safetensors')))
    assert torch.equal(build_data(run, recipe_encoders(run)).latents, c.latents)


def test_min_snr_weight():
    assert torch.allclose(min_snr_weight(torch.tensor([1., 5., 10., 100.]), 5.), torch.tensor([1., 1., .5, .05]))


def test_bf16_autocast_and_grad_accum_run():
    torch.manual_seed(0)
    cfg = TrainConfig(**{**CFG, 'mixed_precision': 'bf16', 'steps': 2})
    tr = Trainer(tiny_model(), random_cache(), cfg, progress=False)
    recs = tr.fit()
    assert len(recs) == 2 and all(torch.isfinite(torch.tensor(r['loss'])) for r in recs)
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())   # autocast: weights stay float32


def test_gradient_checkpointing_gives_the_same_step():
    "Checkpointing recomputes activations in backward: same losses and weights (to float rounding)."
    runs = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        tr = Trainer(tiny_model(), random_cache(), TrainConfig(**{**CFG, 'steps': 2, 'gradient_checkpointing': ckpt}), progress=False)
        assert tr.model.gradient_checkpointing is ckpt
        runs.append(([r['loss'] for r in tr.fit()], tr.model.state_dict()))
    assert torch.allclose(torch.tensor(runs[0][0]), torch.tensor(runs[1][0]), rtol=1e-5)
    for k, v in runs[0][1].items(): assert torch.allclose(v, runs[1][1][k], atol=1e-5), k


def test_train_run_guards_its_folder(tmp_path):
    "A finished run is never overwritten, resume needs a checkpoint and the same recipe; a longer run may resume."
    from sd_scratch.train import train_run
    train_run('tiny', tmp_path/'run', progress=False)
    with pytest.raises(FileExistsError, match='already holds a training run'): train_run('tiny', tmp_path/'run', progress=False)
    with pytest.raises(FileNotFoundError, match='holds no checkpoint'): train_run('tiny', tmp_path/'empty', resume=True, progress=False)
    with pytest.raises(ValueError, match=r"another recipe.*'train.lr': \(0.002, 0.001\)"):
        train_run(dict(base='tiny', train=dict(lr=1e-3)), tmp_path/'run', resume=True, progress=False)
    tr = train_run(dict(base='tiny', train=dict(steps=8)), tmp_path/'run', resume=True, progress=False)
    assert tr.step == 8 and [r['step'] for r in read_log(tmp_path/'run'/'log.jsonl')] == list(range(8))
    assert json.loads((tmp_path/'run'/'run_config.json').read_text())['train']['steps'] == 8
    assert not (tmp_path/'run'/'.lock').exists()


def test_run_folder_belongs_to_one_run(tmp_path):
    from sd_scratch.core import RunFolder
    from sd_scratch.train import train_run
    other = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        (tmp_path/'.lock').write_text(str(other.pid))                 # a live run holds the folder
        with pytest.raises(FileExistsError, match=f'in use by another training run \\(process {other.pid}\\)'):
            train_run('tiny', tmp_path, progress=False)
    finally: other.kill(); other.wait()
    (tmp_path/'.checkpoint.safetensors.abc.tmp').write_bytes(b'half')  # what a run killed mid-write leaves
    (tmp_path/'.notes.tmp').write_text('the user\'s own')                # ...and a file of the user's that looks alike
    from sd_scratch.train import RUN_FILES
    with RunFolder(tmp_path, temporaries=RUN_FILES) as f:               # its owner is dead: the lock is taken over
        assert f.held and (tmp_path/'.lock').read_text() == str(os.getpid())
        assert not (tmp_path/'.checkpoint.safetensors.abc.tmp').exists()
        assert (tmp_path/'.notes.tmp').exists()                         # only the run's own temporary files go
    assert not (tmp_path/'.lock').exists()


def test_resume_survives_a_log_line_cut_by_a_kill(tmp_path):
    from sd_scratch.train import train_run
    train_run(dict(base='tiny', train=dict(ckpt_every=3)), tmp_path, progress=False)
    full = read_log(tmp_path/'log.jsonl')
    import sd_scratch.core as core
    from sd_scratch.train import Trainer
    tr = Trainer(tiny_model(), random_cache(), TrainConfig(**CFG), out_dir=tmp_path/'b', progress=False)
    tr.fit(until=3); tr.fit(until=5)                                    # checkpoint at 5 ... now pretend the last line was cut
    log = (tmp_path/'b'/'log.jsonl').read_text()
    (tmp_path/'b'/'log.jsonl').write_text(log + '{"step": 5, "loss": 0.')
    again = Trainer(tiny_model(), random_cache(), TrainConfig(**CFG), out_dir=tmp_path/'b', progress=False)
    assert again.load_checkpoint(tmp_path/'b'/'checkpoint.safetensors') == 5
    assert [r['step'] for r in read_log(tmp_path/'b'/'log.jsonl')] == [0, 1, 2, 3, 4]
    assert len(full) == 6
