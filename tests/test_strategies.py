"""Server strategies against Flower's own (flwr, a test-only dependency that `make venv`
installs without its dependencies into .venv/flwr-reference: its server pins would downgrade
MLflow's), the FedProx term against its gradient, the strategy keys' checks, and a retried
phase that resumes the server optimizer's state."""

import os
import sys

import numpy as np
import pytest
import torch

from feda2v.federated import strategy
from feda2v.federated.client import ClientData
from feda2v.federated.loop import Federation, run_phase
from feda2v.federated.task import new_adapter, train_adapter
from feda2v.io import config as config_mod
from feda2v.io import runstate, storage

REFERENCE = os.path.join(sys.prefix, "flwr-reference")
SMALL = {"feda2v": {"adapter_hidden_dims": [16]}}


@pytest.fixture(scope="module")
def flwr():
    assert os.path.isdir(REFERENCE), f"{REFERENCE} is missing: run `make venv`"
    if REFERENCE not in sys.path:
        sys.path.append(REFERENCE)  # last: the venv's own packages win
    import flwr as module

    assert module.__version__ == "1.42.0"
    return module


def _flower_strategy(flwr, name, cfg, initial):
    from flwr.server import strategy as fs

    params = flwr.common.ndarrays_to_parameters([v.numpy() for v in initial.values()])
    lr = strategy.server_lr(cfg)
    if name in ("fedavg", "fedprox"):
        return fs.FedAvg(initial_parameters=params)
    if name == "fedavgm":
        return fs.FedAvgM(initial_parameters=params, server_learning_rate=lr,
                          server_momentum=cfg.server_momentum)
    cls = fs.FedAdam if name == "fedadam" else fs.FedYogi
    return cls(initial_parameters=params, eta=lr, beta_1=cfg.server_beta_1,
               beta_2=cfg.server_beta_2, tau=cfg.server_tau)


@pytest.mark.parametrize("name,settings", [
    ("fedavg", {}), ("fedprox", {}), ("fedavgm", {}), ("fedavgm", {"server_momentum": 0.0,
                                                                  "server_learning_rate": 0.5}),
    ("fedadam", {}), ("fedadam", {"server_beta_1": 0.5, "server_tau": 1e-2,
                                  "server_learning_rate": 0.05}),
    ("fedyogi", {}), ("fedyogi", {"server_beta_2": 0.9, "server_learning_rate": 0.1})])
