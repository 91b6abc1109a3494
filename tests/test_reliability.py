"""What a careless or hostile user tries (issue 13): each case gives a clear error (exit code 2, one line, no traceback) or the
right behaviour, and nothing that exists is ever truncated or overwritten without asking. The data pipeline's cases are in
tests/test_data_reliability.py. About a minute on 2 CPU cores: the shipped toy model and the `tiny` recipe only."""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image

CLI = shutil.which('sd_scratch')


def cli(*args, timeout=300, prefix=''):
    cmd = ' '.join([prefix, CLI or f'{sys.executable} -m sd_scratch.cli', *[f"'{a}'" for a in args]])
    return subprocess.run(['bash', '-c', cmd], capture_output=True, text=True, timeout=timeout)


def refused(r, *words):
    "Exit code 2, the words in the one-line message, no traceback."
    assert r.returncode == 2 and 'Traceback' not in r.stderr, (r.returncode, r.stderr[-2000:])
    for w in words: assert w in r.stderr, (w, r.stderr)


def gen(out, *extra, prefix=''):
    return cli('generate', '--prompt', 'a red circle on a blue background', '--steps', '2', '--guidance', '2', '--out', str(out), *extra,
               prefix=prefix)


# -- 1, 2: nothing existing is overwritten or truncated --
def test_generate_never_overwrites_and_writes_whole_files(tmp_path):
    assert gen(tmp_path).returncode == 0
    first = (tmp_path/'000_seed0.png').read_bytes()
    r = cli('generate', '--prompt', 'a green square on a white background', '--steps', '2', '--out', str(tmp_path))
    assert r.returncode == 0 and (tmp_path/'001_seed0.png').exists()
    assert (tmp_path/'000_seed0.png').read_bytes() == first                      # the first image is untouched
    r = gen(tmp_path, '--seed', '3', prefix='ulimit -f 4;')                       # a full disk: at most 4 KiB per file
    assert r.returncode == 2 and 'Traceback' not in r.stderr and 'too large' in r.stderr.lower(), r.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ['000_seed0.png', '001_seed0.png']   # no torn file, no temporary
    assert (tmp_path/'000_seed0.png').read_bytes() == first
    assert gen(tmp_path, '--overwrite', '--seed', '1').returncode == 0           # asked for: replaces, whole
    assert (tmp_path/'000_seed1.png').exists() and Image.open(tmp_path/'000_seed1.png').size == (64, 64)


# -- 6, 9, 14: bad arguments of `generate` are refused at the door --
@pytest.mark.parametrize('args,words', [
    (['--guidance', 'inf'], ['--guidance must be a finite number']),
    (['--guidance', 'nan'], ['--guidance must be a finite number']),
    (['--guidance', '1e30'], ['far outside any useful range']),
    (['--eta', 'nan'], ['--eta must be a finite number']),
    (['--seed', '99999999999999999999999'], ['--seed must be an integer']),
    (['--height', '100000', '--width', '100000'], ['GB to decode']),
    (['--batch', '.'], ['not both']),
])
def test_generate_bad_numbers(tmp_path, args, words):
    refused(gen(tmp_path/'out', *args), *words)
    assert not (tmp_path/'out').exists() or not any((tmp_path/'out').iterdir())


def test_generate_bad_files(tmp_path):
    (tmp_path/'file').write_text('x')
    refused(gen(tmp_path/'file'), '--out', 'is not a folder')
    (tmp_path/'notes.txt').write_text('not an image')
    refused(gen(tmp_path/'o', '--init-image', str(tmp_path/'notes.txt')), '--init-image', 'cannot be read as an image')
    refused(gen(tmp_path/'o', '--init-image', str(tmp_path)), '--init-image', 'is not a file')
    refused(cli('generate', '--batch', str(tmp_path), '--out', str(tmp_path/'o')), '--batch', 'is not a file')
    (tmp_path/'bad.txt').write_bytes(b'a red circle\n\xff\xfe broken\n')
    refused(cli('generate', '--batch', str(tmp_path/'bad.txt'), '--out', str(tmp_path/'o')), '--batch', 'is not UTF-8')


