"""Training throughput of the SD 1.x UNet recipe on one GPU: images/s, achieved TFLOP/s, MFU.

    python benchmarks/throughput_sd15.py                          # full UNet, batch 24, bf16, checkpointing, fused AdamW
    python benchmarks/throughput_sd15.py --peak-tflops 989        # another GPU's dense bf16 peak (e.g. H100 SXM)
    python benchmarks/throughput_sd15.py --device cpu --tiny      # smoke test of the script itself (any machine)
    python benchmarks/throughput_sd15.py --compile off            # eager only (default: eager and torch.compile, both UNets)

FLOPs: counted by torch.utils.flop_counter on each model (our UNet at the full config: about 803 GFLOP per 512 px sample
forward, sd_scratch.distributed.unet_flops); a training step costs ~3x the forward (forward + backward), which is what MFU
counts; gradient checkpointing executes one extra forward that is NOT counted.
The default peak, 209.5 TFLOP/s, is the RTX 5090's dense FP16/BF16 tensor rate with FP32 accumulation as listed on spec
sheets citing NVIDIA's datasheet; it is an assumption, pass your GPU's figure with --peak-tflops.
Reference: the from-scratch run this recipe follows reports ~1.32M images per 3 h epoch on 2x RTX 5090 = ~61 images/s per GPU.
Runs our UNet (sd_scratch.unet) and, when diffusers is installed, diffusers' UNet2DConditionModel of the same config side by
side and prints the ratio; each eager and wrapped in torch.compile (--compile both, the default; 'off' or 'on' for one kind).
Compiled runs time their first step apart (compile_s = first step - mean later step: tracing, inductor's code generation,
kernel builds and autotuning, paid once per shape); a model that fails to compile is reported as FAILED with the error and
the others run on. Peak memory: on CUDA torch.cuda.max_memory_allocated() of each run (weights, gradients, AdamW moments and
activations; the stats are reset before each model is built); on CPU the process's peak resident set (getrusage ru_maxrss,
a high-water mark of the whole process since it started: it never goes down between runs, so only its growth is the run's).
"""
import argparse, time, json, resource, traceback
import torch, torch.nn.functional as F

REF_IMAGES_PER_S_PER_GPU = 1.32e6 / (3 * 3600) / 2   # ~61.1

TINY = dict(block_out_channels=(32, 64), layers_per_block=1, cross_attn_levels=(True, False), num_heads=8, cross_attention_dim=32, norm_groups=8)


def ours(tiny):
    from sd_scratch.unet import UNetConfig, UNet2DCondition
    cfg = UNetConfig(**TINY) if tiny else UNetConfig()
    m = UNet2DCondition(cfg)
    return m, cfg.cross_attention_dim


def diffusers_unet(tiny):
    from diffusers import UNet2DConditionModel
    if tiny:
        m = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=8,
                                 cross_attention_dim=32, norm_num_groups=8,
                                 down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'), up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'))
        return m, 32
    return UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8), 768


def forward(model, z, t, ctx, is_diffusers):
    return model(z, t, encoder_hidden_states=ctx).sample if is_diffusers else model(z, t, ctx)


def count_forward_gflop(model, z, t, ctx, is_diffusers):
    "Forward FLOPs of one sample, counted by torch's FlopCounterMode (matmuls and convolutions)."
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as fc: forward(model, z[:1], t[:1], ctx[:1], is_diffusers)
    return fc.get_total_flops() / 1e9


