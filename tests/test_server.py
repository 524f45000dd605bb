import pytest
import torch

from feda2v.federated.server import fedavg, pool_synthetic


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
