"""Extraction throughput (clips/s): batched + decoding workers vs one clip at a time.

Three ways to embed the same clips, each timed end to end (decode, resample, features, model):
- "transformers loop": one clip at a time through ASTFeatureExtractor and ASTModel, the recipe of
  the transformers docs (its numpy filterbank walks the clip frame by frame);
- "ours, 1 at a time": feda2v's AudioEncoder called once per clip (torch filterbank);
- "ours, batched": `embed_clips`, batches of clips decoded by DataLoader workers.

Clips are ESC-50-like (5 s at 44.1 kHz, resampled to the encoder's rate), so decoding and
resampling are part of the figure. Models are random-initialised (offline): a tiny AST and a
full-size AST (the default ASTConfig, the architecture of MIT/ast-finetuned-audioset-10-10-0.4593).
On a CUDA host the full-size model is also measured on the GPU.

    python bench/extraction.py [--clips N] [--full-clips N] [--devices cpu,cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

import torch

warnings.filterwarnings("ignore", message="At least one mel filter")

from feda2v.data.audio import load_clip
from feda2v.data.demo_data import write_demo_dataset
from feda2v.encoders.embed import AudioEncoder, embed_clips, write_tiny_models


def full_size_ast(out: str) -> str:
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    transformers.ASTModel(transformers.ASTConfig()).save_pretrained(out)
    transformers.ASTFeatureExtractor().save_pretrained(out)
    return out


@torch.inference_mode()
def transformers_loop(enc: AudioEncoder, uris: list[str], seconds: float) -> float:
    features, model = enc.backbone.features, enc.backbone.model
    start = time.perf_counter()
    for u in uris:
        inputs = features(load_clip(u, enc.sample_rate, seconds), sampling_rate=enc.sample_rate,
                          return_tensors="pt")
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=enc.device.type == "cuda"):
            hidden = model(**inputs.to(enc.device)).last_hidden_state
        torch.nn.functional.adaptive_avg_pool1d(hidden.float().transpose(1, 2), enc.tokens).cpu()
    return len(uris) / (time.perf_counter() - start)


def one_at_a_time(enc: AudioEncoder, uris: list[str], seconds: float) -> float:
    start = time.perf_counter()
    for u in uris:
        enc.embed([load_clip(u, enc.sample_rate, seconds)])
    return len(uris) / (time.perf_counter() - start)


def batched(enc: AudioEncoder, uris: list[str], seconds: float, batch: int, workers: int) -> float:
    start = time.perf_counter()
    x, _, bad = embed_clips(enc, uris, seconds, batch, workers, what="bench")
    assert not bad and len(x) == len(uris)
    return len(uris) / (time.perf_counter() - start)


def measure(name: str, source: str, device: str, uris: list[str], single_n: int, batch: int,
            workers: int, repeats: int) -> tuple:
    """Median of `repeats` interleaved timings of each way (shared machines are noisy)."""
    enc = AudioEncoder(source, device=device)
    enc.embed([load_clip(uris[0], enc.sample_rate, 5.0)] * 2)  # warm-up (allocations, kernels)
    runs = [(transformers_loop(enc, uris[:single_n], 5.0),
             one_at_a_time(enc, uris[:single_n], 5.0),
             batched(enc, uris, 5.0, batch, workers)) for _ in range(repeats)]
    loop, single, many = (statistics.median(way) for way in zip(*runs))
    return name, device, len(uris), loop, single, many


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=256, help="clips for the tiny model")
    parser.add_argument("--full-clips", type=int, default=32, help="clips for full-size AST on CPU")
    parser.add_argument("--gpu-clips", type=int, default=2000, help="clips for full-size on CUDA")
    parser.add_argument("--repeats", type=int, default=3, help="timings per figure (median)")
    parser.add_argument("--devices", default="cpu,cuda",
                        help="comma-separated rows to measure (cuda only where available)")
    args = parser.parse_args()
    devices = set(args.devices.split(","))
    if "cuda" in devices and not torch.cuda.is_available():
        print("No CUDA device here: the GPU row is skipped.")
        devices.discard("cuda")
    workers = min(4, os.cpu_count() or 1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        n = max(args.clips, args.gpu_clips if "cuda" in devices else 0)
        # Up to 300 distinct files (writing them is slow), listed again to reach n: every
        # listing is still read, decoded and resampled.
        write_demo_dataset(os.path.join(tmp, "esc"), clips_per_class=-(-min(n, 300) // 15),
                           seconds=5.0, sample_rate=44100)
        audio = os.path.join(tmp, "esc", "audio")
        files = sorted(os.path.join(audio, f) for f in os.listdir(audio))
        uris = [files[i % len(files)] for i in range(n)]
        full = full_size_ast(os.path.join(tmp, "full"))
        if "cpu" in devices:
            tiny = write_tiny_models(os.path.join(tmp, "tiny"))["audio"]
            rows.append(measure("tiny AST", tiny, "cpu", uris[:args.clips], 128, 32, workers,
                                args.repeats))
            rows.append(measure("full-size AST", full, "cpu", uris[:args.full_clips], 8, 16,
                                workers, 1))  # minutes per run on 2 cores
        if "cuda" in devices:
            rows.append(measure("full-size AST", full, "cuda", uris[:args.gpu_clips], 64, 64,
                                workers, args.repeats))
    print(f"\nExtraction throughput ({torch.get_num_threads()} torch threads, {workers} decode "
          f"workers, 5 s clips at 44.1 kHz, "
          f"median of {args.repeats} for the tiny and GPU rows)")
    print(f"{'':<29} {'transformers':>12} {'ours':>12} {'ours':>10}   batched vs")
    print(f"{'model':<15} {'device':<6} {'clips':>6} {'loop':>12} {'1-at-a-time':>12} "
          f"{'batched':>10}   {'loop':>5} {'ours 1':>7}")
    for name, device, count, loop, single, many in rows:
        print(f"{name:<15} {device:<6} {count:>6} {loop:>10.1f}/s {single:>10.1f}/s "
              f"{many:>8.1f}/s   {many / loop:>4.1f}x {many / single:>6.1f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
