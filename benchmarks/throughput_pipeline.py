"""Sampling throughput, ours vs diffusers: images/s of text-to-image with the same weights, side by side in one process.

    python benchmarks/throughput_pipeline.py --threads 2 --out /tmp/throughput_pipeline.json
    python benchmarks/throughput_pipeline.py --threads 1 --batches 1 --reps 2 --out /tmp/t.json   # a quick look

Two models: the shipped toy (`StableDiffusion.from_pretrained('toy')`: 3-level VAE, 2.5M-parameter UNet, 64 px) and a
small random SD (4-level VAE, so latents 8x smaller as in SD 1.x; a 2-level UNet; a 2-layer CLIP), the shape notebook 06
compares with diffusers. Each is written with `sd_scratch.convert.save_diffusers_folder` and read back by
`diffusers.StableDiffusionPipeline.from_pretrained`, so both pipelines hold the same numbers.
Every run: the same prompts and starting latents on both sides, 25 DDIM steps, guidance 2 (the UNet sees a doubled batch),
64 px, output as tensors, progress bars off. Runs alternate (ours, diffusers, ours, ...) after untimed warm-up runs; the
table shows medians of wall-clock images/s and of CPU seconds (time.process_time, all threads of this process) per run.
The ratio is ours / diffusers images per second (> 1: ours is faster); the cpu ratio is the same in CPU seconds, which a
busy machine disturbs less. Wall-clock numbers depend on what else the machine runs: compare them only within one run.
On a machine whose cores are busy with other work, use --threads 1: torch's worker threads wait for each other in a spin,
and 2 threads on 2 shared cores ran the toy 10x slower than 1 thread (measured here).
"""
import argparse, json, os, statistics, sys, tempfile, time
from pathlib import Path
import torch


def small_random_sd(seed:int=0):
    "A small Stable Diffusion with random weights (the shapes notebook 06 builds), through our own classes."
    from sd_scratch.clip import CLIPTokenizer, CLIPTextConfig, CLIPTextEncoder
    from sd_scratch.vae import VAEConfig, AutoencoderKL
    from sd_scratch.unet import UNetConfig, UNet2DCondition
    from sd_scratch.schedulers import NoiseSchedule
    from sd_scratch.pipeline import StableDiffusion
    torch.manual_seed(seed)
    text = CLIPTextEncoder(CLIPTextConfig(hidden_size=32, intermediate_size=64, n_layers=2, n_heads=4))
    vae = AutoencoderKL(VAEConfig(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4))
    unet = UNet2DCondition(UNetConfig(block_out_channels=(32, 64), layers_per_block=1, cross_attn_levels=(True, False), num_heads=8,
                                      cross_attention_dim=32, norm_groups=8))
    return StableDiffusion(CLIPTokenizer(), text.eval(), vae.eval(), unet.eval(), NoiseSchedule(), default_size=64)


def models(names):
    from sd_scratch.pipeline import StableDiffusion
    for name in names:
        if name == 'toy': yield name, StableDiffusion.from_pretrained('toy')
        elif name == 'small': yield name, small_random_sd()
        else: raise SystemExit(f"unknown model {name!r}: choose from toy, small")


