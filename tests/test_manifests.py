"""The Kubernetes manifests under manifests/, checked offline.

Each kustomization is rendered by `render()` below, a small kustomize equivalent for exactly the
features the manifests and docs/kubeflow.md's overlays use (resources: files and directories;
namespace; labels without selectors or templates; patches given by path, merged as
strategic-merge patches of maps; images: name/newName/newTag/digest). It refuses any other
kustomization field, so a manifest change that needs more fails loudly here instead of being
checked against the wrong output. Where `kubectl` is on PATH, its built-in kustomize renders the
same directories and the outputs must agree.

Every rendered object, and each Secret template, is validated against the Kubernetes API schemas
of K8S_VERSION (kubernetes-validate, strict: unknown fields fail).
"""

from __future__ import annotations

import copy
import fnmatch
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"
K8S_VERSION = "1.30"  # the oldest Kubernetes the manifests claim (manifests/README.md)
KUSTOMIZATIONS = sorted(str(p.parent.relative_to(MANIFESTS))
                        for p in MANIFESTS.rglob("kustomization.yaml"))
DEPLOYABLE = ["base", "kfp-launcher", "overlays/local-seaweedfs",
              "overlays/mlflow-auth"]  # what the README applies
SECRET_TEMPLATES = sorted(MANIFESTS.rglob("secret-*.example.yaml"))
PLACEHOLDER = "REPLACE_ME"
# Keys the pipeline tasks read from the ConfigMap and the Secret (pipelines/cluster.py).
TASK_CONFIG_KEYS = {"MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"}
TASK_SECRET_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


class UnsupportedKustomization(ValueError):
    """The test renderer meets a kustomize feature it does not implement; it refuses rather
    than render something different from `kubectl kustomize`."""


CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
CREDENTIAL_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|KEY_ID|CREDENTIAL",
                             re.IGNORECASE)
PINNED_TAG = re.compile(r"^[a-z0-9.\-/]+:v?\d+\.\d+(\.\d+)?(-[a-z0-9.]+)?(@sha256:[0-9a-f]{64})?$")
VAR_REF = re.compile(r"\$\((\w+)\)")


# --- the renderer ---------------------------------------------------------------------------

SUPPORTED_FIELDS = {"apiVersion", "kind", "namespace", "labels", "resources", "patches",
                    "images"}
IMAGE_FIELDS = {"name", "newName", "newTag", "digest"}  # not tagSuffix: kustomize applies it twice


def load_yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def object_id(obj: dict) -> tuple:
    meta = obj["metadata"]
    return obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"]


# The strategic-merge keys of the list fields the patches touch (from the Kubernetes API's
# patchMergeKey); any other list (command, args) is replaced whole, as kustomize does.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath"}


