"Contract tests for sd_scratch.clip, run by pytest outside the notebook (the notebook holds the full parity suite)."
import pytest, torch
from sd_scratch.clip import CLIPTokenizer, CLIPTextConfig, CLIPTextEncoder, clip_from_transformers


@pytest.fixture(scope='module')
def tok(): return CLIPTokenizer()


def test_tokenizer_contract(tok):
    ids = tok(["a photo of a cat"])
    assert ids.dtype == torch.long and ids.shape == (1, 77)
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (ids[0, 7:] == 49407).all()
    assert tok("word " * 200)[0, -1].item() == 49407
    assert tok.decode(tok.encode("an astronaut riding a horse")) == "an astronaut riding a horse"


def test_tokenizer_matches_transformers(tok):
    from transformers import CLIPTokenizer as HF
    from sd_scratch.core import asset_path
    hf = HF(vocab=str(asset_path('vocab.json')), merges=str(asset_path('merges.txt')))
    prompts = ["a photo of a cat", "", "Crème brûlée, 1024x768!!! 🐱🚀 東京", "DON'T  stop\n\nbelieving", "x " * 120]
    ref = torch.tensor(hf(prompts, padding='max_length', max_length=77, truncation=True).input_ids)
    assert torch.equal(tok(prompts), ref)


@pytest.mark.parametrize('bad, err, msg', [(None, TypeError, 'NoneType'), ([1], TypeError, 'prompt 0 must be a str'),
                                           ([], ValueError, 'empty list')])
def test_tokenizer_bad_prompts(tok, bad, err, msg):
    with pytest.raises(err, match=msg): tok(bad)


def test_decode_bad_ids(tok):
    with pytest.raises(ValueError, match='out of range'): tok.decode([49408])
    with pytest.raises(TypeError, match='ints'): tok.decode(['a'])


def test_encoder_matches_transformers(tok):
    from transformers import CLIPTextModel, CLIPTextConfig as HFConfig
    torch.manual_seed(0)
    hf = CLIPTextModel(HFConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                eos_token_id=49407)).eval()
    ours = clip_from_transformers(hf)
    ids, mask = tok(["a photo of a cat", "a much longer prompt about a dog in a hat"], return_attention_mask=True)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask)
        h, pooled = ours(ids, attention_mask=mask, return_pooled=True)
    assert (h - ref.last_hidden_state).abs().max() < 1e-5 and (pooled - ref.pooler_output).abs().max() < 1e-5
    with pytest.raises(KeyError, match='unexpected keys: extra'): clip_from_transformers({**hf.state_dict(), 'extra': torch.zeros(1)}, ours.cfg)


def test_default_config_size():
    cfg = CLIPTextConfig()
    assert (cfg.vocab_size, cfg.max_positions, cfg.hidden_size, cfg.n_layers, cfg.n_heads, cfg.intermediate_size) == (49408, 77, 768, 12, 12, 3072)
    with torch.device('meta'): enc = CLIPTextEncoder(cfg)   # no memory, no init time
    assert sum(p.numel() for p in enc.parameters()) == 123_060_480
