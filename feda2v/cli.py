"""`feda2v` command: every pipeline stage as a sub-command, plus run / compile / data / models.

Stage sub-commands default their URIs to the storage-root layout the pipelines use, so
`feda2v extract --config F --client 0` by hand writes where the pipeline would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from feda2v import config as config_mod
from feda2v.download import ESC50_URL


def _cfg(path: str) -> dict:
    return config_mod.load(path)


def _json(cfg: dict) -> str:
    return json.dumps(cfg, sort_keys=True)


def _targets_uri(cfg: dict) -> str:
    from feda2v import storage

    return storage.join(cfg["storage_root"], "class_targets.safetensors")


def _data_uris(cfg: dict, given: list[str] | None) -> list[str]:
    from feda2v.stages import embeddings_uri

    return given or [embeddings_uri(cfg, i) for i in range(config_mod.num_clients(cfg))]


def _print(result) -> None:
    print(json.dumps(result, indent=2) if isinstance(result, dict) else result)


# --- sub-commands ------------------------------------------------------------------------------

def cmd_data_demo(a) -> None:
    from feda2v.demo_data import write_demo_dataset

    write_demo_dataset(a.out, clips_per_class=a.clips_per_class, folds=a.folds, seconds=a.seconds,
                       sample_rate=a.sample_rate, seed=a.seed)


def cmd_data_esc50(a) -> None:
    from feda2v.download import download_esc50

    download_esc50(a.out, a.url, a.sha256)


def cmd_models_tiny(a) -> None:
    from feda2v.encoders import write_tiny_models

    _print(write_tiny_models(a.out, seed=a.seed))


def cmd_config_check(a) -> None:
    cfg = _cfg(a.config)
    print(json.dumps(cfg, indent=2, sort_keys=True))
    print(f"OK: {a.config} is valid (pipeline: {config_mod.pipeline_kind(cfg)})", file=sys.stderr)


def cmd_config_keys(a) -> None:
    print(config_mod.describe_keys())


def cmd_class_targets(a) -> None:
    from feda2v import stages

    cfg = _cfg(a.config)
    _print(stages.class_targets(_json(cfg), a.out or _targets_uri(cfg)))


def cmd_extract(a) -> None:
    from feda2v import stages

    _print(stages.extract(_json(_cfg(a.config)), a.client, a.out or ""))


def cmd_init_adapter(a) -> None:
    from feda2v import stages

    cfg = _cfg(a.config)
    _print(stages.init_adapter(_json(cfg), _data_uris(cfg, a.data), a.targets or _targets_uri(cfg),
                               a.out))


def cmd_client_round(a) -> None:
    from feda2v import stages

    cfg = _cfg(a.config)
    _print(stages.client_round(_json(cfg), a.client, a.round, a.phase, a.global_adapter,
                               a.targets or _targets_uri(cfg), a.out, a.data or ""))


def cmd_aggregate(a) -> None:
    from feda2v import stages

    cfg = _cfg(a.config)
    _print(stages.aggregate(_json(cfg), a.round, a.step or a.round, a.updates,
                            a.targets or _targets_uri(cfg), a.out_adapter, a.out_synthetic,
                            a.mlflow_run_id))


def cmd_global_train(a) -> None:
    from feda2v import stages

    cfg = _cfg(a.config)
    _print(stages.global_train(_json(cfg), a.round, a.step or a.round, a.aggregated,
                               a.previous or a.aggregated, a.synthetic,
                               a.targets or _targets_uri(cfg), a.out, a.mlflow_run_id))


def cmd_evaluate(a) -> None:
    from feda2v import stages

    cfg = _cfg(a.config)
    _print(stages.evaluate(_json(cfg), a.round, a.step or a.round, a.adapter,
                           a.targets or _targets_uri(cfg), a.mlflow_run_id, a.data))


def cmd_compile(a) -> None:
    from kfp import compiler

    import pipelines

    cfg = _cfg(a.config)
    kind = a.pipeline or config_mod.pipeline_kind(cfg)
    compiler.Compiler().compile(pipelines.build(cfg, kind), a.output)
    size = os.path.getsize(a.output)
    plan = "variants" if kind == "ablations" else pipelines.phase_plan(cfg, kind)
    print(f"Wrote {kind} pipeline ({plan}, {config_mod.num_clients(cfg)} clients) to "
          f"{a.output} ({size / 1024:.0f} KiB)")


def cmd_experiment(a) -> None:
    from feda2v.experiment import VARIANTS, run_experiment
    from feda2v.local_run import resolve_local_paths

    cfg = resolve_local_paths(_cfg(a.config))
    variants = a.variants.split(",") if a.variants else list(VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; expected some of {list(VARIANTS)}")
    result = run_experiment(cfg, variants, a.name)
    print(f"\nAblations on the same data and seed ({cfg['seed']}):\n")
    print(result["table"])
    print(f"\n  results:            {result['dir']}/results.json")
    if result["html"]:
        print(f"  HTML report:        {result['html']}")
    print(f"  MLflow parent run:  {result['parent_run_id']} "
          f"({tracking_uri_text(cfg)}, experiment '{cfg['experiment_name']}')")


def tracking_uri_text(cfg: dict) -> str:
    from feda2v import tracking

    return tracking.redact(tracking.tracking_uri(cfg))


def cmd_run(a) -> None:
    from feda2v.local_run import run_locally

    cfg = _cfg(a.config)
    sys.exit(run_locally(cfg, a.pipeline or config_mod.pipeline_kind(cfg), a.pipeline_root))


# --- parser ------------------------------------------------------------------------------------

def _config_arg(p) -> None:
    p.add_argument("--config", required=True, help="run config (JSON, seed format)")


def _uris_args(p, data=True, targets=True) -> None:
    if data:
        p.add_argument("--data", nargs="+", metavar="URI",
                       help="client embeddings URIs (default: each client's file under "
                            "storage_root/embeddings)")
    if targets:
        p.add_argument("--targets", help="class targets URI (default: "
                                         "storage_root/class_targets.safetensors)")


def _round_args(p, mlflow=True) -> None:
    p.add_argument("--round", type=int, required=True, help="round number within its phase (1-based)")
    p.add_argument("--step", type=int, help="MLflow step (default: --round)")
    if mlflow:
        p.add_argument("--mlflow-run-id", default="", help="log metrics into this MLflow run "
                                                            "(default: do not log)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feda2v",
        description="FedA2V: federated audio-to-visual learning with client-side generators, "
                    "as Kubeflow Pipelines. `feda2v run` executes a whole pipeline locally; "
                    "the stage sub-commands run one step, as a pipeline task would.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, func, help_):
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    p = add("run", cmd_run, "Run the pipeline locally under kfp.local (same DAG as on a cluster).")
    _config_arg(p)
    p.add_argument("--pipeline", choices=["run1", "run2", "end_to_end", "ablations"],
                   help="pipeline to run (default: the config's `pipeline` key)")
    p.add_argument("--pipeline-root", help="where kfp.local keeps task artifacts (default: "
                                           "storage_root/kfp-local)")

    p = add("experiment", cmd_experiment,
            "Run the ablations on the same data and seed (FedAvg only, Run 1 -> Run 2 with "
            "synthetic samples, synthetic-only server training, centralized upper bound) and "
            "print one table; also writes an HTML report and logs everything to MLflow.")
    _config_arg(p)
    p.add_argument("--variants", help="comma-separated subset of fedavg,synthetic,"
                                      "synthetic_only,centralized (default: all)")
    p.add_argument("--name", default="experiment", help="folder under storage_root/experiments "
                                                        "and MLflow parent run name")

    p = add("compile", cmd_compile, "Compile the pipeline to a KFP YAML for the UI or "
                                    "`kfp run create`.")
    _config_arg(p)
    p.add_argument("--output", required=True, help="pipeline YAML to write")
    p.add_argument("--pipeline", choices=["run1", "run2", "end_to_end", "ablations"],
                   help="pipeline to compile (default: the config's `pipeline` key)")

    data = add("data", None, "Datasets.").add_subparsers(dest="what", required=True, metavar="WHAT")
    p = data.add_parser("demo", help="Write the procedural demo set in the ESC-50 layout.",
                        description="Write a procedural audio dataset in the ESC-50 layout "
                                    "(meta/esc50.csv + audio/*.wav), 15 acoustically distinct "
                                    "classes of the reference split, deterministic for a seed.")
    p.set_defaults(func=cmd_data_demo)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--clips-per-class", type=int, default=40, help="clips per class (default 40, "
                                                                   "as ESC-50)")
    p.add_argument("--folds", type=int, default=5, help="folds (default 5)")
    p.add_argument("--seconds", type=float, default=1.0, help="clip length (default 1.0)")
    p.add_argument("--sample-rate", type=int, default=16000, help="Hz (default 16000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    p = data.add_parser("esc50", help="Download and unpack the official ESC-50 archive.",
                        description="Download the ESC-50 archive and unpack meta/esc50.csv and "
                                    "audio/ to OUT (a path or fsspec URL such as s3://bucket/esc50). "
                                    "A folder that already holds meta/esc50.csv is left alone.")
    p.set_defaults(func=cmd_data_esc50)
    p.add_argument("--out", required=True, help="destination folder or URL")
    p.add_argument("--url", default=ESC50_URL, help="archive URL (default: the official one; "
                                                    "point it at a mirror offline)")
    p.add_argument("--sha256", default="", help="expected sha256 of the archive (optional)")

    models = add("models", None, "Models.").add_subparsers(dest="what", required=True, metavar="WHAT")
    p = models.add_parser("tiny", help="Save tiny random-initialised AST, CLAP and CLIP models.",
                          description="Save small random-initialised models of the real "
                                      "architectures for offline runs: AST in OUT/audio, CLAP "
                                      "audio tower in OUT/clap, CLIP text + offline tokenizer in "
                                      "OUT/text, CLIP vision in OUT/vision.")
    p.set_defaults(func=cmd_models_tiny)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    cfgp = add("config", None, "Inspect configs.").add_subparsers(dest="what", required=True,
                                                                  metavar="WHAT")
    p = cfgp.add_parser("check", help="Validate a config and print it with defaults filled in.")
    p.set_defaults(func=cmd_config_check)
    _config_arg(p)
    p = cfgp.add_parser("keys", help="List every config key with its default and meaning.")
    p.set_defaults(func=cmd_config_keys)

    p = add("class-targets", cmd_class_targets, "Stage: CLIP text embedding of every class prompt.")
    _config_arg(p)
    p.add_argument("--out", help="output URI (default: storage_root/class_targets.safetensors)")

    p = add("extract", cmd_extract, "Stage: embed one client's clips to [N, tokens, D] safetensors.")
    _config_arg(p)
    p.add_argument("--client", type=int, required=True, help="client id (0-based)")
    p.add_argument("--out", help="output URI (default: the client's file under "
                                              "storage_root/embeddings/)")

    p = add("init-adapter", cmd_init_adapter, "Stage: the server's initial global adapter.")
    _config_arg(p)
    _uris_args(p)
    p.add_argument("--out", required=True, help="adapter output URI (safetensors)")

    p = add("client-round", cmd_client_round,
            "Stage: one client's round (adapter on real data; run1 trains and checkpoints the "
            "generator, run2 loads it and samples synthetic data).")
    _config_arg(p)
    p.add_argument("--client", type=int, required=True, help="client id (0-based)")
    p.add_argument("--round", type=int, required=True, help="round number within its phase")
    p.add_argument("--phase", choices=["fedavg", "run1", "run2", "sample"], required=True,
                   help="fedavg: adapter only; run1: + generator training; run2: + synthetic "
                        "samples; sample: synthetic samples only")
    p.add_argument("--global-adapter", required=True, help="global adapter URI (safetensors)")
    p.add_argument("--data", metavar="URI", help="this client's embeddings (default: its file "
                                                 "under storage_root/embeddings)")
    _uris_args(p, data=False)
    p.add_argument("--out", required=True, help="client update output URI (safetensors)")

    p = add("aggregate", cmd_aggregate, "Stage: weighted FedAvg of client adapters and pooling of "
                                        "their synthetic samples.")
    _config_arg(p)
    _round_args(p)
    p.add_argument("--updates", nargs="+", required=True, metavar="URI", help="client update URIs")
    _uris_args(p, data=False)
    p.add_argument("--out-adapter", required=True, help="aggregated adapter output URI")
    p.add_argument("--out-synthetic", required=True, help="pooled synthetic samples output URI")

    p = add("global-train", cmd_global_train, "Stage: train the global adapter on the pooled "
                                              "synthetic samples.")
    _config_arg(p)
    _round_args(p)
    p.add_argument("--aggregated", required=True, help="aggregated adapter URI")
    p.add_argument("--previous", help="previous global adapter URI (used when "
                                      "global_model_train_from_nodes_adapters is false)")
    p.add_argument("--synthetic", required=True, help="pooled synthetic samples URI")
    _uris_args(p, data=False)
    p.add_argument("--out", required=True, help="trained global adapter output URI")

    p = add("evaluate", cmd_evaluate, "Stage: zero-shot accuracy of an adapter on every client's "
                                      "test clips, weighted by test size.")
    _config_arg(p)
    _round_args(p)
    p.add_argument("--adapter", required=True, help="adapter URI to evaluate")
    _uris_args(p)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (config_mod.ConfigError, FileNotFoundError, ValueError, OSError) as e:
        print(f"feda2v {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
