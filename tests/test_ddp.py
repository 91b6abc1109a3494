"Multi-process DDP on CPU (gloo, 2 processes under torchrun, the tiny recipe): the promises of nbs/08_ddp.ipynb."
import os, subprocess, sys, textwrap
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from sd_scratch.core import load_safetensors
from sd_scratch.distributed import DistEnv, DistributedTrainer, dist_env, shard_for_rank, rank_seed
from sd_scratch.train import unwrap, load_run_config, build_model, build_data, recipe_encoders, RECIPES

WORKER = textwrap.dedent('''
    import dataclasses, os, signal, sys
    from pathlib import Path
    from safetensors.torch import save_file
    import sd_scratch.core as core
    from sd_scratch.distributed import *
    from sd_scratch.train import unwrap, load_run_config, build_model, build_data, recipe_encoders
    mode, out = sys.argv[1], Path(sys.argv[2])
    env = init_distributed()
    run = load_run_config('tiny')
    cfg = run.train_config()
    if mode == 'die':                               # rank 0 is SIGKILLed half-way through writing the step-3 checkpoint
        cfg = dataclasses.replace(cfg, ckpt_every=1)
        real = core.save_file
        def dying(tensors, filename, metadata=None):
            if metadata['step'] == '3':
                real(tensors, filename, metadata)
                size = os.path.getsize(filename)
                with open(filename, 'r+b') as f: f.truncate(size // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            return real(tensors, filename, metadata)
        core.save_file = dying
    tr = DistributedTrainer(build_model(run), build_data(run, recipe_encoders(run)), cfg, out, progress=False, env=env)
    tr.fit(until=3 if mode == 'fit' else 5)
    save_file({k: v.contiguous() for k, v in unwrap(tr.model).state_dict().items()}, str(out/f'rank{env.rank}.safetensors'))
    cleanup_distributed()
''')


def torchrun(tmp_path, mode, nproc=2):
    script = tmp_path/'worker.py'; script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')}
    env['OMP_NUM_THREADS'] = '1'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc),
           str(script), mode, str(tmp_path/'run')]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)


def single_process(out=None, until=3, resume_from=None):
    run = load_run_config('tiny')
    tr = DistributedTrainer(build_model(run), build_data(run, recipe_encoders(run)), run.train_config(), out, progress=False, env=DistEnv())
    if resume_from is not None: assert tr.load_checkpoint(resume_from) == 3
    losses = [r['loss'] for r in tr.fit(until=until)]
    return tr, losses


def assert_same_weights(a:dict, b:dict, rel=1e-5, what=''):
    "Per tensor: ||a - b|| <= rel * ||b||. AdamW divides by sqrt(v): where v is tiny, summation-order rounding (~1e-7) grows to ~1e-6 absolute."
    assert a.keys() == b.keys()
    for k in b:
        err = ((a[k].double() - b[k].double()).norm() / b[k].double().norm().clamp_min(1e-12)).item()
        assert err <= rel, f"{what}: {k} differs by {err:.2e} relative (L2)"


def test_two_ranks_equal_one_process_and_resume_on_one(tmp_path):
    r = torchrun(tmp_path, 'fit')
    assert r.returncode == 0, r.stderr[-3000:]
    rank0, rank1 = load_file(tmp_path/'run'/'rank0.safetensors'), load_file(tmp_path/'run'/'rank1.safetensors')
    for k in rank0: assert torch.equal(rank0[k], rank1[k]), f"ranks differ in {k}"        # all-reduce keeps them identical
    ref, ref_losses = single_process(until=3)                                             # one process, same global batch
    assert_same_weights(rank0, unwrap(ref.model).state_dict(), what='2 processes vs 1')
    moved = max((rank0[k] - v).abs().max().item() for k, v in build_model(load_run_config('tiny')).state_dict().items())
    assert moved > 1e-4                                                                   # training did change the weights
    # the checkpoint written by 2 ranks resumes on 1 process and continues exactly like the 1-process run
    tensors, meta = load_safetensors(tmp_path/'run'/'checkpoint.safetensors')
    assert meta['step'] == '3'
    full, full_losses = single_process(until=6)
    resumed, resumed_losses = single_process(tmp_path/'resumed', until=6, resume_from=tmp_path/'run'/'checkpoint.safetensors')
    torch.testing.assert_close(resumed_losses, full_losses[3:], rtol=1e-5, atol=1e-7)
    assert_same_weights(unwrap(resumed.model).state_dict(), unwrap(full.model).state_dict(), what='resumed on 1 vs 1')


