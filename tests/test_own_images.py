"""Your own pictures, end to end, from outside: the commands a user types.

A random small SD 1.x-layout model saved as a single file stands in for a real checkpoint (nothing is downloaded);
14 real photos that scikit-image ships stand in for the user's (captions beside some, in metadata.jsonl for the rest).
`sd_scratch data` makes the latent shards; `sd_scratch train` runs 2 LoRA steps and 2 full fine-tune steps from that file,
each also interrupted after one step and resumed (bit-exact); diffusers draws the same images from every export.
The README's "Train on your own images" commands run verbatim on the shipped toy.
"""
import json, re, shutil, subprocess, sys, warnings
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
CLI = shutil.which('sd_scratch')
PHOTOS = ['astronaut', 'coffee', 'chelsea', 'rocket', 'camera', 'cat', 'hubble_deep_field', 'immunohistochemistry',
          'colorwheel', 'retina', 'brick', 'coins', 'clock', 'moon']


def run(*args, cwd=None, ok=True):
    cmd = ([CLI] if CLI else [sys.executable, '-m', 'sd_scratch.cli']) + [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd)
    if ok: assert r.returncode == 0, (cmd, r.stdout[-2000:], r.stderr[-3000:])
    return r


def make_photos(folder: Path, n: int = len(PHOTOS)) -> Path:
    "n skimage photos (up to 14): the first 5 with a caption .txt beside them, the rest captioned in metadata.jsonl (in a subfolder too)."
    from skimage import data as skd
    (folder/'more').mkdir(parents=True)
    rows = []
    for i, name in enumerate(PHOTOS[:n]):
        a = getattr(skd, name)()
        img = Image.fromarray(a if a.dtype == np.uint8 else a.astype(np.uint8)).convert('RGB')
        if i < 5: img.save(folder/f'{name}.jpg'); (folder/f'{name}.txt').write_text(f'a photo of a {name}')
        else:
            rel = f'more/{name}.png' if i % 2 else f'{name}.png'
            img.save(folder/rel); rows.append(dict(file_name=rel, text=f'a picture of a {name}'))
    (folder/'metadata.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return folder


def small_sd():
    from sd_scratch.clip import CLIPTokenizer, CLIPTextConfig
    from sd_scratch.vae import VAEConfig
    from sd_scratch.unet import UNetConfig
    from sd_scratch.clip import CLIPTextEncoder
    from sd_scratch.vae import AutoencoderKL
    from sd_scratch.unet import UNet2DCondition
    from sd_scratch.convert import SDConfig
    from sd_scratch.pipeline import StableDiffusion
    from sd_scratch.schedulers import NoiseSchedule
    cfg = SDConfig(text=CLIPTextConfig(hidden_size=32, n_layers=2, n_heads=4, intermediate_size=64),
                   vae=VAEConfig(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8),
                   unet=UNetConfig(block_out_channels=(32, 32, 64), layers_per_block=1, cross_attn_levels=(True, True, False),
                                   num_heads=2, cross_attention_dim=32, norm_groups=8))
    torch.manual_seed(0)
    text, vae, unet = CLIPTextEncoder(cfg.text), AutoencoderKL(cfg.vae), UNet2DCondition(cfg.unet)
    with torch.no_grad():                                   # random, but not the zero-initialised outputs of a fresh model
        for p in unet.parameters(): p.add_(0.02 * torch.randn_like(p))
    return StableDiffusion(CLIPTokenizer(), text.eval(), vae.eval(), unet.eval(), NoiseSchedule(), default_size=64)


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "The base single file, the photos and the data folder made by `sd_scratch data`."
    from sd_scratch.convert import save_single_file
    root = tmp_path_factory.mktemp('own')
    save_single_file(small_sd(), root/'base.safetensors')
    make_photos(root/'photos')
    r = run('data', root/'photos', root/'data', '--checkpoint', root/'base.safetensors', '--size', 64, '--samples-per-shard', 4,
            '--no-progress')
    return root, r


def test_data_command(world):
    root, r = world
    assert '14 pictures in 4 latent shards (4 made now)' in r.stdout and 'skipped' not in r.stdout, r.stdout
    assert not (root/'data'/'images').exists()                                    # no second copy of the pictures
    assert sorted(p.name for p in (root/'data'/'latents').glob('*.tar')) == ['00000.tar', '00001.tar', '00002.tar', '00003.tar']
    manifest = json.loads((root/'data'/'data.json').read_text())
    assert manifest['done'] and manifest['settings']['size'] == 64 and manifest['stats']['written'] == manifest['images'] == 14
    from sd_scratch.shards import LatentShardDataset
    samples = list(LatentShardDataset(root/'data'/'latents', rank=0, world_size=1))
    assert len(samples) == 14 and samples[0][0].shape == (4, 32, 32)                # the small VAE halves: 64 px -> 32x32
    assert all(torch.isfinite(z).all() and z.std() > 0.01 for z, _ in samples)
    assert {c for _, c in samples} >= {'a photo of a astronaut', 'a picture of a retina'}
    again = run('data', root/'photos', root/'data', '--checkpoint', root/'base.safetensors', '--size', 64, '--samples-per-shard', 4,
                '--no-progress')
    assert '14 pictures in 4 latent shards (4 kept from an earlier run, 0 made now)' in again.stdout   # a re-run redoes nothing
    other = run('data', root/'photos', root/'data', '--checkpoint', root/'base.safetensors', '--size', 32, '--no-progress', ok=False)
    assert other.returncode == 2 and 'other settings' in other.stderr and 'Traceback' not in other.stderr


def test_data_command_resumes_and_counts_bad_input(world, tmp_path):
    "An interrupted run (its last latent shard never finished) is continued; bad images and captions are counted by reason."
    root, _ = world
    data = tmp_path/'data'
    shutil.copytree(root/'data', data)
    (data/'latents'/'00003.tar').unlink(); (data/'latents'/'00003.json').unlink()
    doc = json.loads((data/'data.json').read_text()); doc['done'] = False; (data/'data.json').write_text(json.dumps(doc))
    r = run('data', root/'photos', data, '--checkpoint', root/'base.safetensors', '--size', 64, '--samples-per-shard', 4, '--no-progress')
    assert '14 pictures in 4 latent shards (3 kept from an earlier run, 1 made now)' in r.stdout, r.stdout
    from sd_scratch.shards import LatentShardDataset
    a = [(z, c) for z, c in LatentShardDataset(root/'data'/'latents', rank=0, world_size=1)]
    b = [(z, c) for z, c in LatentShardDataset(data/'latents', rank=0, world_size=1)]
    assert [c for _, c in a] == [c for _, c in b] and all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))
    bad = tmp_path/'bad'; make_photos(bad)
    (bad/'broken.jpg').write_bytes(b'not a jpeg'); (bad/'broken.txt').write_text('broken')
    Image.new('RGB', (20, 20)).save(bad/'tiny.png'); (bad/'tiny.txt').write_text('too small')
    Image.new('RGB', (80, 80)).save(bad/'nocaption.png')
    with open(bad/'metadata.jsonl', 'a') as f: f.write('{"file_name": "gone.jpg", "text": "x"}\n')
    r = run('data', bad, tmp_path/'bad_data', '--checkpoint', root/'base.safetensors', '--size', 64, '--no-progress')
    assert '14 pictures' in r.stdout and '4 skipped (unreadable 1, too_small 1, no_caption 1, missing_image 1)' in r.stdout, r.stdout


