"""Wall time of `sd_scratch train --config toy` from a cold start, as a ratio to a fixed reference workload timed just before (issue 24).

    python benchmarks/toy_time.py                          # the toy recipe; writes benchmarks/toy_time.json (refuses to replace it)
    python benchmarks/toy_time.py --overwrite              # measure again and replace it
    python benchmarks/toy_time.py --config my.json --out /tmp/x.json   # time a candidate recipe (a name or a JSON file)

Machines differ by up to 2x in per-step speed, so the toy's training time is reported against a reference measured in the same
script: diffusers' default `UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)` (random weights, built here, nothing
downloaded), one forward pass at 1x4x32x32 with a 1x77x768 context, `torch.set_num_threads(--threads)`, no grad, the median of 3
after one warm-up. Then, just after, `sd_scratch train --config NAME --out <a fresh temporary folder>` runs as a new user runs it:
a new process (`python -m sd_scratch.cli`, so the start-up, the imports, drawing and encoding the data, the steps, the sample grids,
the checkpoints and the export are all in the bill) with --threads threads, timed by the clock. Printed and written: both times and
the ratio, with the load average before and after (other processes on the machine slow both, but not necessarily alike).
"""
import argparse, json, os, resource, platform, statistics, subprocess, sys, tempfile, time
from datetime import datetime, timezone
from pathlib import Path


def reference_seconds(threads:int=2, repeats:int=3) -> tuple:
    "(wall seconds, CPU seconds) of each of `repeats` forward passes (after one warm-up) of diffusers' default SD-size UNet at 1x4x32x32."
    import torch, diffusers
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8).eval()
    x, t, ctx = torch.randn(1, 4, 32, 32), torch.tensor([500]), torch.randn(1, 77, 768)
    times, cpu = [], []
    with torch.no_grad():
        for i in range(repeats + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            unet(x, t, encoder_hidden_states=ctx)
            if i: times.append(time.perf_counter() - t0); cpu.append(time.process_time() - c0)   # the first call is the warm-up
    del unet
    return times, cpu


def train_seconds(config:str, threads:int=2, keep:str|None=None) -> tuple:
    "(wall seconds, CPU seconds, the run's JSON result line, the logged steps' seconds) of `sd_scratch train --config config` in a new process, in a fresh folder."
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads), 'MKL_NUM_THREADS': str(threads)}
    with tempfile.TemporaryDirectory() as d:
        out = Path(keep) if keep else Path(d)/'run'
        cmd = [sys.executable, '-m', 'sd_scratch.cli', 'train', '--config', config, '--out', str(out), '--no-progress']
        t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall, c1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
        if r.returncode != 0: raise RuntimeError(f"{' '.join(cmd)} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
        lines = [l for l in r.stdout.splitlines() if l.startswith('{')]
        log = [json.loads(l) for l in (out/'log.jsonl').read_text().splitlines()] if (out/'log.jsonl').exists() else []
        return wall, cpu, (json.loads(lines[-1]) if lines else {}), [r['seconds'] for r in log if 'seconds' in r]


def load() -> list: return [round(x, 2) for x in os.getloadavg()]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default='toy', help='a recipe name or a JSON recipe file (e.g. {"base": "toy", "train": {"steps": 600}})')
    p.add_argument('--threads', type=int, default=2, help='torch threads for both the reference and the training run')
    p.add_argument('--out', default=str(Path(__file__).with_suffix('.json')), help='the JSON file to write')
    p.add_argument('--overwrite', action='store_true', help='replace --out if it exists')
    p.add_argument('--keep', default=None, help='train into this folder (it must not hold a run) and keep it, e.g. to judge the model')
    p.add_argument('--note', default='', help='recorded in the JSON, e.g. whether the machine was busy')
    a = p.parse_args(argv)
    out = Path(a.out)
    if out.exists() and not a.overwrite: p.error(f"{out} exists; pass --overwrite to measure again and replace it")
    load0 = load()
    ref, ref_cpu = reference_seconds(a.threads)
    ref_s = statistics.median(ref)
    print(f"reference (diffusers UNet2DConditionModel forward, 1x4x32x32, {a.threads} threads): {ref_s:.3f} s "
          f"(median of {[round(x, 3) for x in ref]})", flush=True)
    load1 = load()
    train_s, train_cpu, result, step_s = train_seconds(a.config, a.threads, a.keep)
    ratio = train_s / ref_s
    print(f"sd_scratch train --config {a.config}: {train_s:.1f} s wall from a cold start = {ratio:.0f}x the reference", flush=True)
    steps = result.get('step') or 0
    if step_s: print(f"logged steps: median {statistics.median(step_s):.3f} s, 10th percentile {sorted(step_s)[len(step_s) // 10]:.3f} s "
                     f"(of {len(step_s)}; a gap between them means other jobs were running)", flush=True)
    cpu_ratio = train_cpu / statistics.median(ref_cpu)
    print(f"CPU seconds (all threads): training {train_cpu:.0f}, reference {statistics.median(ref_cpu):.3f}: {cpu_ratio:.0f}x", flush=True)
    import torch
    rec = dict(config=a.config, threads=a.threads, reference_s=round(ref_s, 4), reference_runs_s=[round(x, 4) for x in ref],
               train_wall_s=round(train_s, 1), ratio=round(ratio, 1), steps=steps,
               step_s_median=round(statistics.median(step_s), 4) if step_s else None,
               step_s_p10=round(sorted(step_s)[len(step_s) // 10], 4) if step_s else None,
               train_cpu_s=round(train_cpu, 1), reference_cpu_s=round(statistics.median(ref_cpu), 4), cpu_ratio=round(cpu_ratio, 1),
               load_before_reference=load0, load_before_train=load1, load_after=load(),
               when=datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'), machine=platform.processor() or platform.machine(),
               cpus=os.cpu_count(), torch=torch.__version__, note=a.note)
    from sd_scratch.core import atomic_write_text
    atomic_write_text(out, json.dumps(rec, indent=1) + '\n')
    print(json.dumps(rec))
    return rec


if __name__ == '__main__': main()