def test_nan_weights_give_an_error_not_a_black_image(tmp_path):
    from sd_scratch.pipeline import StableDiffusion
    sd = StableDiffusion.from_pretrained('toy')
    with torch.no_grad(): sd.unet.conv_out.weight.fill_(float('nan'))
    with pytest.raises(FloatingPointError, match='the sample is not finite'): sd.generate('a red circle', steps=2, guidance_scale=2)
    with pytest.raises(ValueError, match='init_image contains NaN'):
        sd.generate('a red circle', steps=2, init_image=torch.full((1, 3, 64, 64), float('nan')))


# -- 3, 4, 7, 9, 13: training runs own their folders, configs are checked --
def tiny(tmp_path, name='run', **train):
    p = tmp_path/f'{name}.json'; p.write_text(json.dumps({"base": "tiny", "nproc": 1, "train": train})); return str(p)


def test_train_folder_rules(tmp_path):
    out = str(tmp_path/'run')
    assert cli('train', '--config', tiny(tmp_path), '--out', out, '--no-progress').returncode == 0
    log = (tmp_path/'run'/'log.jsonl').read_text()
    refused(cli('train', '--config', tiny(tmp_path), '--out', out), 'already holds a training run', '--resume')
    refused(cli('train', '--config', tiny(tmp_path), '--out', str(tmp_path/'new'), '--resume'), 'holds no checkpoint')
    refused(cli('train', '--config', tiny(tmp_path, 'b', lr=0.5), '--out', out, '--resume'), 'another recipe', "'train.lr'")
    assert (tmp_path/'run'/'log.jsonl').read_text() == log                          # refusals changed nothing


def test_two_runs_on_one_folder(tmp_path):
    out = tmp_path/'run'
    first = subprocess.Popen([sys.executable, '-m', 'sd_scratch.cli', 'train', '--config', tiny(tmp_path, steps=100000, log_every=1000),
                              '--out', str(out), '--no-progress'], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        t0 = time.time()
        while not (out/'.lock').exists():
            assert first.poll() is None and time.time() - t0 < 120
            time.sleep(0.2)
        refused(cli('train', '--config', tiny(tmp_path), '--out', str(out)), 'in use by another training run')
    finally: first.send_signal(signal.SIGKILL); first.wait()
    # killed before its first checkpoint: a new run starts afresh, and its log holds each step once
    assert cli('train', '--config', tiny(tmp_path), '--out', str(out), '--no-progress').returncode == 0
    assert [json.loads(l)['step'] for l in (out/'log.jsonl').read_text().splitlines()] == list(range(6))


@pytest.mark.parametrize('recipe,words', [
    ({"base": "tiny", "train": {"lr": "1e-3"}}, ['lr must be a finite number', 'without quotes']),
    ({"base": "tiny", "train": {"lr": float('inf')}}, ['lr must be a finite number']),
    ({"base": "tiny", "train": {"adam_betas": 0.9}}, ['adam_betas must be a list']),
    ({"base": "tiny", "train": [1, 2]}, ["'train' must be a JSON object"]),
    ({"base": "toy", "model_config": {"layers_per_blok": 2}}, ["unknown model_config keys for UNetConfig: ['layers_per_blok']"]),
    ({"base": "tiny", "model_config": {"hidden": -3}}, ['hidden must be a positive int']),
    ({"base": "tiny", "train": {"device": "tpu"}}, ["device must be 'auto'"]),
])
def test_train_config_types(tmp_path, recipe, words):
    (tmp_path/'r.json').write_text(json.dumps(recipe))
    refused(cli('train', '--config', str(tmp_path/'r.json'), '--out', str(tmp_path/'run')), *words)
    (tmp_path/'bad.json').write_text('{"base": "tiny", ')
    refused(cli('train', '--config', str(tmp_path/'bad.json'), '--out', str(tmp_path/'run')), 'is not valid JSON')


# -- 12: a diverging run stops with a true message and keeps its last finite checkpoint --
def test_huge_lr_keeps_the_last_finite_checkpoint(tmp_path):
    from sd_scratch.core import load_safetensors
    r = cli('train', '--config', tiny(tmp_path, lr=1e12, steps=50, ckpt_every=1, grad_clip=0.0), '--out', str(tmp_path/'run'), '--no-progress')
    refused(r, 'diverged')
    assert 'resume from the last checkpoint' not in r.stderr
    tensors, meta = load_safetensors(tmp_path/'run'/'checkpoint.safetensors')
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point()), meta['step']


