"""Client and server logic on synthetic embeddings (no encoders): fast and exact."""

import dataclasses
import logging
import math
import os

import pytest
import torch

from feda2v.federated import generators
from feda2v.federated.client import ClientData, client_step
from feda2v.federated.generators import calibration, checkpoints, sampling, training
from feda2v.federated.generators.vae import Posterior
from feda2v.federated.loop import save_conditions
from feda2v.federated.server import train_global
from feda2v.federated.task import new_adapter, zero_shot_accuracy
from feda2v.io import config as config_mod

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


def _run1(cfg, tmp_path, data, client=0, rounds=3, key="k1", ckpt_dir=None):
    """Run 1 of one client as the pipeline does it: adapter rounds write class conditions under
    the run folder, then the client's generator trains over all of them."""
    run = str(tmp_path / "runs" / key)
    for r in range(1, rounds + 1):
        save_conditions(run, client_step(cfg, client, r, "run1", _global(cfg), data, TARGETS,
                                         NAMES), r)
    losses = training.train_client(cfg, client, run, key, data.train_x, data.train_y, NAMES,
                                    rounds, ckpt_dir or str(tmp_path / "ckpt"))
    return run, losses


def _files(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".pt"))


def test_run1_trains_and_saves_seed_named_checkpoints(tmp_path):
    cfg = _cfg()
    ckpt_dir = str(tmp_path / "ckpt")
    data = _data([0, 1])
    _, losses = _run1(cfg, tmp_path, data)
    assert sorted(losses) == [1, 2, 3] and all(v > 0 for v in losses.values())
    assert _files(ckpt_dir) == ["client_0_generator.pt", "client_0_generator_round_2.pt"]
    ckpt = torch.load(checkpoints.checkpoint_uri(ckpt_dir, 0), weights_only=True)
    assert ckpt["round"] == 3 and ckpt["client_id"] == 0 and ckpt["run"] == "k1"
    assert ckpt["generator_type"] == "vae" and ckpt["diffusion_type"] == "flux"
    assert {"generator_state_dict", "optimizer_state_dict"} <= set(ckpt)
    assert ckpt["class_names"] == ["dog", "rooster"]
    assert ckpt["optimizer_state_dict"]["state"]  # optimizer moments saved for resume
    snapshot = torch.load(checkpoints.checkpoint_uri(ckpt_dir, 0, 2), weights_only=True)
    assert snapshot["round"] == 2 and snapshot["optimizer_state_dict"] == {}  # weights only
    with pytest.raises(ValueError, match="weights-only round snapshot cannot resume"):
        checkpoints.load(checkpoints.checkpoint_uri(ckpt_dir, 0, 2), cfg, {})


def test_run1_generators_read_the_class_conditions_they_are_handed(tmp_path):
    """A generator task given the phase's conditions artifact (a copy of the run folder's
    conditions) trains from it alone; without it, it reads the run folder."""
    import shutil

    from feda2v.io import runstate

    cfg = _cfg()
    data = _data([0, 1])
    run = str(tmp_path / "runs" / "k1")
    for r in (1, 2):
        save_conditions(run, client_step(cfg, 0, r, "run1", _global(cfg), data, TARGETS, NAMES), r)
    copy = str(tmp_path / "artifact")
    shutil.move(runstate.conditions_dir(run), copy)
    losses = training.train_client(cfg, 0, run, "k1", data.train_x, data.train_y, NAMES, 2,
                                    str(tmp_path / "ckpt"), conditions_folder=copy)
    assert sorted(losses) == [1, 2]
    with pytest.raises(FileNotFoundError):
        training.train_client(cfg, 0, str(tmp_path / "runs" / "k2"), "k2", data.train_x,
                               data.train_y, NAMES, 2, str(tmp_path / "ckpt2"))


def test_run1_resume_continues_the_round_counter(tmp_path):
    data = _data([0, 1])
    _run1(_cfg(), tmp_path, data, rounds=1, key="first")
    from feda2v.io import runstate

    runstate.release(str(tmp_path / "ckpt"), "first")  # what the first run's exit handler does
    resume = _cfg(generator_training_mode=True, use_pretrained_generators=True)
    _run1(resume, tmp_path, data, rounds=1, key="second")
    assert storage_round(str(tmp_path / "ckpt")) == 2
    assert os.path.exists(checkpoints.checkpoint_uri(str(tmp_path / "ckpt"), 0, 2))


