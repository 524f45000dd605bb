"""Seed-compatible run configuration: top-level run keys plus the `feda2v` section.

Every key has a default and a one-line doc (`feda2v config keys` prints them). Unknown keys
and bad values raise ConfigError naming the key, before any work starts.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# The seed's reference split (DESIGN.md §5): 3 clients x 5 disjoint ESC-50 classes.
REFERENCE_SPLIT = [
    ["dog", "rooster", "pig", "cow", "frog"],
    ["rain", "sea_waves", "crackling_fire", "crickets", "chirping_birds"],
    ["helicopter", "chainsaw", "siren", "car_horn", "engine"],
]


class ConfigError(ValueError):
    """A config key is unknown or its value is invalid; the message names the key."""


@dataclass(frozen=True)
class Key:
    default: Any
    check: Callable[[Any], str | None]  # returns an error text, or None when valid
    doc: str


def show(v: Any, limit: int = 60) -> str:
    """repr(v), cut to `limit` characters: a message quotes a value, never 200 KB of it."""
    text = repr(v)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _too_big(v: Any, hi: Any, why: str) -> str:
    return f"{v} is more than the most, {hi} ({why})"


def _int(lo: int | None = None, hi: int | None = None, why: str = ""):
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return f"expected an integer, got {show(v)}"
        if lo is not None and v < lo:
            return f"must be >= {lo}, got {show(v)}"
        if hi is not None and v > hi:
            return _too_big(show(v), hi, why)
        return None
    return check


def _float(lo: float | None = None, hi: float | None = None, strict_lo: bool = False,
           why: str = ""):
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"expected a number, got {show(v)}"
        if isinstance(v, float) and not math.isfinite(v):
            return f"expected a finite number, got {v}"
        if lo is not None and (v <= lo if strict_lo else v < lo):
            return f"must be {'>' if strict_lo else '>='} {lo}, got {show(v)}"
        if hi is not None and v > hi:
            return _too_big(show(v), hi, why) if why else f"must be <= {hi}, got {show(v)}"
        return None
    return check


def _below_one(v: Any) -> str | None:
    """A decay rate: in [0, 1)."""
    return _float(0)(v) or (None if v < 1 else f"must be < 1 (in [0, 1)), got {show(v)}")


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"expected true or false, got {show(v)}"


# String caps: a URI or path, a name (MLflow names and keys hold 250 characters), a prompt.
MAX_URI = 2048
MAX_TEXT_NAME = 200
MAX_PROMPT = 1000
_WHY_URI = "longer than any URL a browser, S3 or MLflow takes"
_WHY_NAME = "an MLflow name holds 250 characters"


def _text(most: int, why: str, nonempty: bool = False):
    def check(v: Any) -> str | None:
        if not isinstance(v, str):
            return f"expected a string, got {show(v)}"
        if len(v) > most:
            return _too_big(f"a string of {len(v)} characters", f"{most} characters", why)
        if nonempty and not v.strip():
            return "must not be empty"
        return None
    return check


_uri = _text(MAX_URI, _WHY_URI, nonempty=True)
_optional_uri = _text(MAX_URI, _WHY_URI)
_name_text = _text(MAX_TEXT_NAME, _WHY_NAME, nonempty=True)
_optional_name_text = _text(MAX_TEXT_NAME, _WHY_NAME)


def _choice(*options: str):
    def check(v: Any) -> str | None:
        return None if v in options else f"expected one of {list(options)}, got {show(v)}"
    return check


# Upper bounds: generous, but finite, so that a typo (1000000000 rounds) is refused before
# anything starts. A breach reads "bad value for 'KEY': N is more than the most, M (why)".
MAX_ROUNDS = 100_000
_WHY_ROUNDS = "100,000 one-second rounds already take over a day"
# Round execution unrolls every round into the compiled YAML: 30 + 50 rounds x 50 clients is
# ~0.99 MB, and KFP refuses pipeline specs much past that.
MAX_ROUND_EXECUTION_ROUNDS = 80
MAX_EPOCHS = 10_000
_WHY_EPOCHS = "10,000 epochs per round is a lifetime of training"
MAX_BATCH = 65_536
_WHY_BATCH = "larger than any client's data"
MAX_SEED = 2**32 - 1
MAX_LR = 10.0
_WHY_LR = "AdamW diverges long before this"
MAX_CLIENTS = 1000
_WHY_CLIENTS = "each client trains its own adapter and generator every round"
MAX_CLASSES = 10_000
_WHY_CLASSES = "more classes than any audio dataset has"
MAX_FOLD = 1000
_WHY_FOLDS = "more folds than any dataset has"
MAX_DIM = 65_536
_WHY_DIM = "a layer this wide is billions of parameters"
# The whole config travels on each task's command line (KFP passes it as an argument; Linux
# allows 128 KB per argument), and a config file is read whole.
MAX_CONFIG_JSON = 64 * 1024
MAX_CONFIG_FILE = 1024 * 1024
# top-level object > section > data.clients > a client's list: 4 levels; more is not a config.
MAX_DEPTH = 16


def _int_list(most: int, longest: int, why: str):
    def check(v: Any) -> str | None:
        if not isinstance(v, list) or not v or not all(
            isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v
        ):
            return f"expected a non-empty list of positive integers, got {show(v)}"
        if len(v) > longest:
            return _too_big(f"a list of {len(v)}", longest, why)
        big = max(v)
        return _too_big(big, most, why) if big > most else None
    return check


# A class name becomes a path segment and, with the characters MLflow refuses replaced
# (federated/server.py), an MLflow metric-key segment (quality/node_0/<class>/density): real
# datasets have names like "dog (bark)" or "children's voices". Refused: '/' and '\\' (more
# segments), a leading '.' or '..' anywhere (hidden or climbing folders, and MLflow refuses a key
# that normalises to another path), what fsspec reads as a query, fragment, escape or glob
# ('?', '#', '%', '*', '[', ']'), control characters, and spaces at either end.
_NAME = re.compile(r"[^/\\?#%*\[\]\x00-\x1f\x7f]+")
MAX_NAME_LENGTH = 200  # an MLflow key holds 250 characters, the class name sits inside one


def name_error(name: Any) -> str | None:
    """Why `name` is not safe as one MLflow metric-key segment and one path segment, or None."""
    if not isinstance(name, str) or not name:
        return f"expected a non-empty name, got {name!r}"
    if len(name) > MAX_NAME_LENGTH:
        return (f"{name[:40]!r}… is not a safe name: a name holds at most {MAX_NAME_LENGTH} "
                f"characters, got {len(name)}")
    if not _NAME.fullmatch(name) or name.startswith(".") or ".." in name \
            or name != name.strip():
        return (f"{name!r} is not a safe name: no '/', '\\', '..', leading '.', '?', '#', "
                "'%', '*', '[', ']', control characters or outer spaces (a name becomes a path "
                "segment and part of MLflow keys)")
    return None


def check_name(what: str, name: Any) -> None:
    """Raise ConfigError naming `what` (a key or an option) unless `name` is a safe segment."""
    error = name_error(name)
    if error:
        raise ConfigError(f"bad value for {what}: {error}")


def _client_split(v: Any) -> str | None:
    if not isinstance(v, list) or not v:
        return f"expected a non-empty list of class-name lists (one per client), got {show(v)}"
    if len(v) > MAX_CLIENTS:
        return _too_big(f"{len(v)} clients", MAX_CLIENTS, _WHY_CLIENTS)
    for i, classes in enumerate(v):
        if not isinstance(classes, list) or not classes or not all(
            isinstance(c, str) and c for c in classes
        ):
            return f"client {i}: expected a non-empty list of class names, got {show(classes)}"
        if len(classes) > MAX_CLASSES:
            return _too_big(f"client {i}: {len(classes)} classes", MAX_CLASSES, _WHY_CLASSES)
        if len(set(classes)) != len(classes):
            return f"client {i}: a class is listed twice in {show(classes)}"
        bad = next((e for e in map(name_error, classes) if e), None)
        if bad:
            return f"client {i}: {bad}"
    return None


def _str_list(v: Any) -> str | None:
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        return f"expected a list of non-empty strings, got {show(v)}"
    if len(v) > MAX_CLASSES:
        return _too_big(f"a list of {len(v)}", MAX_CLASSES, _WHY_CLASSES)
    return None if len(set(v)) == len(v) else f"a name is listed twice in {show(v)}"


def _name_list(v: Any) -> str | None:
    return _str_list(v) or next((e for e in map(name_error, v) if e), None)


def _template(v: Any) -> str | None:
    return (_text(MAX_PROMPT, "CLIP reads 77 tokens of a prompt")(v)
            or (None if "{label}" in v else "must contain '{label}'"))


def key(default: Any, check: Callable[[Any], str | None], doc: str) -> Any:
    """A config key as a dataclass field: its default, its check and its one-line doc."""
    spec = Key(default, check, doc)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"key": spec})
    return field(default=default, metadata={"key": spec})


class _Section:
    @classmethod
    def key_specs(cls) -> dict[str, Key]:
        """{name: Key} of this section's keys, in declaration order."""
        return {f.name: f.metadata["key"] for f in fields(cls) if "key" in f.metadata}