def test_rank_killed_mid_checkpoint_leaves_previous_one(tmp_path):
    r = torchrun(tmp_path, 'die')
    assert r.returncode != 0                                                              # the job died...
    ckpt = tmp_path/'run'/'checkpoint.safetensors'
    tensors, meta = load_safetensors(ckpt)                                                # ...the last checkpoint is whole
    assert meta['step'] == '2'
    assert not (tmp_path/'run'/'rank0.safetensors').exists()
    tr, _ = single_process(tmp_path/'after', until=2)                                     # and it is the 1-process state at step 2
    assert_same_weights({k[6:]: v for k, v in tensors.items() if k.startswith('model.')}, unwrap(tr.model).state_dict(), what='checkpoint')
    again, _ = single_process(tmp_path/'resume2', until=2)
    assert again.load_checkpoint(ckpt) == 2


def test_dist_env_reads_torchrun_variables():
    assert dist_env({}) == DistEnv()                                                      # plain process: rank 0 of 1
    e = dist_env(dict(RANK='1', WORLD_SIZE='2', LOCAL_RANK='1', MASTER_ADDR='127.0.0.1', MASTER_PORT='29500'))
    assert (e.rank, e.world_size, e.local_rank, e.master_port, e.is_main, e.distributed) == (1, 2, 1, 29500, False, True)
    with pytest.raises(ValueError, match='RANK=2 is outside'): dist_env(dict(RANK='2', WORLD_SIZE='2'))
    with pytest.raises(ValueError, match='not an integer'): dist_env(dict(WORLD_SIZE='two'))


def test_sharding_and_seeds():
    items = list(range(10))
    parts = [shard_for_rank(items, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == items and all(not set(a) & set(b) for a in parts for b in parts if a is not b)
    assert rank_seed(0, 0) != rank_seed(0, 1)
    with pytest.raises(ValueError, match='outside'): shard_for_rank(items, 3, 3)


def test_configs():
    sd = load_run_config('sd15_2x5090')
    tc = sd.train_config()
    assert (tc.batch_size, tc.grad_accum_steps, sd.per_process_batch(2)) == (96, 2, 24)   # 2 GPUs x 24 x 2 = 96
    assert sorted(RECIPES) == ['control_toy', 'digits', 'finetune', 'inpaint_toy', 'lora', 'lora_toy', 'sd15_2x5090', 'tiny', 'toy',
                               'toy_shipped']   # 07f's and 07g's too: the package imports their lessons
    for name, r in RECIPES.items():                                                 # every recipe is a base (finetune and lora
        needs = dict(data='my_data', checkpoint='toy') if r['data'] is None else {}   # name no data or model of their own)
        assert load_run_config(dict(base=name), **needs).name == name
    assert (tc.lr, tc.min_snr_gamma, tc.ema_decay, tc.mixed_precision, tc.gradient_checkpointing) == (1e-4, 5.0, 0.9999, 'bf16', True)
    with pytest.raises(ValueError, match='known recipes'): load_run_config('small')
    with pytest.raises(ValueError, match='unknown RunConfig keys'): load_run_config(dict(name='x', modle='unet'))
    with pytest.raises(ValueError, match='unknown TrainConfig keys'): load_run_config(dict(base='tiny', train=dict(stepz=3)))
    assert load_run_config(dict(base='tiny', train=dict(steps=9))).train_config().steps == 9


def test_toy_recipe_through_the_distributed_trainer(tmp_path):
    """The 07 toy recipe (real small UNet, the shipped toy VAE and text tower) trains through `train_run` with the
    DistributedTrainer and exports its EMA UNet; the recipe's gradient_checkpointing switches the UNet's own switch on."""
    from sd_scratch.train import train_run, random_latent_cache
    from sd_scratch.pipeline import load_unet
    random_latent_cache(n=8, latent_size=16, context_len=77, context_dim=64).save(tmp_path/'cache.safetensors')   # skip encoding the shapes
    recipe = dict(base='toy', data=str(tmp_path/'cache.safetensors'),
                  train=dict(steps=2, batch_size=2, sample_every=0, ckpt_every=0, log_every=1, gradient_checkpointing=True))
    tr = train_run(recipe, tmp_path/'run', progress=False, trainer_class=DistributedTrainer, env=DistEnv())
    assert tr.step == 2 and (tmp_path/'run'/'checkpoint.safetensors').exists() and (tmp_path/'run'/'run_config.json').exists()
    assert unwrap(tr.model).gradient_checkpointing and all(torch.isfinite(torch.tensor(r['loss'])) for r in tr.history)
    unet, schedule = load_unet(tmp_path/'run'/'unet.safetensors')
    assert sum(p.numel() for p in unet.parameters()) == sum(p.numel() for p in unwrap(tr.model).parameters())
    for k, v in unet.state_dict().items(): assert torch.equal(v, tr.ema.shadow[k]), k
