"""Audio and CLIP-text embeddings via transformers, plus tiny offline models for tests and demo.

Real model ids are the defaults; offline, `write_tiny_models` saves random-initialised small
models of the same architectures, which load through the same `from_pretrained` code.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import torch

from feda2v.encoders.backbones import load_pretrained, quiet_transformers
from feda2v.io.log import get_logger, progress

log = get_logger()


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("models.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


# --- audio --------------------------------------------------------------------------------------

class AudioEncoder:
    """An AST or CLAP encoder whose token sequence is pooled to `tokens` by adaptive averaging."""

    def __init__(self, source: str, tokens: int = 4, device: str = "auto"):
        from feda2v.encoders.backbones import AudioBackbone
        from feda2v.encoders.model_source import resolve

        quiet_transformers()
        self.source = source
        self.device = pick_device(device)
        self.backbone = AudioBackbone(resolve(source), self.device)
        self.tokens = tokens
        self.sample_rate = self.backbone.sample_rate
        self.dim = self.backbone.dim

    @torch.inference_mode()
    def embed(self, waves: list[np.ndarray]) -> torch.Tensor:
        """[B] waveforms -> [B, tokens, D] float32 on the CPU."""
        # bf16 autocast on CUDA roughly doubles throughput; the CPU stays in fp32.
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            hidden = self.backbone.tokens(waves)                          # [B, T, D]
        pooled = torch.nn.functional.adaptive_avg_pool1d(hidden.float().transpose(1, 2),
                                                         self.tokens)
        return pooled.transpose(1, 2).cpu()


def embed_clips(encoder: AudioEncoder, uris: list[str], seconds: float, batch_size: int,
                workers: int = 0, what: str = "Extracting"):
    """Embed clips -> (embeddings [N_ok, tokens, D], indices of the clips that were embedded,
    [(uri, error), ...] of the clips that could not be read)."""
    from feda2v.data.audio import clip_batches

    out, kept, bad = [], [], []
    tick = progress(len(uris), what)
    for batch in clip_batches(uris, encoder.sample_rate, seconds, batch_size, workers):
        good = [(i, w) for i, w, _ in batch if w is not None]
        bad += [(uris[i], err) for i, w, err in batch if w is None]
        if good:
            out.append(encoder.embed([w for _, w in good]))
            kept += [i for i, _ in good]
        tick(len(batch))
    x = torch.cat(out) if out else torch.empty(0, encoder.tokens, encoder.dim)
    return x, kept, bad


# --- text targets ------------------------------------------------------------------------------

@torch.inference_mode()
def text_targets(source: str, prompts: list[str], device: str = "auto") -> torch.Tensor:
    """Pooled, projected CLIP text embeddings, [len(prompts), D_clip]."""
    from feda2v.encoders.model_source import resolve

    tf = quiet_transformers()
    source = resolve(source)
    tokenizer = load_pretrained("text model", source, tf.AutoTokenizer.from_pretrained)
    model = load_pretrained("text model", source, tf.CLIPTextModelWithProjection.from_pretrained)
    dev = pick_device(device)
    model.to(dev).eval()
    batch = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(dev)
    return model(**batch).text_embeds.float().cpu()


def image_targets(source: str, images: dict[str, list[str]], class_names: list[str],
                  device: str = "auto") -> torch.Tensor:
    """Per class, the mean of its images' unit-normalised CLIP image embeddings, [C, D_clip]."""
    import fsspec
    from PIL import Image

    from feda2v.encoders.backbones import image_embeddings
    from feda2v.encoders.model_source import resolve

    missing = [c for c in class_names if not images.get(c)]
    if missing:
        raise ValueError(f"data.targets is 'images' but class(es) {missing} have no image")
    source, dev = resolve(source), pick_device(device)
    rows = []
    for name in class_names:
        pictures = []
        for uri in images[name]:
            with fsspec.open(uri, "rb") as f:
                try:
                    pictures.append(Image.open(io.BytesIO(f.read())).convert("RGB"))
                except OSError as e:
                    raise ValueError(f"{uri}: cannot read image ({e})") from None
        emb = torch.nn.functional.normalize(image_embeddings(source, pictures, dev), dim=-1)
        rows.append(emb.mean(0))
    return torch.stack(rows)


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
    """Save random-initialised small models of the real architectures under `out`: AST and
    CLAP audio encoders (+ feature extractors), a CLIP text model (+ a byte-level tokenizer built
    offline) and a CLIP vision model; returns their folders."""
    tf = quiet_transformers()
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
    from feda2v.encoders.backbones import write_tiny_clap, write_tiny_clip_vision

    clap_dir = write_tiny_clap(os.path.join(out, "clap"), seed=seed)
    vision_dir = write_tiny_clip_vision(os.path.join(out, "vision"), seed=seed,
                                        projection_dim=clip_dim)
    log.info("Wrote tiny AST (%d-d tokens) to %s, tiny CLAP audio model to %s, tiny CLIP text "
             "(%d-d) to %s and vision models to %s", hidden, audio_dir, clap_dir, clip_dim,
             text_dir, vision_dir)
    return {"audio": audio_dir, "clap": clap_dir, "text": text_dir, "vision": vision_dir}
