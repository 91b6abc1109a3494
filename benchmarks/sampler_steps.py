"""Adherence of the shipped toy model against the number of sampling steps, for every sampler (notebook 05a_samplers).

    python benchmarks/sampler_steps.py                 # writes benchmarks/sampler_steps.json (refuses to replace it)
    python benchmarks/sampler_steps.py --overwrite     # measure again and replace it
    python benchmarks/sampler_steps.py --samplers ddim dpmpp_2m_karras --steps 4 8 --out /tmp/x.json

For each sampler and step count: all 224 captions of the shapes vocabulary (`sd_scratch.data.all_captions`), guidance 2,
in batches of 64 with seed 0 + the batch's first index (as `sd_scratch.evaluate.pipeline_generator`), judged by 07a's
deterministic colour/shape judge (`sd_scratch.evaluate.adherence`). Also recorded: the UNet calls per image (a forward
hook counts them: Heun makes 2 * steps - 1), and the wall and CPU seconds of the whole row (text encoding, sampling,
VAE decoding and judging) at --threads torch threads. Takes about 20 minutes at 1 thread.
"""
import argparse, json, platform, sys, time
from datetime import datetime, timezone
from pathlib import Path

SAMPLERS = ['ddim', 'euler', 'euler_karras', 'euler_a', 'euler_a_karras', 'heun', 'heun_karras', 'dpmpp_2m', 'dpmpp_2m_karras']
STEPS = [4, 6, 8, 12, 25]


def measure_row(sd, sampler:str, steps:int, captions:list, guidance:float=2.0, seed:int=0, batch_size:int=64) -> dict:
    "Generate every caption with `sampler` at `steps`, judge the images; adherence, UNet calls per image, wall and CPU seconds."
    import torch
    from sd_scratch.evaluate import adherence
    calls = []
    hook = sd.unet.register_forward_pre_hook(lambda m, args: calls.append(1))
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        images, batches = [], 0
        for i in range(0, len(captions), batch_size):
            images += sd.generate(captions[i:i + batch_size], steps=steps, guidance_scale=guidance, sampler=sampler,
                                  seed=seed + i, height=64, width=64)
            batches += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally: hook.remove()
    return dict(sampler=sampler, steps=steps, unet_calls=len(calls) // batches, n=len(captions),
                **adherence(images, captions), wall_s=round(wall, 2), cpu_s=round(cpu, 2))


def summarize(rows:list, reference=('ddim', 25), key:str='all') -> dict:
    "For each sampler the fewest steps whose adherence reaches the reference row's; the one that needs the fewest UNet calls, and its ties."
    ref = next(r for r in rows if (r['sampler'], r['steps']) == tuple(reference))
    first = {}
    for r in sorted(rows, key=lambda r: r['steps']):
        if r[key] >= ref[key] and r['sampler'] not in first: first[r['sampler']] = r
    order = list(dict.fromkeys(r['sampler'] for r in rows))
    rank = lambda r: (r['unet_calls'], r['steps'], -r[key], order.index(r['sampler']))   # ties: higher adherence, then listed first
    best = min(first.values(), key=rank)
    tied = [k for k, v in first.items() if (v['unet_calls'], v['steps']) == (best['unet_calls'], best['steps'])]
    return dict(reference=dict(sampler=ref['sampler'], steps=ref['steps'], adherence=ref[key], key=key),
                fewest_steps_reaching_reference={k: dict(steps=v['steps'], unet_calls=v['unet_calls']) for k, v in first.items()},
                tied_with_best=tied,
                best=dict(sampler=best['sampler'], steps=best['steps'], unet_calls=best['unet_calls'], adherence=best[key],
                          wall_s_per_image=round(best['wall_s'] / best['n'], 4), cpu_s_per_image=round(best['cpu_s'] / best['n'], 4),
                          reference_wall_s_per_image=round(ref['wall_s'] / ref['n'], 4),
                          reference_cpu_s_per_image=round(ref['cpu_s'] / ref['n'], 4)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default=str(Path(__file__).with_suffix('.json')), help='the JSON file to write')
    p.add_argument('--overwrite', action='store_true', help='replace --out if it exists')
    p.add_argument('--samplers', nargs='+', default=SAMPLERS)
    p.add_argument('--steps', nargs='+', type=int, default=STEPS)
    p.add_argument('--guidance', type=float, default=2.0)
    p.add_argument('--threads', type=int, default=1, help='torch threads')
    p.add_argument('--note', default='', help='recorded in the JSON, e.g. whether the machine was busy')
    a = p.parse_args(argv)
    out = Path(a.out)
    if out.exists() and not a.overwrite: p.error(f"{out} exists; pass --overwrite to measure again and replace it")
    if 'ddim' not in a.samplers or 25 not in a.steps: p.error("the reference row (ddim, 25 steps) must be measured")
    import torch
    torch.set_num_threads(a.threads)
    from sd_scratch.pipeline import StableDiffusion
    from sd_scratch.data import all_captions
    from sd_scratch.core import atomic_write
    sd, caps = StableDiffusion.from_pretrained('toy'), all_captions()
    rows = []
    for s in a.samplers:
        for n in a.steps:
            rows.append(measure_row(sd, s, n, caps, a.guidance))
            r = rows[-1]
            print(f"{s:16s} {n:3d} steps {r['unet_calls']:3d} calls  all {r['all']:.3f} colour {r['colour']:.3f} shape {r['shape']:.3f}"
                  f"  {r['wall_s']:7.1f} s wall {r['cpu_s']:7.1f} s CPU", flush=True)
    res = dict(meta=dict(date=datetime.now(timezone.utc).isoformat(timespec='seconds'), torch=torch.__version__,
                         python=platform.python_version(), machine=platform.machine(), threads=a.threads, guidance=a.guidance,
                         captions=len(caps), seed=0, batch_size=64, size=64, judge='sd_scratch.evaluate.adherence (07a)',
                         note=a.note),
               rows=rows, summary=summarize(rows))
    with atomic_write(out, overwrite=a.overwrite) as tmp, open(tmp, 'w') as f: json.dump(res, f, indent=1); f.write('\n')
    print(json.dumps(res['summary'], indent=1)); print('wrote', out)


if __name__ == '__main__': main()
