"`sd_scratch generate` end to end from the console script: a tiny model saved as an SD single file, text-to-image and image-to-image."
import json, subprocess, sys, shutil
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image
from sd_scratch.schedulers import NoiseSchedule
from sd_scratch.clip import CLIPTokenizer, CLIPTextConfig, CLIPTextEncoder
from sd_scratch.vae import VAEConfig, AutoencoderKL
from sd_scratch.unet import UNetConfig, UNet2DCondition
from sd_scratch.pipeline import StableDiffusion
from sd_scratch.convert import save_single_file

CLI = shutil.which('sd_scratch') or None

def run(*args):
    cmd = [CLI] if CLI else [sys.executable, '-m', 'sd_scratch.cli']
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=300)

@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    text = CLIPTextEncoder(CLIPTextConfig(hidden_size=32, n_layers=1, n_heads=2, intermediate_size=64)).eval()
    vae = AutoencoderKL(VAEConfig(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4)).eval()
    unet = UNet2DCondition(UNetConfig(block_out_channels=(16, 32), layers_per_block=1, cross_attn_levels=(True, False),
                                      num_heads=2, cross_attention_dim=32, norm_groups=8)).eval()
    sd = StableDiffusion(CLIPTokenizer(), text, vae, unet, NoiseSchedule())
    return save_single_file(sd, tmp_path_factory.mktemp('ckpt')/'tiny.safetensors'), sd

def test_generate_writes_pngs_and_matches_the_library(checkpoint, tmp_path):
    ckpt, sd = checkpoint
    r = run('generate', '--checkpoint', str(ckpt), '--prompt', 'a red circle', '--steps', '3', '--height', '64',
            '--width', '64', '--seed', '5', '--out', str(tmp_path))
    assert r.returncode == 0, r.stderr
    paths = [Path(l) for l in r.stdout.split() if l.endswith('.png')]
    assert len(paths) == 1 and paths[0].exists()
    img = np.array(Image.open(paths[0]))
    assert img.shape == (64, 64, 3)
    # the same call through the library gives the same picture (seeds reproduce across processes)
    ref = np.array(sd.generate('a red circle', steps=3, height=64, width=64, seed=5)[0])
    assert np.abs(img.astype(int) - ref.astype(int)).max() <= 1

def test_generate_batch_and_img2img(checkpoint, tmp_path):
    ckpt, _ = checkpoint
    (tmp_path/'prompts.txt').write_text('a red circle\n\na blue square\n')
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(tmp_path/'init.png')
    r = run('generate', '--checkpoint', str(ckpt), '--batch', str(tmp_path/'prompts.txt'), '--steps', '4',
            '--init-image', str(tmp_path/'init.png'), '--strength', '0.5', '--out', str(tmp_path/'out'))
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path/'out').glob('*.png'))) == 2

@pytest.mark.parametrize('args,msg', [
    (['--prompt', 'x', '--strength', '0'], '--strength'),
    (['--prompt', 'x', '--steps', '0'], '--steps'),
    (['--prompt', 'x', '--width', '65'], 'multiple of 8'),
    (['--prompt', 'x', '--checkpoint', 'nowhere.safetensors'], 'does not exist'),
])
def test_generate_bad_arguments(args, msg):
    r = run('generate', *args)
    assert r.returncode == 2 and msg in r.stderr, (r.returncode, r.stderr)

def test_truncated_checkpoint_is_a_clear_error(checkpoint, tmp_path):
    ckpt, _ = checkpoint
    bad = tmp_path/'bad.safetensors'
    bad.write_bytes(ckpt.read_bytes()[:1000])
    r = run('generate', '--checkpoint', str(bad), '--prompt', 'x', '--height', '64', '--width', '64')
    assert r.returncode == 2 and 'bad.safetensors' in r.stderr and 'Traceback' not in r.stderr, r.stderr

def test_no_checkpoint_uses_the_shipped_toy_model(tmp_path):
    r = run('generate', '--prompt', 'a red circle on a blue background', '--steps', '5', '--out', str(tmp_path))
    assert r.returncode == 0, r.stderr
    paths = [Path(l) for l in r.stdout.split() if l.endswith('.png')]
    assert len(paths) == 1 and Image.open(paths[0]).size == (64, 64)    # the toy model's own size when none is given