def test_the_global_weights_are_flowers_over_several_rounds(flwr, name, settings):
    """Three clients of unequal size, five rounds: each client's update is the global adapter
    it was sent, moved by its own random step; ours and flwr's global weights agree to 1e-6."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    cfg = config_mod.validate({"strategy": name, **settings, **SMALL})
    torch.manual_seed(0)
    ours = new_adapter(cfg, 8, 8).state_dict()
    reference = _flower_strategy(flwr, name, cfg, ours)
    opt_state, sizes = {}, [30, 7, 12]
    g = torch.Generator().manual_seed(1)
    for r in range(1, 6):
        states = [{k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in ours.items()}
                  for _ in sizes]
        ours, opt_state = strategy.aggregate(cfg, ours, states, sizes, r, opt_state)
        results = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(
            [v.numpy() for v in s.values()]), n, {})) for s, n in zip(states, sizes)]
        theirs = parameters_to_ndarrays(reference.aggregate_fit(r, results, [])[0])
        for (key, mine), other in zip(ours.items(), theirs):
            np.testing.assert_allclose(mine.numpy(), other, atol=1e-6, rtol=0, err_msg=key)
    moved = sum((a - b).abs().sum() for a, b in zip(ours.values(), states[0].values()))
    assert moved > 0  # not trivially equal to a client's update


def test_fedprox_pulls_the_clients_weights_towards_the_global_ones():
    """The proximal term's gradient is mu (w - w_start): with a large mu the trained adapter
    stays near where it started; mu = 0 is plain training, step for step."""
    cfg = config_mod.validate(SMALL)
    g = torch.Generator().manual_seed(0)
    x, y, targets = torch.randn(40, 3, 8, generator=g), torch.arange(40) % 4, torch.randn(4, 8)

    def train(mu):
        torch.manual_seed(0)
        adapter = new_adapter(cfg, 8, 8)
        start = {k: v.clone() for k, v in adapter.state_dict().items()}
        train_adapter(adapter, x, y, targets, 3, 8, 1e-2, seed=0, proximal_mu=mu)
        return sum((v - start[k]).pow(2).sum() for k, v in adapter.state_dict().items()).sqrt()

    plain, near = train(0.0), train(100.0)
    assert near < 0.5 * plain
    torch.manual_seed(0)
    adapter = new_adapter(cfg, 8, 8)
    train_adapter(adapter, x, y, targets, 3, 8, 1e-2, seed=0)
    torch.manual_seed(0)
    same = new_adapter(cfg, 8, 8)
    train_adapter(same, x, y, targets, 3, 8, 1e-2, seed=0, proximal_mu=0.0)
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in adapter.state_dict().items())
    assert strategy.proximal_mu(cfg.replace(strategy="fedprox", proximal_mu=0.5)) == 0.5
    assert strategy.proximal_mu(cfg.replace(proximal_mu=0.5)) == 0.0  # fedavg: none


@pytest.mark.parametrize("raw,message", [
    ({"strategy": "fedsgd"}, ("bad value for 'strategy': expected one of ['fedavg', 'fedprox', "
                              "'fedavgm', 'fedadam', 'fedyogi'], got 'fedsgd'")),
    ({"proximal_mu": -0.1}, "bad value for 'proximal_mu': must be >= 0"),
    ({"server_beta_1": 1.0}, "bad value for 'server_beta_1': must be < 1 (in [0, 1))"),
    ({"server_beta_2": -0.5}, "bad value for 'server_beta_2': must be >= 0"),
    ({"server_momentum": 1}, "bad value for 'server_momentum': must be < 1"),
    ({"server_tau": 0}, "bad value for 'server_tau': must be > 0"),
    ({"server_learning_rate": -1}, "bad value for 'server_learning_rate': must be >= 0"),
])
def test_a_bad_strategy_key_is_refused_naming_it(raw, message):
    with pytest.raises(config_mod.ConfigError) as e:
        config_mod.validate(raw)
    assert message in str(e.value)


def _federation(cfg):
    g = torch.Generator().manual_seed(0)
    clients = [ClientData(torch.randn(24, 3, 8, generator=g), torch.arange(24) % 2 + 2 * i,
                          torch.randn(8, 3, 8, generator=g), torch.arange(8) % 2 + 2 * i)
               for i in range(2)]
    return Federation(cfg, clients, torch.randn(4, 8, generator=g), list("abcd"))


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi"])
def test_a_retried_phase_resumes_the_server_optimizer(tmp_path, name):
    """A phase task killed after round 2 of 4 and retried: it reads the optimizer's state of
    round 2 back with the adapter, and ends where an unbroken phase does."""
    cfg = config_mod.validate({"strategy": name, "local_epochs": 1, "batch_size": 8,
                               **SMALL})
    fed = _federation(cfg)
    torch.manual_seed(0)
    start = new_adapter(cfg, 8, 8).state_dict()
    whole, _ = run_phase(fed, "fedavg", 4, 1, start, str(tmp_path / "whole"))

    broken = str(tmp_path / "broken")
    run_phase(fed, "fedavg", 2, 1, start, broken)  # the first try got this far
    assert storage.exists(runstate.strategy_uri(broken, "fedavg", 2))
    resumed, history = run_phase(fed, "fedavg", 4, 1, start, broken)
    assert [h["round"] for h in history] == [1, 2, 3, 4]
    assert all(torch.allclose(resumed[k], v, atol=1e-6) for k, v in whole.items())
    # Without the stored state the retry would restart the moments: a different adapter.
    fresh = str(tmp_path / "fresh")
    run_phase(fed, "fedavg", 2, 1, start, fresh)
    os.remove(runstate.strategy_uri(fresh, "fedavg", 2))
    lost, _ = run_phase(fed, "fedavg", 4, 1, start, fresh)
    assert any(not torch.allclose(lost[k], v, atol=1e-6) for k, v in whole.items())


def test_client_sampling_draws_the_configured_share_per_round_from_the_seed():
    cfg = config_mod.validate({"client_fraction": 0.5,
                               "data": {"partition": "iid", "num_clients": 5}})
    draws = {r: strategy.sampled_clients(cfg, "run2", r) for r in range(1, 21)}
    assert all(len(d) == 2 and d == sorted(d) and set(d) <= set(range(5))
               for d in draws.values())  # int(0.5 x 5), as Flower's fraction_fit
    assert len({tuple(d) for d in draws.values()}) > 3  # a new draw each round
    assert draws[7] == strategy.sampled_clients(cfg, "run2", 7)  # any process, the same
    assert strategy.sampled_clients(cfg.replace(seed=1), "run2", 7) != draws[7] or \
        strategy.sampled_clients(cfg.replace(seed=1), "run2", 8) != draws[8]
    assert strategy.sampled_clients(cfg.replace(client_fraction=1.0), "run2", 7) == \
        [0, 1, 2, 3, 4]


@pytest.mark.parametrize("fraction,message", [
    (0.2, ("bad value for 'client_fraction': 0.2 of 3 clients leaves no client in a round "
           "(at least 0.333)")),
    (0, "bad value for 'client_fraction': must be > 0"),
    (1.5, "bad value for 'client_fraction': must be <= 1.0"),
])
def test_a_client_fraction_that_leaves_no_client_is_refused(fraction, message):
    with pytest.raises(config_mod.ConfigError) as e:
        config_mod.validate({"client_fraction": fraction,
                             "data": {"clients": [["a"], ["b"], ["c"]]}})
    assert message in str(e.value)


def test_a_round_aggregates_only_its_sampled_clients(tmp_path):
    """Two clients, half of them per round: each round's global adapter is the one sampled
    client's update; the other trained nothing and sent nothing, yet in Run 1 it computed its
    class conditions for its generator."""
    from feda2v.federated.client import client_step

    cfg = config_mod.validate({"client_fraction": 0.5, "local_epochs": 1, "batch_size": 8,
                               "data": {"clients": [["a", "b"], ["c", "d"]]}, **SMALL})
    fed = _federation(cfg)
    torch.manual_seed(0)
    state = new_adapter(cfg, 8, 8).state_dict()
    run = str(tmp_path / "run")
    final, _ = run_phase(fed, "run1", 3, 1, state, run)
    for r in (1, 2, 3):
        [chosen] = strategy.sampled_clients(cfg, "run1", r)
        updates = [client_step(cfg, i, r, "run1", state, d, fed.targets, fed.class_names)
                   for i, d in enumerate(fed.clients)]
        assert [u.sampled for u in updates] == [i == chosen for i in (0, 1)]
        assert "adapter_loss" not in updates[1 - chosen].metrics
        assert storage.exists(runstate.conditions_uri(run, 1 - chosen, r))
        state = updates[chosen].adapter_state
    assert all(torch.allclose(final[k], v, atol=1e-6) for k, v in state.items())
