import pytest
import torch

from feda2v.federated.server import pool_synthetic
from feda2v.federated.strategy import weighted_average as fedavg


def test_fedavg_weights_by_sample_count():
    a = {"w": torch.tensor([0.0, 0.0]), "b": torch.tensor(1.0)}
    b = {"w": torch.tensor([4.0, 8.0]), "b": torch.tensor(5.0)}
    avg = fedavg([a, b], [3, 1])
    assert torch.allclose(avg["w"], torch.tensor([1.0, 2.0]))
    assert avg["b"].item() == pytest.approx(2.0)
    # Unweighted averaging (the seed's defect) would give [2, 4].
    assert not torch.allclose(avg["w"], torch.tensor([2.0, 4.0]))


def test_fedavg_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        fedavg([], [])
    with pytest.raises(ValueError, match="positive weight"):
        fedavg([{"w": torch.zeros(1)}], [0])
    with pytest.raises(ValueError, match="different parameters"):
        fedavg([{"w": torch.zeros(1)}, {"v": torch.zeros(1)}], [1, 1])


def test_pool_synthetic_counts_per_class():
    names = ["dog", "rain", "siren"]
    x0, y0 = torch.randn(4, 4, 8), torch.tensor([0, 0, 1, 1])
    x1, y1 = torch.randn(2, 4, 8), torch.tensor([2, 2])
    x, y, counts = pool_synthetic([(0, x0, y0), (1, x1, y1), (2, torch.empty(0),
                                                                torch.empty(0, dtype=torch.long))],
                                  names)
    assert x.shape == (6, 4, 8) and y.tolist() == [0, 0, 1, 1, 2, 2]
    assert counts == {"dog": 2, "rain": 2, "siren": 2}


def test_mix_real_follows_the_documented_ratio():
    from feda2v.federated.server import mix_real

    syn_x, syn_y = torch.zeros(30, 4, 8), torch.zeros(30, dtype=torch.long)
    real = (torch.ones(5, 4, 8), torch.ones(5, dtype=torch.long))
    x, y = mix_real(syn_x, syn_y, real, ratio=0.25, seed=0)
    assert len(y) == 40 and int((y == 1).sum()) == 10  # 10 real of 40 = 25 %
    assert torch.equal(x[y == 1], torch.ones(10, 4, 8))
    same_x, same_y = mix_real(syn_x, syn_y, None, ratio=0.5, seed=0)
    assert same_x is syn_x and same_y is syn_y


def test_the_server_keeps_the_configured_share_of_its_training_step():
    """global = average + mix x (trained - average): mix 1 is the seed (the trained adapter),
    mix 0 the plain average, 0.25 a quarter of the way."""
    from feda2v.federated.client import ClientUpdate
    from feda2v.federated.server import server_step
    from feda2v.federated.task import new_adapter
    from feda2v.io import config as config_mod

    def cfg(mix):
        return config_mod.validate({"batch_size": 8, "feda2v": {
            "adapter_hidden_dims": [16], "adapter_heads": 2, "global_model_train": True,
            "global_model_train_mix": mix}, "data": {"clients": [["a"], ["b"]]}})

    torch.manual_seed(0)
    state = new_adapter(cfg(1.0), 8, 8).state_dict()
    g = torch.Generator().manual_seed(1)
    updates = [ClientUpdate(i, state, 10, {}, torch.randn(6, 2, 8, generator=g),
                            torch.tensor([i] * 6)) for i in (0, 1)]
    targets = torch.randn(2, 8, generator=g)
    tests = [(torch.randn(4, 2, 8, generator=g), torch.tensor([0, 0, 1, 1]))]
    got = {mix: server_step(cfg(mix), 1, 1, "run2", updates, state, targets, ["a", "b"],
                            tests)[0] for mix in (0.0, 0.25, 1.0)}
    for key, avg in state.items():
        assert torch.equal(got[0.0][key], avg)
        assert torch.allclose(got[0.25][key], avg + 0.25 * (got[1.0][key] - avg), atol=1e-6)
    assert any(not torch.equal(got[1.0][k], v) for k, v in state.items())
