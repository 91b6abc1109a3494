"`sd_scratch generate --sampler ... [--karras]` from the console script, with the shipped toy model (05a_samplers, 09_cli)."
import shutil, subprocess, sys
from pathlib import Path
import numpy as np, pytest
from PIL import Image

CLI = shutil.which('sd_scratch') or None

def run(*args):
    cmd = [CLI] if CLI else [sys.executable, '-m', 'sd_scratch.cli']
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=300)

def pngs(r): return [Path(l) for l in r.stdout.split() if l.endswith('.png')]

def test_dpmpp_2m_karras_draws_the_prompt_and_matches_the_library(tmp_path):
    "The issue's command: 8 DPM++ 2M Karras steps give the asked colour, shape and background, as the library does."
    from sd_scratch.pipeline import StableDiffusion
    from sd_scratch.evaluate import judge
    prompt = 'a red circle on a blue background'
    r = run('generate', '--sampler', 'dpmpp_2m', '--karras', '--steps', '8', '--prompt', prompt, '--guidance', '2', '--out', str(tmp_path))
    assert r.returncode == 0, r.stderr
    [p] = pngs(r)
    img = Image.open(p).convert('RGB')
    assert img.size == (64, 64)
    v = judge([img])[0]
    assert (v['colour'], v['shape'], v['background']) == ('red', 'circle', 'blue'), v
    ref = StableDiffusion.from_pretrained('toy').generate(prompt, steps=8, guidance_scale=2, sampler='dpmpp_2m_karras', seed=0)[0]
    assert np.abs(np.array(img, dtype=int) - np.array(ref, dtype=int)).max() <= 1   # --karras is the _karras name

def test_euler_a_karras_image_to_image(tmp_path):
    "An ancestral sampler with Karras levels, image-to-image: strength picks the starting noise level."
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(tmp_path/'init.png')
    r = run('generate', '--sampler', 'euler_a_karras', '--steps', '4', '--prompt', 'a green square on a black background',
            '--init-image', str(tmp_path/'init.png'), '--strength', '0.75', '--guidance', '2', '--out', str(tmp_path/'out'))
    assert r.returncode == 0, r.stderr
    assert Image.open(pngs(r)[0]).size == (64, 64)

@pytest.mark.parametrize('args,msg', [
    (['--sampler', 'euler_ancestral'], 'dpmpp_2m_karras'),          # argparse lists the valid names
    (['--sampler', 'ddim', '--karras'], '--karras applies to --sampler euler'),
    (['--sampler', 'heun', '--eta', '0.5'], "--eta applies to the 'ddim' sampler only"),
])
def test_bad_sampler_arguments(args, msg, tmp_path):
    r = run('generate', '--prompt', 'x', '--out', str(tmp_path), *args)
    assert r.returncode == 2 and msg in r.stderr and 'Traceback' not in r.stderr, (r.returncode, r.stderr)
    assert not list(tmp_path.glob('*.png'))

def test_help_names_the_samplers_and_the_karras_switch():
    r = run('generate', '--help')
    assert r.returncode == 0
    for name in ('euler_a', 'heun', 'dpmpp_2m', '--karras', 'dpmpp_2m_karras'): assert name in r.stdout, name
