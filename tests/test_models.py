import pytest
import torch
import torch.nn.functional as F

from feda2v.federated.adapter import Adapter
from feda2v.federated.generators.vae import ConditionedVAE, vae_loss, vae_schedule


def test_adapter_maps_token_sequences_to_clip_space():
    adapter = Adapter(audio_dim=32, clip_dim=48, hidden_dims=(64, 96), heads=8)
    assert adapter(torch.randn(5, 4, 32)).shape == (5, 48)


def test_adapter_refuses_heads_that_do_not_divide_the_clip_dim():
    with pytest.raises(ValueError, match="adapter_heads"):
        Adapter(32, 50, heads=8)


def test_adapter_step_lowers_the_loss():
    torch.manual_seed(0)
    adapter = Adapter(16, 32, (32, 32), heads=4)
    x, target = torch.randn(8, 4, 16), torch.randn(8, 32)
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-2)
    before = F.mse_loss(adapter(x), target)
    before.backward()
    opt.step()
    assert F.mse_loss(adapter(x), target).item() < before.item()


def test_vae_shapes_and_sampling_in_embedding_units():
    torch.manual_seed(0)
    vae = ConditionedVAE(seq_len=4, audio_dim=8, cond_dim=12, hidden_dim=32, latent_dim=6)
    x = torch.randn(10, 4, 8) * 5 + 3
    vae.fit_standardisation(x)
    recon, mu, logvar = vae(vae.normalise(x), torch.randn(10, 12))
    assert recon.shape == (10, 32) and mu.shape == logvar.shape == (10, 6)
    samples = vae.sample(torch.randn(7, 12))
    assert samples.shape == (7, 4, 8)
    # Standardisation lets the Tanh decoder reach the data's scale, far outside (-1, 1).
    assert vae.denormalise(torch.ones(1, 32)).mean() > 10


def test_vae_step_lowers_the_loss():
    torch.manual_seed(0)
    vae = ConditionedVAE(4, 8, 12, 64, 6)
    x, cond = torch.randn(16, 4, 8), torch.randn(16, 12)
    vae.fit_standardisation(x)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    clean = vae.normalise(x)

    def loss_now():
        torch.manual_seed(1)  # same reparameterisation noise before and after the step
        recon, mu, logvar = vae(clean, cond)
        return vae_loss(recon, clean, mu, logvar, beta=0.01, cos_weight=0.1)

    before = loss_now()
    before.backward()
    opt.step()
    assert loss_now().item() < before.item()


def test_vae_schedule_beta_warms_up_and_cosine_weight_decays():
    epochs = 10
    first, middle, last = (vae_schedule(e, epochs) for e in (0, 4, 9))
    assert first[0] == pytest.approx(0.002) and middle[0] == pytest.approx(0.01)
    assert last[0] == pytest.approx(0.01)
    assert first[1] == pytest.approx(0.1) and last[1] == pytest.approx(0.01)
    assert first[1] > middle[1] > last[1]
