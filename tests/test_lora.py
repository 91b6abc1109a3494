"LoRA from the outside: `StableDiffusion.load_lora` / `unload_lora` and `sd_scratch generate --lora FILE[:SCALE]` on the shipped toy."
import shutil, subprocess, sys
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image
from safetensors.torch import save_file
from sd_scratch.pipeline import StableDiffusion
from sd_scratch.lora import inject_lora, lora_parameters, save_lora, remove_lora

CLI = shutil.which('sd_scratch') or None
PROMPT = 'a red circle on a blue background'


def run(*args):
    cmd = [CLI] if CLI else [sys.executable, '-m', 'sd_scratch.cli']
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def adapter(tmp_path_factory):
    "A random (as if trained) rank-4 adapter for the toy UNet, saved as a LoRA file."
    sd = StableDiffusion.from_pretrained('toy')
    torch.manual_seed(0)
    inject_lora(sd.unet, rank=4)
    with torch.no_grad():
        for p in lora_parameters(sd.unet): p.add_(0.3 * torch.randn_like(p))
    path = save_lora(sd.unet, tmp_path_factory.mktemp('lora')/'adapter.safetensors')
    return path, sd


def images(sd, **kw): return sd.generate(PROMPT, steps=4, guidance_scale=2.0, seed=0, output_type='pt', **kw)


def test_load_unload(adapter):
    path, adapted = adapter
    sd = StableDiffusion.from_pretrained('toy')
    base = images(sd)
    sd.load_lora(path)
    assert torch.equal(images(sd), images(adapted))                 # the file holds the adapter exactly
    assert (images(sd) - base).abs().max() > 0.02                   # and it changes the image
    with pytest.raises(ValueError, match='already has LoRA adapters'): sd.load_lora(path)
    sd.unload_lora()
    assert torch.equal(images(sd), base)                            # back to the base model, bit for bit
    sd.load_lora(path, scale=0.0)
    assert torch.equal(images(sd), base)                            # strength 0: the base model
    sd.unload_lora()
    with pytest.raises(ValueError, match='finite'): sd.load_lora(path, scale=float('nan'))


def test_cli_lora(adapter, tmp_path):
    path, adapted = adapter
    outs = {}
    for name, extra in (('base', []), ('full', ['--lora', str(path)]), ('zero', ['--lora', f'{path}:0'])):
        r = run('generate', '--prompt', PROMPT, '--steps', '4', '--guidance', '2', '--out', str(tmp_path/name), *extra)
        assert r.returncode == 0, r.stderr
        outs[name] = np.array(Image.open(next((tmp_path/name).glob('*.png')))).astype(int)
    ref = (images(adapted)[0].permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(outs['full'] - ref).max() <= 1                     # the CLI draws what the library draws with the adapter
    assert np.abs(outs['full'] - outs['base']).max() > 5
    assert np.abs(outs['zero'] - outs['base']).max() <= 1            # FILE:0 is the base model


def test_cli_refuses_bad_lora(tmp_path):
    bad = tmp_path/'bad.safetensors'
    save_file({'unet.down_blocks.7.attn1.to_q.lora_A.weight': torch.zeros(4, 8),
               'unet.down_blocks.7.attn1.to_q.lora_B.weight': torch.zeros(8, 4)}, str(bad))
    r = run('generate', '--prompt', PROMPT, '--steps', '2', '--lora', str(bad), '--out', str(tmp_path/'o'))
    assert r.returncode == 2 and 'down_blocks.7.attn1.to_q' in r.stderr, r.stderr
    assert not list((tmp_path/'o').glob('*.png')) if (tmp_path/'o').exists() else True
    r = run('generate', '--prompt', PROMPT, '--lora', str(tmp_path/'missing.safetensors'), '--out', str(tmp_path/'o'))
    assert r.returncode == 2 and 'is not a file' in r.stderr, r.stderr
    r = run('generate', '--prompt', PROMPT, '--lora', f'{bad}:inf', '--out', str(tmp_path/'o'))
    assert r.returncode == 2 and 'finite' in r.stderr, r.stderr


def test_cli_draws_the_shipped_star(tmp_path):
    "Issue 16's done-when: `sd_scratch generate --lora <shipped adapter> --prompt '<a star caption>' --guidance 2` draws a star."
    from sd_scratch.core import asset_path
    from sd_scratch.data import SHAPES
    from sd_scratch.evaluate import judge
    star = 'a red star on a blue background'
    for name, extra in (('base', []), ('star', ['--lora', str(asset_path('toy_star_lora.safetensors'))])):
        r = run('generate', '--prompt', star, '--guidance', '2', '--out', str(tmp_path/name), *extra)
        assert r.returncode == 0, r.stderr
    seen = {name: judge(Image.open(next((tmp_path/name).glob('*.png'))), SHAPES + ('star',))[0] for name in ('base', 'star')}
    assert (seen['star']['shape'], seen['star']['colour'], seen['star']['background']) == ('star', 'red', 'blue'), seen
    assert seen['base']['shape'] != 'star', seen                    # the toy without the adapter has never seen a star


def test_cli_train_lora_recipe(tmp_path):
    "`sd_scratch train` runs a `lora` recipe (a cut-down `lora_toy`): it writes lora.safetensors, which loads, and resumes like any run."
    import json
    cfg = tmp_path/'lora.json'
    cfg.write_text(json.dumps(dict(base='lora_toy', n_images=8, replay=8, train=dict(steps=2, batch_size=4, ckpt_every=0))))
    r = run('train', '--config', str(cfg), '--out', str(tmp_path/'run'), '--no-progress')
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])['step'] == 2
    assert not (tmp_path/'run'/'unet.safetensors').exists()          # the adapters alone, not a whole UNet
    sd = StableDiffusion.from_pretrained('toy')
    base = images(sd)
    sd.load_lora(tmp_path/'run'/'lora.safetensors')
    assert (images(sd) - base).abs().max() > 0                       # trained adapters: B is no longer zero
    cfg.write_text(json.dumps(dict(base='lora_toy', n_images=8, replay=8, train=dict(steps=3, batch_size=4, ckpt_every=0))))
    r = run('train', '--config', str(cfg), '--out', str(tmp_path/'run'), '--no-progress', '--resume')
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])['step'] == 3
    bad = tmp_path/'bad.json'; bad.write_text(json.dumps(dict(base='lora_toy', init_unet=None)))   # named, no traceback
    r = run('train', '--config', str(bad), '--out', str(tmp_path/'bad'))
    assert r.returncode != 0 and 'lora adapts a trained UNet' in r.stderr and 'Traceback' not in r.stderr
    bad.write_text(json.dumps(dict(base='lora_toy', init_unet=str(tmp_path/'missing.safetensors'))))
    r = run('train', '--config', str(bad), '--out', str(tmp_path/'bad'))
    assert r.returncode != 0 and 'missing.safetensors' in r.stderr and 'not found' in r.stderr and 'Traceback' not in r.stderr
    assert not (tmp_path/'bad').exists()                              # refused before any data was encoded or written