@dataclass(frozen=True, kw_only=True)
class RunKeys(_Section):
    """The top-level keys of a run config."""

    global_rounds: int = key(
        30, _int(1, MAX_ROUNDS, _WHY_ROUNDS),
        "Federated rounds of this run (Run 1: 30, Run 2: 50 in the seed).")
    batch_size: int = key(
        16, _int(1, MAX_BATCH, _WHY_BATCH),
        "Mini-batch size for adapter training on clients and server.")
    seed: int = key(
        0, _int(0, MAX_SEED, "seeds of numpy and most tools are 32-bit"),
        "Random seed for initialisation, shuffling and sampling.")
    local_epochs: int = key(
        1, _int(1, MAX_EPOCHS, _WHY_EPOCHS),
        "Adapter epochs per round on each client's real data.")
    learning_rate: float = key(
        1e-3, _float(0, MAX_LR, strict_lo=True, why=_WHY_LR),
        "Adapter learning rate (AdamW).")
    strategy: str = key(
        "fedavg", _choice("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi"),
        "How the server turns the clients' adapters into the global one: fedavg (weighted "
        "average), fedprox (the average; clients add proximal_mu/2 |w - w_global|^2), fedavgm, "
        "fedadam, fedyogi (a server optimizer stepping on the average's pseudo-gradient, as "
        "Flower's strategies do).")
    proximal_mu: float = key(
        0.01, _float(0, 100.0),
        "fedprox: weight of the clients' proximal term.")
    server_learning_rate: float = key(
        0.0, _float(0, MAX_LR, why=_WHY_LR),
        "fedavgm/fedadam/fedyogi: the server optimizer's step; 0 = the strategy's default "
        "(fedavgm 1.0, fedadam and fedyogi 0.01).")
    server_momentum: float = key(
        0.9, _below_one,
        "fedavgm: momentum of the server's pseudo-gradient, in [0, 1).")
    server_beta_1: float = key(
        0.9, _below_one,
        "fedadam/fedyogi: decay of the first moment, in [0, 1).")
    server_beta_2: float = key(
        0.99, _below_one,
        "fedadam/fedyogi: decay of the second moment, in [0, 1).")
    client_fraction: float = key(
        1.0, _float(0, 1.0, strict_lo=True),
        "Share of the clients that train and send an update in each round (Flower's "
        "fraction_fit): int(share x clients) of them, drawn per round from the seed; 1 = all.")
    server_tau: float = key(
        1e-3, _float(0, 1.0, strict_lo=True),
        "fedadam/fedyogi: adaptivity, added to the second moment's root (> 0).")
    pipeline: str = key(
        "auto", _choice("auto", "run1", "run2", "end_to_end"),
        "Which pipeline `feda2v run/compile` builds; auto follows the feda2v mode flags.")
    execution: str = key(
        "phase", _choice("phase", "round"),
        "Task granularity: phase = one task per federated phase running all its rounds "
        "in-process (rounds and clients are run-time parameters); round = one task per "
        "client per round (silo mode, rounds unrolled).")
    storage_root: str = key(
        "feda2v-store", _uri,
        "fsspec URL or path under which embeddings, checkpoints and runs live.")
    experiment_name: str = key(
        "feda2v", _name_text,
        "MLflow experiment name.")
    mlflow_tracking_uri: str = key(
        "", _optional_uri,
        "MLflow tracking URI; empty = $MLFLOW_TRACKING_URI, else SQLite file mlflow.db under "
        "a local storage_root.")
    mlflow_system_metrics: bool = key(
        False, _bool,
        "Log CPU, memory, disk, network (and GPU) use of the federated tasks into their "
        "MLflow run as system/{phase}/… every 10 s.")
    mlflow_register_model: str = key(
        "", _optional_name_text,
        "Register the final global adapter in the MLflow model registry under this name (a "
        "new version per run); empty = log the model without registering it.")