def peak_rss_gb() -> float:
    "This process's peak resident set so far (Linux reports ru_maxrss in KiB)."
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def bench(name, build, args, device, compiled:bool=False):
    label = f"{name} {'compiled' if compiled else 'eager'}"
    if device.type == 'cuda': torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    try: model, ctx_dim = build(args.tiny)
    except ImportError as e: print(f"{label}: skipped ({e})"); return None
    model = model.to(device).train()
    is_diffusers = name == 'diffusers'
    run = torch.compile(model, mode=args.compile_mode) if compiled else model   # the compiled wrapper shares the model's weights
    if args.checkpointing:
        if hasattr(model, 'enable_gradient_checkpointing'): model.enable_gradient_checkpointing()   # ours and diffusers'
        elif hasattr(model, 'set_gradient_checkpointing'): model.set_gradient_checkpointing(True)
        elif hasattr(model, 'gradient_checkpointing'): model.gradient_checkpointing = True
    hw, B = (8, args.batch) if args.tiny else (args.resolution // 8, args.batch)
    g = torch.Generator(device='cpu').manual_seed(0)
    z = torch.randn(B, 4, hw, hw, generator=g).to(device)
    ctx = torch.randn(B, 77, ctx_dim, generator=g).to(device)
    t = torch.randint(0, 1000, (B,), generator=g).to(device)
    noise = torch.randn_like(z)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == 'cuda' or None)
    dtype = torch.bfloat16 if args.bf16 else None
    gflop = count_forward_gflop(model, z, t, ctx, is_diffusers)
    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype is not None):
            loss = F.mse_loss(forward(run, z, t, ctx, is_diffusers).float(), noise)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    try:
        sync(); t0 = time.perf_counter(); step(); sync(); first_s = time.perf_counter() - t0   # compiled: tracing + code generation
        for _ in range(args.warmup - 1): step()
    except Exception as e:                                          # e.g. a model torch.compile cannot handle: say so, go on
        traceback.print_exc(limit=4)
        print(json.dumps(dict(impl=name, compiled=compiled, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")))
        del model, opt, run
        if compiled: torch._dynamo.reset()
        return dict(impl=name, compiled=compiled, error=f"{type(e).__name__}: {e}")
    sync(); t0 = time.perf_counter()
    for _ in range(args.steps): step()
    sync(); dt = time.perf_counter() - t0
    ips = B * args.steps / dt
    tflops = ips * 3 * gflop / 1e3
    sig = lambda x: float(f"{x:.4g}")
    step_s = dt / args.steps
    res = dict(impl=name, compiled=compiled, params=sum(p.numel() for p in model.parameters()), batch=B, bf16=bool(dtype),
               checkpointing=args.checkpointing, compile_mode=args.compile_mode if compiled else None, images_per_s=sig(ips), step_s=sig(step_s), first_step_s=sig(first_s),
               compile_s=sig(first_s - step_s) if compiled else None,
               fwd_gflop_per_image=sig(gflop), tflops=sig(tflops), mfu=sig(tflops / args.peak_tflops))
    if device.type == 'cuda': res.update(peak_mem_gb=round(torch.cuda.max_memory_allocated() / 1e9, 2), peak_mem_kind='cuda max_memory_allocated')
    else: res.update(peak_mem_gb=round(peak_rss_gb(), 2), peak_mem_kind='cpu peak RSS of the process so far (ru_maxrss)')
    print(json.dumps(res), flush=True)
    del model, opt, run
    if compiled: torch._dynamo.reset()                             # drop the compiled graphs (and what they hold) before the next run
    if device.type == 'cuda': torch.cuda.empty_cache()
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--tiny', action='store_true', help='a tiny UNet config: smoke-test the script')
    ap.add_argument('--batch', type=int, default=None, help='images per step (default 24; tiny: 2)')
    ap.add_argument('--resolution', type=int, default=512)
    ap.add_argument('--steps', type=int, default=None, help='timed steps (default 10; tiny: 2)')
    ap.add_argument('--warmup', type=int, default=None, help='untimed steps first (default 3; tiny: 1; at least one: it is timed apart, as first_step_s)')
    ap.add_argument('--peak-tflops', type=float, default=209.5, help="the GPU's dense bf16 peak (default: RTX 5090, assumed 209.5)")
    ap.add_argument('--bf16', dest='bf16', action='store_true', default=None, help='bf16 autocast (default: on CUDA only)')
    ap.add_argument('--no-bf16', dest='bf16', action='store_false')
    ap.add_argument('--no-checkpointing', dest='checkpointing', action='store_false')
    ap.add_argument('--impl', choices=['ours', 'diffusers', 'both'], default='both')
    ap.add_argument('--compile', choices=['off', 'on', 'both'], default='both',
                    help="eager ('off'), torch.compile ('on') or each model both ways (default)")
    ap.add_argument('--compile-mode', default=None, choices=[None, 'default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs'],
                    help="torch.compile's mode for the compiled runs (default: None, torch's default)")
    ap.add_argument('--out', help='also write the results as JSON to this file (written atomically)')
    ap.add_argument('--threads', type=int, default=None,
                    help="torch.set_num_threads (default: torch's choice; on a CPU shared with other work use 1)")
    args = ap.parse_args(argv)
    args.batch = args.batch or (2 if args.tiny else 24)
    args.steps = args.steps or (2 if args.tiny else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    device = torch.device(args.device)
    if args.threads is not None: torch.set_num_threads(args.threads)
    if args.bf16 is None: args.bf16 = device.type == 'cuda'
    if device.type == 'cuda' and not torch.cuda.is_available(): raise SystemExit("--device cuda but no CUDA GPU is visible")
    if not args.tiny and device.type == 'cpu': print("warning: the full UNet on CPU takes minutes per step; use --tiny")
    print(f"device {device}{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}, "
          f"peak {args.peak_tflops} TFLOP/s, reference {REF_IMAGES_PER_S_PER_GPU:.1f} images/s per RTX 5090")
    kinds = {'off': [False], 'on': [True], 'both': [False, True]}[args.compile]
    out = {}
    for name, build in [('ours', ours), ('diffusers', diffusers_unet)]:
        if args.impl not in (name, 'both'): continue
        for compiled in kinds:
            out[f"{name} {'compiled' if compiled else 'eager'}"] = bench(name, build, args, device, compiled)
    ok = lambda k: out.get(k) and not out[k].get('error')
    ips = lambda k: out[k]['images_per_s']
    print("\nsummary (images/s; ratios > 1: the first is faster)")
    for k, r in out.items():
        if r is None: continue
        if r.get('error'): print(f"  {k:20s} FAILED: {r['error'][:200]}"); continue
        extra = f", compile {r['compile_s']:.1f} s (first step {r['first_step_s']:.1f} s)" if r['compiled'] else ''
        print(f"  {k:20s} {r['images_per_s']:9.3g} images/s, {r['step_s']:.3g} s/step, MFU {r['mfu']:.1%}, "
              f"peak {r['peak_mem_gb']} GB ({r['peak_mem_kind']}){extra}")
    for name in ('ours', 'diffusers'):
        if ok(f'{name} compiled') and ok(f'{name} eager'):
            print(f"{name} compiled / eager images/s: {ips(f'{name} compiled') / ips(f'{name} eager'):.2f}")
    for kind in ('eager', 'compiled'):
        if ok(f'ours {kind}') and ok(f'diffusers {kind}'):
            print(f"ours / diffusers images/s, {kind}: {ips(f'ours {kind}') / ips(f'diffusers {kind}'):.2f}")
    if not args.tiny:
        for kind in ('eager', 'compiled'):
            if ok(f'ours {kind}'):
                print(f"ours {kind} / reference (61 images/s per GPU): {ips(f'ours {kind}') / REF_IMAGES_PER_S_PER_GPU:.2f}")
    if args.out:
        from sd_scratch.core import atomic_write_text
        env = dict(torch=torch.__version__, device=str(device),
                   gpu=torch.cuda.get_device_name(device) if device.type == 'cuda' else None)
        atomic_write_text(args.out, json.dumps(dict(args=vars(args), env=env, results=out), indent=2) + '\n')
        print(f"results in {args.out}")
    return out


if __name__ == '__main__': main()
