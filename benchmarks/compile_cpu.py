"""torch.compile on the CPU: eager vs compiled, ours vs diffusers (same weights), compile time apart from step time.

    python benchmarks/compile_cpu.py --out benchmarks/compile_cpu.json               # all three parts (13 min on 2 shared cores)
    python benchmarks/compile_cpu.py --parts train_toy,sample_toy --out /tmp/c.json   # the toy parts only (5 min)

Three parts, each run in this one process:
  train_toy   the toy UNet (sd_scratch.train.TOY_UNET, 2.5M parameters) training step: batch 32, 16x16 latents, context
              (32, 77, 64), MSE on the noise, forward + backward + AdamW step (the optimizer step stays eager; the model is
              what is compiled, as a trainer would wrap it)
  sample_toy  the shipped toy pipeline (StableDiffusion.from_pretrained('toy')): batch 8, 25 DDIM steps, guidance 2 (the
              UNet sees a batch of 16), 64 px; ours eager, ours `sd.compile()` (UNet), ours `sd.compile(vae=True)` (UNet and VAE
              decoder), diffusers' StableDiffusionPipeline eager and with `pipe.unet = torch.compile(pipe.unet)`
  sd15        the full SD 1.x UNet (UNetConfig(), 860M parameters) forward + backward, batch 1, 32x32 latents, context
              (1, 77, 768), fp32, no optimizer step (gradients dropped after each step)
diffusers' twins hold the same numbers: diffusers' UNet2DConditionModel built from our config (sd_scratch.convert.
unet_config_to_diffusers) and given our state dict (the key names are the same), or for sd15 built first and converted to
ours with unet_from_diffusers; the toy pipeline goes through save_diffusers_folder (as benchmarks/throughput_pipeline.py).

Method: each variant's first call is timed on its own (`first_s`: tracing + inductor's code generation + C++ builds + one
step); then the variants run in turn (ours eager, ours compiled, diffusers eager, ...) `--reps` times, so drifts in machine
load hit all of them, and the table shows each one's median step time. compile_s = first_s - median step: what compiling
costs once per shape. Inductor caches what it built on disk; by default this script points that cache at a new empty
folder, so compile_s is what a first run pays (--warm-cache uses torch's usual cache: later runs then compile in seconds).
Within one process dynamo may reuse a graph it traced for an earlier variant of the same class (the toy's UNet + VAE
variant re-uses the UNet graph of the UNet-only variant): its compile_s is then only what was new.
speedup = the eager variant's median step / this variant's (> 1: faster than eager ours, or diffusers' own eager for its
compiled variant). Peak RSS is the process's resident-set high-water mark after each part (getrusage ru_maxrss; CPU memory,
cumulative over the parts run so far). Wall-clock times depend on what else the machine runs: compare them within one run.
Use --threads 1 on a machine shared with other work (torch's threads spin-wait for each other on busy cores).
Each part starts from torch._dynamo.reset(): without it, a UNet class compiled in an earlier part at other shapes makes
dynamo compile the next one with dynamic shapes, which inductor (torch 2.13, CPU) fails to build for SD's UNet, ours and
diffusers' alike (measured: 'cannot determine truth value of Relational' for forward + backward).
"""
import argparse, json, os, resource, shutil, statistics, sys, tempfile, time, traceback
from pathlib import Path


_TEMP = []   # folders this run made (inductor's cold cache, diffusers folders): removed at the end


def _ms(x): return None if x is None else round(x * 1e3, 1)