# -- 9, 10, 11: checkpoints --
def test_random_bytes_are_not_a_checkpoint(tmp_path):
    (tmp_path/'x.ckpt').write_bytes(os.urandom(4096))
    r = gen(tmp_path/'o', '--checkpoint', str(tmp_path/'x.ckpt'))
    refused(r, 'is not a PyTorch checkpoint')
    assert 'weights_only=False' not in r.stderr and 'weights_only` set to `False' not in r.stderr


def small_sd():
    from sd_scratch.clip import CLIPTokenizer, CLIPTextConfig, CLIPTextEncoder
    from sd_scratch.vae import VAEConfig, AutoencoderKL
    from sd_scratch.unet import UNetConfig, UNet2DCondition
    from sd_scratch.schedulers import NoiseSchedule
    from sd_scratch.pipeline import StableDiffusion
    torch.manual_seed(0)
    return StableDiffusion(CLIPTokenizer(), CLIPTextEncoder(CLIPTextConfig(hidden_size=32, n_layers=1, n_heads=2, intermediate_size=64)),
                           AutoencoderKL(VAEConfig(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4)),
                           UNet2DCondition(UNetConfig(block_out_channels=(16, 32), layers_per_block=1, cross_attn_levels=(True, False),
                                                      num_heads=2, cross_attention_dim=32, norm_groups=8)), NoiseSchedule())


def test_a_bf16_copy_of_a_model_loads(tmp_path):
    from sd_scratch.convert import save_single_file, load_single_file
    save_single_file(small_sd(), tmp_path/'bf16.safetensors', dtype=torch.bfloat16)
    sd = load_single_file(tmp_path/'bf16.safetensors')                            # its schedule is bf16-rounded: still ours
    assert torch.allclose(sd.schedule.alphas_cumprod, small_sd().schedule.alphas_cumprod)


def test_unknown_prediction_folder_is_refused_in_a_sentence(tmp_path):   # (v_prediction folders load since issue 24)
    from sd_scratch.convert import load_diffusers_folder, CheckpointError
    for d in ('unet', 'vae', 'text_encoder', 'scheduler'): (tmp_path/d).mkdir()
    for d in ('unet', 'vae', 'text_encoder'): (tmp_path/d/'config.json').write_text('{}')
    (tmp_path/'scheduler'/'scheduler_config.json').write_text(json.dumps({"prediction_type": "flow_prediction"}))
    with pytest.raises(CheckpointError, match="trained to predict 'flow_prediction'"): load_diffusers_folder(tmp_path)
    refused(gen(tmp_path/'o', '--checkpoint', str(tmp_path)), 'flow_prediction')


# ---- issue 26: nothing lost, nothing silent, round two ----
def main_cli(capsys, *args):
    "Run `sd_scratch ARGS` in this process (no interpreter start-up): (exit code, stderr)."
    from sd_scratch.cli import main
    capsys.readouterr()
    try: main([str(a) for a in args]); code = 0
    except SystemExit as e: code = e.code
    return code, capsys.readouterr().err


def refused_here(capsys, *args, words=()):
    code, err = main_cli(capsys, *args)
    assert code == 2 and 'Traceback' not in err and len(err.strip().splitlines()) == 1, (code, err)
    for w in words: assert w in err, (w, err)
    return err


def write_json(path, obj):
    Path(path).write_text(json.dumps(obj)); return str(path)


