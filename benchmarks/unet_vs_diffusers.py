"""Our UNet2DCondition vs diffusers' UNet2DConditionModel at the full SD 1.x config, same weights.

CPU, batch 1, 32x32 latents (a 256 px image), 77x768 context, fp32.

Time: both models live in one process; ours and diffusers' runs are interleaved (ours, theirs, ours, ...) and we
report medians, so load from other processes on the machine hits both alike. Reported: forward (no_grad),
forward+backward, forward+backward with gradient checkpointing (both: `enable_gradient_checkpointing()`).

Peak memory: `tracemalloc` does not see PyTorch's CPU allocations, so each measurement runs in a fresh subprocess
that loads the weights (safetensors, memory-mapped, `assign=True`), resets the kernel's resident-set high-water mark
(`echo 5 > /proc/self/clear_refs`), reads its resident set (VmRSS), runs the step once and reads the high-water mark
(VmHWM, the same quantity as `getrusage().ru_maxrss`); peak = VmHWM - VmRSS before the step. glibc's dynamic mmap
threshold is pinned (MALLOC_MMAP_THRESHOLD_=65536) so freed tensors go back to the OS and do not hide allocations.
Linux only. NOTE: the weights are memory-mapped, so the first step also pages them in: every peak includes the
~3.3 GB of fp32 weights (and fwd+bwd the ~3.3 GB of gradients); activations are the small remainder at 32x32.

Usage: python benchmarks/unet_vs_diffusers.py [--reps 3] [--size 32]
"""
import argparse, json, os, re, statistics, subprocess, sys, tempfile, time
import torch

def sd_unets(weights_path=None, build=('ours', 'diffusers')):
    "Build the SD 1.x UNets; with `weights_path`, on the meta device and then filled from the file."
    from diffusers import UNet2DConditionModel
    from sd_scratch.unet import UNet2DCondition, UNetConfig, unet_from_diffusers
    models = {}
    if weights_path is None:
        torch.manual_seed(0)
        ref = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8).eval()
        return {'ours': unet_from_diffusers(ref).eval(), 'diffusers': ref}
    from safetensors.torch import load_file
    state = load_file(weights_path)
    for name in build:
        with torch.device('meta'):
            m = UNet2DCondition(UNetConfig()) if name == 'ours' else UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)
        m.load_state_dict(state, strict=True, assign=True)
        assert not any(t.is_meta for t in list(m.parameters()) + list(m.buffers())), 'tensor left on meta'
        models[name] = m.eval()
    return models

def set_checkpointing(name, model, on):
    if on: model.enable_gradient_checkpointing()
    else: model.disable_gradient_checkpointing()

def step(name, model, mode, z, t, ctx):
    "One measured step: 'fwd' (no_grad), 'fwdbwd', or 'fwdbwd_ckpt'."
    if mode == 'fwd':
        with torch.no_grad(): out = model(z, t, ctx)
        return
    set_checkpointing(name, model, mode == 'fwdbwd_ckpt')
    model.train()
    out = model(z, t, ctx)
    out = out if torch.is_tensor(out) else out.sample
    out.square().mean().backward()
    for p in model.parameters(): p.grad = None
    model.eval()

def inputs(size):
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 4, size, size, generator=g), torch.tensor([500]), torch.randn(1, 77, 768, generator=g)

def kib(field):
    return int(re.search(rf'{field}:\s+(\d+) kB', open('/proc/self/status').read()).group(1))

def worker(weights_path, name, mode, size):
    model = sd_unets(weights_path, build=(name,))[name]
    z, t, ctx = inputs(size)
    open('/proc/self/clear_refs', 'w').write('5')                    # reset VmHWM to the current RSS
    before = kib('VmRSS')
    step(name, model, mode, z, t, ctx)
    print(json.dumps({'peak_mib': (kib('VmHWM') - before) / 1024}))

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--reps', type=int, default=3)
    ap.add_argument('--size', type=int, default=32)
    ap.add_argument('--worker', nargs=3, metavar=('WEIGHTS', 'NAME', 'MODE'))
    args = ap.parse_args()
    if args.worker: return worker(*args.worker, size=args.size)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"batch 1, {args.size}x{args.size} latents, fp32; median of {args.reps} interleaved runs")
    t0 = time.time(); models = sd_unets(); print(f"built both models in {time.time() - t0:.0f} s")
    z, t, ctx = inputs(args.size)
    with torch.no_grad():
        a, b = models['ours'](z, t, ctx), models['diffusers'](z, t, ctx).sample
    print(f"parity: max |ours - diffusers| = {(a - b).abs().max().item():.2e} (max |diffusers| {b.abs().max().item():.2f})")
    modes, times = ['fwd', 'fwdbwd', 'fwdbwd_ckpt'], {}
    for name in models: step(name, models[name], 'fwdbwd', z, t, ctx)   # warm-up
    for mode in modes:
        for _ in range(args.reps):
            for name in models:
                t1 = time.perf_counter(); step(name, models[name], mode, z, t, ctx)
                times.setdefault((name, mode), []).append(time.perf_counter() - t1)

    labels = {'fwd': 'forward (no_grad)', 'fwdbwd': 'forward+backward', 'fwdbwd_ckpt': 'fwd+bwd, grad checkpointing'}
    print(f"\n| {'measure':<28} | ours | diffusers | ours/diffusers |\n|---|---:|---:|---:|")
    for mode in modes:
        o, r = statistics.median(times[('ours', mode)]), statistics.median(times[('diffusers', mode)])
        print(f"| {labels[mode] + ' time':<28} | {o:.2f} s | {r:.2f} s | {o / r:.2f} |")
    print("all times (s):", {f"{n}/{m}": [round(x, 2) for x in v] for (n, m), v in times.items()}, flush=True)

    with tempfile.TemporaryDirectory() as d:                          # memory: one fresh process per measurement
        from safetensors.torch import save_file
        path = os.path.join(d, 'unet.safetensors')
        save_file({k: v.contiguous() for k, v in models['diffusers'].state_dict().items()}, path)
        del models
        env = {**os.environ, 'MALLOC_MMAP_THRESHOLD_': '65536'}
        print(f"\n| {'measure':<28} | ours | diffusers | ours/diffusers |\n|---|---:|---:|---:|")
        for mode in modes:
            mem = {}
            for name in ('ours', 'diffusers'):
                r = subprocess.run([sys.executable, __file__, '--size', str(args.size), '--worker', path, name, mode],
                                   capture_output=True, text=True, env=env)
                if r.returncode: print(f"worker {name} {mode} failed:\n{r.stderr[-2000:]}", flush=True); break
                mem[name] = json.loads(r.stdout.strip().splitlines()[-1])['peak_mib']
            else:
                o, r = mem['ours'], mem['diffusers']
                print(f"| {labels[mode] + ' peak mem':<28} | {o:,.0f} MiB | {r:,.0f} MiB | {o / r:.2f} |", flush=True)

if __name__ == '__main__':
    main()
