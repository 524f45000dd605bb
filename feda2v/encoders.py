"""Audio and CLIP-text embeddings via transformers, plus tiny offline models for tests and demo.

Real model ids are the defaults; offline, `write_tiny_models` saves random-initialised small
models of the same architectures, which load through the same `from_pretrained` code.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from feda2v.log import get_logger, progress

log = get_logger()


def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def _load(kind: str, source: str, loader):
    try:
        return loader(source)
    except OSError as e:
        raise OSError(
            f"cannot load {kind} model from {source!r}: {e}. A hub id needs network access; "
            "offline, point the config at a local folder (`feda2v models tiny --out DIR` writes "
            "small random-initialised ones)") from None


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("models.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


# --- audio --------------------------------------------------------------------------------------

class AudioEncoder:
    """An AST-family encoder whose token sequence is pooled to `tokens` by adaptive averaging."""

    def __init__(self, source: str, tokens: int = 4, device: str = "auto"):
        tf = _quiet_transformers()
        self.source = source
        self.features = _load("audio", source, tf.AutoFeatureExtractor.from_pretrained)
        self.model = _load("audio", source, tf.AutoModel.from_pretrained)
        self.device = pick_device(device)
        self.model.to(self.device).eval()
        self.tokens = tokens
        self.sample_rate = int(self.features.sampling_rate)
        self.dim = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def embed(self, waves: list[np.ndarray]) -> torch.Tensor:
        """[B] waveforms -> [B, tokens, D] float32 on the CPU."""
        inputs = self.features(waves, sampling_rate=self.sample_rate, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        hidden = self.model(**inputs).last_hidden_state            # [B, T, D]
        pooled = torch.nn.functional.adaptive_avg_pool1d(hidden.transpose(1, 2), self.tokens)
        return pooled.transpose(1, 2).float().cpu()


def embed_clips(encoder: AudioEncoder, uris: list[str], batch_size: int,
                what: str = "Extracting") -> torch.Tensor:
    from feda2v.data import batches, read_audio

    out = []
    tick = progress(len(uris), what)
    for start, stop in batches(len(uris), batch_size):
        waves = [read_audio(u, encoder.sample_rate) for u in uris[start:stop]]
        out.append(encoder.embed(waves))
        tick(stop - start)
    return torch.cat(out) if out else torch.empty(0, encoder.tokens, encoder.dim)


# --- text targets ------------------------------------------------------------------------------

@torch.inference_mode()
def text_targets(source: str, prompts: list[str], device: str = "auto") -> torch.Tensor:
    """Pooled, projected CLIP text embeddings, [len(prompts), D_clip]."""
    tf = _quiet_transformers()
    tokenizer = _load("text", source, tf.AutoTokenizer.from_pretrained)
    model = _load("text", source, tf.CLIPTextModelWithProjection.from_pretrained)
    dev = pick_device(device)
    model.to(dev).eval()
    batch = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(dev)
    return model(**batch).text_embeds.float().cpu()


# --- tiny offline models -----------------------------------------------------------------------

def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes that byte-level BPE vocabularies (CLIP's) use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def write_tiny_models(out: str, seed: int = 0, hidden: int = 64, clip_dim: int = 64) -> dict[str, str]:
    """Save a random-initialised AST (+ feature extractor) and CLIP text model (+ a byte-level
    tokenizer built offline) under `out`; returns the two folders."""
    tf = _quiet_transformers()
    torch.manual_seed(seed)
    audio_dir, text_dir = os.path.join(out, "audio"), os.path.join(out, "text")

    mel_bins, frames = 64, 100  # 1 s of audio at the 10 ms hop
    ast = tf.ASTConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=2 * hidden, num_mel_bins=mel_bins, max_length=frames)
    tf.ASTModel(ast).save_pretrained(audio_dir)
    tf.ASTFeatureExtractor(num_mel_bins=mel_bins, max_length=frames,
                           sampling_rate=16000).save_pretrained(audio_dir)

    os.makedirs(text_dir, exist_ok=True)
    alphabet = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(alphabet)})
    vocab.update({"<|startoftext|>": 512, "<|endoftext|>": 513})
    vocab_file, merges_file = os.path.join(text_dir, "vocab.json"), os.path.join(text_dir, "merges.txt")
    with open(vocab_file, "w") as f:
        json.dump(vocab, f)
    with open(merges_file, "w") as f:
        f.write("#version: 0.2\n")  # no merges: every character is its own token
    tokenizer = tf.CLIPTokenizer(vocab_file, merges_file)
    tokenizer.save_pretrained(text_dir)
    clip = tf.CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=2, num_attention_heads=4, projection_dim=clip_dim,
                             max_position_embeddings=77, bos_token_id=512, eos_token_id=513,
                             pad_token_id=513)
    tf.CLIPTextModelWithProjection(clip).save_pretrained(text_dir)
    log.info("Wrote tiny AST (%d-d tokens) to %s and tiny CLIP text model (%d-d) to %s",
             hidden, audio_dir, clip_dim, text_dir)
    return {"audio": audio_dir, "text": text_dir}