@dataclass(frozen=True, kw_only=True)
class Data(_Section):
    """The `data` section: where the clips are and how they are split over clients."""

    format: str = key(
        "esc50", _choice("esc50", "folders", "manifest", "embeddings"),
        "Dataset layout: esc50 (meta/esc50.csv + audio/), folders (ROOT/<class>/*.wav), "
        "manifest (CSV path,label[,fold|split]) or embeddings (safetensors, skips "
        "extraction).")
    dataset_uri: str = key(
        "data/ESC-50", _uri,
        "Dataset root, manifest CSV or embeddings file: path or fsspec URL.")
    train_folds: list[int] = key(
        [1, 2, 3, 4], _int_list(MAX_FOLD, MAX_FOLD, _WHY_FOLDS),
        "Folds used for training (esc50, manifest).")
    test_folds: list[int] = key(
        [5], _int_list(MAX_FOLD, MAX_FOLD, _WHY_FOLDS),
        "Folds held out for evaluation (esc50, manifest).")
    test_fraction: float = key(
        0.2, _float(0.0, 0.9),
        "Held-out share per class where the data has no folds or splits.")
    classes: list[str] = key(
        [], _name_list,
        "Classes to use; empty = the union of data.clients for the classes partition, else "
        "every class in the dataset.")
    partition: str = key(
        "classes", _choice("classes", "pathological", "dirichlet", "iid"),
        "How clips are spread over clients: explicit class lists (data.clients), k classes "
        "per client, Dirichlet(alpha) over labels, or IID.")
    clients: list[list[str]] = key(
        REFERENCE_SPLIT, _client_split,
        "Class names owned by each client (partition 'classes'; default: the seed's 3 x 5 "
        "split). A class listed for several clients is split between them.")
    num_clients: int = key(
        3, _int(1, MAX_CLIENTS, _WHY_CLIENTS),
        "Clients of the pathological, dirichlet and iid partitions.")
    classes_per_client: int = key(
        5, _int(1, MAX_CLASSES, _WHY_CLASSES),
        "Classes per client (pathological partition).")
    dirichlet_alpha: float = key(
        0.5, _float(0, 1e6, strict_lo=True, why="beyond this the partition is IID: use partition iid"),
        "Concentration of the dirichlet partition (small = more skewed).")
    clip_seconds: float = key(
        5.0, _float(0, 600, strict_lo=True, why="a 10-minute clip is already 115 MB per clip of a batch at 48 kHz"),
        "Clips are resampled to the encoder's rate and padded/cropped to this.")
    max_bad_fraction: float = key(
        0.05, _float(0.0, 1.0),
        "Unreadable clips are skipped with a warning; more than this share fails the "
        "extraction.")
    prompt_template: str = key(
        "a photo of {label}", _template,
        "Text prompt whose CLIP embedding is a class's target.")
    targets: str = key(
        "text", _choice("text", "images"),
        "Class targets: CLIP text embeddings of the prompts, or the mean CLIP image "
        "embedding of each class's images (manifest column `image`, or image files in the "
        "class folders).")


