"""Peak memory (and time) of VAE decoding: full, sliced and tiled, ours vs diffusers, each in a fresh process.

Usage: python benchmarks/vae_memory.py [--sd] [--batch 4] [--size 256]
Default: the toy VAE config (random weights; memory does not depend on the weights) decoding a batch of
`size` px images. `--sd` uses the full SD 1.x VAE config (slow on CPU).
Peak memory is the process's peak resident set size (ru_maxrss) minus the resident size just before decoding.
"""
import argparse, json, subprocess, sys

CHILD = r'''
import json, resource, sys, time, torch
from sd_scratch.vae import *
a = json.loads(sys.argv[1])
cfg = VAEConfig() if a['sd'] else TOY_VAE_CONFIG
f = cfg.downsample_factor
z = torch.randn(a['batch'], cfg.latent_channels, a['size'] // f, a['size'] // f)
if a['impl'] == 'ours':
    vae = AutoencoderKL(cfg).eval()
    fn = {'full': lambda: vae.decode(z), 'sliced': lambda: decode_sliced(vae, z, 1),
          'tiled': lambda: decode_tiled(vae, z, tile=a['tile'], overlap=a['tile'] // 4)}[a['mode']]
else:
    ref = diffusers_vae(cfg)
    if a['mode'] == 'sliced': ref.enable_slicing()
    if a['mode'] == 'tiled':
        ref.enable_tiling(); ref.tile_latent_min_size = a['tile']; ref.tile_sample_min_size = a['tile'] * f
    fn = lambda: ref.decode(z).sample
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.no_grad():
    t = time.time(); out = fn(); dt = time.time() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
print(json.dumps(dict(peak_mib=peak / 1024, seconds=dt, shape=list(out.shape))))
'''

def run(**a):
    r = subprocess.run([sys.executable, '-c', CHILD, json.dumps(a)], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])

if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('--sd', action='store_true'); p.add_argument('--batch', type=int, default=4)
    p.add_argument('--size', type=int, default=256); p.add_argument('--tile', type=int, default=16)
    args = p.parse_args()
    print(f"{'SD 1.x' if args.sd else 'toy'} VAE config, decoding {args.batch} x {args.size}px, tile {args.tile} latents")
    res = {}
    for mode in ['full', 'sliced', 'tiled']:
        for impl in ['ours', 'diffusers']:
            res[impl, mode] = r = run(impl=impl, mode=mode, sd=args.sd, batch=args.batch, size=args.size, tile=args.tile)
            print(f"{impl:9s} {mode:6s}: peak +{r['peak_mib']:7.1f} MiB, {r['seconds']:6.2f} s")
    for mode in ['sliced', 'tiled']:
        print(f"ours {mode} / ours full peak memory: {res['ours', mode]['peak_mib'] / res['ours', 'full']['peak_mib']:.2f}")
    for mode in ['full', 'sliced', 'tiled']:
        print(f"{mode}: ours / diffusers peak memory {res['ours', mode]['peak_mib'] / max(res['diffusers', mode]['peak_mib'], 1e-9):.2f}, "
              f"time {res['ours', mode]['seconds'] / res['diffusers', mode]['seconds']:.2f}")