def _json(path: Path, d: dict) -> Path:
    path.write_text(json.dumps(d)); return path


def _train_twice(root: Path, recipe: Path, name: str) -> tuple:
    "The recipe straight through, and the same recipe stopped after step 1 and resumed with `--resume`: both run folders."
    straight, resumed = root/f'{name}_straight', root/f'{name}_resumed'
    run('train', '--config', recipe, '--checkpoint', root/'base.safetensors', '--data', root/'data', '--out', straight, '--no-progress')
    from sd_scratch.train import train_run, load_run_config
    class Stop(Exception): pass
    def stop_at_second(rec):
        if rec['step'] == 1: raise Stop                        # after step 1's checkpoint, before step 2's
    with pytest.raises(Stop):
        train_run(load_run_config(str(recipe), data=str(root/'data'), checkpoint=str(root/'base.safetensors')), resumed, progress=stop_at_second)
    assert json.loads((resumed/'log.jsonl').read_text().splitlines()[-1])['step'] == 1
    run('train', '--config', recipe, '--checkpoint', root/'base.safetensors', '--data', root/'data', '--out', resumed, '--resume', '--no-progress')
    return straight, resumed


def _same_files(a: Path, b: Path, names):
    for n in names:
        x, y = load_file(a/n), load_file(b/n)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), n
    assert (a/'log.jsonl').read_text() != '' and [json.loads(l)['loss'] for l in (a/'log.jsonl').read_text().splitlines()] == \
           [json.loads(l)['loss'] for l in (b/'log.jsonl').read_text().splitlines()]