def diffusers_twin(sd, folder:Path):
    "diffusers' StableDiffusionPipeline reading `sd` written as a diffusers folder."
    from diffusers import StableDiffusionPipeline
    from sd_scratch.convert import save_diffusers_folder
    save_diffusers_folder(sd, folder)
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def bench(name, sd, pipe, batch:int, args) -> dict:
    prompts = [['a red circle on a blue background', 'a green square on a yellow background'][i % 2] for i in range(batch)]
    f = sd.vae.cfg.downsample_factor
    lat = torch.randn(batch, sd.latent_channels, args.size // f, args.size // f, generator=torch.Generator().manual_seed(0))
    run = {'ours': lambda: sd.generate(prompts, steps=args.steps, guidance_scale=args.guidance, latents=lat, output_type='pt'),
           'diffusers': lambda: pipe(prompts, num_inference_steps=args.steps, guidance_scale=args.guidance, latents=lat,
                                     height=args.size, width=args.size, output_type='pt').images}
    wall, cpu, imgs = {k: [] for k in run}, {k: [] for k in run}, {}
    with torch.inference_mode():
        for rep in range(args.warmup + args.reps):
            for impl in ('ours', 'diffusers'):                      # alternate, so drifts in machine load hit both
                imgs[impl], w, c = timed(run[impl])
                if rep >= args.warmup: wall[impl].append(w); cpu[impl].append(c)
    med = {k: statistics.median(v) for k, v in wall.items()}
    res = dict(model=name, batch=batch, unet_batch=2 * batch if args.guidance > 1 else batch,
               max_abs_diff=(imgs['ours'] - imgs['diffusers']).abs().max().item())
    for impl in run:
        res[impl] = dict(images_per_s=batch / med[impl], wall_s=wall[impl], cpu_s=cpu[impl], median_wall_s=med[impl],
                         median_cpu_s=statistics.median(cpu[impl]))
    res['ratio'] = res['ours']['images_per_s'] / res['diffusers']['images_per_s']
    res['cpu_ratio'] = res['diffusers']['median_cpu_s'] / res['ours']['median_cpu_s']   # the same, in CPU seconds: steadier on a busy machine
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', required=True, help='where to write the results as JSON (written atomically)')
    ap.add_argument('--threads', type=int, default=2, help='torch.set_num_threads (default 2)')
    ap.add_argument('--models', default='toy,small', help='comma-separated: toy, small')
    ap.add_argument('--batches', default='1,64', help='comma-separated images per call')
    ap.add_argument('--steps', type=int, default=25)
    ap.add_argument('--guidance', type=float, default=2.0)
    ap.add_argument('--size', type=int, default=64, help='image side in pixels')
    ap.add_argument('--reps', type=int, default=3, help='timed runs per pipeline (the median is reported)')
    ap.add_argument('--warmup', type=int, default=1, help='untimed runs per pipeline first')
    args = ap.parse_args(argv)
    if args.reps < 1 or args.warmup < 0: raise SystemExit("--reps must be >= 1 and --warmup >= 0")
    torch.set_num_threads(args.threads)
    import diffusers, transformers
    from sd_scratch.core import atomic_write_text
    diffusers.utils.logging.set_verbosity_error(); diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error(); transformers.utils.logging.disable_progress_bar()
    env = dict(torch=torch.__version__, diffusers=diffusers.__version__, transformers=transformers.__version__,
               threads=torch.get_num_threads(), interop_threads=torch.get_num_interop_threads(), cpus=os.cpu_count(),
               load_avg_at_start=os.getloadavg(), device='cpu', python=sys.version.split()[0])
    print(f"torch {env['torch']}, diffusers {env['diffusers']}; torch.set_num_threads({args.threads}) -> {env['threads']} threads "
          f"({env['cpus']} CPUs, load average {env['load_avg_at_start'][0]:.2f}); {args.steps} DDIM steps, guidance {args.guidance}, "
          f"{args.size} px; median of {args.reps} alternating runs after {args.warmup} warm-up")
    batches = [int(b) for b in args.batches.split(',')]
    results = []
    hdr = (f"{'model':6s} {'batch':>5s} {'ours img/s':>11s} {'diffusers img/s':>16s} {'ratio':>6s} {'ours cpu s':>11s} {'diff. cpu s':>12s} "
           f"{'cpu ratio':>9s} {'max|diff|':>9s}")
    print(hdr); print('-' * len(hdr))
    with tempfile.TemporaryDirectory() as tmp:
        for name, sd in models(args.models.split(',')):
            pipe = diffusers_twin(sd, Path(tmp)/name)
            for b in batches:
                r = bench(name, sd, pipe, b, args); results.append(r)
                print(f"{name:6s} {b:5d} {r['ours']['images_per_s']:11.2f} {r['diffusers']['images_per_s']:16.2f} {r['ratio']:5.2f}x "
                      f"{r['ours']['median_cpu_s']:11.2f} {r['diffusers']['median_cpu_s']:12.2f} {r['cpu_ratio']:8.2f}x {r['max_abs_diff']:9.1e}", flush=True)
    env['load_avg_at_end'] = os.getloadavg()
    atomic_write_text(args.out, json.dumps(dict(args=vars(args), env=env, results=results), indent=2) + '\n')
    print(f"ratio = ours / diffusers images per second (goal >= 1.0x); cpu ratio = diffusers / ours CPU seconds per run; "
          f"max|diff| = largest pixel difference between the two pipelines' images (in [0, 1]); results in {args.out}")
    return results


if __name__ == '__main__': main()
