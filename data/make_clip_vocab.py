"""Derive CLIP's `vocab.json` and `merges.txt` from the BPE merges in the open_clip_torch wheel.

    pip download --no-deps open_clip_torch -d /tmp/oc && cd /tmp/oc && unzip -o open_clip_torch-*.whl 'open_clip/*.gz'
    python data/make_clip_vocab.py /tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz data/
"""
import gzip, json, sys
from pathlib import Path
from sd_scratch.clip import bytes_to_unicode   # the byte -> printable-character table, taught in nbs/01_clip.ipynb

def main(src, dest):
    lines = gzip.open(src, 'rt', encoding='utf-8').read().split('\n')
    merges = [tuple(l.split()) for l in lines[1:49152-256-2+1]]
    base = list(bytes_to_unicode().values())   # CLIP's vocabulary order: printable bytes first
    vocab = base + [c+'</w>' for c in base] + [''.join(m) for m in merges] + ['<|startoftext|>', '<|endoftext|>']
    assert len(vocab) == len(set(vocab)) == 49408, len(vocab)
    dest = Path(dest)
    (dest/'vocab.json').write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (dest/'merges.txt').write_text('#version: 0.2\n' + '\n'.join(' '.join(m) for m in merges) + '\n', encoding='utf-8')

if __name__ == '__main__': main(*sys.argv[1:3])
