"""StableDiffusion.compile: the same images as eager, weights and LoRA untouched, bad arguments refused (the shipped toy model).

The inductor test builds C++ kernels (about 1-2 minutes on 2 CPU cores with a cold inductor cache): marked `slow`. The rest
use a backend that only traces (seconds)."""
import pytest, torch
from sd_scratch.pipeline import StableDiffusion

PROMPTS = ['a red circle on a blue background', 'a green triangle on a white background']
KW = dict(steps=25, guidance_scale=2.0, seed=0, output_type='pt')


@pytest.fixture(scope='module')
def eager():
    sd = StableDiffusion.from_pretrained('toy')
    return sd, sd.generate(PROMPTS, **KW)


def traced_toy(graphs=None):
    "The toy, compiled with a backend that records the traced graphs and runs them as they are (no code generation)."
    def backend(gm, example_inputs):
        if graphs is not None: graphs.append(gm)
        return gm.forward
    return StableDiffusion.from_pretrained('toy').compile(vae=True, backend=backend)


@pytest.mark.slow
def test_inductor_same_images(eager):
    sd, ref = eager
    fast = StableDiffusion.from_pretrained('toy').compile()
    assert fast.compiled == ('unet',)
    err = (fast.generate(PROMPTS, **KW) - ref).abs().max().item()
    assert err <= 1e-5, err
    assert list(fast.unet.state_dict()) == list(sd.unet.state_dict())


def test_traced_same_images_and_plain_weights(eager, tmp_path):
    sd, ref = eager
    graphs = []
    tr = traced_toy(graphs)
    assert torch.equal(tr.generate(PROMPTS, **KW), ref)
    assert len(graphs) == 2                                     # the UNet and the decoder: one graph each, no graph break
    keys = list(tr.unet.state_dict())
    assert keys == list(sd.unet.state_dict()) and not any('_orig_mod' in k for k in keys)
    from sd_scratch.convert import save_diffusers_folder, load_diffusers_folder
    save_diffusers_folder(tr, tmp_path/'sd')                    # the saving path sees the plain modules
    back = load_diffusers_folder(tmp_path/'sd')
    assert all(torch.equal(a, b) for a, b in zip(back.unet.state_dict().values(), sd.unet.state_dict().values()))


def test_hooks_run_eagerly(eager):
    graphs, calls = [], []
    tr = traced_toy(graphs)
    attn = next(m for n, m in tr.unet.named_modules() if n.endswith('attn2'))
    h = attn.register_forward_hook(lambda m, a, o: calls.append(1))
    try: tr.generate(PROMPTS[0], steps=3, seed=0)
    finally: h.remove()
    assert len(calls) == 3 and len(graphs) == 1                # the hook ran at every step (eager UNet); only the decoder was traced
    tr.generate(PROMPTS[0], steps=3, seed=0)
    assert len(graphs) == 2 and len(calls) == 3                 # without the hook: the UNet is traced too, the hook is gone


def test_lora_and_swapped_unet(eager, tmp_path):
    from sd_scratch.lora import inject_lora, save_lora
    sd, ref = eager
    donor = StableDiffusion.from_pretrained('toy').unet
    inject_lora(donor, rank=4)
    with torch.no_grad():
        for n, p in donor.named_parameters():
            if 'lora_B' in n: p.normal_(std=0.05)
    save_lora(donor, tmp_path/'lora.safetensors')
    tr = traced_toy()
    plain = tr.generate(PROMPTS[0], steps=5, seed=0, output_type='pt')
    tr.load_lora(tmp_path/'lora.safetensors')
    want = StableDiffusion.from_pretrained('toy').load_lora(tmp_path/'lora.safetensors').generate(PROMPTS[0], steps=5, seed=0, output_type='pt')
    got = tr.generate(PROMPTS[0], steps=5, seed=0, output_type='pt')
    assert torch.equal(got, want) and (got - plain).abs().max() > 1e-3   # the LoRA acts through the compiled path
    assert torch.equal(tr.unload_lora().generate(PROMPTS[0], steps=5, seed=0, output_type='pt'), plain)
    other = StableDiffusion.from_pretrained('toy').unet
    with torch.no_grad(): other.conv_out.bias.add_(0.5)
    tr.unet = other                                             # a replaced UNet gets its own compiled wrapper
    assert torch.equal(tr.generate(PROMPTS[0], steps=5, seed=0, output_type='pt'),
                       StableDiffusion(sd.tokenizer, sd.text_encoder, sd.vae, other, sd.schedule, 64).generate(PROMPTS[0], steps=5, seed=0, output_type='pt'))


def test_compile_failure_is_a_clear_error():
    def broken(gm, example_inputs): raise NotImplementedError('this backend builds nothing')
    sd = StableDiffusion.from_pretrained('toy').compile(backend=broken)
    with pytest.raises(RuntimeError) as e: sd.generate('a red circle', steps=1, guidance_scale=2.0)
    msg = str(e.value)
    assert 'could not build the unet for inputs of shape (2, 4, 16, 16), (2, 77, 64)' in msg and 'uncompile()' in msg, msg
    assert len(sd.uncompile().generate('a red circle', steps=1)) == 1


@pytest.mark.parametrize('kw, err, msg', [
    (dict(unet='yes'), TypeError, 'unet must be True or False'),
    (dict(vae=1), TypeError, 'vae must be True or False'),
    (dict(unet=False), ValueError, 'nothing to compile'),
    (dict(mode='fastest'), ValueError, 'mode must be one of'),
    (dict(backend='turbo'), ValueError, "unknown torch.compile backend 'turbo'"),
    (dict(backend='aot_eager', mode='max-autotune'), ValueError, "option of the 'inductor' backend"),
    (dict(dynamic='auto'), TypeError, 'dynamic must be None, True or False'),
    (dict(fullgraph=None), TypeError, 'fullgraph must be True or False'),
])
def test_bad_arguments(eager, kw, err, msg):
    sd, _ = eager
    with pytest.raises(err) as e: sd.compile(**kw)
    assert msg in str(e.value) and sd.compiled == ()


def test_no_cpp_compiler_is_a_clear_error(eager, monkeypatch):
    import torch._inductor.config as ic
    monkeypatch.setattr(ic.cpp, 'cxx', (None, '/nonexistent/g++'))
    sd, _ = eager
    with pytest.raises(RuntimeError, match='needs a C\\+\\+ compiler'): sd.compile()
    assert sd.compiled == ()