# 1: an empty --out is an error, and nothing in the current folder is touched
def test_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path/'log.jsonl').write_text('{"step": 0, "loss": 1.0}\n')
    cfg = write_json(tmp_path/'r.json', {"base": "tiny", "nproc": 1})
    refused_here(capsys, 'train', '--config', cfg, '--out', '', words=['--out is empty'])
    refused_here(capsys, 'generate', '--prompt', 'a red circle', '--steps', '1', '--out', '', words=['--out is empty'])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['log.jsonl', 'r.json']
    assert (tmp_path/'log.jsonl').read_text() == '{"step": 0, "loss": 1.0}\n'


# 2: a folder holding any of a run's files is a run folder, checkpoint or not
def test_a_run_folder_without_its_checkpoint_is_not_trained_over(tmp_path, capsys):
    out = tmp_path/'run'
    cfg = write_json(tmp_path/'r.json', {"base": "tiny", "nproc": 1})
    assert main_cli(capsys, 'train', '--config', cfg, '--out', out, '--no-progress')[0] == 0
    (out/'checkpoint.safetensors').unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {'log.jsonl', 'model.safetensors', 'run_config.json'}
    refused_here(capsys, 'train', '--config', cfg, '--out', out, words=['holds a training run', 'model.safetensors', 'no checkpoint'])
    refused_here(capsys, 'train', '--config', cfg, '--out', out, '--resume', words=['holds no checkpoint'])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before                    # nothing replaced
    (out/'model.safetensors').unlink(); (out/'run_config.json').unlink()                # a log.jsonl alone is a run's file too
    refused_here(capsys, 'train', '--config', cfg, '--out', out, words=['log.jsonl'])
    # a run of this very recipe that died before its first checkpoint (run_config.json, a log) starts again
    (out/'run_config.json').write_bytes(before['run_config.json'])
    assert main_cli(capsys, 'train', '--config', cfg, '--out', out, '--no-progress')[0] == 0
    other = write_json(tmp_path/'o.json', {"base": "tiny", "nproc": 1, "train": {"lr": 0.5}})
    (out/'checkpoint.safetensors').unlink(); (out/'model.safetensors').unlink()
    refused_here(capsys, 'train', '--config', other, '--out', out, words=['run_config.json'])   # another recipe: refused


# 3: Ctrl-C in a real `sd_scratch train`: the step finishes, a checkpoint, exit 130; --resume is bit-exact
def _sigint_default(): signal.signal(signal.SIGINT, signal.SIG_DFL)   # a child that does not ignore SIGINT


def test_ctrl_c_in_train_saves_and_resume_is_bit_exact(tmp_path, capsys):
    from sd_scratch.core import load_safetensors
    cfg = write_json(tmp_path/'r.json', {"base": "tiny", "nproc": 1, "train": {"steps": 700, "log_every": 1, "ckpt_every": 0}})
    out = tmp_path/'run'
    proc = subprocess.Popen([sys.executable, '-m', 'sd_scratch.cli', 'train', '--config', cfg, '--out', str(out), '--no-progress'],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default)
    t0 = time.time()
    while not ((out/'log.jsonl').exists() and len((out/'log.jsonl').read_text().splitlines()) >= 20):
        assert proc.poll() is None and time.time() - t0 < 120, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and 'Traceback' not in stderr, (proc.returncode, stderr)
    assert '--resume' in stderr and 'interrupted after step' in stderr, stderr
    step = int(load_safetensors(out/'checkpoint.safetensors')[1]['step'])
    assert 20 <= step < 700
    log = [json.loads(l) for l in (out/'log.jsonl').read_text().splitlines()]
    assert [r['step'] for r in log] == list(range(step))                               # every finished step, once
    assert not (out/'model.safetensors').exists() and not list(out.glob('.*.tmp'))     # no export of an unfinished run
    assert main_cli(capsys, 'train', '--config', cfg, '--out', out, '--resume', '--no-progress')[0] == 0
    ref = tmp_path/'ref'
    assert main_cli(capsys, 'train', '--config', cfg, '--out', ref, '--no-progress')[0] == 0
    a, b = load_safetensors(out/'checkpoint.safetensors')[0], load_safetensors(ref/'checkpoint.safetensors')[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)            # bit-exact, optimizer and EMA included
    losses = lambda d: [(r['step'], r['loss'], r['lr']) for r in map(json.loads, (d/'log.jsonl').read_text().splitlines())]
    assert losses(out) == losses(ref)