class Variant:
    "One way of running the piece being measured: a name, a step function, and its timings."
    def __init__(self, name, step, baseline=None):
        self.name, self.step, self.baseline = name, step, baseline   # baseline: the eager variant its speedup is against
        self.first_s, self.times, self.error, self.graphs, self.graph_breaks = None, [], None, None, None

    def first(self):
        import torch._dynamo.utils as du
        g0, b0 = du.counters['stats']['unique_graphs'], sum(du.counters['graph_break'].values())
        try:
            t0 = time.perf_counter(); self.out = self.step(); self.first_s = time.perf_counter() - t0
        except Exception as e:                                   # say what failed and go on with the others
            self.error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            traceback.print_exc(limit=3)
        self.graphs = du.counters['stats']['unique_graphs'] - g0
        self.graph_breaks = sum(du.counters['graph_break'].values()) - b0

    def timed(self):
        if self.error: return
        t0 = time.perf_counter(); self.out = self.step(); self.times.append(time.perf_counter() - t0)

    def result(self, by_name) -> dict:
        med = statistics.median(self.times) if self.times else None
        base = by_name.get(self.baseline)
        speedup = base.median / med if med and base is not None and base.median else None
        return dict(name=self.name, error=self.error, first_s=self.first_s, median_step_s=med, step_s=self.times,
                    compile_s=None if med is None or 'compiled' not in self.name else self.first_s - med,
                    speedup_vs=self.baseline, speedup=speedup,
                    new_graphs=self.graphs, graph_breaks=self.graph_breaks)

    @property
    def median(self): return statistics.median(self.times) if self.times else None


def run_variants(variants, reps:int):
    for v in variants:
        print(f"  first call: {v.name} ...", end=' ', flush=True); v.first()
        print(f"{v.first_s:.1f} s" if v.error is None else f"FAILED ({v.error})", flush=True)
    for _ in range(reps):                                        # alternate, so load changes hit every variant alike
        for v in variants: v.timed()
    by_name = {v.name: v for v in variants}
    return [v.result(by_name) for v in variants]


def train_toy(args):
    import torch, torch.nn.functional as F
    from diffusers import UNet2DConditionModel
    from sd_scratch.unet import UNetConfig, UNet2DCondition
    from sd_scratch.train import TOY_UNET
    from sd_scratch.convert import unet_config_to_diffusers
    cfg = UNetConfig(**TOY_UNET)
    torch.manual_seed(0); ref = UNet2DCondition(cfg)
    g = torch.Generator().manual_seed(0)
    B = 32
    z, noise = torch.randn(B, 4, 16, 16, generator=g), torch.randn(B, 4, 16, 16, generator=g)
    ctx, t = torch.randn(B, 77, cfg.cross_attention_dim, generator=g), torch.randint(0, 1000, (B,), generator=g)

    def ours():
        m = UNet2DCondition(cfg); m.load_state_dict(ref.state_dict()); return m.train()
    def theirs():
        m = UNet2DConditionModel.from_config(unet_config_to_diffusers(cfg, sample_size=16))
        m.load_state_dict(ref.state_dict(), strict=True); return m.train()
    def make_step(model, call):
        opt = torch.optim.AdamW([p for p in model.parameters()], lr=1e-4)
        def step():
            loss = F.mse_loss(call(z, t, ctx), noise)
            loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
            return loss.item()
        return step
    with torch.no_grad():                                        # the twins agree before anything is timed
        d = theirs().eval(); parity = (d(z[:2], t[:2], ctx[:2]).sample - ref.eval()(z[:2], t[:2], ctx[:2])).abs().max().item()
    o_e, o_c, d_e, d_c = ours(), ours(), theirs(), theirs()     # four models with the same weights, each with its optimizer
    o_cc, d_cc = torch.compile(o_c), torch.compile(d_c)
    variants = [Variant('ours eager', make_step(o_e, o_e)),
                Variant('ours compiled', make_step(o_c, o_cc), 'ours eager'),
                Variant('diffusers eager', make_step(d_e, lambda z, t, ctx: d_e(z, t, ctx).sample), 'ours eager'),
                Variant('diffusers compiled', make_step(d_c, lambda z, t, ctx: d_cc(z, t, ctx).sample), 'diffusers eager')]
    return dict(what='toy UNet training step: batch 32, 16x16 latents, context (32, 77, 64), fwd + bwd + AdamW step',
                params=sum(p.numel() for p in ref.parameters()), parity_max_abs_diff=parity,
                variants=run_variants(variants, args.reps))


