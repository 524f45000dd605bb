"""Client and server logic on synthetic embeddings (no encoders): fast and exact."""

import logging
import os

import pytest
import torch

from feda2v import config as config_mod
from feda2v.federated import generator
from feda2v.federated.client import ClientData, run_round
from feda2v.federated.server import train_global
from feda2v.federated.task import new_adapter, zero_shot_accuracy

NAMES = ["dog", "rooster", "rain", "siren"]


def _cfg(**feda2v):
    f = {"generator_training_epochs": 4, "generator_hidden_dim": 32, "generator_latent_dim": 8,
         "adapter_hidden_dims": [32], "adapter_heads": 4, "synthetic_samples_per_class": 6,
         "generator_save_every": 2, **feda2v}
    return config_mod.validate({"batch_size": 8, "local_epochs": 2, "feda2v": f,
                                "data": {"clients": [NAMES[:2], NAMES[2:]]}})


def _clustered(classes, per_class=12, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(NAMES), 4, dim, generator=torch.Generator().manual_seed(99)) * 2
    y = torch.tensor(classes).repeat_interleave(per_class)
    x = centres[y] + 0.3 * torch.randn(len(y), 4, dim, generator=g)
    return x, y


def _data(classes, seed=0):
    x, y = _clustered(classes, seed=seed)
    tx, ty = _clustered(classes, per_class=4, seed=seed + 1)
    return ClientData(x, y, tx, ty)


TARGETS = torch.randn(len(NAMES), 16, generator=torch.Generator().manual_seed(7))


def _global(cfg):
    torch.manual_seed(0)
    return new_adapter(cfg, 16, 16).state_dict()


def test_run1_trains_and_saves_seed_named_checkpoints(tmp_path, caplog):
    cfg = _cfg()
    ckpt_dir = str(tmp_path / "ckpt")
    data = _data([0, 1])
    for r in (1, 2, 3):
        update = run_round(cfg, 0, r, "run1", _global(cfg), data, TARGETS, NAMES, ckpt_dir)
        assert update.num_samples == len(data.train_x)
        assert update.metrics["generator_loss"] > 0
    assert sorted(os.listdir(ckpt_dir)) == ["client_0_generator.pt",
                                            "client_0_generator_round_2.pt"]
    ckpt = torch.load(generator.checkpoint_uri(ckpt_dir, 0), weights_only=True)
    assert ckpt["round"] == 3 and ckpt["client_id"] == 0
    assert ckpt["generator_type"] == "vae" and ckpt["diffusion_type"] == "flux"
    assert {"generator_state_dict", "optimizer_state_dict"} <= set(ckpt)
    assert ckpt["class_names"] == ["dog", "rooster"]
    assert ckpt["optimizer_state_dict"]["state"]  # optimizer moments saved for resume


def test_run1_resume_continues_the_round_counter(tmp_path):
    ckpt_dir = str(tmp_path / "ckpt")
    data = _data([0, 1])
    cfg = _cfg()
    run_round(cfg, 0, 1, "run1", _global(cfg), data, TARGETS, NAMES, ckpt_dir)
    resume = _cfg(generator_training_mode=True, use_pretrained_generators=True)
    run_round(resume, 0, 1, "run1", _global(cfg), data, TARGETS, NAMES, ckpt_dir)
    assert storage_round(ckpt_dir) == 2
    assert os.path.exists(generator.checkpoint_uri(ckpt_dir, 0, 2))


def storage_round(ckpt_dir):
    return torch.load(generator.checkpoint_uri(ckpt_dir, 0), weights_only=True)["round"]


def test_run2_samples_with_the_training_conditions(tmp_path):
    cfg = _cfg()
    ckpt_dir = str(tmp_path / "ckpt")
    data = _data([2, 3])
    run_round(cfg, 1, 1, "run1", _global(cfg), data, TARGETS, NAMES, ckpt_dir)
    update = run_round(cfg, 1, 1, "run2", _global(cfg), data, TARGETS, NAMES, ckpt_dir)
    assert update.synthetic_x.shape == (12, 4, 16)
    assert update.synthetic_y.tolist() == [2] * 6 + [3] * 6
    ckpt = torch.load(generator.checkpoint_uri(ckpt_dir, 1), weights_only=True)
    assert ckpt["class_conditions"].shape == (2, 16)


def test_run2_missing_checkpoint_warns_like_the_seed_and_fails_naming_the_client(tmp_path, caplog):
    cfg = _cfg()
    logging.getLogger("feda2v").propagate = True
    try:
        with caplog.at_level(logging.WARNING, logger="feda2v"), pytest.raises(
                FileNotFoundError, match=r"\[Client 1\] Generator checkpoint not found"):
            run_round(cfg, 1, 1, "run2", _global(cfg), _data([2, 3]), TARGETS, NAMES,
                      str(tmp_path))
    finally:
        logging.getLogger("feda2v").propagate = False
    assert "[Client 1] Warning: Generator checkpoint not found at" in caplog.text


