"""experiment: the ablations in one command (variants, seeds, partitions, ε)."""

from __future__ import annotations

from feda2v.cli.common import config_arg, override_args, run_cfg
from feda2v.cli.pipeline import tracking_uri_text


def _preflight(cfg) -> None:
    """As `feda2v run`: the locations, the tracking server and the dataset's class names are
    checked before any MLflow run or folder exists."""
    from feda2v.orchestration import preflight

    preflight.check(cfg, "local")


def cmd_experiment(a) -> None:
    from feda2v.io import config as config_mod
    from feda2v.localrun.run import resolve_local_paths
    from feda2v.orchestration.experiment import VARIANTS, parse_partitions, run_experiment, run_grid

    # A folder under storage_root/experiments and an MLflow run name: refused before any work.
    config_mod.check_name("--name", a.name)
    cfg = resolve_local_paths(run_cfg(a))
    variants = a.variants.split(",") if a.variants else list(VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; expected some of {list(VARIANTS)}")
    if a.seeds or a.partitions or a.strategies:
        try:
            seeds = [int(s) for s in (a.seeds or str(cfg.seed)).split(",")]
        except ValueError:
            raise ValueError(f"--seeds expects comma-separated integers, got {a.seeds!r}") from None
        partitions = parse_partitions(a.partitions or "classes")
        strategies = [s.strip() for s in a.strategies.split(",")] if a.strategies else None
        _preflight(cfg)
        grid = run_grid(cfg, variants, seeds, partitions, a.name, strategies)
        over = f" and strategies {strategies}" if strategies else ""
        print(f"\nAblations over seeds {seeds} and partitions {partitions}{over}:\n")
        print(grid["table"])
        print()
        print("\n".join(grid["lines"]))
        print(f"\n  results:            {grid['dir']}/grid.json")
        print(f"  MLflow parent run:  {grid['parent_run_id']} ({tracking_uri_text(cfg)}, "
              f"experiment '{cfg.experiment_name}')")
        return
    epsilons = None
    if a.epsilons:
        try:
            epsilons = [float(e) for e in a.epsilons.split(",")]
        except ValueError:
            raise ValueError(f"--epsilons expects comma-separated numbers or inf, got "
                             f"{a.epsilons!r}") from None
        if any(e <= 0 for e in epsilons):
            raise ValueError(f"--epsilons must be > 0 (inf = no DP), got {a.epsilons!r}")
    _preflight(cfg)
    result = run_experiment(cfg, variants, a.name, epsilons=epsilons)
    print(f"\nAblations on the same data and seed ({cfg.seed}):\n")
    print(result["table"])
    print(f"\n  results:            {result['dir']}/results.json")
    if result["html"]:
        print(f"  HTML report:        {result['html']}")
    print(f"  MLflow parent run:  {result['parent_run_id']} "
          f"({tracking_uri_text(cfg)}, experiment '{cfg.experiment_name}')")


def register(add) -> None:
    p = add("experiment", cmd_experiment,
            "Run the ablations on the same data and seed (FedAvg only, Run 1 -> Run 2 with "
            "synthetic samples, synthetic-only server training, centralized upper bound) and "
            "print one table; also writes an HTML report and logs everything to MLflow.")
    config_arg(p)
    p.add_argument("--variants", help="comma-separated subset of fedavg,synthetic,"
                                      "synthetic_only,centralized (default: all)")
    p.add_argument("--name", default="experiment", help="folder under storage_root/experiments "
                                                        "and MLflow parent run name")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2: run every variant for "
                                   "each and print mean ± sd (default: the config's seed)")
    p.add_argument("--partitions", help="comma-separated partitions of the config's classes: "
                   "classes, iid, dirichlet:ALPHA, pathological:K (default: classes)")
    p.add_argument("--strategies", help="comma-separated federated strategies, e.g. "
                   "fedavg,fedprox,fedadam: every variant under each, a row per partition and "
                   "strategy (default: the config's strategy)")
    p.add_argument("--epsilons", help="comma-separated ε, e.g. 1,4,8,inf: the synthetic variant "
                   "again with DP-SGD generators at each finite ε; the report plots accuracy "
                   "against ε (inf = without DP)")
    override_args(p, register=False)
