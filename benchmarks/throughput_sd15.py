"""Training throughput of the SD 1.x UNet recipe on one GPU: images/s, achieved TFLOP/s, MFU.

    python benchmarks/throughput_sd15.py                          # full UNet, batch 24, bf16, checkpointing, fused AdamW
    python benchmarks/throughput_sd15.py --peak-tflops 989        # another GPU's dense bf16 peak (e.g. H100 SXM)
    python benchmarks/throughput_sd15.py --device cpu --tiny      # smoke test of the script itself (any machine)

FLOPs: counted by torch.utils.flop_counter on each model (our UNet at the full config: about 803 GFLOP per 512 px sample
forward, sd_scratch.distributed.unet_flops); a training step costs ~3x the forward (forward + backward), which is what MFU
counts; gradient checkpointing executes one extra forward that is NOT counted.
The default peak, 209.5 TFLOP/s, is the RTX 5090's dense FP16/BF16 tensor rate with FP32 accumulation as listed on spec
sheets citing NVIDIA's datasheet; it is an assumption, pass your GPU's figure with --peak-tflops.
Reference: the from-scratch run this recipe follows reports ~1.32M images per 3 h epoch on 2x RTX 5090 = ~61 images/s per GPU.
Runs our UNet (sd_scratch.unet) and, when diffusers is installed, diffusers' UNet2DConditionModel of the same config side by
side and prints the ratio.
"""
import argparse, time, json
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


def bench(name, build, args, device):
    try: model, ctx_dim = build(args.tiny)
    except ImportError as e: print(f"{name}: skipped ({e})"); return None
    model = model.to(device).train()
    is_diffusers = name == 'diffusers'
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
            loss = F.mse_loss(forward(model, z, t, ctx, is_diffusers).float(), noise)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup): step()
    sync(); t0 = time.perf_counter()
    for _ in range(args.steps): step()
    sync(); dt = time.perf_counter() - t0
    ips = B * args.steps / dt
    tflops = ips * 3 * gflop / 1e3
    sig = lambda x: float(f"{x:.4g}")
    res = dict(impl=name, params=sum(p.numel() for p in model.parameters()), batch=B, bf16=bool(dtype), images_per_s=sig(ips),
               fwd_gflop_per_image=sig(gflop), tflops=sig(tflops), mfu=sig(tflops / args.peak_tflops),
               peak_mem_gb=round(torch.cuda.max_memory_allocated() / 1e9, 2) if device.type == 'cuda' else None)
    print(json.dumps(res))
    del model, opt
    if device.type == 'cuda': torch.cuda.empty_cache()
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--tiny', action='store_true', help='a tiny UNet config: smoke-test the script')
    ap.add_argument('--batch', type=int, default=None, help='images per step (default 24; tiny: 2)')
    ap.add_argument('--resolution', type=int, default=512)
    ap.add_argument('--steps', type=int, default=None, help='timed steps (default 10; tiny: 2)')
    ap.add_argument('--warmup', type=int, default=None, help='untimed steps first (default 3; tiny: 1)')
    ap.add_argument('--peak-tflops', type=float, default=209.5, help="the GPU's dense bf16 peak (default: RTX 5090, assumed 209.5)")
    ap.add_argument('--bf16', dest='bf16', action='store_true', default=None, help='bf16 autocast (default: on CUDA only)')
    ap.add_argument('--no-bf16', dest='bf16', action='store_false')
    ap.add_argument('--no-checkpointing', dest='checkpointing', action='store_false')
    ap.add_argument('--impl', choices=['ours', 'diffusers', 'both'], default='both')
    args = ap.parse_args(argv)
    args.batch = args.batch or (2 if args.tiny else 24)
    args.steps = args.steps or (2 if args.tiny else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    device = torch.device(args.device)
    if args.bf16 is None: args.bf16 = device.type == 'cuda'
    if device.type == 'cuda' and not torch.cuda.is_available(): raise SystemExit("--device cuda but no CUDA GPU is visible")
    if not args.tiny and device.type == 'cpu': print("warning: the full UNet on CPU takes minutes per step; use --tiny")
    print(f"device {device}{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}, "
          f"peak {args.peak_tflops} TFLOP/s, reference {REF_IMAGES_PER_S_PER_GPU:.1f} images/s per RTX 5090")
    out = {}
    for name, build in [('ours', ours), ('diffusers', diffusers_unet)]:
        if args.impl in (name, 'both'): out[name] = bench(name, build, args, device)
    if out.get('ours') and out.get('diffusers'):
        print(f"ours / diffusers images/s: {out['ours']['images_per_s'] / out['diffusers']['images_per_s']:.2f}")
    if out.get('ours') and not args.tiny:
        print(f"ours / reference (61 images/s per GPU): {out['ours']['images_per_s'] / REF_IMAGES_PER_S_PER_GPU:.2f}")
    return out


if __name__ == '__main__': main()