def _diffusers(folder):
    import diffusers, transformers
    diffusers.utils.logging.set_verbosity_error(); transformers.utils.logging.set_verbosity_error()
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


PROMPT = 'a photo of a astronaut'
LATENTS = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))


def _draw_ours(sd):
    return sd.generate(PROMPT, steps=10, guidance_scale=3.0, latents=LATENTS.clone(), height=64, width=64, output_type='pt')


def _draw_theirs(pipe):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return pipe(PROMPT, num_inference_steps=10, guidance_scale=3.0, latents=LATENTS.clone(), height=64, width=64, output_type='pt').images


def test_lora_fine_tune(world):
    root, _ = world
    recipe = _json(root/'lora2.json', dict(base='lora', train=dict(steps=2, batch_size=4, lr=0.05, warmup_steps=1, ckpt_every=1,
                                                                    log_every=1, val_every=1, val_timesteps=2, device='cpu')))
    straight, resumed = _train_twice(root, recipe, 'lora')
    _same_files(straight, resumed, ['lora.safetensors', 'lora_kohya.safetensors', 'checkpoint.safetensors'])
    log = [json.loads(l) for l in (straight/'log.jsonl').read_text().splitlines()]
    assert len(log) == 2 and all('val_loss' in r and np.isfinite(r['val_loss']) for r in log)   # val_fraction 0.1 of 14: 1 held out
    kohya = load_file(straight/'lora_kohya.safetensors')
    assert any(k.startswith('lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down') for k in kohya)
    import sd_scratch.lora                                     # gives StableDiffusion.load_lora
    from sd_scratch.convert import load_pipeline, save_diffusers_folder
    base = load_pipeline(root/'base.safetensors')
    save_diffusers_folder(base, root/'base_diffusers')
    plain = _draw_ours(base)
    pipe = _diffusers(root/'base_diffusers')
    for name in ('lora.safetensors', 'lora_kohya.safetensors'):
        ours = _draw_ours(load_pipeline(root/'base.safetensors').load_lora(straight/name))
        pipe.load_lora_weights(str(straight), weight_name=name, adapter_name=name.split('.')[0])
        theirs = _draw_theirs(pipe)
        pipe.delete_adapters(name.split('.')[0])
        assert (ours - theirs).abs().max() < 1e-4, (name, (ours - theirs).abs().max())
        assert (ours - plain).abs().max() > 1e-3, name         # the adapter changes the image: the comparison means something


def test_full_fine_tune(world):
    root, _ = world
    recipe = _json(root/'full2.json', dict(base='finetune', train=dict(steps=2, batch_size=4, lr=1e-3, warmup_steps=1, ckpt_every=1,
                                                                        log_every=1, val_every=1, val_timesteps=2, device='cpu',
                                                                        gradient_checkpointing=False)))
    straight, resumed = _train_twice(root, recipe, 'full')
    _same_files(straight, resumed, ['unet.safetensors', 'sd.safetensors', 'checkpoint.safetensors'])
    from sd_scratch.convert import load_pipeline
    ours = _draw_ours(load_pipeline(straight/'sd.safetensors'))
    theirs = _draw_theirs(_diffusers(straight/'diffusers'))
    assert (ours - theirs).abs().max() < 1e-4, (ours - theirs).abs().max()
    assert (ours - _draw_ours(load_pipeline(root/'base.safetensors'))).abs().max() > 1e-3   # fine-tuned: not the base model
    assert torch.equal(ours, _draw_ours(load_pipeline(straight/'diffusers')))                # our two exports agree


