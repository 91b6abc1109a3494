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
    refused(gen(tmp_path/'o', '--init-image', str(tmp_path/'notes.txt')), '--init-image', 'is not an image')
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


def test_v_prediction_folder_is_refused_in_a_sentence(tmp_path):
    from sd_scratch.convert import load_diffusers_folder, CheckpointError
    for d in ('unet', 'vae', 'text_encoder', 'scheduler'): (tmp_path/d).mkdir()
    for d in ('unet', 'vae', 'text_encoder'): (tmp_path/d/'config.json').write_text('{}')
    (tmp_path/'scheduler'/'scheduler_config.json').write_text(json.dumps({"prediction_type": "v_prediction"}))
    with pytest.raises(CheckpointError, match="trained to predict 'v_prediction'"): load_diffusers_folder(tmp_path)
    refused(gen(tmp_path/'o', '--checkpoint', str(tmp_path)), 'v_prediction')