@dataclass(frozen=True, kw_only=True)
class Models(_Section):
    """The `models` section: the encoders, and how extraction runs them."""

    audio_model: str = key(
        "MIT/ast-finetuned-audioset-10-10-0.4593", _uri,
        "Audio encoder (AST or CLAP): hub id, local folder or fsspec URL of a folder (copied "
        "once to the local model cache).")
    text_model: str = key(
        "openai/clip-vit-large-patch14", _uri,
        "CLIP model for text targets: hub id, local folder or fsspec URL.")
    image_model: str = key(
        "openai/clip-vit-large-patch14", _uri,
        "CLIP model for image targets (data.targets = images).")
    audio_tokens: int = key(
        4, _int(1, 1024, "pooled to more tokens than the encoder has (AST: 1,214) only repeats them"),
        "Encoder tokens are adaptive-average-pooled to this many.")
    extract_batch_size: int = key(
        16, _int(1, MAX_BATCH, _WHY_BATCH),
        "Clips per forward pass during extraction.")
    extract_workers: int = key(
        2, _int(0, 256, "more processes than a machine has cores"),
        "DataLoader processes decoding audio (0 = in-process).")
    embeddings_dtype: str = key(
        "float32", _choice("float32", "float16"),
        "Storage precision of extracted embeddings (training upcasts).")
    device: str = key(
        "auto", _choice("auto", "cpu", "cuda"),
        "Torch device for all stages.")