def _readme_commands() -> list:
    "The shell commands of the first block of the README's 'Train on your own images' section, in order."
    text = (REPO/'README.md').read_text()
    section = text.split('## Train on your own images', 1)[1].split('\n## ', 1)[0]
    first = re.findall(r"```(?:bash|sh)?\n(.*?)```", section, re.S)[0]       # the section's first block: the commands on your photos
    return [l.strip() for l in first.splitlines() if l.strip().startswith('sd_scratch ')]


def test_readme_own_images_commands(tmp_path):
    "Exactly the README's commands, on a folder of 12 photos with captions, with the shipped toy as the base model."
    cmds = _readme_commands()
    assert 2 <= len(cmds) <= 4 and cmds[0].startswith('sd_scratch data') and cmds[-1].startswith('sd_scratch generate'), cmds
    make_photos(tmp_path/'my_photos', n=12)
    import shlex
    outs = [run(*shlex.split(c)[1:], cwd=tmp_path) for c in cmds]
    assert '12 pictures' in outs[0].stdout, outs[0].stdout
    lora = next(tmp_path.rglob('lora.safetensors'))
    assert (lora.parent/'lora_kohya.safetensors').exists()
    pngs = sorted(tmp_path.rglob('*_seed*.png'))
    assert pngs and Image.open(pngs[0]).size == (64, 64)
    import sd_scratch.lora
    from sd_scratch.pipeline import StableDiffusion
    from sd_scratch.convert import save_diffusers_folder
    prompt = re.search(r'--prompt "([^"]+)"', cmds[-1]).group(1)
    save_diffusers_folder(StableDiffusion.from_pretrained('toy'), tmp_path/'toy_diffusers')
    pipe = _diffusers(tmp_path/'toy_diffusers')
    pipe.load_lora_weights(str(lora.parent), weight_name='lora.safetensors')
    lat = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    ours = StableDiffusion.from_pretrained('toy').load_lora(lora).generate(prompt, steps=10, guidance_scale=3.0, latents=lat.clone(), output_type='pt')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        theirs = pipe(prompt, num_inference_steps=10, guidance_scale=3.0, latents=lat.clone(), height=64, width=64, output_type='pt').images
    assert (ours - theirs).abs().max() < 1e-4


def test_data_command_refuses_non_finite_latents(world, tmp_path):
    "A VAE that gives NaN latents (broken weights) is an error naming the shard, never a data set of NaNs."
    from sd_scratch.convert import save_single_file
    root, _ = world
    sd = small_sd()
    with torch.no_grad(): sd.vae.encoder.conv_in.weight[0, 0, 0, 0] = float('nan')
    save_single_file(sd, tmp_path/'nan.safetensors')
    r = run('data', root/'photos', tmp_path/'data', '--checkpoint', tmp_path/'nan.safetensors', '--size', 64, '--no-progress', ok=False)
    assert r.returncode == 2 and 'non-finite latents' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not list((tmp_path/'data'/'latents').glob('*.tar'))


def test_data_command_under_torchrun(world, tmp_path):
    "Two processes: rank 0 writes the image shards, each rank encodes its share; the latents equal the one-process run's."
    root, _ = world
    torchrun = shutil.which('torchrun')
    cmd = ([torchrun] if torchrun else [sys.executable, '-m', 'torch.distributed.run']) + [
        '--standalone', '--nproc_per_node', '2', '-m', 'sd_scratch.cli', 'data', str(root/'photos'), str(tmp_path/'data'),
        '--checkpoint', str(root/'base.safetensors'), '--size', '64', '--samples-per-shard', '4', '--no-progress']
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**__import__('os').environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('14 pictures') == 1                                         # rank 0 speaks for all
    from sd_scratch.shards import LatentShardDataset
    one = list(LatentShardDataset(root/'data'/'latents', rank=0, world_size=1))
    two = list(LatentShardDataset(tmp_path/'data'/'latents', rank=0, world_size=1))
    assert [c for _, c in one] == [c for _, c in two]                                 # the same samples in the same shards
    assert all(torch.allclose(a, b, rtol=1e-2, atol=1e-3) for (a, _), (b, _) in zip(one, two))   # (thread counts may round differently)
