"""How compiled tasks run on a cluster: image, resources, GPUs, retries, secrets, scheduling.

Applied to every task when a pipeline is built. Credentials never enter the pipeline spec: S3
keys come from a Kubernetes Secret and the MLflow / S3 endpoints from a ConfigMap, both mounted
as environment variables by name (kfp-kubernetes). kfp.local runs use `local()`, which leaves
all of that out.
"""

from dataclasses import dataclass, field

from kfp import kubernetes

from feda2v import patches

patches.kfp_cheap_task_setters()

# Tasks that run models: extraction (encoders) and training (adapters, generators).
GPU_TASKS = ("extract", "federated-phase", "train-generator", "generate", "client-round",
             "server-round", "ablation-variant")
# Tasks that load a model without training one: the cluster's CPU/memory requests, no GPU.
MODEL_TASKS = ("class-targets",)
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# Only for the tasks that write to MLflow, and only used by servers with authentication.
MLFLOW_TASKS = ("federated-phase", "server-round", "finish-run", "ablation-parent",
                "ablation-finish", "ablation-variant", "ablation-report")
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
CONFIG_KEYS = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")


@dataclass
class ClusterOptions:
    image: str = ""                      # "" keeps the components' image (FEDA2V_IMAGE)
    gpus: int = 1                        # per extraction/training task; 0 for CPU clusters
    gpu_resource: str = "nvidia.com/gpu"
    cpu_request: str = "1"
    cpu_limit: str = "8"
    memory_request: str = "4Gi"
    memory_limit: str = "32Gi"
    # Bookkeeping tasks (initial adapter, exit handler, report) still request something: pods
    # without requests are evicted first and refused by namespaces with a ResourceQuota.
    light_cpu_request: str = "250m"
    light_cpu_limit: str = "2"
    light_memory_request: str = "1Gi"
    light_memory_limit: str = "4Gi"
    retries: int = 3
    retry_backoff: str = "30s"           # doubled after every failed try, at most 1 h in all
    s3_secret: str = "feda2v-s3"         # keys: SECRET_KEYS (the MLflow ones optional)
    config_map: str = "feda2v-config"    # keys: MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL, ...
    node_selector: dict = field(default_factory=dict)
    tolerations: list = field(default_factory=list)  # [{"key", "operator", "value", "effect"}]
    # Only for the tasks that request a GPU (GPU_TASKS, when gpus > 0): GPU node pools are
    # usually labelled and tainted, and bookkeeping tasks belong elsewhere.
    gpu_node_selector: dict = field(default_factory=dict)
    gpu_tolerations: list = field(default_factory=list)
    caching: "bool | None" = None        # None: as built (only the data tasks are cached)
    volumes: list = field(default_factory=list)  # [(PVC name, mount path)] on every task
    pipeline_root: str = ""              # "" leaves KFP's default (the kfp-launcher config)
    kubernetes: bool = True              # False for kfp.local: no Secrets/ConfigMaps there

    @classmethod
    def local(cls) -> "ClusterOptions":
        return cls(gpus=0, retries=0, kubernetes=False)


def component_name(task) -> str:
    return task.component_spec.name.replace("_", "-")


def configure(task, options: ClusterOptions):
    """Apply the options to one task; returns it for chaining."""
    if options.image:
        task.set_container_image(options.image)
    if options.caching is not None:  # every task, in every sub-DAG (kfp's client override
        task.set_caching_options(options.caching)  # reaches only the root DAG's tasks)
    if component_name(task) in GPU_TASKS + MODEL_TASKS:
        task.set_cpu_request(options.cpu_request).set_cpu_limit(options.cpu_limit)
        task.set_memory_request(options.memory_request).set_memory_limit(options.memory_limit)
    else:  # light bookkeeping, but never without requests
        task.set_cpu_request(options.light_cpu_request).set_cpu_limit(options.light_cpu_limit)
        task.set_memory_request(options.light_memory_request)
        task.set_memory_limit(options.light_memory_limit)
    if options.retries:
        task.set_retry(options.retries, backoff_duration=options.retry_backoff,
                       backoff_factor=2.0, backoff_max_duration="3600s")
    gpu = bool(options.gpus) and component_name(task) in GPU_TASKS
    if gpu:
        task.set_accelerator_type(options.gpu_resource).set_accelerator_limit(options.gpus)
    if options.kubernetes:
        keys = SECRET_KEYS + (MLFLOW_SECRET_KEYS if component_name(task) in MLFLOW_TASKS else ())
        kubernetes.use_secret_as_env(task, options.s3_secret, {k: k for k in keys}, optional=True)
        kubernetes.use_config_map_as_env(task, options.config_map, {k: k for k in CONFIG_KEYS},
                                         optional=True)
        selector = options.node_selector | (options.gpu_node_selector if gpu else {})
        for key, value in selector.items():
            kubernetes.add_node_selector(task, key, value)
        for tol in options.tolerations + (options.gpu_tolerations if gpu else []):
            kubernetes.add_toleration(task, **tol)
        for pvc, path in options.volumes:
            kubernetes.mount_pvc(task, pvc_name=pvc, mount_path=path)
    return task