@dataclass(frozen=True, kw_only=True)
class FedA2V(_Section):
    """The `feda2v` section: the seed's federated and generator keys."""

    use_generator: bool = key(
        True, _bool,
        "Enable client generators (false = plain FedAvg).")
    generator_type: str = key(
        "vae", _choice("vae", "gan"),
        "Generator kind: \"vae\" (the seed's) or \"gan\" (hinge loss, spectral norm).")
    generator_training_mode: bool = key(
        False, _bool,
        "Run 1: train generators and save checkpoints.")
    use_pretrained_generators: bool = key(
        False, _bool,
        "Run 2: load checkpoints and send synthetic samples. Both flags true = resume "
        "generator training from checkpoints.")
    generator_checkpoint_dir: str = key(
        "checkpoints/generators", _uri,
        "Checkpoint folder; relative paths live under storage_root.")
    generator_save_every: int = key(
        5, _int(1, MAX_ROUNDS, _WHY_ROUNDS),
        "Keep client_{i}_generator_round_{r}.pt every N rounds.")
    generator_training_epochs: int = key(
        10, _int(1, MAX_EPOCHS, _WHY_EPOCHS),
        "Generator epochs per round (Run 1).")
    generator_augmentation: bool = key(
        True, _bool,
        "Add Gaussian noise to generator inputs.")
    generator_augmentation_noise: float = key(
        0.1, _float(0, 100, why="noise of this std drowns embeddings of norm ~1"),
        "Std of that noise (target stays clean).")
    generator_hidden_dim: int = key(
        1024, _int(1, MAX_DIM, _WHY_DIM),
        "VAE hidden layer width.")
    generator_latent_dim: int = key(
        256, _int(1, MAX_DIM, _WHY_DIM),
        "VAE latent dimension.")
    generator_batch_size: int = key(
        32, _int(1, MAX_BATCH, _WHY_BATCH),
        "Generator mini-batch size.")
    generator_kl_weight: float = key(
        0.001, _float(0, 1000, why="beyond this the VAE learns nothing but its prior"),
        "VAE: the KL weight beta reaches at mid-training (the seed: 0.01, under which the "
        "decoder ignores its latent and the samples crowd the class centres).")
    generator_dp_epsilon: float = key(
        0.0, _float(0, 1000, why="an epsilon this large guarantees nothing; 0 turns DP off"),
        "Differentially private generator training (DP-SGD, Opacus): the ε all of Run 1's "
        "generator steps spend; 0 = off.")
    generator_dp_delta: float = key(
        1e-5, _float(0, 1, strict_lo=True),
        "The δ of that guarantee.")
    generator_dp_max_grad_norm: float = key(
        1.0, _float(0, 1e6, strict_lo=True, why="no clipping at all long before this; set generator_dp_epsilon 0 for no DP"),
        "DP-SGD: per-sample gradient clipping norm.")
    generator_sampling: str = key(
        "auto", _choice("auto", "posterior", "calibrated", "prior"),
        "How each client draws its synthetic samples. posterior (VAE): latents from a "
        "Gaussian fitted per class to its training rows' codes, plus the decoder's residual "
        "noise scaled per class so that the samples' density on its training rows is 1; "
        "calibrated: prior draws scaled by such a per-class temperature; prior: the plain "
        "prior (the seed). auto: posterior for the VAE, calibrated for the GAN, prior under "
        "DP-SGD (the others read the training rows outside the guarantee).")
    generator_learning_rate: float = key(
        1e-3, _float(0, MAX_LR, strict_lo=True, why=_WHY_LR),
        "Generator AdamW lr.")
    generator_training_rounds: int = key(
        30, _int(1, MAX_ROUNDS, _WHY_ROUNDS),
        "Run 1 rounds inside the end_to_end pipeline (Run 2 then runs global_rounds).")
    generator_missing_checkpoint: str = key(
        "fail", _choice("fail", "real_only"),
        "Run 2 client without a checkpoint: fail the run naming it, or train on real data "
        "only (sending no synthetic samples).")
    synthetic_samples_per_class: int = key(
        100, _int(1, 10_000, "10,000 x 768 floats is 30 MB per class, client and round sent to the server"),
        "Synthetic samples per class per round (Run 2); the seed sent 10. On the digits, 100 "
        "brought Run 2 within 3-4 points of centralized training (20: 7).")
    synthetic_samples_allocation: str = key(
        "auto", _choice("auto", "equal", "rows"),
        "How a client spreads its synthetic samples over its classes: equal (the seed: "
        "synthetic_samples_per_class of each), rows (the same total, in proportion to its "
        "training rows of each class, at least 1: a class it holds few rows of, whose "
        "generator saw little, sends few; the server sees the client's class shares), or "
        "auto: rows, but equal under generator_dp_epsilon. On the digits rows gained 0.8-1.0 "
        "points on Dirichlet splits and matched equal on disjoint classes.")
    quality_metrics: bool = key(
        True, _bool,
        "Run 2 clients report quality and privacy metrics of their synthetic samples "
        "(computed on the client; only the numbers leave it).")
    run2_start: str = key(
        "auto", _choice("auto", "initial", "run1"),
        "Run 2's first global adapter: Run 1's final one (run1; needs Run 1 in the same run: "
        "end_to_end, experiments), the initial one (the seed's separate Run 2), or auto: "
        "run1 when this run has a Run 1, else initial.")
    global_model_train: bool = key(
        False, _bool,
        "Server trains the global adapter on pooled synthetic samples.")
    global_model_train_epochs: int = key(
        20, _int(1, MAX_EPOCHS, _WHY_EPOCHS),
        "Epochs of that server-side training per round; the seed ran 5. On the digits, 20 with "
        "100 samples per class brought Run 2 within 2.2-2.8 points of centralized training.")
    global_model_train_mix: float = key(
        0.25, _float(0.0, 1.0),
        "Share of the server's training step kept: global = average + mix x (trained - "
        "average), where average is what the server's training started from (1 = the seed: "
        "the trained adapter replaces it; a full step hurts when clients share classes).")
    global_model_train_from_nodes_adapters: bool = key(
        True, _bool,
        "Server training starts from this round's FedAvg of node adapters (true) or from the "
        "previous global adapter (false).")
    server_real_data_uri: str = key(
        "", _optional_uri,
        "Real embeddings the server may train on (the precomputed-embeddings format); empty "
        "= the server has no real data.")
    global_model_train_real_ratio: float = key(
        0.5, _float(0.0, 0.95),
        "Share of real samples in the server's training set when it has real data: n_real = "
        "ratio / (1 - ratio) x n_synthetic, drawn with replacement.")
    adapter_hidden_dims: list[int] = key(
        [1024, 2048], _int_list(MAX_DIM, 16, _WHY_DIM),
        "Adapter MLP hidden widths.")
    adapter_heads: int = key(
        8, _int(1, 1024, "a head per CLIP dimension is the most that divides it"),
        "Attention-pooling heads (must divide the CLIP dimension).")
    optimize_memory_usage: bool = key(
        False, _bool,
        "Run 2: release the generator (and the CUDA cache) right after sampling.")


