"""Hostile and unlucky generator checkpoints in Run 2 (issue 21, failure 4).

Each case writes a real checkpoint where a Run 2 reads it (the seed's
client_{i}_generator.pt in generator_checkpoint_dir), spoils it, and runs the Run 2 sampling
stage in-process (stages.generate, what generate_task calls): the run must stop with one line
that names the file (and the entry), before the checkpoint is "loaded successfully", never with
torch's own error or its advice to load the file unsafely."""

import io
import logging
import os
import pickle
import random

import pytest
import torch

from feda2v.federated.generators import checkpoints
from feda2v.io import config as config_mod
from feda2v.io import storage
from feda2v.orchestration import stages

NAMES = ["dog", "rooster", "rain", "siren"]
UNSAFE_ADVICE = "weights_only set to False"


def _cfg(tmp_path, **feda2v):
    return config_mod.validate({
        "global_rounds": 1, "batch_size": 8, "seed": 0, "storage_root": str(tmp_path / "store"),
        "data": {"clients": [NAMES[:2], NAMES[2:]]},
        "feda2v": {"use_pretrained_generators": True, "generator_hidden_dim": 16,
                   "generator_latent_dim": 4, "synthetic_samples_per_class": 4,
                   "generator_training_epochs": 1, **feda2v}})


def _setup(tmp_path, **feda2v):
    """A Run 2 config, client 0's stored embeddings, and a good checkpoint where Run 2 looks
    for it (the seed's name, written as Run 1 writes it). Returns (cfg, checkpoint path)."""
    cfg = _cfg(tmp_path, **feda2v)
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1] * 12)
    x = torch.randn(len(y), 4, 8, generator=g) + y[:, None, None]
    ty = y[:8].clone()
    tx = torch.randn(len(ty), 4, 8, generator=g) + ty[:, None, None]
    storage.save_tensors(stages.embeddings_uri(cfg, 0),
                         {"train_x": x, "train_y": y, "test_x": tx, "test_y": ty})
    torch.manual_seed(0)
    vae = checkpoints.new_generator(cfg, 4, 8, 16)
    vae.fit_standardisation(x)
    conditions = torch.randn(2, 16, generator=g)
    uri = checkpoints.checkpoint_uri(stages.checkpoint_dir(cfg), 0)
    checkpoints.save(uri, cfg, vae, checkpoints.new_optimizer(cfg, vae), 0, 3, NAMES[:2], conditions,
                   {"run": "run1-key", "run_round": 3, "generator_loss": 0.5})
    return cfg, uri


def _run2(cfg):
    return stages.generate(cfg, 0, "run2-key")


def _refused(cfg, uri, caplog, pattern):
    """Run 2 stops with the project's named error, naming the file, before 'loaded
    successfully'; no synthetic samples are written."""
    with (caplog.at_level(logging.INFO, logger="feda2v"),
          pytest.raises((ValueError, storage.StorageError), match=pattern) as e):
        _run2(cfg)
    assert not isinstance(e.value, RuntimeError)
    text = str(e.value)
    assert uri in text and "\n" not in text
    assert UNSAFE_ADVICE not in text and "weights_only=False" not in text
    assert "loaded successfully" not in caplog.text
    from feda2v.io import runstate

    run = runstate.run_dir(cfg, "run2-key")
    assert not os.path.exists(runstate.synthetic_uri(run, 0))
    return text


def test_a_good_checkpoint_samples(tmp_path):
    """The fixture itself: untouched, the checkpoint gives Run 2's samples."""
    cfg, _ = _setup(tmp_path)
    result = _run2(cfg)
    assert result["samples"] == 2 * 4 and result["checkpoint_round"] == 3


