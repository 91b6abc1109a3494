"""The toy trained with each objective on the same data and compute, judged by 07a's judge (notebook 07e_objectives_toy).

    python benchmarks/objectives_toy.py                  # writes benchmarks/objectives_toy.json (refuses to replace it)
    python benchmarks/objectives_toy.py --overwrite      # measure again and replace it
    python benchmarks/objectives_toy.py --only flow_matching --out /tmp/x.json

For each objective of `sd_scratch.objectives_toy.OBJECTIVE_RUNS`: one training run of the recipe `BASE` with that objective
(`train_milestones`, the UNet written at every milestone), then 07a's judge over all 224 captions: the finished UNet at every
guidance scale with 25 sampling steps, the milestones and the sampling step counts at its best scale. Also recorded: the wall
seconds from the start of the run to each milestone (encoders, data and steps; the machine's load is in the JSON) at --threads
torch threads. About 10 minutes per objective at one thread.
"""
import argparse, json, os, platform, sys, tempfile, time
from datetime import datetime, timezone
from pathlib import Path


def main(argv=None):
    from sd_scratch.objectives_toy import OBJECTIVE_RUNS, MILESTONES, GUIDANCE, SAMPLING_STEPS, measure_objective
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default=str(Path(__file__).with_suffix('.json')), help='the JSON file to write')
    p.add_argument('--overwrite', action='store_true', help='replace --out if it exists')
    p.add_argument('--only', nargs='+', default=list(OBJECTIVE_RUNS), help='which of OBJECTIVE_RUNS to measure')
    p.add_argument('--threads', type=int, default=1, help='torch threads')
    p.add_argument('--note', default='', help='recorded in the JSON, e.g. whether the machine was busy')
    a = p.parse_args(argv)
    out = Path(a.out)
    if out.exists() and not a.overwrite: p.error(f"{out} exists; pass --overwrite to measure again and replace it")
    import torch
    torch.set_num_threads(a.threads)
    from sd_scratch.pipeline import StableDiffusion
    from sd_scratch.data import all_captions
    from sd_scratch.core import atomic_write_text
    toy, caps, rows, loads = StableDiffusion.from_pretrained('toy'), all_captions(), [], {}
    for name in a.only:
        spec = OBJECTIVE_RUNS[name]
        loads[name] = [round(x, 2) for x in os.getloadavg()]
        with tempfile.TemporaryDirectory() as d:
            t0 = time.time()
            new = measure_objective(name, spec['run'], d, caps, MILESTONES, GUIDANCE, SAMPLING_STEPS,
                                    timestep_spacing=spec.get('timestep_spacing'), base=toy)
        rows += new
        best = max((r for r in new if r['kind'] == 'guidance'), key=lambda r: (r['all'], -r['guidance']))
        print(f"{name}: trained in {max(r['wall_s'] for r in new):.0f} s, best guidance {best['guidance']}: colour {best['colour']:.3f} "
              f"shape {best['shape']:.3f} all {best['all']:.3f} ({time.time() - t0:.0f} s with judging; load {loads[name]})", file=sys.stderr, flush=True)
        atomic_write_text(out, json.dumps(dict(rows=rows, runs={k: OBJECTIVE_RUNS[k] for k in loads}, milestones=list(MILESTONES),
                                               guidance=list(GUIDANCE), sampling_steps=list(SAMPLING_STEPS), threads=a.threads, load=loads,
                                               when=datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
                                               machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                                               torch=torch.__version__, note=a.note), indent=1) + '\n')
    return rows


if __name__ == '__main__': main()