def merge_patch(target: dict, patch: dict) -> None:
    """Strategic merge: nested maps merge, scalars replace, null deletes; lists of the fields in
    MERGE_KEYS merge item by item on their key, other lists replace."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_patch(target[key], value)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(target.get(key), list):
            by_key = {item[MERGE_KEYS[key]]: item for item in target[key]}
            added = []  # kustomize puts the patch's new items first, in the patch's order
            for item in value:
                if item[MERGE_KEYS[key]] in by_key:
                    merge_patch(by_key[item[MERGE_KEYS[key]]], item)
                else:
                    added.append(copy.deepcopy(item))
            target[key] = added + target[key]
        else:
            target[key] = copy.deepcopy(value)


def render(directory: Path) -> list[dict]:
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kust) - SUPPORTED_FIELDS
    if unsupported:
        raise UnsupportedKustomization(f"{directory}: kustomization fields {sorted(unsupported)}")
    objects: list[dict] = []
    for entry in kust.get("resources", []):
        path = (directory / entry).resolve()
        objects += render(path) if path.is_dir() else load_yaml_documents(path)

    for entry in kust.get("patches", []):
        if set(entry) != {"path"}:
            raise UnsupportedKustomization(f"{directory}: only `path:` patches are supported")
        patch = yaml.safe_load((directory / entry["path"]).read_text())
        matches = [o for o in objects
                   if (o["apiVersion"], o["kind"], o["metadata"]["name"])
                   == (patch["apiVersion"], patch["kind"], patch["metadata"]["name"])
                   and o["metadata"].get("namespace") == patch["metadata"].get("namespace")]
        assert len(matches) == 1, f"{directory}/{entry['path']} matches {len(matches)} objects"
        merge_patch(matches[0], patch)

    for entry in kust.get("images", []):  # after the patches, one entry after the other
        set_image(objects, _image_entry(directory, entry))

    if "namespace" in kust:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kust["namespace"]

    for spec in kust.get("labels", []):
        if spec.get("includeSelectors") or spec.get("includeTemplates"):
            raise UnsupportedKustomization(f"{directory}: labels into selectors/templates")
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(spec["pairs"])

    ids = [object_id(o) for o in objects]
    assert len(ids) == len(set(ids)), f"{directory}: duplicate objects"
    return objects


def _image_entry(directory: Path, entry) -> dict:
    if not isinstance(entry, dict) or not entry.get("name") or set(entry) - IMAGE_FIELDS:
        raise UnsupportedKustomization(f"{directory}: images entry {entry!r} (supported: a "
                                       f"name and any of newName, newTag, digest)")
    for key, value in entry.items():
        if not isinstance(value, str):  # kustomize refuses them: `newTag: 3.17` is a float
            raise UnsupportedKustomization(f"{directory}: images entry {entry['name']}: {key} "
                                           f"must be a string, got {value!r}")
    return entry


def image_matches(image: str, name: str) -> bool:
    """kustomize 5.5's IsImageMatched (api/internal/image): `name` is used as a regular
    expression as it is (a dot matches any character), followed by an optional tag and an
    optional sha256 digest."""
    return re.fullmatch(name + r"(:[a-zA-Z0-9_.{}-]*)?(@sha256:[a-zA-Z0-9_.{}-]*)?", image) is not None


def split_image(image: str) -> tuple[str, str, str]:
    """kustomize's image.Split: (name, tag, digest); a registry's port is not a tag."""
    slash = image.find("/")
    offset = max(0, slash)
    search = image[offset:]
    at, colon = search.find("@"), search.find(":")
    if colon < 0 and at < 0:
        return image, "", ""
    if at >= 0 and (at < colon or colon < 0):
        return image[:offset + at], "", image[offset + at + 1:]
    if at >= 0:
        return (image[:offset + colon], image[offset + colon + 1:offset + at],
                image[offset + at + 1:])
    return image[:offset + colon], image[offset + colon + 1:], ""


def new_image(image: str, entry: dict) -> str:
    """What one `images:` entry makes of a container's image (kustomize's imageTagUpdater)."""
    if not image_matches(image, entry["name"]):
        return image
    name, tag, digest = split_image(image)
    name = entry.get("newName") or name
    if entry.get("newTag") and entry.get("digest"):
        tag, digest = entry["newTag"], entry["digest"]
    elif entry.get("newTag"):  # a new tag or digest replaces both the old tag and digest
        tag, digest = entry["newTag"], ""
    elif entry.get("digest"):
        tag, digest = "", entry["digest"]
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def set_image(objects: list[dict], entry: dict) -> None:
    """kustomize's image transformer: the `image` of every item of any `containers` or
    `initContainers` list, at any depth of any object but a CustomResourceDefinition (so not
    ephemeralContainers, nor an `image` key elsewhere)."""

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value)
                if key in ("containers", "initContainers") and isinstance(value, list):
                    for item in value:
                        if isinstance(item, dict) and isinstance(item.get("image"), str):
                            item["image"] = new_image(item["image"], entry)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for obj in objects:
        if obj["kind"] != "CustomResourceDefinition":
            walk(obj)


@cache
def _rendered(name: str) -> tuple:
    return tuple(render(MANIFESTS / name))


def rendered(name: str) -> list[dict]:
    return copy.deepcopy(list(_rendered(name)))


def find(objects: list[dict], kind: str, name: str, namespace: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name
             and namespace in (None, o["metadata"].get("namespace"))]
    assert len(found) == 1, f"{kind}/{name} in {namespace}: {len(found)} found"
    return found[0]


def pod_specs(objects: list[dict]):
    for obj in objects:
        if obj["kind"] in WORKLOADS:
            yield obj, obj["spec"]["template"]["spec"]


def containers(pod: dict):
    yield from ((c, True) for c in pod.get("initContainers", []))
    yield from ((c, False) for c in pod["containers"])


def strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def mlflow_container(objects: list[dict]) -> dict:
    deployment = find(objects, "Deployment", "mlflow", "feda2v")
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"]
                if c["name"] == "mlflow")


def flag(command: list[str], name: str) -> str:
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


# --- rendering and schemas ------------------------------------------------------------------


def test_every_deployable_kustomization_is_present():
    assert set(DEPLOYABLE) <= set(KUSTOMIZATIONS)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_rendered_objects_validate_against_the_kubernetes_schemas(name):
    objects = rendered(name)
    assert objects
    for obj in objects:
        label = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{label} invalid at {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            pytest.fail(f"{label}: {e.message}")


def assert_kubectl_agrees(directory: Path, objects: list[dict]) -> None:
    """Where kubectl is on PATH, its built-in kustomize renders `directory` to `objects`."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run([kubectl, "kustomize", str(directory)], check=True,
                             capture_output=True, text=True, timeout=60).stdout
        assert sorted(objects, key=object_id) == sorted(
            (d for d in yaml.safe_load_all(out) if d), key=object_id)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_renderer_agrees_with_kubectl_kustomize(name):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl not on PATH")
    out = subprocess.run([kubectl, "kustomize", str(MANIFESTS / name)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    theirs = sorted((d for d in yaml.safe_load_all(out) if d), key=object_id)
    assert sorted(rendered(name), key=object_id) == theirs


def test_renderer_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(UnsupportedKustomization):
        render(tmp_path)


def test_renderer_merges_named_lists_and_replaces_the_others():
    target = {"containers": [{"name": "a", "command": ["x", "y"], "env": [{"name": "K", "value": "1"}]}]}
    merge_patch(target, {"containers": [{"name": "a", "command": ["z"],
                                         "env": [{"name": "L", "value": "2"}]},
                                        {"name": "b"}]})
    assert target == {"containers": [{"name": "b"}, {"name": "a", "command": ["z"], "env": [
        {"name": "L", "value": "2"}, {"name": "K", "value": "1"}]}]}


# The cases below were rendered with kubectl 1.32's kustomize (v5.5.0); where kubectl is on
# PATH the test renders them with it again.
IMAGE_CASES_POD = """\
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  initContainers:
    - {name: i, image: "feda2v-mlflow:3.17.2"}
  containers:
    - {name: a, image: feda2v-mlflow}
    - {name: b, image: "feda2v-mlflow@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
    - {name: c, image: "feda2v-mlflow:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
    - {name: d, image: "feda2v-mlflowx:1"}
    - {name: e, image: "docker.io/feda2v-mlflow:1"}
    - {name: f, image: "localhost:5000/feda2v-mlflow:1"}
    - {name: g, image: "feda2v-mlflow:1@sha512:abc"}
    - {name: h, image: "feda2vXmlflow:1"}
  ephemeralContainers:
    - {name: x, image: "feda2v-mlflow:1"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
data: {image: "feda2v-mlflow:1"}
---
apiVersion: example.com/v1
kind: Thing
metadata: {name: t}
spec:
  deep:
    containers:
      - {name: z, image: "feda2v-mlflow:9"}
    initContainers: {image: "feda2v-mlflow:9"}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: things.example.com}
spec:
  containers:
    - {name: y, image: "feda2v-mlflow:9"}
"""
SHA_OLD = "sha256:" + "0123456789abcdef" * 4
SHA_NEW = "sha256:" + "fedcba9876543210" * 4
UNMATCHED = {"d": "feda2v-mlflowx:1", "e": "docker.io/feda2v-mlflow:1",
             "f": "localhost:5000/feda2v-mlflow:1", "g": "feda2v-mlflow:1@sha512:abc",
             "h": "feda2vXmlflow:1", "x": "feda2v-mlflow:1", "y": "feda2v-mlflow:9"}
IMAGE_CASES = {
    "new name and tag": (
        [{"name": "feda2v-mlflow", "newName": "r.example.com/t/feda2v-mlflow",
          "newTag": "3.17.2"}],
        dict.fromkeys("iabcz", "r.example.com/t/feda2v-mlflow:3.17.2")),
    "digest replaces tag and digest": (
        [{"name": "feda2v-mlflow", "digest": SHA_NEW}],
        dict.fromkeys("iabcz", f"feda2v-mlflow@{SHA_NEW}")),
    "tag and digest": (
        [{"name": "feda2v-mlflow", "newTag": "v2", "digest": SHA_NEW}],
        dict.fromkeys("iabcz", f"feda2v-mlflow:v2@{SHA_NEW}")),
    "new name keeps tag and digest": (
        [{"name": "feda2v-mlflow", "newName": "other"}],
        {"i": "other:3.17.2", "a": "other", "b": f"other@{SHA_OLD}", "c": f"other:1@{SHA_OLD}",
         "z": "other:9"}),
    "entries apply in order": (
        [{"name": "feda2v-mlflow", "newName": "a/b"}, {"name": "a/b", "newTag": "3"}],
        dict.fromkeys("iabcz", "a/b:3")),
    "the name is a regex, a registry port is no tag": (
        [{"name": "feda2v.mlflow", "newTag": "7"},
         {"name": "localhost:5000/feda2v-mlflow", "newName": "q"}],
        {**dict.fromkeys("iabcz", "feda2v-mlflow:7"), "h": "feda2vXmlflow:7", "f": "q:1"}),
}


def _image_case(tmp_path: Path, entries: list[dict]) -> Path:
    (tmp_path / "objects.yaml").write_text(IMAGE_CASES_POD)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(
        {"resources": ["objects.yaml"], "images": entries}, sort_keys=False))
    return tmp_path


def _images_by_container(objects: list[dict]) -> dict[str, str]:
    """{container name: image} of every list of containers in the case's objects."""
    found = {}
    for obj in objects:
        for spec in (obj.get("spec", {}), obj.get("spec", {}).get("deep", {})):
            for key in ("initContainers", "containers", "ephemeralContainers"):
                if isinstance(spec.get(key), list):
                    found |= {item["name"]: item["image"] for item in spec[key]}
    return found


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_renderer_sets_images_as_kustomize_does(tmp_path, case):
    entries, changed = IMAGE_CASES[case]
    directory = _image_case(tmp_path, entries)
    objects = render(directory)
    assert _images_by_container(objects) == {**UNMATCHED, **changed}
    thing = find(objects, "Thing", "t")
    assert thing["spec"]["deep"]["initContainers"] == {"image": "feda2v-mlflow:9"}  # no list
    assert find(objects, "ConfigMap", "c")["data"] == {"image": "feda2v-mlflow:1"}
    assert_kubectl_agrees(directory, objects)


def test_renderer_applies_images_after_patches(tmp_path):
    (tmp_path / "pod.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"
        "spec: {containers: [{name: a, image: 'feda2v-mlflow:1'}]}\n")
    (tmp_path / "patch.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"
        "spec: {containers: [{name: a, image: 'feda2v-mlflow:patched'}]}\n")
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [pod.yaml]\npatches: [{path: patch.yaml}]\n"
        "images: [{name: feda2v-mlflow, newName: r/x}]\n")
    [pod] = render(tmp_path)
    assert pod["spec"]["containers"][0]["image"] == "r/x:patched"