@dataclass(frozen=True, kw_only=True)
class Config(RunKeys):
    """A validated run config: the top-level keys, then one typed object per section
    (`cfg.feda2v.generator_type`). Made by validate, load, loads and override, which run the
    checks; replace() changes keys and validates again."""

    data: Data = field(default_factory=Data)
    models: Models = field(default_factory=Models)
    feda2v: FedA2V = field(default_factory=FedA2V)

    def to_dict(self) -> dict[str, Any]:
        """The plain JSON-able form (what config files and KFP parameters hold)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> Config:
        """This config with keys changed, validated again: top-level keys by name, a section's
        keys as a dict merged into it (feda2v={"generator_type": "gan"})."""
        raw = self.to_dict()
        for name, value in changes.items():
            if name in SECTIONS and isinstance(value, dict):
                raw[name].update(value)
            else:
                raw[name] = value
        return validate(raw)


TOP_LEVEL = RunKeys.key_specs()
DATA = Data.key_specs()
MODELS = Models.key_specs()
FEDA2V = FedA2V.key_specs()
SECTIONS: dict[str, dict[str, Key]] = {"data": DATA, "models": MODELS, "feda2v": FEDA2V}


def key_spec(dotted: str) -> Key:
    """The Key of a dotted config key ('learning_rate', 'feda2v.generator_type')."""
    section, _, leaf = dotted.rpartition(".")
    return (SECTIONS[section] if section else TOP_LEVEL)[leaf]


def _unknown(key: str, known: list[str], where: str) -> ConfigError:
    if len(key) > MAX_TEXT_NAME:
        return ConfigError(f"unknown config key {show(where + key)}")
    hint = difflib.get_close_matches(key, known, n=1)
    tip = f" (did you mean '{hint[0]}'?)" if hint else ""
    return ConfigError(f"unknown config key {where + key!r}{tip}")  # repr: one line, always


def depth_error(value: Any) -> str | None:
    """'nested too deeply …' when `value` nests lists and dicts past MAX_DEPTH, else None;
    iterative, so that no nesting can exhaust the stack here."""
    stack = [(value, 1)]
    while stack:
        v, level = stack.pop()
        if isinstance(v, (list, dict)):
            if level > MAX_DEPTH:
                return (f"nested too deeply (more than {MAX_DEPTH} levels of lists and "
                        "objects; a config has 4)")
            stack.extend((x, level + 1) for x in (v.values() if isinstance(v, dict) else v))
    return None


def parse_json(text: str, what: str) -> Any:
    """json.loads, with every way it can fail (bad syntax, nesting past the stack, an integer
    of more than 4,300 digits) one ConfigError that starts with `what`."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ConfigError(f"{what}: nested too deeply (more than {MAX_DEPTH} levels of lists "
                          "and objects; a config has 4)") from None
    except ValueError as e:  # JSONDecodeError, and int() of too many digits
        raise ConfigError(f"{what}: not valid JSON ({show(str(e), 200)[1:-1]})") from e
    error = depth_error(value)
    if error:
        raise ConfigError(f"{what}: {error}")
    return value


def _validate_section(raw: Any, spec: dict[str, Key], where: str,
                      errors: list[str]) -> dict[str, Any]:
    """The section with defaults filled in; each bad key's message is added to `errors`."""
    if not isinstance(raw, dict):
        errors.append(f"'{where.rstrip('.')}' must be a JSON object, got {type(raw).__name__}")
        raw = {}
    out = {}
    for key, value in raw.items():
        if key not in spec:
            errors.append(str(_unknown(key, list(spec), where)))
            continue
        error = spec[key].check(value) or uri_error(value)
        if error:
            errors.append(f"bad value for '{where}{key}': {error}")
            continue
        out[key] = value
    for key, k in spec.items():
        out.setdefault(key, copy.deepcopy(k.default))
    return out


def validate(raw: dict[str, Any] | Config) -> Config:
    """Return the typed config (defaults filled in) or raise ConfigError naming every bad key
    at once (one per line after the first); cross-key checks run on a config whose keys are
    each valid."""
    if isinstance(raw, Config):
        raw = raw.to_dict()
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a JSON object, got {type(raw).__name__}")
    error = depth_error(raw)
    if error:
        raise ConfigError(f"the config is {error}")
    errors: list[str] = []
    top = {k: v for k, v in raw.items() if k not in SECTIONS}
    cfg = _validate_section(top, TOP_LEVEL, "", errors)
    for name, spec in SECTIONS.items():
        cfg[name] = _validate_section(raw.get(name, {}), spec, f"{name}.", errors)
    if len(errors) == 1:
        raise ConfigError(errors[0])
    if errors:
        more = f"\n  - … and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise ConfigError(f"{len(errors)} bad keys:\n  - " + "\n  - ".join(errors[:20]) + more)
    typed = Config(**{k: cfg[k] for k in TOP_LEVEL}, data=Data(**cfg["data"]),
                   models=Models(**cfg["models"]), feda2v=FedA2V(**cfg["feda2v"]))
    _check_cross_keys(typed)
    size = len(typed.to_json().encode())
    if size > MAX_CONFIG_JSON:
        raise ConfigError(f"the config is {size / 1024:.0f} KB as JSON, more than the most, "
                          f"{MAX_CONFIG_JSON // 1024} KB (it travels on each task's command "
                          "line, and Linux takes 128 KB per argument): shorten its longest "
                          "values")
    return typed


