"""A generator checkpoint: the seed's file names and fields, saving, and the one checked
loader (every read of a checkpoint goes through load())."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import torch

from feda2v.federated import generators
from feda2v.io import storage
from feda2v.io.config import Config, redact
from feda2v.io.log import get_logger

log = get_logger()


# The seed's checkpoint field: the diffusion model whose pooled CLIP text space the adapter and
# the generator condition live in (Flux conditions on CLIP ViT-L/14 pooled text embeddings).
DIFFUSION_TYPE = "flux"


DIM_KEYS = ("seq_len", "audio_dim", "cond_dim", "hidden_dim", "latent_dim")


def checkpoint_uri(checkpoint_dir: str, client_id: int, round_num: int | None = None) -> str:
    """Seed names: client_{i}_generator.pt (latest), client_{i}_generator_round_{r}.pt."""
    name = (f"client_{client_id}_generator.pt" if round_num is None
            else f"client_{client_id}_generator_round_{round_num}.pt")
    return storage.join(checkpoint_dir, name)


def new_generator(cfg: Config, seq_len: int, audio_dim: int, cond_dim: int):
    f = cfg.feda2v
    return generators.new(f.generator_type, seq_len, audio_dim, cond_dim,
                          f.generator_hidden_dim, f.generator_latent_dim)


def new_optimizer(cfg: Config, model):
    return model.new_optimizer(cfg.feda2v.generator_learning_rate)


def checkpoint_dict(cfg: Config, vae, opt, client_id: int, round_num: int,
                    class_names: list[str], conditions: torch.Tensor,
                    extra: dict | None = None) -> dict:
    """The seed's checkpoint dict. `opt` None keeps weights only (a round snapshot: resume reads
    the latest checkpoint, which carries the optimizer state)."""
    return {
        "client_id": client_id,
        "round": round_num,
        "generator_type": cfg.feda2v.generator_type,
        "diffusion_type": DIFFUSION_TYPE,
        "generator_state_dict": vae.state_dict(),
        "optimizer_state_dict": opt.state_dict() if opt is not None else {},
        "dims": {"seq_len": vae.seq_len, "audio_dim": vae.audio_dim,
                 "cond_dim": conditions.shape[1], "hidden_dim": cfg.feda2v.generator_hidden_dim,
                 "latent_dim": vae.latent_dim},
        # The exact conditions used in training, so that sampling uses the same vectors.
        "class_names": list(class_names),
        "class_conditions": conditions.detach().cpu(),
        "config": dataclasses.asdict(cfg.feda2v),
        **({"dp": vae.dp_state} if getattr(vae, "dp_state", None) is not None else {}),
        **(extra or {}),
    }


def checkpoint_bytes(ckpt: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


def save(uri: str, cfg: Config, vae, opt, client_id: int, round_num: int, class_names: list[str],
         conditions: torch.Tensor, extra: dict | None = None) -> None:
    storage.write_bytes(uri, checkpoint_bytes(checkpoint_dict(cfg, vae, opt, client_id, round_num,
                                                              class_names, conditions, extra)))


REQUIRED_KEYS = ("round", "generator_type", "generator_state_dict", "dims", "class_names",
                 "class_conditions")


def load(uri: str, cfg: Config, expect: dict[str, int], device: torch.device | None = None,
         ckpt: dict | None = None, with_optimizer: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    """Load a checkpoint (or use `ckpt`, already read from `uri` by storage.load_checkpoint) and
    refuse it when its type or dims disagree with this run, or it is not a whole checkpoint.
    Sampling passes with_optimizer=False (opt is then None). Every refusal is a ValueError
    naming the file."""
    name = redact(uri)
    ckpt = ckpt if ckpt is not None else storage.load_checkpoint(uri)
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{name}: not a generator checkpoint: it lacks {missing}")
    want_type = cfg.feda2v.generator_type
    if ckpt.get("generator_type") != want_type:
        raise ValueError(f"{name}: generator_type is {ckpt.get('generator_type')!r} in the "
                         f"checkpoint but {want_type!r} in the config")
    dims = ckpt["dims"]
    bad = [k for k in DIM_KEYS if not isinstance(dims, dict) or type(dims.get(k)) is not int
           or dims[k] < 1]
    if bad:
        raise ValueError(f"{name}: 'dims' lacks a positive whole number for {bad}")
    for key, value in expect.items():
        if dims.get(key) != value:
            raise ValueError(f"{name}: {key} is {dims.get(key)} in the checkpoint but {value} "
                             "in this run")
    _check_conditions(name, ckpt, dims["cond_dim"])
    if not isinstance(ckpt["generator_state_dict"], dict):
        raise ValueError(f"{name}: generator_state_dict is not a state dict")  # noqa: TRY004
    storage.require_finite(ckpt["generator_state_dict"], name)
    vae = generators.GENERATORS[want_type](*(dims[k] for k in DIM_KEYS))
    try:
        vae.load_state_dict(ckpt["generator_state_dict"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{name}: its generator_state_dict does not fit a {want_type} of its "
                         f"dims: {_one_line(e)}") from None
    vae.dp_state = ckpt.get("dp")  # the privacy accountant goes on where it stopped
    vae.to(device or torch.device("cpu"))  # before the optimizer, whose state follows the params
    opt = None
    if with_optimizer:
        if not ckpt.get("optimizer_state_dict"):
            raise ValueError(f"{name}: a weights-only round snapshot cannot resume training; "
                             "resume from the latest checkpoint (client_{i}_generator.pt)")
        opt = new_optimizer(cfg, vae)
        try:
            opt.load_state_dict(ckpt["optimizer_state_dict"])
        except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as e:
            raise ValueError(f"{name}: its optimizer_state_dict does not fit this "
                             f"{want_type}: {_one_line(e)}") from None
    return vae, opt, ckpt


def _check_conditions(name: str, ckpt: dict, cond_dim: int) -> None:
    """The checkpoint's class names and conditions: one floating-point condition of cond_dim
    per class (sampling feeds them to the generator as they are)."""
    names, cond = ckpt["class_names"], ckpt["class_conditions"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
        raise ValueError(f"{name}: 'class_names' is not a non-empty list of names")
    if not torch.is_tensor(cond) or not cond.is_floating_point():
        raise ValueError(f"{name}: 'class_conditions' is not a floating-point tensor")
    if list(cond.shape) != [len(names), cond_dim]:
        raise ValueError(f"{name}: 'class_conditions' has shape {list(cond.shape)}, expected "
                         f"{[len(names), cond_dim]} (one condition of cond_dim {cond_dim} per "
                         "class of class_names)")


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(e).__name__


def expected_dims(cfg: Config, x: torch.Tensor, cond_dim: int) -> dict[str, int]:
    f = cfg.feda2v
    return {"seq_len": x.shape[1], "audio_dim": x.shape[2], "cond_dim": cond_dim,
            "hidden_dim": f.generator_hidden_dim, "latent_dim": f.generator_latent_dim}