def storage_round(ckpt_dir):
    return torch.load(checkpoints.checkpoint_uri(ckpt_dir, 0), weights_only=True)["round"]


def _generate(cfg, tmp_path, data, client=1, rounds=2, source=None):
    out = str(tmp_path / f"synthetic_{client}.safetensors")
    source = source or checkpoints.checkpoint_uri(str(tmp_path / "ckpt"), client)
    result = sampling.generate_client(cfg, client, data, NAMES, rounds, source, out)
    return result, sampling.load_synthetic(out)


def test_run2_samples_with_the_training_conditions(tmp_path):
    cfg = _cfg()
    data = _data([2, 3])
    _run1(cfg, tmp_path, data, client=1, rounds=1)
    result, loaded = _generate(cfg, tmp_path, data)
    x, y, quality = sampling.synthetic_round(loaded, 2)
    assert x.shape == (12, 4, 16) and result["checkpoint_round"] == 1
    assert y.tolist() == [2] * 6 + [3] * 6
    assert quality["overall"]["n_synthetic"] > 0  # measured once, sent with the last round
    assert sampling.synthetic_round(loaded, 1)[2] == {}
    assert not torch.equal(sampling.synthetic_round(loaded, 1)[0], x)  # fresh draws per round
    ckpt = torch.load(checkpoints.checkpoint_uri(str(tmp_path / "ckpt"), 1), weights_only=True)
    assert ckpt["class_conditions"].shape == (2, 16)
    update = client_step(cfg, 1, 2, "run2", _global(cfg), data, TARGETS, NAMES,
                         sampling.synthetic_round(loaded, 2))
    assert torch.equal(update.synthetic_x, x) and update.quality == quality


def test_rows_allocation_sends_samples_in_proportion_to_the_clients_rows(tmp_path):
    x2, y2 = _clustered([2], per_class=18)
    x3, y3 = _clustered([3], per_class=6, seed=1)
    tx, ty = _clustered([2, 3], per_class=4, seed=2)
    data = ClientData(torch.cat([x2, x3]), torch.cat([y2, y3]), tx, ty)
    _run1(_cfg(), tmp_path, data, client=1, rounds=1)
    rows = _cfg(synthetic_samples_allocation="rows")
    _, loaded = _generate(rows, tmp_path, data)
    x, y, _ = sampling.synthetic_round(loaded, 2)
    assert y.tolist() == [2] * 9 + [3] * 3  # 6 x 2 classes, split 18 : 6
    assert x.shape == (12, 4, 16) and loaded[1]["samples_per_class"] == [9, 3]
    _, auto = _generate(_cfg(), tmp_path, data)  # the default
    assert sampling.synthetic_round(auto, 2)[1].tolist() == [2] * 9 + [3] * 3
    _, equal = _generate(_cfg(synthetic_samples_allocation="equal"), tmp_path, data)
    assert sampling.synthetic_round(equal, 2)[1].tolist() == [2] * 6 + [3] * 6
    dp = _cfg(generator_dp_epsilon=4.0, generator_sampling="prior")
    assert sampling.samples_per_class(dp, [18, 6]) == [6, 6]  # auto is equal under DP
    assert sampling.samples_per_class(rows, [1000, 1, 0]) == [18, 1, 1]  # at least one each


def test_rows_allocation_is_refused_under_dp():
    with pytest.raises(config_mod.ConfigError, match="synthetic_samples_allocation.*rows"):
        _cfg(synthetic_samples_allocation="rows", generator_dp_epsilon=4.0,
             generator_sampling="prior")


def test_run2_missing_checkpoint_warns_like_the_seed_and_fails_naming_the_client(tmp_path, caplog):
    cfg = _cfg()
    logging.getLogger("feda2v").propagate = True
    try:
        with caplog.at_level(logging.WARNING, logger="feda2v"), pytest.raises(
                FileNotFoundError, match=r"\[Client 1\] Generator checkpoint not found"):
            _generate(cfg, tmp_path, _data([2, 3]))
    finally:
        logging.getLogger("feda2v").propagate = False
    assert "[Client 1] Warning: Generator checkpoint not found at" in caplog.text