def round_execution_error(cfg: Config, kind: str | None = None,
                          execution: str | None = None) -> str | None:
    """Why round execution cannot compile this many rounds (each is unrolled into the YAML),
    or None. Cheap: meant to run before anything is compiled or started."""
    kind = kind or pipeline_kind(cfg)
    if (execution or cfg.execution) != "round" or kind == "ablations":
        return None
    f = cfg.feda2v
    both = kind == "end_to_end" and f.use_generator
    total = cfg.global_rounds + (f.generator_training_rounds if both else 0)
    if total <= MAX_ROUND_EXECUTION_ROUNDS:
        return None
    what = (f"global_rounds + feda2v.generator_training_rounds = {cfg.global_rounds} + "
            f"{f.generator_training_rounds} = {total}" if both else f"{total}")
    return (f"bad value for 'global_rounds': {what} is more than the most, "
            f"{MAX_ROUND_EXECUTION_ROUNDS}, for 'execution' 'round' (each round is unrolled "
            "into the compiled pipeline, which KFP refuses past ~1 MB); use 'execution' 'phase', "
            f"which takes up to {MAX_ROUNDS:,} rounds")


def _check_cross_keys(cfg: Config) -> None:
    data = cfg.data
    if data.targets == "images" and data.format not in ("manifest", "folders"):
        raise ConfigError("bad value for 'data.targets': images need data.format manifest (with "
                          "an image column) or folders (image files in the class folders)")
    both = set(data.train_folds) & set(data.test_folds)
    if both:
        raise ConfigError(f"bad value for 'data.test_folds': fold(s) {sorted(both)} are also "
                          "in 'data.train_folds'")
    clients = num_clients(cfg)
    if int(cfg.client_fraction * clients) < 1:
        raise ConfigError(f"bad value for 'client_fraction': {cfg.client_fraction} of {clients} "
                          f"clients leaves no client in a round (at least {1 / clients:.3g})")
    f = cfg.feda2v
    if f.generator_dp_epsilon and f.generator_type != "vae":
        raise ConfigError("bad value for 'feda2v.generator_dp_epsilon': differentially private "
                          "training is implemented for the VAE (generator_type 'vae') only")
    if f.generator_sampling == "posterior" and f.generator_type != "vae":
        raise ConfigError("bad value for 'feda2v.generator_sampling': 'posterior' needs the "
                          "VAE's encoder (generator_type 'vae'); use calibrated or prior")
    if f.generator_dp_epsilon and f.generator_sampling in ("posterior", "calibrated"):
        raise ConfigError(f"bad value for 'feda2v.generator_sampling': "
                          f"'{f.generator_sampling}' fits the sampling to the training rows, "
                          "outside the guarantee of generator_dp_epsilon; use prior (or auto)")
    if f.generator_dp_epsilon and f.synthetic_samples_allocation == "rows":
        raise ConfigError("bad value for 'feda2v.synthetic_samples_allocation': 'rows' sends "
                          "as many samples as the client has rows of each class, which "
                          "generator_dp_epsilon does not cover; use equal")
    if f.run2_start == "run1" and pipeline_kind(cfg) == "run2":
        raise ConfigError("bad value for 'feda2v.run2_start': 'run1' needs Run 1 in the same run "
                          "(pipeline end_to_end), but this config runs Run 2 alone")
    if not f.use_generator and (f.generator_training_mode or f.use_pretrained_generators):
        raise ConfigError("bad value for 'feda2v.use_generator': false, but "
                          "generator_training_mode or use_pretrained_generators is true")