def sample_toy(args):
    import torch
    sys.path.insert(0, str(Path(__file__).parent))
    from throughput_pipeline import diffusers_twin
    from sd_scratch.pipeline import StableDiffusion
    B = 8
    prompts = [['a red circle on a blue background', 'a green square on a yellow background'][i % 2] for i in range(B)]
    eager, comp, comp_vae = (StableDiffusion.from_pretrained('toy') for _ in range(3))
    comp.compile(); comp_vae.compile(vae=True)
    f = eager.vae.cfg.downsample_factor
    lat = torch.randn(B, eager.latent_channels, 64 // f, 64 // f, generator=torch.Generator().manual_seed(0))
    kw = dict(steps=25, guidance_scale=2.0, latents=lat, output_type='pt')
    tmp = tempfile.mkdtemp(prefix='compile_cpu_'); _TEMP.append(tmp)
    pipe, pipe_c = diffusers_twin(eager, Path(tmp)/'eager'), diffusers_twin(eager, Path(tmp)/'compiled')
    pipe_c.unet = torch.compile(pipe_c.unet)
    def theirs(p): return lambda: p(prompts, num_inference_steps=25, guidance_scale=2.0, latents=lat, height=64, width=64,
                                     output_type='pt').images
    variants = [Variant('ours eager', lambda: eager.generate(prompts, **kw)),
                Variant('ours compiled unet', lambda: comp.generate(prompts, **kw), 'ours eager'),
                Variant('ours compiled unet+vae', lambda: comp_vae.generate(prompts, **kw), 'ours eager'),
                Variant('diffusers eager', theirs(pipe), 'ours eager'),
                Variant('diffusers compiled unet', theirs(pipe_c), 'diffusers eager')]
    res = run_variants(variants, args.reps)                       # generate and diffusers' __call__ run under no_grad
    ref = variants[0].out
    for r, v in zip(res, variants):
        r['max_abs_diff_vs_ours_eager'] = None if v.error else (v.out - ref).abs().max().item()
    return dict(what='toy sampling: batch 8, 25 DDIM steps, guidance 2 (UNet batch 16), 64 px, images as tensors; a step = one '
                     'whole generate call', variants=res)


def sd15(args):
    import torch
    from diffusers import UNet2DConditionModel
    from sd_scratch.unet import unet_from_diffusers
    torch.manual_seed(0)
    ref = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8).train()
    ours = unet_from_diffusers(ref).train()
    g = torch.Generator().manual_seed(0)
    z, ctx, t = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 77, 768, generator=g), torch.tensor([500])
    def make_step(model, call):
        def step():
            call(z, t, ctx).square().mean().backward()
            for p in model.parameters(): p.grad = None
        return step
    oc, dc = torch.compile(ours), torch.compile(ref)        # compiled wrappers share the weights of the eager modules
    variants = [Variant('ours eager', make_step(ours, ours)),
                Variant('ours compiled', make_step(ours, oc), 'ours eager'),
                Variant('diffusers eager', make_step(ref, lambda *a: ref(*a).sample), 'ours eager'),
                Variant('diffusers compiled', make_step(ref, lambda *a: dc(*a).sample), 'diffusers eager')]
    return dict(what='full SD 1.x UNet forward + backward: batch 1, 32x32 latents, context (1, 77, 768), fp32',
                params=sum(p.numel() for p in ours.parameters()), variants=run_variants(variants, args.reps_sd15))


