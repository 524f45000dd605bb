"""Generator training throughput (samples/s): batched vs a batch-size-1 loop like the original;
and the time a client spends calibrating its posterior sampling before Run 2.

Same data, same epochs, the seed's VAE dimensions (4 x 768 AST tokens, 768-d CLIP condition,
hidden 1024, latent 256). The original system trained the VAE one sample at a time.

    python bench/generator.py [--samples N] [--epochs E] [--batches 32,64,128]
"""

from __future__ import annotations

import argparse
import time

import torch

from feda2v.federated.generators import calibration, checkpoints, training
from feda2v.io import config as config_mod


def throughput(cfg: config_mod.Config, x: torch.Tensor, cond: torch.Tensor, batch: int) -> float:
    cfg = cfg.replace(feda2v={"generator_batch_size": batch})
    torch.manual_seed(0)
    vae = checkpoints.new_generator(cfg, x.shape[1], x.shape[2], cond.shape[1])
    vae.fit_standardisation(x)
    opt = checkpoints.new_optimizer(cfg, vae)
    start = time.perf_counter()
    training.train_generator(cfg, vae, opt, x, cond, client_id=0, seed=0)
    return len(x) * cfg.feda2v.generator_training_epochs / (time.perf_counter() - start)


def calibration_seconds(cfg: config_mod.Config, counts: list[int]) -> float:
    """Posterior fit plus temperature calibration of one client with `counts` rows per class
    (an untrained VAE: the work per bisection step does not depend on the weights)."""
    from feda2v.federated.generators.vae import Posterior

    g = torch.Generator().manual_seed(1)
    rows = [torch.randn(n, 4, 768, generator=g) for n in counts]
    conditions = torch.randn(len(counts), 768, generator=g)
    torch.manual_seed(0)
    vae = checkpoints.new_generator(cfg, 4, 768, 768)
    vae.fit_standardisation(torch.cat(rows))
    vae.eval()
    start = time.perf_counter()
    post = Posterior.fit(vae, conditions, rows)
    calibration.calibrate_temperature(vae, conditions, rows, 0, posterior=post)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batches", default="32,64,128",
                        help="batch sizes to compare with 1 (32 is the config default)")
    args = parser.parse_args()
    cfg = config_mod.validate({"feda2v": {"generator_training_epochs": args.epochs}})
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.samples, 4, 768, generator=g)
    cond = torch.randn(args.samples, 768, generator=g)
    single = throughput(cfg, x, cond, 1)
    batched = {b: throughput(cfg, x, cond, b) for b in map(int, args.batches.split(","))}
    print(f"\nVAE training throughput ({args.samples} samples x {args.epochs} epochs, "
          f"{torch.get_num_threads()} torch threads)")
    print(f"  batch size   1 (original): {single:8.1f} samples/s")
    for b, rate in batched.items():
        print(f"  batch size {b:>3}           : {rate:8.1f} samples/s  ({rate / single:5.1f}x)")
    print("\nPosterior sampling calibration per client (seed dims)")
    for label, counts in (("5 classes x 32 rows (each alone)", [32] * 5),
                          ("10 classes x 8 rows (pooled)", [8] * 10)):
        print(f"  {label:34}: {calibration_seconds(cfg, counts):6.1f} s")


if __name__ == "__main__":
    main()