@pytest.mark.parametrize("entry", [{"name": "feda2v-mlflow", "tagSuffix": "-x"},
                                   {"newTag": "1"}, {"name": "feda2v-mlflow", "newTag": 3.17}])
def test_renderer_refuses_image_entries_it_does_not_implement(tmp_path, entry):
    _image_case(tmp_path, [entry])
    with pytest.raises(UnsupportedKustomization):
        render(tmp_path)


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_everything_is_labelled_and_namespaced(name):
    for obj in rendered(name):
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "feda2v"
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace"), obj["metadata"]["name"]


def test_the_namespace_enforces_the_restricted_pod_security_standard():
    namespace = find(rendered("base"), "Namespace", "feda2v")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(o["metadata"]["namespace"] == "feda2v"
               for o in rendered("base") if o["kind"] != "Namespace")


# --- Secrets --------------------------------------------------------------------------------


def test_secret_templates_validate_and_hold_only_replace_me_values():
    assert {p.name for p in SECRET_TEMPLATES} == {"secret-s3.example.yaml",
                                                  "secret-postgres.example.yaml",
                                                  "secret-mlflow-auth.example.yaml"}
    for path in SECRET_TEMPLATES:
        [secret] = load_yaml_documents(path)
        kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
        assert secret["kind"] == "Secret" and "data" not in secret
        for key, value in secret["stringData"].items():
            if CREDENTIAL_NAME.search(key):
                assert value == PLACEHOLDER, f"{path.name}: {key}"