PARTS = dict(train_toy=train_toy, sample_toy=sample_toy, sd15=sd15)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', required=True, help='where to write the results as JSON (written atomically)')
    ap.add_argument('--parts', default='train_toy,sample_toy,sd15', help=f"comma-separated: {', '.join(PARTS)}")
    ap.add_argument('--threads', type=int, default=1, help='torch.set_num_threads (default 1: the machine may be shared)')
    ap.add_argument('--reps', type=int, default=7, help='timed steps per variant, toy parts (the median is reported)')
    ap.add_argument('--reps-sd15', type=int, default=3, help='timed steps per variant, sd15 part')
    ap.add_argument('--warm-cache', action='store_true', help="use inductor's usual on-disk cache (default: a new empty one)")
    args = ap.parse_args(argv)
    parts = args.parts.split(',')
    bad = [p for p in parts if p not in PARTS]
    if bad: raise SystemExit(f"unknown parts {bad}: choose from {', '.join(PARTS)}")
    if args.reps < 1 or args.reps_sd15 < 1: raise SystemExit("--reps and --reps-sd15 must be >= 1")
    cache = None
    if not args.warm_cache:                                       # before torch is imported: inductor reads it from the environment
        cache = tempfile.mkdtemp(prefix='inductor_cold_'); os.environ['TORCHINDUCTOR_CACHE_DIR'] = cache; _TEMP.append(cache)
    import torch, torch._dynamo, diffusers, transformers
    torch.set_num_threads(args.threads)
    diffusers.utils.logging.set_verbosity_error(); diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error(); transformers.utils.logging.disable_progress_bar()
    import torch._inductor.cpp_builder as cb
    env = dict(torch=torch.__version__, diffusers=diffusers.__version__, threads=torch.get_num_threads(), cpus=os.cpu_count(),
               load_avg_at_start=os.getloadavg(), device='cpu', python=sys.version.split()[0], cxx=cb.get_cpp_compiler(),
               inductor_cache='cold (new empty folder)' if cache else 'warm (torch default)')
    print(f"torch {env['torch']}, diffusers {env['diffusers']}, {env['threads']} thread(s) of {env['cpus']} CPUs, load average "
          f"{env['load_avg_at_start'][0]:.2f} at start, inductor cache {env['inductor_cache']}, C++ compiler {env['cxx']}")
    results = {}
    try: _run_parts(parts, args, results, env)
    finally:
        for d in _TEMP: shutil.rmtree(d, ignore_errors=True)
    return results


def _run_parts(parts, args, results, env):
    import torch, torch._dynamo
    from sd_scratch.core import atomic_write_text
    for p in parts:
        print(f"\n== {p}", flush=True)
        torch._dynamo.reset()       # a clean start: no graphs of the last part, and no shapes that would make dynamo go dynamic
        t0 = time.perf_counter()
        r = results[p] = PARTS[p](args)
        r['part_wall_s'] = time.perf_counter() - t0
        r['peak_rss_gb_so_far'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9   # Linux: kB
        print(f"{r['what']}")
        hdr = f"  {'variant':26s} {'first call s':>12s} {'compile s':>10s} {'step ms':>9s} {'speedup':>8s} {'graphs':>6s} {'breaks':>6s}  note"
        print(hdr); print('  ' + '-' * (len(hdr) - 2))
        for v in r['variants']:
            if v['error']: print(f"  {v['name']:26s} FAILED: {v['error']}"); continue
            note = f"vs {v['speedup_vs']}" if v['speedup_vs'] else ''
            if 'max_abs_diff_vs_ours_eager' in v: note += f"{'; ' if note else ''}max|img - ours eager| {v['max_abs_diff_vs_ours_eager']:.1e}"
            sp = f"{v['speedup']:.2f}x" if v['speedup'] else '-'
            cs = '-' if v['compile_s'] is None else f"{v['compile_s']:.1f}"
            print(f"  {v['name']:26s} {v['first_s']:12.1f} {cs:>10s} {_ms(v['median_step_s']):9.1f} {sp:>8s} "
                  f"{v['new_graphs']:6d} {v['graph_breaks']:6d}  {note}")
        print(f"  peak RSS of this process so far: {r['peak_rss_gb_so_far']:.2f} GB; part took {r['part_wall_s']:.0f} s", flush=True)
    env['load_avg_at_end'] = os.getloadavg()
    atomic_write_text(args.out, json.dumps(dict(args=vars(args), env=env, results=results), indent=2) + '\n')
    print(f"\nfirst call = tracing + code generation + C++ builds + one step; compile = first call - median step (paid once per "
          f"shape); step = median of {args.reps} (toy) / {args.reps_sd15} (sd15) alternating runs; speedup = the named eager "
          f"variant's step / this one's (> 1: faster); graphs / breaks = graphs dynamo compiled / graph breaks it hit on the "
          f"first call. Results in {args.out}")


if __name__ == '__main__': main()