# 3: Ctrl-C in a real `sd_scratch generate`: the finished images stay, whole; exit 130 with one line
def test_ctrl_c_in_generate_keeps_the_finished_images(tmp_path):
    (tmp_path/'p.txt').write_text('\n'.join(['a red circle on a blue background'] * 200))
    out = tmp_path/'out'
    proc = subprocess.Popen([sys.executable, '-m', 'sd_scratch.cli', 'generate', '--batch', str(tmp_path/'p.txt'), '--steps', '2',
                             '--out', str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default)
    assert proc.stdout.readline().strip().endswith('000_seed0.png')                     # one image is finished
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and 'Traceback' not in stderr and len(stderr.strip().splitlines()) == 1, (proc.returncode, stderr)
    assert 'interrupted' in stderr and str(out) in stderr
    names = sorted(p.name for p in out.iterdir())
    assert 1 <= len(names) < 200 and all(n.endswith('.png') and not n.startswith('.') for n in names), names
    for n in names: Image.open(out/n).load()                                            # whole files


# 4: a full disk while the checkpoint is written: one line, the old checkpoint stays, --resume works
def test_full_disk_at_checkpoint_is_one_line(tmp_path, capsys):
    from sd_scratch.core import load_safetensors
    out = tmp_path/'run'
    cfg = write_json(tmp_path/'r.json', {"base": "tiny", "nproc": 1, "train": {"steps": 4, "log_every": 1}})
    assert main_cli(capsys, 'train', '--config', cfg, '--out', out, '--no-progress')[0] == 0
    old = (out/'checkpoint.safetensors').read_bytes()
    longer = write_json(tmp_path/'l.json', {"base": "tiny", "nproc": 1, "train": {"steps": 8, "log_every": 1}})
    r = cli('train', '--config', longer, '--out', str(out), '--resume', '--no-progress', prefix='ulimit -f 100;')   # 100 KiB per file
    refused(r, 'could not write', 'checkpoint.safetensors', 'unchanged')
    assert len(r.stderr.strip().splitlines()) == 1
    assert (out/'checkpoint.safetensors').read_bytes() == old and not list(out.glob('.*.tmp'))
    assert main_cli(capsys, 'train', '--config', longer, '--out', out, '--resume', '--no-progress')[0] == 0
    assert load_safetensors(out/'checkpoint.safetensors')[1]['step'] == '8'


# 5, 6: recipes of the wrong shape, devices this machine lacks, a zero
@pytest.mark.parametrize('recipe,words', [
    ({"base": {"base": "tiny"}}, ['unknown base recipe']),
    ({"base": ["tiny"]}, ['unknown base recipe']),
    ({"base": "tiny", "train": {"device": "meta"}}, ["device 'meta' cannot train"]),
    ({"base": "toy", "model_config": {"num_heads": 0}}, ['num_heads', 'positive']),
    ({"base": "tiny", "model_config": {"hidden": 0}}, ['hidden must be a positive int']),
])
def test_recipe_shapes_and_devices(tmp_path, capsys, recipe, words):
    refused_here(capsys, 'train', '--config', write_json(tmp_path/'r.json', recipe), '--out', tmp_path/'run', words=words)
    assert not (tmp_path/'run'/'run_config.json').exists()


def test_deep_json_is_one_line(tmp_path, capsys):
    (tmp_path/'deep.json').write_text('[' * 100_000 + ']' * 100_000)
    refused_here(capsys, 'train', '--config', tmp_path/'deep.json', '--out', tmp_path/'run', words=['nested too deeply'])


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
def test_cuda_device_without_cuda(tmp_path, capsys):
    cfg = write_json(tmp_path/'r.json', {"base": "tiny", "nproc": 1, "train": {"device": "cuda"}})
    refused_here(capsys, 'train', '--config', cfg, '--out', tmp_path/'run', words=["device 'cuda'", 'no CUDA GPU'])
    assert not (tmp_path/'run').exists()


# 7: model_config merges into the base's; the context width is checked before any data is encoded
def test_model_config_merges_and_context_width_is_checked_first(tmp_path, capsys):
    from sd_scratch.train import load_run_config, TOY_UNET
    run = load_run_config({"base": "toy", "model_config": {"num_heads": 2}})
    assert run.model_config == {**TOY_UNET, 'num_heads': 2}
    t0 = time.time()
    refused_here(capsys, 'train', '--config', write_json(tmp_path/'empty.json', {}), '--out', tmp_path/'run',
                 words=['64-wide contexts', 'cross_attention_dim=768'])
    assert time.time() - t0 < 30
    assert not [p for p in (tmp_path/'run').rglob('*')]                                  # no run_config.json, no data cache
    refused_here(capsys, 'train', '--config', write_json(tmp_path/'w.json', {"base": "toy", "model_config": {"cross_attention_dim": 32}}),
                 '--out', tmp_path/'run', words=['cross_attention_dim=32'])


# 8: --resume compares resolved values, and the checkpoint's own training config
def test_resume_compares_resolved_values_and_the_checkpoint(tmp_path, capsys):
    out = tmp_path/'run'
    assert main_cli(capsys, 'train', '--config', write_json(tmp_path/'a.json', {"base": "tiny", "nproc": 1}), '--out', out, '--no-progress')[0] == 0
    spelled = write_json(tmp_path/'b.json', {"base": "tiny", "nproc": 1, "train": {"seed": 0, "adam_eps": 1e-8}})
    assert main_cli(capsys, 'train', '--config', spelled, '--out', out, '--resume', '--no-progress')[0] == 0   # defaults spelled out
    (out/'run_config.json').unlink()
    other = write_json(tmp_path/'c.json', {"base": "tiny", "nproc": 1, "train": {"lr": 0.5, "batch_size": 16, "seed": 3}})
    refused_here(capsys, 'train', '--config', other, '--out', out, '--resume', words=['checkpoint', "'train.lr'", "'train.batch_size'", "'train.seed'"])


# 9: two shards whose names and keys share underscores keep distinct keys
def test_tar_keys_do_not_collide(tmp_path):
    import io, tarfile
    from sd_scratch.sources import iter_tar_shards, ShardStats
    from sd_scratch.shards import write_image_shards
    def tar(path, key, caption, colour):
        buf = io.BytesIO(); Image.new('RGB', (64, 64), colour).save(buf, format='JPEG')
        with tarfile.open(path, 'w') as t:
            for name, data in ((f'{key}.jpg', buf.getvalue()), (f'{key}.txt', caption.encode())):
                info = tarfile.TarInfo(name); info.size = len(data); t.addfile(info, io.BytesIO(data))
    (tmp_path/'in').mkdir()
    tar(tmp_path/'in'/'a.tar', 'b_c', 'a red square', 'red'); tar(tmp_path/'in'/'a_b.tar', 'c', 'a blue square', 'blue')
    keys = [k for k, *_ in iter_tar_shards(sorted((tmp_path/'in').glob('*.tar')))]
    assert len(set(keys)) == 2, keys
    st = write_image_shards(tmp_path/'in', tmp_path/'out', size=64, progress=False)
    assert st.written == 2 and st.duplicate_key == 0, st


# 10, 12: --strength without --init-image; the real culprit of a NaN image
def test_strength_needs_an_init_image_and_culprits_are_named(tmp_path, capsys):
    refused_here(capsys, 'generate', '--prompt', 'x', '--strength', '0.5', '--out', tmp_path/'o', words=['--strength', '--init-image'])
    refused_here(capsys, 'generate', '--prompt', 'x', '--eta', '1e30', '--out', tmp_path/'o', words=['--eta must lie in [0, 1]'])
    err = refused_here(capsys, 'generate', '--prompt', 'x', '--steps', '2', '--lora', 'data/toy_star_lora.safetensors:1e30',
                       '--out', tmp_path/'o', words=['LoRA scale (1e+30)'])
    assert 'guidance' not in err
    from sd_scratch.pipeline import StableDiffusion                   # the library gives the CLI's answer (one validator), before drawing
    with pytest.raises(ValueError, match=r'eta must lie in \[0, 1\]'):
        StableDiffusion.from_pretrained('toy').generate('a red circle', steps=3, eta=3)


# 11: integer (quantized) weights are refused by name
def test_integer_weights_are_refused(tmp_path, capsys):
    from safetensors.torch import save_file
    from sd_scratch.core import load_safetensors
    from sd_scratch.convert import save_single_file, load_single_file
    t, meta = load_safetensors('data/toy_star_lora.safetensors')
    save_file({k: v.to(torch.int8) for k, v in t.items()}, tmp_path/'int8_lora.safetensors', metadata=meta)
    refused_here(capsys, 'generate', '--prompt', 'x', '--steps', '1', '--lora', tmp_path/'int8_lora.safetensors', '--out', tmp_path/'o',
                 words=['LoRA weights must be floating point', 'torch.int8'])
    save_single_file(small_sd(), tmp_path/'sd.safetensors')
    t, meta = load_safetensors(tmp_path/'sd.safetensors')
    save_file({k: v.to(torch.int8) if v.is_floating_point() and k != 'alphas_cumprod' else v for k, v in t.items()}, tmp_path/'int8.safetensors', metadata=meta)
    with pytest.raises(ValueError, match='integers .*torch.int8'): load_single_file(tmp_path/'int8.safetensors')


# 13: numbering past 999, and two generates into one folder at once
def test_numbering_past_999_and_concurrent_writers(tmp_path, capsys):
    import threading
    from sd_scratch.cli import _save_numbered
    out = tmp_path/'o'; out.mkdir()
    Image.new('RGB', (8, 8)).save(out/'999_seed0.png')
    for n in ('1000', '1001'):
        assert main_cli(capsys, 'generate', '--prompt', 'a red circle', '--steps', '1', '--out', out)[0] == 0
        assert (out/f'{n}_seed0.png').exists()
    conc = tmp_path/'c'; conc.mkdir()
    img = Image.new('RGB', (8, 8))
    threads = [threading.Thread(target=lambda: [_save_numbered(img, conc, 0) for _ in range(5)]) for _ in range(6)]
    for th in threads: th.start()
    for th in threads: th.join()
    assert sorted(p.name for p in conc.iterdir()) == [f'{i:03d}_seed0.png' for i in range(30)]
    procs = [subprocess.Popen([sys.executable, '-m', 'sd_scratch.cli', 'generate', '--batch', str(tmp_path/'p.txt'), '--steps', '1',
                               '--out', str(tmp_path/'two')], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2) if (tmp_path/'p.txt').write_text('a red circle\na blue square\na green cross\n') or True]
    for p in procs: assert p.wait(timeout=120) == 0, p.stderr.read()
    names = sorted(p.name for p in (tmp_path/'two').iterdir())
    assert len(names) == 6 and len({n.split('_')[0] for n in names}) == 6, names      # six images, six numbers


# 14 (since issue 24 'sample' and 'v_prediction' load): a folder's scheduler config is read, and refused, before any weights
def test_sample_prediction_folder_reads_its_scheduler_first(tmp_path):
    from sd_scratch.convert import load_diffusers_folder, CheckpointError
    for d in ('unet', 'vae', 'text_encoder', 'scheduler'): (tmp_path/d).mkdir()
    for d in ('unet', 'vae', 'text_encoder'): (tmp_path/d/'config.json').write_text('{}')
    (tmp_path/'scheduler'/'scheduler_config.json').write_text(json.dumps({"prediction_type": "sample", "thresholding": True}))
    with pytest.raises(CheckpointError, match="thresholding=true") as e: load_diffusers_folder(tmp_path)
    assert 'trained to predict' not in str(e.value)