def test_checkpoint_with_other_dims_or_type_is_refused(tmp_path):
    cfg = _cfg()
    _run1(cfg, tmp_path, _data([0, 1]), rounds=1)
    uri = checkpoints.checkpoint_uri(str(tmp_path / "ckpt"), 0)
    bigger = _cfg(generator_latent_dim=9)
    with pytest.raises(ValueError, match="latent_dim is 8 in the checkpoint but 9"):
        checkpoints.load(uri, bigger, {"latent_dim": 9})
    ckpt = torch.load(uri, weights_only=True)
    ckpt["generator_type"] = "gan"
    torch.save(ckpt, uri)
    with pytest.raises(ValueError, match="generator_type is 'gan' in the checkpoint but 'vae'"):
        checkpoints.load(uri, cfg, {})


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


def test_run2_missing_checkpoint_can_fall_back_to_real_data(tmp_path):
    cfg = _cfg(generator_missing_checkpoint="real_only")
    data = _data([2, 3])
    result, loaded = _generate(cfg, tmp_path, data)
    assert result["samples"] == 0 and sampling.synthetic_round(loaded, 1) is None
    update = client_step(cfg, 1, 1, "run2", _global(cfg), data, TARGETS, NAMES, None)
    assert update.num_samples == 24 and len(update.synthetic_y) == 0
    assert update.metrics["adapter_loss"] > 0


def test_gan_generators_follow_the_same_checkpoint_contract(tmp_path):
    cfg = _cfg(generator_type="gan")
    data = _data([0, 1])
    _, losses = _run1(cfg, tmp_path, data, client=0, rounds=2)
    assert all(not torch.isnan(torch.tensor(v)) for v in losses.values())
    ckpt = torch.load(checkpoints.checkpoint_uri(str(tmp_path / "ckpt"), 0), weights_only=True)
    assert ckpt["generator_type"] == "gan" and ckpt["round"] == 2
    assert set(ckpt["optimizer_state_dict"]) == {"generator", "discriminator"}
    assert any(k.startswith("discriminator.") for k in ckpt["generator_state_dict"])
    _, loaded = _generate(cfg, tmp_path, data, client=0)
    assert sampling.synthetic_round(loaded, 1)[0].shape == (12, 4, 16)
    with pytest.raises(ValueError, match="generator_type is 'gan' in the checkpoint but 'vae'"):
        _generate(_cfg(), tmp_path, data, client=0)


def test_a_retried_generator_task_resumes_and_ends_where_an_unbroken_one_does(tmp_path, caplog):
    cfg = _cfg(generator_save_every=1)
    data = _data([0, 1])
    _, unbroken = _run1(cfg, tmp_path / "a", data, rounds=3)
    # A first try that died after round 2: its resume state says round 2.
    run_b, _ = _run1(cfg, tmp_path / "b", data, rounds=2)
    save_conditions(run_b, client_step(cfg, 0, 3, "run1", _global(cfg), data, TARGETS, NAMES), 3)
    logging.getLogger("feda2v").propagate = True
    try:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="feda2v"):
            retried = training.train_client(cfg, 0, run_b, "k1", data.train_x, data.train_y,
                                             NAMES, 3, str(tmp_path / "b" / "ckpt"))
    finally:
        logging.getLogger("feda2v").propagate = False
    assert "Resuming this run's generator after round 2" in caplog.text
    assert "Generator round 1/3" not in caplog.text  # rounds 1-2 are not trained again
    assert retried == pytest.approx(unbroken)
    a = torch.load(checkpoints.checkpoint_uri(str(tmp_path / "a" / "ckpt"), 0), weights_only=True)
    b = torch.load(checkpoints.checkpoint_uri(str(tmp_path / "b" / "ckpt"), 0), weights_only=True)
    assert a["round"] == b["round"] == 3
    assert all(torch.equal(a["generator_state_dict"][k], v)
               for k, v in b["generator_state_dict"].items())


def test_a_live_run_keeps_the_checkpoint_folder_until_it_ends(tmp_path):
    from feda2v.io import runstate

    cfg = _cfg()
    data = _data([0, 1])
    folder = str(tmp_path / "ckpt")
    _run1(cfg, tmp_path, data, rounds=1, key="alive")
    mine = torch.load(checkpoints.checkpoint_uri(folder, 0), weights_only=True)
    _run1(cfg, tmp_path, data, rounds=2, key="other")  # while "alive" still holds the lease
    assert torch.load(checkpoints.checkpoint_uri(folder, 0), weights_only=True)["run"] == "alive"
    assert mine["run"] == "alive"
    assert os.path.exists(runstate.generator_state_uri(str(tmp_path / "runs" / "other"), 0))
    runstate.release(folder, "alive")  # the exit handler of "alive"
    _run1(cfg, tmp_path, data, rounds=2, key="later")
    assert torch.load(checkpoints.checkpoint_uri(folder, 0), weights_only=True)["run"] == "later"