def test_a_truncated_checkpoint_is_named_in_run2(tmp_path, caplog):
    cfg, uri = _setup(tmp_path)
    with open(uri, "rb") as f:
        data = f.read()
    with open(uri, "wb") as f:
        f.write(data[: len(data) // 2])
    _refused(cfg, uri, caplog, r"client_0_generator\.pt: not a readable checkpoint")


def test_a_checkpoint_of_random_bytes_is_named_in_run2(tmp_path, caplog):
    cfg, uri = _setup(tmp_path)
    with open(uri, "wb") as f:
        f.write(random.Random(0).randbytes(3000))
    _refused(cfg, uri, caplog, r"client_0_generator\.pt: not a readable checkpoint")


class Hostile:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickled_checkpoint_is_refused_in_run2_without_suggesting_unsafe_loading(
        tmp_path, caplog):
    cfg, uri = _setup(tmp_path)
    ckpt = torch.load(uri, weights_only=True)
    ckpt["extra"] = Hostile()
    buf = io.BytesIO()
    torch.save(ckpt, buf, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with open(uri, "wb") as f:
        f.write(buf.getvalue())
    _refused(cfg, uri, caplog, r"client_0_generator\.pt: holds pickled Python objects")


def _poison(uri, change):
    ckpt = torch.load(uri, weights_only=True)
    change(ckpt)
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    with open(uri, "wb") as f:
        f.write(buf.getvalue())


@pytest.mark.parametrize("mode", ["posterior", "calibrated", "prior"])
def test_nan_in_class_conditions_is_refused_naming_file_and_entry(tmp_path, caplog, mode):
    cfg, uri = _setup(tmp_path, generator_sampling=mode)
    _poison(uri, lambda c: c["class_conditions"].__setitem__((1, 3), float("nan")))
    _refused(cfg, uri, caplog,
             r"client_0_generator\.pt: 'class_conditions' holds 1 non-finite value")


def test_nan_in_weights_is_refused_in_run2_naming_file_and_tensor(tmp_path, caplog):
    cfg, uri = _setup(tmp_path)
    _poison(uri, lambda c: c["generator_state_dict"]["decoder.0.weight"].__setitem__(
        (0, 0), float("inf")))
    _refused(cfg, uri, caplog, r"client_0_generator\.pt: 'decoder\.0\.weight' holds 1 "
                               r"non-finite value.* in generator_state_dict")


def test_nan_in_the_standardisation_statistics_is_refused(tmp_path, caplog):
    cfg, uri = _setup(tmp_path)
    _poison(uri, lambda c: c["generator_state_dict"]["data_std"].__setitem__(5, float("nan")))
    _refused(cfg, uri, caplog, r"client_0_generator\.pt: 'data_std' holds 1 non-finite")


def test_a_checkpoint_that_is_not_a_generator_checkpoint_is_named(tmp_path, caplog):
    cfg, uri = _setup(tmp_path)
    buf = io.BytesIO()
    torch.save([torch.ones(3)], buf)
    with open(uri, "wb") as f:
        f.write(buf.getvalue())
    _refused(cfg, uri, caplog, r"client_0_generator\.pt: not a generator checkpoint")


def test_a_checkpoint_missing_its_class_conditions_is_named(tmp_path, caplog):
    cfg, uri = _setup(tmp_path)
    _poison(uri, lambda c: c.pop("class_conditions"))
    _refused(cfg, uri, caplog, r"client_0_generator\.pt: not a generator checkpoint: it lacks "
                               r"\['class_conditions'\]")


def test_class_conditions_of_the_wrong_shape_are_named(tmp_path, caplog):
    cfg, uri = _setup(tmp_path)
    _poison(uri, lambda c: c.__setitem__("class_conditions", torch.zeros(2, 5)))
    _refused(cfg, uri, caplog, r"client_0_generator\.pt: 'class_conditions' has shape "
                               r"\[2, 5\]")


def test_weights_of_the_wrong_shape_are_named(tmp_path, caplog):
    cfg, uri = _setup(tmp_path)
    _poison(uri, lambda c: c["generator_state_dict"].__setitem__("decoder.0.weight",
                                                                 torch.zeros(3, 3)))
    _refused(cfg, uri, caplog, r"client_0_generator\.pt: its generator_state_dict does not fit "
                               r"a vae of its dims")


@pytest.mark.parametrize("spoil", ["truncated", "pickled", "nan"])
def test_the_checked_reader_redacts_credentials_in_the_uri(spoil):
    """What a stored file's URI carries as user:password@ never reaches the message."""
    buf = io.BytesIO()
    if spoil == "pickled":
        torch.save({"extra": Hostile()}, buf)
    else:
        torch.save({"class_conditions": torch.tensor([[float("nan"), 1.0]])}, buf)
    data = buf.getvalue()[:300] if spoil == "truncated" else buf.getvalue()
    uri = "s3://alice:s3cr3t@store.example/ckpt/client_0_generator.pt"
    with pytest.raises(ValueError, match=r"s3://\*\*\*@store.example/ckpt/client_0_generator"
                                         r"\.pt: ") as e:
        storage.load_checkpoint(uri, data)
    assert "s3cr3t" not in str(e.value) and UNSAFE_ADVICE not in str(e.value)
