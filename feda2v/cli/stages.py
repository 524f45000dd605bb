"""The stage commands: each runs one step as a pipeline task would, with URIs defaulting to the
storage-root layout the pipelines use (`feda2v extract --config F --client 0` by hand writes
where the pipeline would)."""

from __future__ import annotations

from feda2v.cli.common import (
    config_arg,
    data_uris,
    default_targets_uri,
    round_args,
    run_key_arg,
    show,
    stage_cfg,
    uris_args,
)


def cmd_class_targets(a) -> None:
    from feda2v.orchestration import stages

    cfg = stage_cfg(a.config)
    show(stages.class_targets(cfg, a.out or default_targets_uri(cfg)))


def cmd_extract(a) -> None:
    from feda2v.orchestration import stages

    show(stages.extract(stage_cfg(a.config), a.client, a.out or ""))


def cmd_init_adapter(a) -> None:
    from feda2v.orchestration import stages

    cfg = stage_cfg(a.config)
    show(stages.init_adapter(cfg, data_uris(cfg, a.data), a.targets or default_targets_uri(cfg),
                               a.out))


def _run_key(a) -> str:
    return a.run_key or "manual"


def cmd_client_round(a) -> None:
    from feda2v.orchestration import stages

    cfg = stage_cfg(a.config)
    show(stages.client_round(cfg, a.client, a.round, a.phase, a.global_adapter,
                               a.targets or default_targets_uri(cfg), a.out, a.run_key, a.data or ""))


def cmd_server_round(a) -> None:
    from feda2v.orchestration import stages

    cfg = stage_cfg(a.config)
    show(stages.server_round(cfg, a.round, a.phase, a.updates, a.previous,
                               a.targets or default_targets_uri(cfg), a.out, a.mlflow_run_id,
                               step=a.step or a.round))


def cmd_phase(a) -> None:
    from feda2v.orchestration import stages

    cfg = stage_cfg(a.config)
    show(stages.federated_phase(cfg, a.phase, _run_key(a), a.mlflow_run_id,
                                  a.out or ""))


def cmd_train_generator(a) -> None:
    from feda2v.orchestration import stages

    show(stages.train_generator(stage_cfg(a.config), a.client, _run_key(a)))


def cmd_generate(a) -> None:
    from feda2v.orchestration import stages

    show(stages.generate(stage_cfg(a.config), a.client, _run_key(a)))


def cmd_evaluate(a) -> None:
    from feda2v.orchestration import stages

    cfg = stage_cfg(a.config)
    show(stages.evaluate(cfg, a.adapter, a.targets or default_targets_uri(cfg), a.data))


def register(add) -> None:
    p = add("class-targets", cmd_class_targets, "Stage: CLIP text embedding of every class prompt.")
    config_arg(p)
    p.add_argument("--out", help="output URI (default: storage_root/class_targets.safetensors)")

    p = add("extract", cmd_extract, "Stage: embed one client's clips to [N, tokens, D] safetensors.")
    config_arg(p)
    p.add_argument("--client", type=int, required=True, help="client id (0-based)")
    p.add_argument("--out", help="output URI (default: the client's file under "
                                              "storage_root/embeddings/)")

    p = add("init-adapter", cmd_init_adapter, "Stage: the server's initial global adapter.")
    config_arg(p)
    uris_args(p)
    p.add_argument("--out", required=True, help="adapter output URI (safetensors)")

    p = add("phase", cmd_phase,
            "Stage: every round of one federated phase for every client, in this process "
            "(what a phase-execution task runs); resumes after the last finished round.")
    config_arg(p)
    p.add_argument("--phase", choices=["fedavg", "run1", "run2", "sample"], required=True,
                   help="fedavg: adapters only; run1: + class conditions for the generators; "
                        "run2: + synthetic samples (run `generate` first); sample: synthetic only")
    run_key_arg(p)
    p.add_argument("--mlflow-run-id", default="", help="log into this MLflow run (default: the "
                                                       "run tagged with the run key, or a new one)")
    p.add_argument("--out", help="final global adapter output URI (safetensors)")

    for name, func, text in (
            ("train-generator", cmd_train_generator,
             ("Stage: one client's generator over every Run 1 round (after `phase --phase run1`); "
             "checkpoints under the seed's names.")),
            ("generate", cmd_generate,
             ("Stage: one client's synthetic samples for every Run 2 round, from one read of its "
             "generator checkpoint."))):
        p = add(name, func, text)
        config_arg(p)
        p.add_argument("--client", type=int, required=True, help="client id (0-based)")
        run_key_arg(p)

    p = add("client-round", cmd_client_round,
            "Stage: one client's round (adapter on real data; run1 also writes the class "
            "conditions its generator trains on, run2 adds the round's synthetic samples).")
    config_arg(p)
    p.add_argument("--client", type=int, required=True, help="client id (0-based)")
    p.add_argument("--round", type=int, required=True, help="round number within its phase")
    p.add_argument("--phase", choices=["fedavg", "run1", "run2", "sample"], required=True,
                   help="fedavg: adapter only; run1: + class conditions; run2: + synthetic "
                        "samples; sample: synthetic samples only")
    p.add_argument("--global-adapter", required=True, help="global adapter URI (safetensors)")
    p.add_argument("--data", metavar="URI", help="this client's embeddings (default: its file "
                                                 "under storage_root/embeddings)")
    uris_args(p, data=False)
    p.add_argument("--run-key", default="", help="run folder under storage_root/runs (run1 "
                   "writes conditions there, run2 reads synthetic samples from it)")
    p.add_argument("--out", required=True, help="client update output URI (safetensors)")

    p = add("server-round", cmd_server_round,
            "Stage: the server's round: weighted FedAvg of the client updates, global training "
            "on their pooled synthetic samples (run2 with global_model_train), evaluation.")
    config_arg(p)
    round_args(p)
    p.add_argument("--phase", choices=["fedavg", "run1", "run2", "sample"], required=True,
                   help="the round's phase")
    p.add_argument("--updates", nargs="+", required=True, metavar="URI", help="client update URIs")
    p.add_argument("--previous", required=True, help="previous global adapter URI")
    uris_args(p, data=False)
    p.add_argument("--out", required=True, help="new global adapter output URI")

    p = add("evaluate", cmd_evaluate, "Stage: zero-shot accuracy of an adapter on every client's "
                                      "test clips, weighted by test size.")
    config_arg(p)
    p.add_argument("--adapter", required=True, help="adapter URI to evaluate")
    uris_args(p)