def test_train_a_short_toy_run_from_a_json_recipe(tmp_path):
    "The toy recipe shortened in a JSON file (`base` + overrides) trains from the CLI and exports a UNet the pipeline loads."
    from sd_scratch.pipeline import StableDiffusion, load_unet
    (tmp_path/'run.json').write_text(json.dumps({"base": "toy", "train": {"steps": 20}}))
    r = run('train', '--config', str(tmp_path/'run.json'), '--out', str(tmp_path/'run'), '--no-progress')
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])['step'] == 20
    assert len((tmp_path/'run'/'log.jsonl').read_text().splitlines()) == 2          # the toy logs every 10 steps
    unet, _ = load_unet(tmp_path/'run'/'unet.safetensors')
    sd = StableDiffusion.from_pretrained('toy', unet=tmp_path/'run'/'unet.safetensors')
    assert sd.generate('a red circle on a blue background', steps=2, guidance_scale=2)[0].size == (64, 64)
    again = run('train', '--config', str(tmp_path/'run.json'), '--out', str(tmp_path/'run'), '--no-progress')
    assert again.returncode == 2 and 'already holds a training run' in again.stderr and 'Traceback' not in again.stderr

def test_generate_inpaints_and_follows_a_controlnet_as_the_library_does(tmp_path):
    "`--mask` (lesson 07f) and `--controlnet`/`--control` (lesson 07g) from the console script: the library's pictures, bad input refused."
    from sd_scratch.core import asset_path
    from sd_scratch.inpaint import inpaint
    from sd_scratch.controlnet import load_controlnet, ControlHook
    Image.fromarray(np.full((64, 64, 3), 230, np.uint8)).save(tmp_path/'picture.png')
    hole = np.zeros((64, 64), np.uint8); hole[20:44, 20:44] = 255
    Image.fromarray(hole).save(tmp_path/'mask.png'); Image.fromarray(hole[:32]).save(tmp_path/'short.png')
    Image.fromarray(np.stack([hole] * 3, -1)).save(tmp_path/'control.png')
    net = str(asset_path('toy_controlnet.safetensors'))
    r = run('generate', '--prompt', 'a blue star on a white background', '--init-image', str(tmp_path/'picture.png'),
            '--mask', str(tmp_path/'mask.png'), '--steps', '4', '--out', str(tmp_path/'a'))
    assert r.returncode == 0, r.stderr
    sd = StableDiffusion.from_pretrained('toy')
    ref = inpaint(sd, 'a blue star on a white background', tmp_path/'picture.png', tmp_path/'mask.png', steps=4)[0]
    assert np.abs(np.asarray(Image.open(r.stdout.split()[0]), int) - np.asarray(ref, int)).max() <= 1
    r = run('generate', '--prompt', 'a red circle on a white background', '--controlnet', net, '--control', str(tmp_path/'control.png'),
            '--control-scale', '0.8', '--steps', '4', '--out', str(tmp_path/'b'))
    assert r.returncode == 0, r.stderr
    ref = sd.generate('a red circle on a white background', steps=4, hooks=[ControlHook(load_controlnet(net), tmp_path/'control.png', 0.8)])[0]
    assert np.abs(np.asarray(Image.open(r.stdout.split()[0]), int) - np.asarray(ref, int)).max() <= 1
    for args, why in ((['--init-image', str(tmp_path/'picture.png'), '--mask', str(tmp_path/'short.png')], 'is 64x32 pixels but the image is 64x64 (width x height)'),
                      (['--mask', str(tmp_path/'mask.png')], 'give --init-image too'),
                      (['--controlnet', net], 'go together'),
                      (['--controlnet', net, '--control', str(tmp_path/'short.png')], 'must be the same size')):
        r = run('generate', '--prompt', 'x', '--steps', '2', '--out', str(tmp_path/'c'), *args)
        assert r.returncode == 2 and why in r.stderr and 'Traceback' not in r.stderr, r.stderr
