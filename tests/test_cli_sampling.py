"`sd_scratch generate --prediction-type / --spacing / --steps-offset / --guidance-rescale` (issue 24): each reaches the library, each refused in a sentence where it cannot apply."
import shutil, subprocess, sys
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image

CLI = shutil.which('sd_scratch') or None

def run(*args):
    cmd = [CLI] if CLI else [sys.executable, '-m', 'sd_scratch.cli']
    return subprocess.run(cmd + ['generate'] + list(args), capture_output=True, text=True, timeout=300)

def pngs(r): return [Path(l) for l in r.stdout.split() if l.endswith('.png')]

def refused(r, words):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert words in r.stderr and 'Traceback' not in r.stderr, r.stderr

def test_spacing_offset_and_rescale_reach_generate(tmp_path):
    "The options draw what the library draws with the same arguments (toy model, Euler with SD 1.5's 'leading' + 1, rescaled guidance)."
    from sd_scratch.pipeline import StableDiffusion
    prompt = 'a red circle on a blue background'
    r = run('--prompt', prompt, '--sampler', 'euler', '--steps', '6', '--guidance', '4', '--spacing', 'leading', '--steps-offset', '1',
            '--guidance-rescale', '0.7', '--out', str(tmp_path))
    assert r.returncode == 0, r.stderr
    toy = StableDiffusion.from_pretrained('toy')
    ref = toy.generate(prompt, steps=6, guidance_scale=4, sampler='euler', timestep_spacing='leading', steps_offset=1, guidance_rescale=0.7, seed=0)[0]
    plain = toy.generate(prompt, steps=6, guidance_scale=4, sampler='euler', seed=0)[0]
    got = np.array(Image.open(pngs(r)[0]).convert('RGB'), dtype=int)
    assert np.abs(got - np.array(ref, dtype=int)).max() <= 1
    assert np.abs(got - np.array(plain, dtype=int)).max() > 1          # the options changed the image

@pytest.mark.parametrize('args,words', [
    (['--guidance-rescale', '1.5'], '--guidance-rescale must lie in [0, 1]'),
    (['--guidance-rescale', 'nan'], '--guidance-rescale must be a finite number'),
    (['--guidance', '1', '--guidance-rescale', '0.7'], 'guidance is off'),
    (['--spacing', 'uniform'], "invalid choice: 'uniform'"),
    (['--steps-offset', '-1'], '--steps-offset must be an integer >= 0'),
    (['--spacing', 'trailing', '--steps-offset', '1'], "shifts 'leading' timesteps only"),
    (['--sampler', 'flow_euler', '--spacing', 'trailing'], "--spacing do not apply to 'flow_euler'"),
    (['--sampler', 'flow_euler'], "'flow_euler' samples a flow-matching model"),     # the toy is an epsilon model
    (['--prediction-type', 'v_prediction'], "the toy model's UNet file, which says 'epsilon'"),
    (['--prediction-type', 'x0'], "invalid choice: 'x0'"),
])
def test_refused_in_a_sentence(tmp_path, args, words):
    refused(run('--prompt', 'a red circle', '--steps', '2', '--out', str(tmp_path), *args), words)

def small_v_model():
    from sd_scratch.pipeline import StableDiffusion
    from sd_scratch.clip import CLIPTokenizer, CLIPTextEncoder, CLIPTextConfig
    from sd_scratch.vae import AutoencoderKL, VAEConfig
    from sd_scratch.unet import UNet2DCondition, UNetConfig
    from sd_scratch.schedulers import NoiseSchedule
    torch.manual_seed(0)
    return StableDiffusion(CLIPTokenizer(), CLIPTextEncoder(CLIPTextConfig(hidden_size=32, n_layers=1, n_heads=2, intermediate_size=64)),
                           AutoencoderKL(VAEConfig(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4)),
                           UNet2DCondition(UNetConfig(block_out_channels=(16, 32), layers_per_block=1, cross_attn_levels=(True, False),
                                                      num_heads=2, cross_attention_dim=32, norm_groups=8)),
                           NoiseSchedule(prediction_type='v_prediction', rescale_betas_zero_snr=True), default_size=32,
                           sampling=dict(timestep_spacing='trailing'))

def test_a_v_prediction_single_file_and_folder(tmp_path):
    "Our single file and a diffusers folder of a v / zero-SNR / 'trailing' model: drawn with what they say; a contradicting --prediction-type is refused."
    from sd_scratch.convert import save_single_file, save_diffusers_folder
    sd = small_v_model()
    f = save_single_file(sd, tmp_path/'v.safetensors')
    folder = save_diffusers_folder(sd, tmp_path/'v-folder')
    ref = sd.generate('a red circle', steps=3, guidance_scale=3, seed=0, height=32, width=32, guidance_rescale=0.5)[0]
    for ckpt in (f, folder):
        for extra in ([], ['--prediction-type', 'v_prediction']):          # saying what the checkpoint says is fine
            out = tmp_path/f'out-{ckpt.name}-{len(extra)}'
            r = run('--checkpoint', str(ckpt), '--prompt', 'a red circle', '--steps', '3', '--guidance', '3', '--guidance-rescale', '0.5',
                    '--height', '32', '--width', '32', '--out', str(out), *extra)
            assert r.returncode == 0, r.stderr
            assert np.abs(np.array(Image.open(pngs(r)[0]).convert('RGB'), dtype=int) - np.array(ref, dtype=int)).max() <= 1
        refused(run('--checkpoint', str(ckpt), '--prompt', 'x', '--steps', '2', '--out', str(tmp_path/'no'), '--prediction-type', 'epsilon'),
                "'v_prediction'")
