"A plain (non-editable) `pip install .` gives a working package, data files included."
import subprocess, sys, os, json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_plain_install_finds_data(tmp_path):
    site = tmp_path/'site'
    # a non-editable install into its own folder; its dependencies (torch, ...) come from the running environment
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation',
                    '--target', str(site), str(ROOT)], check=True, cwd=tmp_path)
    code = ("import sd_scratch, sd_scratch.core as c, json; p = c.asset_path('vocab.json'); "
            "print(sd_scratch.__file__); print(p); print(len(json.load(open(p)))); "
            "print(all(c.asset_path(f).exists() for f in ['toy_vae.safetensors', 'toy_unet.safetensors', 'toy_unet_log.jsonl', "
            "'toy_text_encoder.safetensors', 'toy_inpaint_unet.safetensors', 'toy_controlnet.safetensors']))")
    out = subprocess.run([sys.executable, '-c', code], check=True, cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, 'PYTHONPATH': str(site)}).stdout.split()
    assert out[0].startswith(str(site)), out      # the installed copy, not the source tree
    assert out[1].startswith(str(site)), out
    assert out[2] == '49408'
    assert out[3] == 'True'          # the shipped toy model's files are installed too