def load(path: str | Path) -> Config:
    """Read and validate a JSON config file."""
    size = os.path.getsize(path)
    if size > MAX_CONFIG_FILE:
        raise ConfigError(f"{path}: the config file is {size / 1024:.0f} KB, more than the most, "
                          f"{MAX_CONFIG_FILE // 1024} KB (a config is a few KB)")
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); a config is a JSON "
                          "file") from None
    if not text.strip():
        raise ConfigError(f"{path}: the config file is empty (write {{}} for all defaults)")
    raw = parse_json(text, str(path))
    try:
        return validate(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def override(cfg: Config | dict[str, Any], assignments: list[str]) -> Config:
    """`cfg` with KEY=VALUE assignments applied (a section's key dotted:
    feda2v.generator_type=gan), then validated. VALUE is read as JSON when it parses (5, 0.01,
    true, [1, 2]), else taken as a string."""
    out = cfg.to_dict() if isinstance(cfg, Config) else copy.deepcopy(cfg)
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {show(item)}: expected KEY=VALUE, e.g. global_rounds=5")
        try:
            value = json.loads(text)
        except RecursionError:
            raise ConfigError(f"--param {show(item)}: nested too deeply (more than "
                              f"{MAX_DEPTH} levels of lists and objects)") from None
        except ValueError:  # not JSON (or an integer of more than 4,300 digits): a string
            value = text
        error = depth_error(value)
        if error:
            raise ConfigError(f"--param {show(item)}: {error}")
        section, _, name = key.rpartition(".")
        if section and section not in SECTIONS:
            raise ConfigError(f"--param {show(item)}: unknown config section {section!r} (expected "
                              f"one of {sorted(SECTIONS)})")
        (out.setdefault(section, {}) if section else out)[name] = value
    return validate(out)


def as_config(value: Config | str | dict[str, Any]) -> Config:
    """What a stage is handed: the typed config as it is, JSON text (a task's parameter)
    parsed, or a dict validated, so that each process parses its config once."""
    if isinstance(value, Config):
        return value
    return validate(value) if isinstance(value, dict) else loads(value)


def loads(text: str) -> Config:
    """Validate a config given as JSON text (how stages receive it), with any credentials that
    `withhold_credentials` kept off the command line put back from the environment."""
    if len(text) > MAX_CONFIG_FILE:
        raise ConfigError(f"the config is {len(text) / 1024:.0f} KB of JSON, more than the most, "
                          f"{MAX_CONFIG_FILE // 1024} KB")
    return validate(_restore_credentials(parse_json(text, "the config")))


# --- credentials --------------------------------------------------------------------------------
# A URI may carry user:password@. kfp.local puts the config on every task's command line (read
# by anyone with `ps`), so a local run sends such values through the environment instead
# (/proc/PID/environ is readable by the owner only).

CREDENTIALS_ENV = "FEDA2V_CREDENTIALS"
# The userinfo of a URI runs from '//' to the LAST '@' before the path (Python's urllib and
# urllib3 split there too): a password may hold an unencoded '@', '?', '#' or ':', and each
# '@' of it must stay hidden. A run of text ends at whitespace; '///' (file:///, sqlite:///)
# starts a path, not an authority.
_USERINFO = re.compile(r"(?<!/)//[^/\s]+@")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")


def redact(text: str) -> str:
    """Drop user:password@ from every URI in `text` before it is logged or printed: all of it,
    up to the last '@' of the authority."""
    return _USERINFO.sub("//***@", text)


def uri_error(value: Any) -> str | None:
    """Why a URI value cannot be split into userinfo, host and port as the clients would split
    it (a password with an unencoded '/', '?' or '#'), or None. Never quotes the value: it may
    hold a password."""
    if not isinstance(value, str) or not _SCHEME.match(value):
        return None
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a host:port that does not parse
    except ValueError:
        parts = None
    userinfo = _USERINFO.match(value, _SCHEME.match(value).end() - 2)
    if parts is None or ("@" in parts.netloc) != bool(userinfo):
        return ("its user:password@host:port part does not parse (value not shown: it may "
                "hold a password); percent-encode '/', '?' and '#' in a user name or password "
                "(%2F, %3F, %23), and an '@' of a query (%40)")
    return None


def leaves(cfg: dict, prefix: str = ""):
    """(dotted key, its section dict, key, value) for every non-dict value of a config."""
    for key, value in cfg.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", cfg, key, value


def withhold_credentials(cfg: Config) -> tuple[Config, dict[str, str]]:
    """(cfg with every credential-bearing string redacted, {dotted key: real value})."""
    raw = cfg.to_dict()
    withheld = {}
    for dotted, section, key, value in list(leaves(raw)):
        if isinstance(value, str) and redact(value) != value:
            withheld[dotted] = value
            section[key] = redact(value)
    return validate(raw), withheld


def _restore_credentials(raw: Any) -> Any:
    text = os.environ.get(CREDENTIALS_ENV)
    if not text or not isinstance(raw, dict):
        return raw
    withheld = json.loads(text)
    for dotted, section, key, value in list(leaves(raw)):
        real = withheld.get(dotted)
        if real is not None and value == redact(real):
            section[key] = real
    return raw


def configured_classes(cfg: Config) -> list[str] | None:
    """The class list when the config alone fixes it (data.classes, or the union of data.clients
    in client order for the classes partition); None when it comes from the dataset."""
    data = cfg.data
    if data.classes:
        return list(data.classes)
    if data.partition == "classes":
        return list(dict.fromkeys(c for classes in data.clients for c in classes))
    return None


def num_clients(cfg: Config) -> int:
    data = cfg.data
    return len(data.clients) if data.partition == "classes" else data.num_clients


def pipeline_kind(cfg: Config) -> str:
    """run1 | run2 | end_to_end, resolving 'auto' from the seed's mode flags."""
    if cfg.pipeline != "auto":
        return cfg.pipeline
    f = cfg.feda2v
    if f.use_pretrained_generators and not f.generator_training_mode:
        return "run2"
    return "run1"


def describe_keys() -> str:
    """Every key, its default and its doc, for `feda2v config keys` and docs/configuration.md."""
    lines = []
    for where, spec in [("", TOP_LEVEL), *[(f"{n}.", s) for n, s in SECTIONS.items()]]:
        for key, k in spec.items():
            lines.append(f"{where}{key} = {json.dumps(k.default)}\n    {k.doc}")
    return "\n".join(lines)