def test_secret_templates_are_not_part_of_any_kustomization():
    for name in KUSTOMIZATIONS:
        kust = yaml.safe_load((MANIFESTS / name / "kustomization.yaml").read_text())
        for entry in kust.get("resources", []) + [p["path"] for p in kust.get("patches", [])]:
            assert "secret" not in Path(entry).name.lower(), f"{name} lists {entry}"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_rendered_output_holds_no_secret_values(name):
    objects = rendered(name)
    assert not [o for o in objects if o["kind"] == "Secret"]
    for text in strings(objects):
        assert PLACEHOLDER not in text
        assert not re.search(r"AKIA[0-9A-Z]{16}", text)
        for userinfo in re.findall(r"://([^/@\s]+)@", text):  # user:password@ in URIs
            assert VAR_REF.fullmatch(userinfo.split(":")[-1]), userinfo
    for _, pod in pod_specs(objects):
        for container, _ in containers(pod):
            for env in container.get("env", []):
                if CREDENTIAL_NAME.search(env["name"]):
                    assert "value" not in env, env["name"]
                    assert "secretKeyRef" in env["valueFrom"], env["name"]


def test_every_referenced_secret_key_is_in_a_template():
    templates = {}
    for path in SECRET_TEMPLATES:
        [secret] = load_yaml_documents(path)
        templates[secret["metadata"]["name"]] = set(secret["stringData"])
    refs = set()
    for _, pod in pod_specs(rendered("base") + rendered("overlays/mlflow-auth")):
        for container, _ in containers(pod):
            refs |= {(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
                     for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs
    for secret, key in refs:
        assert key in templates.get(secret, set()), f"{secret}/{key}"
    assert TASK_SECRET_KEYS <= templates["feda2v-s3"]


# --- workloads ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_workloads_are_hardened_and_sized(name):
    workloads = list(pod_specs(rendered(name)))
    if name != "kfp-launcher":
        assert {w["metadata"]["name"] for w, _ in workloads} == {"mlflow", "postgres"}
    for workload, pod in workloads:
        pod_ctx = pod.get("securityContext", {})
        assert pod.get("automountServiceAccountToken") is False
        assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        for container, is_init in containers(pod):
            label = f"{workload['metadata']['name']}/{container['name']}"
            ctx = container.get("securityContext", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"].get(kind, {})), label
            assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, label
            assert ctx.get("runAsUser", pod_ctx.get("runAsUser", 0)) != 0, label
            assert ctx.get("allowPrivilegeEscalation") is False, label
            assert "ALL" in ctx.get("capabilities", {}).get("drop", []), label
            assert ctx.get("readOnlyRootFilesystem") is True, label
            assert "privileged" not in ctx, label
            if not is_init:
                assert "readinessProbe" in container and "livenessProbe" in container, label


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_images_are_pinned_to_a_version(name):
    images = [c["image"] for _, pod in pod_specs(rendered(name)) for c, _ in containers(pod)]
    for image in images:
        assert PINNED_TAG.match(image), image
        assert ":latest" not in image, image
    mlflow_images = {i for i in images if "/mlflow/mlflow:" in i}
    assert len(mlflow_images) <= 1, "the init container must run the server's image"


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_services_select_pods_and_named_ports_exist(name):
    objects = rendered(name)
    for service in (o for o in objects if o["kind"] == "Service"):
        selector = service["spec"]["selector"]
        pods = [pod for w, pod in pod_specs(objects)
                if w["metadata"]["namespace"] == service["metadata"]["namespace"]
                and selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(pods) == 1, f"Service {service['metadata']['name']} selects {len(pods)}"
        port_names = {p.get("name") for c in pods[0]["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            if isinstance(port["targetPort"], str):
                assert port["targetPort"] in port_names
    for workload, _ in pod_specs(objects):
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()


def test_statefulset_service_is_headless_and_named():
    objects = rendered("base")
    statefulset = find(objects, "StatefulSet", "postgres", "feda2v")
    service = find(objects, "Service", statefulset["spec"]["serviceName"], "feda2v")
    assert service["spec"]["clusterIP"] == "None"


def test_env_references_resolve_to_configmaps_and_secret_templates():
    objects = rendered("base")
    configmaps = {o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"}
    for _, pod in pod_specs(objects):
        for container, _ in containers(pod):
            env_names = [e["name"] for e in container.get("env", [])]
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ref["key"] in configmaps[ref["name"]], ref
            for text in strings(container.get("command", []) + container.get("args", [])):
                for var in VAR_REF.findall(text):
                    assert var in env_names, f"$({var}) in {container['name']}'s command"


# --- MLflow ---------------------------------------------------------------------------------


def test_mlflow_serves_artifacts_from_s3_with_a_postgres_backend():
    objects = rendered("base")
    container = mlflow_container(objects)
    command = container["command"]
    assert command[:2] == ["mlflow", "server"]
    assert flag(command, "--host") == "0.0.0.0" and flag(command, "--port") == "5000"
    assert "--serve-artifacts" in command
    assert flag(command, "--artifacts-destination").startswith("s3://")
    backend = flag(command, "--backend-store-uri")
    assert backend.startswith("postgresql")
    assert urlsplit(backend).hostname == find(objects, "Service", "postgres")["metadata"]["name"]
    assert "--default-artifact-root" not in command  # would bypass the proxy
    env = {e["name"]: e for e in container["env"]}
    assert "MLFLOW_S3_ENDPOINT_URL" in env


def test_mlflow_installs_nothing_at_pod_start_its_image_has_the_drivers():
    """No init container, no pip at start: docker/Dockerfile.mlflow bakes exact, binary-only
    drivers into the official image of the same MLflow version the Deployment names."""
    deployment = find(rendered("base"), "Deployment", "mlflow")
    pod = deployment["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert not any("pip" in s for s in strings(pod))
    image = mlflow_container([deployment])["image"]
    name, tag = image.rsplit(":", 1)
    assert name == "feda2v-mlflow"
    dockerfile = (MANIFESTS.parent / "docker" / "Dockerfile.mlflow").read_text()
    assert f"FROM ghcr.io/mlflow/mlflow:v{tag}\n" in dockerfile
    import importlib.metadata

    assert tag == importlib.metadata.version("mlflow")  # the server as new as the clients
    install = dockerfile[dockerfile.index("RUN python -m pip install"):].split("\n\n")[0]
    assert "--only-binary=:all:" in install and "--no-deps" in install
    pins = dict(re.findall(r"([A-Za-z0-9_.\-]+)==([0-9.]+)", install))
    assert {"psycopg2-binary", "boto3", "botocore", "Flask-WTF"} <= set(pins)


def test_the_cluster_server_runs_without_the_genai_job_runner_like_the_tested_one():
    """The rehearsal and the tests run MLflow with its GenAI job runner off (tests/
    mlflowserver.py); the cluster's server is the same, not one with two more processes."""
    env = {e["name"]: e.get("value") for e in mlflow_container(rendered("base"))["env"]}
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    tested = (MANIFESTS.parent / "tests" / "mlflowserver.py").read_text()
    assert 'env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"' in tested


def test_the_auth_overlay_adds_basic_auth_to_the_same_server():
    base = mlflow_container(rendered("base"))
    objects = rendered("overlays/mlflow-auth")
    auth = mlflow_container(objects)
    assert auth["command"] == base["command"] + ["--app-name", "basic-auth"]
    env = {e["name"]: e for e in auth["env"]}
    assert {e["name"] for e in base["env"]} < set(env)  # the base's env is kept
    config = env["MLFLOW_AUTH_CONFIG_PATH"]["value"]
    mount = next(m for m in auth["volumeMounts"] if config.startswith(m["mountPath"] + "/"))
    pod = find(objects, "Deployment", "mlflow")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "feda2v-mlflow-auth"
    assert [i["path"] for i in volume["secret"]["items"]] == [config.rsplit("/", 1)[1]]
    [template] = load_yaml_documents(MANIFESTS / "overlays" / "mlflow-auth" /
                                     "secret-mlflow-auth.example.yaml")
    ini = template["stringData"]["basic_auth.ini"]
    assert "authenticate_request_basic_auth" in ini and "postgres:5432" in ini
    assert "admin_password" not in ini  # from the Secret's env key, never in a file


def test_only_labelled_namespaces_reach_mlflow():
    objects = rendered("base")
    policy = find(objects, "NetworkPolicy", "mlflow", "feda2v")
    pods = find(objects, "Deployment", "mlflow")["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pods.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 5000, "protocol": "TCP"}]
    sources = rule["from"]
    assert {"namespaceSelector": {"matchLabels": {"feda2v.io/mlflow-client": "true"}}} in sources
    assert {"podSelector": {}} in sources  # the feda2v namespace itself
    readme = (MANIFESTS / "README.md").read_text()
    assert "feda2v.io/mlflow-client=true" in readme  # the install step that labels the profile


def test_mlflow_probes_hit_health_on_its_port():
    container = mlflow_container(rendered("base"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 5000}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/health" and ports.get(get["port"], get["port"]) == 5000


@pytest.mark.parametrize("name", ["base", "overlays/local-seaweedfs"])
def test_tracking_uri_reaches_the_mlflow_service_and_passes_its_host_check(name):
    objects = rendered(name)
    uri = urlsplit(find(objects, "ConfigMap", "feda2v-config", "feda2v")["data"]
                   ["MLFLOW_TRACKING_URI"])
    service_name, namespace = uri.hostname.split(".")[:2]
    service = find(objects, "Service", service_name, namespace)
    assert uri.port in [p["port"] for p in service["spec"]["ports"]]
    # MLflow >= 3.5 answers 403 to Host headers not in --allowed-hosts (fnmatch when "*")
    allowed = flag(mlflow_container(objects)["command"], "--allowed-hosts").split(",")
    for host in (uri.netloc, "localhost:5000"):
        assert any(fnmatch.fnmatch(host, a) if "*" in a else host == a for a in allowed), host


def test_mlflow_bucket_matches_the_pipeline_root_bucket():
    objects = rendered("overlays/local-seaweedfs")
    bucket = find(objects, "ConfigMap", "feda2v-config", "feda2v")["data"]["S3_BUCKET"]
    assert flag(mlflow_container(objects)["command"], "--artifacts-destination") == \
        "s3://$(S3_BUCKET)/mlflow"
    root = find(objects, "ConfigMap", "kfp-launcher")["data"]["defaultPipelineRoot"]
    assert urlsplit(root).netloc == bucket


# --- PostgreSQL -----------------------------------------------------------------------------


def test_postgres_runs_as_the_images_user_with_a_persistent_volume():
    statefulset = find(rendered("base"), "StatefulSet", "postgres", "feda2v")
    pod = statefulset["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 999
    assert pod["securityContext"]["fsGroup"] == 999
    [container] = pod["containers"]
    assert container["image"].split("/")[-1].startswith("postgres:")
    readiness = " ".join(container["readinessProbe"]["exec"]["command"])
    assert "pg_isready" in readiness
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    data_mount = next(m["mountPath"] for m in container["volumeMounts"]
                      if m["name"] == claim["metadata"]["name"])
    pgdata = next(e["value"] for e in container["env"] if e["name"] == "PGDATA")
    assert pgdata.startswith(data_mount + "/")  # a subdirectory: lost+found at the root
    writable = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/var/run/postgresql", "/tmp"} <= writable  # read-only root filesystem


# --- ConfigMaps for the tasks and the KFP launcher ------------------------------------------


@pytest.mark.parametrize("name", ["kfp-launcher", "overlays/local-seaweedfs"])
def test_launcher_config_has_an_s3_root_and_secret_backed_credentials(name):
    objects = rendered(name)
    launcher = find(objects, "ConfigMap", "kfp-launcher")
    namespace = launcher["metadata"]["namespace"]
    assert namespace not in ("feda2v", "default")
    data = launcher["data"]
    assert all(isinstance(v, str) for v in data.values())  # ConfigMap data: strings only
    assert re.fullmatch(r"s3://[a-z0-9.\-]{3,63}/\S+", data["defaultPipelineRoot"])
    providers = yaml.safe_load(data["providers"])
    assert set(providers) == {"s3"}
    default = providers["s3"]["default"]
    assert set(default) <= {"endpoint", "region", "disableSSL", "forcePathStyle", "maxRetries",
                            "credentials"}
    assert default["endpoint"] and "://" not in default["endpoint"]  # host[:port], no scheme
    assert default["region"] and isinstance(default["disableSSL"], bool)
    credentials = default["credentials"]
    assert credentials["fromEnv"] is False
    ref = credentials["secretRef"]
    assert set(ref) == {"secretName", "accessKeyKey", "secretKeyKey"}
    [template] = [load_yaml_documents(p)[0] for p in SECRET_TEMPLATES
                  if load_yaml_documents(p)[0]["metadata"]["name"] == ref["secretName"]]
    assert {ref["accessKeyKey"], ref["secretKeyKey"]} <= set(template["stringData"])
    # the tasks of a run read feda2v-config from the same namespace
    config = find(objects, "ConfigMap", "feda2v-config", namespace)
    assert TASK_CONFIG_KEYS <= set(config["data"])
    endpoint = urlsplit(config["data"]["AWS_ENDPOINT_URL"])
    assert endpoint.scheme == ("http" if default["disableSSL"] else "https")
    assert config["data"]["AWS_DEFAULT_REGION"] == default["region"]


def test_base_config_has_the_task_keys():
    config = find(rendered("base"), "ConfigMap", "feda2v-config", "feda2v")
    assert TASK_CONFIG_KEYS | {"S3_BUCKET"} <= set(config["data"])
    assert urlsplit(config["data"]["AWS_ENDPOINT_URL"]).scheme in ("http", "https")


def test_seaweedfs_overlay_points_everything_at_kfps_seaweedfs():
    objects = rendered("overlays/local-seaweedfs")
    configs = [o for o in objects if o["kind"] == "ConfigMap" and
               o["metadata"]["name"] == "feda2v-config"]
    assert len(configs) == 2  # MLflow's namespace and the profile namespace
    for config in configs:
        assert config["data"]["AWS_ENDPOINT_URL"] == "http://seaweedfs.kubeflow:8333"
    providers = yaml.safe_load(find(objects, "ConfigMap", "kfp-launcher")["data"]["providers"])
    assert providers["s3"]["default"]["endpoint"] == "seaweedfs.kubeflow:8333"
    assert providers["s3"]["default"]["disableSSL"] is True
    policy = find(objects, "NetworkPolicy", "seaweedfs-allow-feda2v", "kubeflow")
    [rule] = policy["spec"]["ingress"]
    assert rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "feda2v"}
    assert [p["port"] for p in rule["ports"]] == [8333]
