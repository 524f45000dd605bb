import io
import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from feda2v.federated.generators.gan import (
    ConditionedGAN,
    discriminator_loss,
    gan_step,
    new_optimizers,
    train_gan,
)
from feda2v.federated.generators.vae import ConditionedVAE

S, D, C = 4, 8, 8


@pytest.fixture(autouse=True)
def one_thread():
    """These networks are tiny: one intra-op thread is fastest, and with two threads on a busy
    two-core machine the training test took 30 s instead of 1.5 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_gan(seed: int = 0, hidden: int = 32, latent: int = 6) -> ConditionedGAN:
    torch.manual_seed(seed)
    return ConditionedGAN(S, D, C, hidden_dim=hidden, latent_dim=latent)


def fitted_gan(seed: int = 0) -> tuple[ConditionedGAN, torch.Tensor, torch.Tensor]:
    gan = small_gan(seed)
    gen = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(16, S, D, generator=gen) * 4 + 2
    gan.fit_standardisation(x)
    return gan, x, torch.randn(16, C, generator=gen)


def two_clusters(seed: int, n: int = 64, spread: float = 0.5):
    """Clusters at +centre and -centre, each with its own condition vector."""
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(S, D, generator=gen) * 2
    a = centre + spread * torch.randn(n, S, D, generator=gen)
    b = -centre + spread * torch.randn(n, S, D, generator=gen)
    cond_a, cond_b = torch.randn(C, generator=gen), torch.randn(C, generator=gen)
    x = torch.cat([a, b])
    cond = torch.cat([cond_a.expand(n, -1), cond_b.expand(n, -1)])
    return x, cond, centre, cond_a, cond_b


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_shapes_and_layout():
    gan = small_gan()
    assert (gan.seq_len, gan.audio_dim, gan.latent_dim) == (S, D, 6)
    cond = torch.randn(5, C)
    fake = gan.generate(cond)
    assert fake.shape == (5, S * D) and fake.abs().max() < 1  # Tanh: the normalised space
    assert gan.discriminate(fake, cond).shape == (5,)
    assert gan.sample(torch.randn(7, C)).shape == (7, S, D)
    assert not gan.sample(cond).requires_grad
    g_lin = [m for m in gan.generator if isinstance(m, nn.Linear)]
    d_lin = [m for m in gan.discriminator if isinstance(m, nn.Linear)]
    assert [m.in_features for m in g_lin] == [6 + C, 32, 32] and g_lin[-1].out_features == S * D
    assert [m.in_features for m in d_lin] == [S * D + C, 32, 32] and d_lin[-1].out_features == 1
    assert isinstance(gan.generator[-1], nn.Tanh)
    assert all(parametrize.is_parametrized(m, "weight") for m in d_lin)
    assert not any(parametrize.is_parametrized(m) for m in g_lin)
    assert {"data_mean", "data_std"} <= set(gan.state_dict())


def test_spectral_norm_bounds_every_discriminator_layer():
    gan = small_gan()
    gan.train()
    for _ in range(30):  # power iterations run on forward in train mode
        gan.discriminate(torch.randn(4, S * D), torch.randn(4, C))
    for m in gan.discriminator:
        if isinstance(m, nn.Linear):
            sigma = torch.linalg.matrix_norm(m.weight.detach(), ord=2).item()
            assert sigma == pytest.approx(1.0, abs=1e-3)


def test_standardisation_round_trip_and_matches_the_vae():
    gan, x, _ = fitted_gan()
    vae = ConditionedVAE(S, D, C, hidden_dim=32, latent_dim=6)
    vae.fit_standardisation(x)
    assert torch.equal(gan.data_mean, vae.data_mean) and torch.equal(gan.data_std, vae.data_std)
    norm = gan.normalise(x)
    assert norm.shape == (16, S * D) and norm.abs().max() < 1
    assert torch.equal(norm, vae.normalise(x))
    # Per-dimension standardisation: 16 normal samples stay well within +-3 std, so no clamping.
    assert torch.allclose(gan.denormalise(norm), x, atol=1e-5)
    flat = torch.rand(3, S * D) * 2 - 1
    assert torch.equal(gan.denormalise(flat), vae.denormalise(flat))
    # Values beyond 3 std clamp into the Tanh range, as in the VAE.
    far = gan.data_mean + 10 * gan.data_std
    assert gan.normalise(far.reshape(1, S, D)).max() == pytest.approx(0.999)


def test_instance_noise_is_in_embedding_units():
    gan, _, _ = fitted_gan()
    zeros = torch.zeros(4000, S * D)
    assert gan.instance_noise(zeros, 0.0) is zeros
    noisy = gan.instance_noise(zeros, 0.5, torch.Generator().manual_seed(0))
    # Back in embedding units the noise has std 0.5 in every dimension.
    std = (noisy * gan.SCALE * gan.data_std).std(0)
    assert torch.allclose(std, torch.full_like(std, 0.5), rtol=0.1)


def test_new_optimizers_split_the_parameters():
    gan = small_gan()
    opts = new_optimizers(gan, 1e-3)
    assert set(opts) == {"generator", "discriminator"}
    g_ids = {id(p) for g in opts["generator"].param_groups for p in g["params"]}
    d_ids = {id(p) for g in opts["discriminator"].param_groups for p in g["params"]}
    assert g_ids == {id(p) for p in gan.generator.parameters()}
    assert d_ids == {id(p) for p in gan.discriminator.parameters()}
    assert not g_ids & d_ids
    assert opts["generator"].param_groups[0]["betas"] == (0.5, 0.999)
    assert opts["generator"].param_groups[0]["lr"] == 1e-3
    assert opts["discriminator"].param_groups[0]["lr"] == 1e-3
    faster = new_optimizers(gan, 1e-3, disc_lr_factor=4.0)
    assert faster["discriminator"].param_groups[0]["lr"] == pytest.approx(4e-3)
    assert faster["generator"].param_groups[0]["lr"] == 1e-3


def test_one_step_moves_both_networks_and_nothing_else():
    gan, x, cond = fitted_gan()
    opts = new_optimizers(gan, 1e-3)
    before = snapshot(gan)
    d_loss, g_loss = gan_step(gan, opts, gan.normalise(x), cond, noise=0.1,
                              generator=torch.Generator().manual_seed(0))
    assert isinstance(d_loss, float) and isinstance(g_loss, float)
    after = gan.state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    params = {f"generator.{k}" for k, _ in gan.generator.named_parameters()}
    params |= {f"discriminator.{k}" for k, _ in gan.discriminator.named_parameters()}
    assert params <= changed  # every weight and bias of both networks moved
    # Beyond the parameters, only the discriminator's spectral-norm power-iteration vectors.
    assert all(k.startswith("discriminator.") and k.endswith(("._u", "._v"))
               for k in changed - params)
    assert "data_mean" not in changed and "data_std" not in changed


def test_discriminator_learns_real_from_obvious_fake():
    gan, x, cond = fitted_gan()
    opt = new_optimizers(gan, 1e-3)["discriminator"]
    real, fake = gan.normalise(x), torch.full((16, S * D), -0.9)
    inputs, conds = torch.cat([real, fake]), torch.cat([cond, cond])

    def loss() -> torch.Tensor:
        logits = gan.discriminate(inputs, conds)
        return discriminator_loss(logits[:16], logits[16:])

    losses = []
    for _ in range(10):
        step_loss = loss()
        losses.append(step_loss.item())
        opt.zero_grad()
        step_loss.backward()
        opt.step()
    assert losses[0] == pytest.approx(2.0, abs=0.2)  # untrained: logits near 0, chance hinge
    assert all(b < a for a, b in itertools.pairwise(losses))
    assert losses[-1] < losses[0] - 0.3


def test_training_follows_the_condition():
    torch.manual_seed(0)
    x, cond, centre, cond_a, cond_b = two_clusters(seed=0)
    gan = ConditionedGAN(S, D, C, hidden_dim=64, latent_dim=8)
    gan.fit_standardisation(x)
    # 100 epochs x 4 batches: over seeds 0-19 every sample landed on its own side (worst single
    # sample: 0.63 of the distance to the other centre) and the median ratio was <= 0.35.
    # At 60 epochs two seeds of ten put samples on the wrong side.
    losses = train_gan(gan, new_optimizers(gan, 1e-3), x, cond, epochs=100, batch_size=32,
                       noise=0.05, seed=0)
    assert len(losses) == 100 and not gan.training
    gen = torch.Generator().manual_seed(1)
    for c, own, other in ((cond_a, centre, -centre), (cond_b, -centre, centre)):
        samples = gan.sample(c.expand(200, -1), gen).flatten(1)
        d_own = (samples - own.flatten()).norm(dim=1)
        d_other = (samples - other.flatten()).norm(dim=1)
        assert (d_own < d_other).all()
        # Not just the right side: the samples land near their cluster. A cluster sample sits
        # ~0.5 * sqrt(32) = 2.8 from its centre; the two centres are ~2 * 2 * sqrt(32) apart.
        assert d_own.median() < 0.4 * d_other.median()


def test_train_gan_logs_and_is_reproducible():
    x, cond, *_ = two_clusters(seed=1, n=16)
    runs = []
    for _ in range(2):
        gan = small_gan(seed=3)
        gan.fit_standardisation(x)
        calls = []
        losses = train_gan(gan, new_optimizers(gan, 1e-3), x, cond, epochs=5, batch_size=8,
                           noise=0.1, seed=7, log=lambda *a, calls=calls: calls.append(a))
        runs.append((losses, calls, gan.sample(cond[:4], torch.Generator().manual_seed(0))))
    (losses, calls, samples), (losses2, calls2, samples2) = runs
    assert len(losses) == 5 and all(isinstance(v, float) for v in losses)
    assert [(e, n) for e, n, _, _ in calls] == [(2, 5), (4, 5), (5, 5)]
    assert [g for *_, g in calls] == [losses[1], losses[3], losses[4]]
    assert losses == losses2 and calls == calls2 and torch.equal(samples, samples2)


def test_state_dict_round_trip_reproduces_samples_and_logits(tmp_path):
    gan, x, cond = fitted_gan()
    train_gan(gan, new_optimizers(gan, 1e-3), x, cond, epochs=2, batch_size=8, noise=0.0,
              seed=0)
    torch.save(gan.state_dict(), tmp_path / "gan.pt")
    loaded = small_gan(seed=1)  # different initial weights, identity standardisation
    loaded.load_state_dict(torch.load(tmp_path / "gan.pt", weights_only=True))
    loaded.eval()

    def draw(model):
        return model.sample(cond, torch.Generator().manual_seed(5))

    assert torch.equal(draw(gan), draw(loaded))
    assert not torch.equal(draw(gan), draw(small_gan(seed=1)))
    norm = gan.normalise(x)
    assert torch.equal(gan.discriminate(norm, cond), loaded.discriminate(norm, cond))


def test_optimizer_state_round_trips_with_weights_only_and_resumes_identically():
    gan, x, cond = fitted_gan()
    opts = new_optimizers(gan, 1e-3)
    gan.train()
    gan_step(gan, opts, gan.normalise(x), cond, generator=torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    torch.save({"model": gan.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in opts.items()}}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    resumed = small_gan(seed=1)
    resumed.load_state_dict(ckpt["model"])
    resumed.train()
    resumed_opts = new_optimizers(resumed, 1e-3)
    for k, o in resumed_opts.items():
        o.load_state_dict(ckpt["optimizers"][k])
    for model, model_opts in ((gan, opts), (resumed, resumed_opts)):
        gan_step(model, model_opts, model.normalise(x), cond,
                 generator=torch.Generator().manual_seed(1))
    for (k, a), b in zip(gan.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