def test_checkpoint_with_other_dims_or_type_is_refused(tmp_path):
    cfg = _cfg()
    ckpt_dir = str(tmp_path)
    run_round(cfg, 0, 1, "run1", _global(cfg), _data([0, 1]), TARGETS, NAMES, ckpt_dir)
    uri = generator.checkpoint_uri(ckpt_dir, 0)
    bigger = _cfg(generator_latent_dim=9)
    with pytest.raises(ValueError, match="latent_dim is 8 in the checkpoint but 9"):
        generator.load(uri, bigger, {"latent_dim": 9})
    ckpt = torch.load(uri, weights_only=True)
    ckpt["generator_type"] = "gan"
    torch.save(ckpt, uri)
    with pytest.raises(ValueError, match="generator_type is 'gan' in the checkpoint but 'vae'"):
        generator.load(uri, cfg, {})


def test_global_training_on_synthetic_samples_teaches_unseen_classes():
    """Only synthetic samples reach the server; they alone must carry the gradient."""
    cfg = _cfg()
    torch.manual_seed(0)
    adapter = new_adapter(cfg, 16, 16)
    syn_x, syn_y = _clustered([0, 1, 2, 3], per_class=16, seed=5)
    test_x, test_y = _clustered([0, 1, 2, 3], per_class=8, seed=6)
    before = zero_shot_accuracy(adapter, test_x, test_y, TARGETS)
    params_before = [p.detach().clone() for p in adapter.parameters()]
    train_global(adapter, syn_x, syn_y, TARGETS, epochs=30, batch_size=16, lr=1e-3, seed=0)
    assert any(not torch.equal(a, b) for a, b in zip(params_before, adapter.parameters()))
    after = zero_shot_accuracy(adapter, test_x, test_y, TARGETS)
    assert after >= 0.9 and after > before


def test_run2_missing_checkpoint_can_fall_back_to_real_data(tmp_path, caplog):
    cfg = _cfg(generator_missing_checkpoint="real_only")
    update = run_round(cfg, 1, 1, "run2", _global(cfg), _data([2, 3]), TARGETS, NAMES,
                       str(tmp_path))
    assert update.num_samples == 24 and len(update.synthetic_y) == 0
    assert update.metrics["adapter_loss"] > 0


def test_gan_generators_follow_the_same_checkpoint_contract(tmp_path):
    cfg = _cfg(generator_type="gan")
    ckpt_dir = str(tmp_path / "ckpt")
    data = _data([0, 1])
    for r in (1, 2):
        update = run_round(cfg, 0, r, "run1", _global(cfg), data, TARGETS, NAMES, ckpt_dir)
        assert update.metrics["generator_loss"] == update.metrics["generator_loss"]  # not NaN
    ckpt = torch.load(generator.checkpoint_uri(ckpt_dir, 0), weights_only=True)
    assert ckpt["generator_type"] == "gan" and ckpt["round"] == 2
    assert set(ckpt["optimizer_state_dict"]) == {"generator", "discriminator"}
    assert any(k.startswith("discriminator.") for k in ckpt["generator_state_dict"])
    update = run_round(cfg, 0, 1, "run2", _global(cfg), data, TARGETS, NAMES, ckpt_dir)
    assert update.synthetic_x.shape == (12, 4, 16)
    with pytest.raises(ValueError, match="generator_type is 'gan' in the checkpoint but 'vae'"):
        run_round(_cfg(), 0, 1, "run2", _global(cfg), data, TARGETS, NAMES, ckpt_dir)


def test_a_retried_round_does_not_train_the_generator_twice(tmp_path):
    cfg = _cfg()
    ckpt_dir = str(tmp_path / "ckpt")
    data = _data([0, 1])
    run_round(cfg, 0, 1, "run1", _global(cfg), data, TARGETS, NAMES, ckpt_dir, round_key="r1")
    first = run_round(cfg, 0, 2, "run1", _global(cfg), data, TARGETS, NAMES, ckpt_dir,
                      round_key="r2")
    before = torch.load(generator.checkpoint_uri(ckpt_dir, 0), weights_only=True)
    retry = run_round(cfg, 0, 2, "run1", _global(cfg), data, TARGETS, NAMES, ckpt_dir,
                      round_key="r2")  # the same task again, after its checkpoint was written
    after = torch.load(generator.checkpoint_uri(ckpt_dir, 0), weights_only=True)
    assert after["round"] == before["round"] == 2
    assert retry.metrics["generator_loss"] == pytest.approx(first.metrics["generator_loss"])
    assert all(torch.equal(after["generator_state_dict"][k], v)
               for k, v in before["generator_state_dict"].items())
    run_round(cfg, 0, 3, "run1", _global(cfg), data, TARGETS, NAMES, ckpt_dir, round_key="r3")
    assert storage_round(ckpt_dir) == 3