class _Gaussian:
    """A stand-in generator: the class centre plus temperature x 0.5 x N(0, I)."""

    def sample(self, cond, generator=None, temperature=1.0):
        noise = torch.randn(cond.shape[0], 4, 16, generator=generator, dtype=torch.float64)
        return cond[:, None, :16].to(torch.float64) + 0.5 * temperature * noise


def test_sampling_temperature_is_calibrated_to_density_one_on_training_rows():
    """Rows spread with sd 1, the generator with 0.5 x temperature: density 1 needs about 2."""
    g = torch.Generator().manual_seed(3)
    centres = [torch.zeros(16), torch.full((16,), 5.0)]
    rows = [c + torch.randn(200, 4, 16, generator=g, dtype=torch.float64) for c in centres]
    conditions = torch.stack(centres)
    found = calibration.calibrate_temperature(_Gaussian(), conditions, rows, seed=0)
    assert [round(d, 1) for _, d in found] == [1.0, 1.0]
    assert all(1.7 < t < 2.3 for t, _ in found)
    # a class with too few rows to measure keeps the plain prior
    assert calibration.calibrate_temperature(_Gaussian(), conditions[:1], [rows[0][:2]],
                                           seed=0)[0][0] == 1.0


def test_calibrated_vae_samples_spread_like_the_held_out_rows():
    """On scikit-learn's digits (real data, not ours): the seed's VAE samples crowd the class
    centres (density far above 1); with the lower KL weight and the calibrated temperature they
    spread as the held-out rows do."""
    from sklearn.datasets import load_digits

    from feda2v.evaluation.metrics import quality_report

    d = load_digits()
    keep = torch.isin(torch.tensor(d.target), torch.tensor([0, 1, 2]))
    x = (torch.tensor(d.images, dtype=torch.float32).reshape(-1, 8, 8) / 16)[keep]
    y = torch.tensor(d.target)[keep]
    test = torch.arange(len(y)) % 5 == 0
    conditions = torch.nn.functional.normalize(
        torch.randn(3, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    names = [str(i) for i in range(3)]
    got = {}
    for name, f in (("seed", {"generator_kl_weight": 0.01}), ("now", {})):
        cfg = _cfg(generator_training_epochs=20, generator_hidden_dim=256,
                   generator_latent_dim=32, **f)
        state = None
        for r in (1, 2, 3):
            state, _ = training.generator_round(cfg, 0, r, state, x[~test], y[~test],
                                                 torch.arange(3), conditions)
        rows = [x[~test][y[~test] == c] for c in range(3)]
        temps = ([t for t, _ in calibration.calibrate_temperature(state[0], conditions, rows, 1)]
                 if name == "now" else 1.0)
        n = 100
        samples = calibration.sample_per_class(state[0], conditions, n, 2, temps)
        got[name] = quality_report(samples.reshape(-1, 8, 8), torch.arange(3).repeat_interleave(n),
                                   x[~test], y[~test], x[test], y[test], names)["overall"]
    assert got["seed"]["density"] > 2 and "collapsed" in got["seed"]["flags"]
    assert 0.8 <= got["now"]["density"] <= 1.25 and got["now"]["coverage"] >= 0.9
    assert got["now"]["flags"] == []


def test_posterior_sampling_keeps_an_unbalanced_client_on_class():
    """On scikit-learn's digits, one client of a Dirichlet(0.5) split (10 classes, 5 to 120 rows
    each): prior draws, however calibrated, decode to other classes (the codes of a VAE with a
    small KL weight are far from N(0, I)); draws from the per-class Gaussian of the codes, plus
    the decoder's residual noise, stay on their class and spread as the held-out rows do."""
    from sklearn.datasets import load_digits

    from feda2v.data import partition
    from feda2v.evaluation.metrics import quality_report

    d = load_digits()
    x_all = torch.tensor(d.images, dtype=torch.float32).reshape(-1, 8, 8) / 16
    y_all = torch.tensor(d.target)
    shares = partition.dirichlet_shares(10, 3, 0.5, seed=0)
    mine = torch.tensor(partition.assign(d.target, shares, seed=0) == 0)
    x, y = x_all[mine], y_all[mine]
    test = torch.arange(len(y)) % 5 == 0
    counts = torch.bincount(y[~test], minlength=10)
    assert counts.min() < calibration.MIN_CALIBRATION_ROWS < 10 * calibration.MIN_CALIBRATION_ROWS < counts.max()  # unbalanced indeed
    classes = [c for c in range(10) if counts[c] > 0]
    conditions = torch.nn.functional.normalize(
        torch.randn(len(classes), 16, generator=torch.Generator().manual_seed(0)), dim=1)
    local = torch.tensor([classes.index(int(c)) for c in y])
    cfg = _cfg(generator_training_epochs=20, generator_hidden_dim=256, generator_latent_dim=32)
    state = None
    for r in (1, 2, 3):
        state, _ = training.generator_round(cfg, 0, r, state, x[~test], local[~test],
                                             torch.arange(len(classes)), conditions)
    vae = state[0]
    rows = [x[~test][local[~test] == i] for i in range(len(classes))]
    names = [str(c) for c in range(10)]
    got = {}
    for mode in ("calibrated", "posterior"):
        post = Posterior.fit(vae, conditions, rows) if mode == "posterior" else None
        temps = [t for t, _ in calibration.calibrate_temperature(vae, conditions, rows, 1,
                                                               posterior=post)]
        samples = [calibration.sample_per_class(vae, conditions[i:i + 1], len(r), 2 + i,
                                              temps[i], post and post.select(i))[0]
                   for i, r in enumerate(rows)]
        got[mode] = quality_report(torch.cat(samples), y[~test].sort().values,
                                   x[~test], y[~test], x[test], y[test], names)["overall"]
    assert "off-class" in got["calibrated"]["flags"]
    post = got["posterior"]
    assert post["flags"] == [], post
    assert post["class_consistency"] >= 0.9 * post["class_consistency_real"]
    # Measured: density 1.17 (training rows on the same held-out rows: 1.01); prior draws 2.15.
    assert 0.8 <= post["density"] <= 1.25 and post["coverage"] >= 0.9
    assert post["density"] < got["calibrated"]["density"] - 0.5
    # The classes too small to calibrate alone share one temperature, calibrated on their rows
    # pooled (density 1 there), rather than the median of the large classes' temperatures. Here
    # the two small classes (12 rows) with three large ones cut to 8 rows; one more class cut to
    # 2 rows is too small to take part and gets the pooled temperature.
    cut = [r[:8] if i in (0, 2, 4) else r[:2] if i == 6 else r for i, r in enumerate(rows)]
    small = [i for i, r in enumerate(cut)
             if calibration.CROSS_FOLDS <= len(r) < 2 * calibration.MIN_CALIBRATION_ROWS]
    assert small == [0, 2, 4, 5, 7], [len(r) for r in cut]
    cal = calibration.calibrate_temperature(vae, conditions, cut, 1,
                                          posterior=Posterior.fit(vae, conditions, cut))
    assert len({cal[i] for i in small}) == 1
    t, d = cal[0]
    assert cal[6][0] == t and math.isnan(cal[6][1])
    alone = [cal[i][0] for i in (1, 3, 8, 9)]
    assert len(set(alone)) == 4 and t not in alone
    assert abs(d - 1) < 0.05


def test_dp_sgd_generators_spend_the_configured_epsilon_and_resume_counting(tmp_path):
    """DP-SGD over all of Run 1's generator rounds spends (ε, δ): about ε after the last round,
    less before; the accountant travels in the checkpoint, so a retried task goes on counting."""
    from feda2v.federated import dp

    cfg = _cfg(generator_dp_epsilon=4.0, generator_training_rounds=2,
               generator_training_epochs=2)
    data = _data([0, 1])
    _run1(cfg, tmp_path, data, rounds=1)
    first = torch.load(checkpoints.checkpoint_uri(str(tmp_path / "ckpt"), 0), weights_only=True)
    spent_1 = dp.epsilon(first["dp"])
    assert 0 < spent_1 < 4.0 and first["dp"]["noise_multiplier"] > 0.5
    _run1(cfg, tmp_path / "b", data, rounds=2)
    done = torch.load(checkpoints.checkpoint_uri(str(tmp_path / "b" / "ckpt"), 0),
                      weights_only=True)
    # all the steps spend the target within 0.01 (the noise multiplier's search tolerance)
    assert spent_1 < 4.0 - 0.01 <= dp.epsilon(done["dp"]) <= 4.0
    assert len(done["dp"]["history"]) == 1  # one (sigma, rate) entry counting every step
    # a retried task loads the accountant with the weights and goes on from its count
    uri = checkpoints.checkpoint_uri(str(tmp_path / "ckpt"), 0)
    vae, _, _ = checkpoints.load(uri, cfg, {"seq_len": 4, "audio_dim": 16})
    assert vae.dp_state == first["dp"]
    out = str(tmp_path / "synthetic.safetensors")
    sampling.generate_client(cfg, 0, data, NAMES, 1,
                              checkpoints.checkpoint_uri(str(tmp_path / "b" / "ckpt"), 0), out)
    meta = sampling.load_synthetic(out)[1]
    assert meta["privacy"]["dp_epsilon"] == pytest.approx(dp.epsilon(done["dp"]))
    assert meta["quality"]["overall"]["dp_epsilon"] == meta["privacy"]["dp_epsilon"]


def test_dp_sgd_is_refused_for_the_gan():
    with pytest.raises(config_mod.ConfigError, match="generator_dp_epsilon.*VAE"):
        _cfg(generator_dp_epsilon=1.0, generator_type="gan")


class _Shift(generators.Generator):
    """The smallest generator there is: the class condition through one linear layer, plus
    scaled noise. Only here to show that the interface is all the rest of the system needs."""

    name = "shift"

    def __init__(self, seq_len, audio_dim, cond_dim, hidden_dim, latent_dim):
        super().__init__(seq_len, audio_dim, cond_dim, hidden_dim, latent_dim)
        self.out = torch.nn.Linear(cond_dim, seq_len * audio_dim)

    def sample(self, cond, generator=None, temperature=1.0):
        noise = torch.randn(len(cond), self.seq_len * self.audio_dim, generator=generator)
        with torch.no_grad():
            return self.denormalise(torch.tanh(self.out(cond)) + 0.05 * temperature * noise)

    def new_optimizer(self, lr):
        return torch.optim.SGD(self.parameters(), lr=lr)

    def fit(self, cfg, opt, x, cond, client_id, seed):
        losses = []
        for _ in range(cfg.feda2v.generator_training_epochs):
            loss = torch.nn.functional.mse_loss(torch.tanh(self.out(cond)), self.normalise(x))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses


def test_a_new_generator_needs_only_the_interface(tmp_path, monkeypatch):
    """Registered under a new name, a Generator subclass trains over Run 1's rounds, is
    checkpointed and reloaded, and samples Run 2's synthetic sets with calibrated sampling:
    nothing else in the system knows the kinds apart."""
    monkeypatch.setitem(generators.GENERATORS, "shift", _Shift)
    cfg = _cfg(generator_learning_rate=0.5)
    # Past the config's choice list, as a plug-in would be.
    cfg = dataclasses.replace(cfg, feda2v=dataclasses.replace(cfg.feda2v, generator_type="shift"))
    data = _data([0, 1])
    _, losses = _run1(cfg, tmp_path, data, rounds=2)
    assert losses[2] < losses[1]  # {round: mean loss}
    uri = checkpoints.checkpoint_uri(str(tmp_path / "ckpt"), 0)
    ckpt = torch.load(uri, weights_only=True)
    assert ckpt["generator_type"] == "shift"
    model, _, _ = sampling.load_for_sampling(cfg, 0, uri, data.train_x)
    assert type(model) is _Shift
    out = str(tmp_path / "synthetic.safetensors")
    sampling.generate_client(cfg, 0, data, NAMES, 2, uri, out)
    tensors, meta = sampling.load_synthetic(out)
    assert meta["sampling"] == "calibrated" and tensors["x"].shape[:2] == (2, 2 * 6)


def test_a_generator_missing_part_of_the_interface_is_refused_when_built():
    class NoFit(generators.Generator):
        name = "nofit"

        def sample(self, cond, generator=None, temperature=1.0):
            return cond

        def new_optimizer(self, lr):
            return None

    with pytest.raises(TypeError, match="fit"):
        NoFit(4, 16, 16, 32, 8)
