"ControlNet from the outside: what the CLI's `generate --controlnet PATH --control IMG --control-scale S` will call, in a fresh Python."
import json, subprocess, sys
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image
from sd_scratch.core import asset_path
from sd_scratch.data import ShapesDataset
from sd_scratch.pipeline import StableDiffusion
from sd_scratch.controlnet import (ControlHook, load_controlnet, read_control_image, save_controlnet, control_mask, drawn_mask, iou,
                                   ControlNet)

SHIPPED = asset_path('toy_controlnet.safetensors')


@pytest.fixture(scope='module')
def control_png(tmp_path_factory):
    "A mask a user might draw: a large circle, off centre, as a PNG file."
    a = dict(shape='circle', scale='large', cx=0.35, cy=0.62)
    p = tmp_path_factory.mktemp('ctrl')/'mask.png'
    Image.fromarray(control_mask(a)).save(p)
    return p


def test_recipe_known_after_import():
    "Importing the module registers its model kind, data kind and recipe (what `sd_scratch train --config control_toy` needs)."
    code = ("import sd_scratch.controlnet; from sd_scratch.train import load_run_config; r = load_run_config('control_toy'); "
            "print(r.model, r.data, r.init_unet)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ['controlnet', 'shapes_control', 'toy']


def test_generate_follows_a_png_control(control_png):
    "The library path the CLI takes: load the shipped file, read the PNG, draw with the hook; the circle sits on the mask."
    sd, cn = StableDiffusion.from_pretrained('toy'), load_controlnet(SHIPPED)
    x = sd.generate(['a red circle on a white background'] * 2, steps=20, guidance_scale=2.0, seed=0, height=64, width=64,
                    output_type='pt', hooks=[ControlHook(cn, control_png, 1.0)])
    mask = read_control_image(control_png, 64, 64)[:, 0] > 0.5
    assert iou(drawn_mask(x), mask.expand(2, -1, -1)).min() > 0.7
    off = sd.generate('a red circle on a white background', steps=20, guidance_scale=2.0, seed=0, height=64, width=64,
                      output_type='pt', hooks=[ControlHook(cn, control_png, 0.0)])
    plain = sd.generate('a red circle on a white background', steps=20, guidance_scale=2.0, seed=0, height=64, width=64, output_type='pt')
    assert torch.equal(off, plain)                                     # scale 0: the plain pipeline


def test_refusals(control_png, tmp_path):
    sd, cn = StableDiffusion.from_pretrained('toy'), load_controlnet(SHIPPED)
    with pytest.raises(ValueError, match='the image to generate is 96x64'):
        sd.generate('a red circle on a white background', steps=2, height=64, width=96, hooks=[ControlHook(cn, control_png)])
    bad = tmp_path/'bad.png'; bad.write_text('not an image')
    with pytest.raises(ValueError, match='control image file .* cannot be read as an image'): read_control_image(bad, 64, 64)
    with pytest.raises(FileNotFoundError, match='control image file .* not found'): read_control_image(tmp_path/'none.png', 64, 64)
    with pytest.raises(FileNotFoundError, match='ControlNet not found'): load_controlnet(tmp_path/'none.safetensors')
    with pytest.raises(ValueError, match='finite number'): ControlHook(cn, control_png, scale=float('inf'))


def test_folder_round_trip_in_diffusers(tmp_path):
    "The shipped ControlNet written as a diffusers folder: diffusers' ControlNetModel reads it and computes the same residuals."
    from diffusers import ControlNetModel
    cn = load_controlnet(SHIPPED)
    save_controlnet(cn, tmp_path/'cn')
    ref = ControlNetModel.from_pretrained(tmp_path/'cn').eval()
    z, ctx, cond = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 64), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = cn(z, 300, ctx, cond), ref(z, 300, ctx, cond, return_dict=False)
    assert max((a - b).abs().max().item() for a, b in zip(ours[0] + [ours[1]], list(theirs[0]) + [theirs[1]])) < 1e-4
    back = load_controlnet(tmp_path/'cn').state_dict()
    assert back.keys() == cn.state_dict().keys() and all(torch.equal(v, back[k]) for k, v in cn.state_dict().items())


def test_the_recipe_refuses_data_without_controls():
    "A ControlNet reads a control per picture: data without one is refused when the recipe is made."
    from sd_scratch.train import load_run_config
    with pytest.raises(ValueError, match="model 'controlnet' trains on data 'shapes_control', got 'shapes'"):
        load_run_config(dict(base='control_toy', data='shapes'))
