"""`feda2v submit`: hand a compiled package to a Kubeflow Pipelines endpoint (kfp.Client), as a
one-off run or as a new version of a named pipeline, and optionally follow it task by task."""

from __future__ import annotations

import datetime
import hashlib
import os
import time
from collections.abc import Callable, Mapping

FINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELLED")
TOKEN_ENV = "FEDA2V_KFP_TOKEN"     # a bearer token, e.g. `kubectl create token`'s
COOKIE_ENV = "FEDA2V_KFP_COOKIE"   # NAME=VALUE, e.g. authservice_session=... (Dex, oauth2-proxy)
SA_TOKEN_ENV = "KF_PIPELINES_SA_TOKEN_PATH"  # kfp's own setting for a pod's projected token
SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
REQUEST_TIMEOUT = (10, 60)  # connect, read: seconds for the checks connect() makes


def credentials(auth: str, environ: Mapping[str, str] = os.environ) -> tuple[dict, str]:
    """kfp.Client's keyword arguments for `auth` (auto, token, cookie, service-account, none),
    taken from the environment only, and words for them that hold no secret."""
    sa_path = environ.get(SA_TOKEN_ENV) or SA_TOKEN_PATH
    if auth == "auto":
        auth = ("token" if environ.get(TOKEN_ENV) else "cookie" if environ.get(COOKIE_ENV)
                else "service-account" if os.path.isfile(sa_path) else "none")
    if auth == "token":
        if not environ.get(TOKEN_ENV):
            raise ValueError(f"--auth token reads the token from ${TOKEN_ENV}, which is not set "
                             f"(e.g. export {TOKEN_ENV}=$(kubectl -n NAMESPACE create token "
                             "default-editor))")
        return {"existing_token": environ[TOKEN_ENV]}, f"the bearer token in ${TOKEN_ENV}"
    if auth == "cookie":
        cookie = environ.get(COOKIE_ENV, "")
        if "=" not in cookie:
            raise ValueError(f"--auth cookie reads NAME=VALUE from ${COOKIE_ENV}, which is "
                             + ("not set" if not cookie else "not of that form")
                             + " (e.g. authservice_session=... from the browser's session)")
        return {"cookies": cookie}, f"the session cookie in ${COOKIE_ENV}"
    if auth == "service-account":
        if not os.path.isfile(sa_path):
            raise ValueError(f"--auth service-account reads the pod's token at {sa_path} "
                             f"(${SA_TOKEN_ENV}), which does not exist")
        from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

        return ({"credentials": ServiceAccountTokenVolumeCredentials(sa_path)},
                f"the service-account token at {sa_path}")
    if auth == "none":
        return {}, "no credentials"
    raise ValueError(f"unknown --auth {auth!r}")


def _client_class():
    """kfp.Client, but with one healthz try: kfp's constructor asks healthz (when no namespace is
    set) five times, 5 s apart, on any HTTP error, so refused credentials would read as an
    unreachable host after 25 s."""
    import kfp

    class Client(kfp.Client):
        def get_kfp_healthz(self, sleep_duration: int = 5):
            return self._healthz_api.healthz_service_get_healthz(_request_timeout=REQUEST_TIMEOUT)

    return Client


def connect(host: str, namespace: str | None, auth: str = "auto",
            environ: Mapping[str, str] = os.environ):
    """A kfp.Client whose credentials the server accepted (one cheap authenticated call), or a
    ValueError naming the host and where the credentials came from, never the secret."""
    import json
    import warnings

    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    kwargs, what = credentials(auth, environ)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # kfp's "only works with 2.0.0-b2"
            client = _client_class()(host=host, namespace=namespace or "kubeflow", **kwargs)
        # Listing experiments needs the credentials (healthz may not) and, on a multi-user
        # cluster, the namespace. Read raw: a gateway (Dex, oauth2-proxy) answers an unknown
        # session with a redirect to its HTML login page, which kfp would take for an empty list.
        response = client.experiments.experiment_service_list_experiments(
            page_size=1, namespace=namespace or client.get_user_namespace() or None,
            _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        body = response.data
    except ApiException as e:
        if e.status in (401, 403):
            hint = ("" if kwargs else f"; set ${TOKEN_ENV} or ${COOKIE_ENV} (see --auth)")
            raise ValueError(f"Kubeflow Pipelines at {host} refused {what}: HTTP {e.status} "
                             f"{e.reason}" + (f" for namespace {namespace!r}" if namespace
                                               else "") + hint) from None
        hint = ("; a multi-user Kubeflow needs --namespace (the profile's namespace)"
                if e.status == 400 and not namespace else "")
        raise ValueError(f"Kubeflow Pipelines at {host} answered HTTP {e.status} {e.reason}"
                         + hint) from None
    except (HTTPError, OSError) as e:
        raise ValueError(f"cannot reach Kubeflow Pipelines at {host}: "
                         f"{getattr(e, 'reason', None) or e}") from None
    try:
        json.loads(body)
    except ValueError:
        kind = (response.headers.get("Content-Type") or "no content type").split(";")[0]
        raise ValueError(f"Kubeflow Pipelines at {host} did not accept {what}: it answered "
                         f"with {kind} (a login page?) instead of the API"
                         + ("" if kwargs else f"; set ${TOKEN_ENV} or ${COOKIE_ENV} (see --auth)")
                         + "; or --host is not the KFP API endpoint") from None
    return client, what


def version_name(package: str, feda2v_version: str) -> str:
    """Sortable and traceable: the package version, the UTC time, the YAML's digest."""
    with open(package, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:8]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{feda2v_version}-{stamp}-{digest}"


def _experiment_id(client, name: str, namespace: str | None) -> str:
    try:
        return client.get_experiment(experiment_name=name, namespace=namespace).experiment_id
    except ValueError:  # kfp: "No experiment is found with name ..."
        return client.create_experiment(name, namespace=namespace).experiment_id


def submit(client, package: str, *, experiment: str, run_name: str | None,
           namespace: str | None, caching: bool | None, pipeline_name: str | None,
           version: str | None) -> tuple[str, str]:
    """Start a run; returns (run id, what was run). With `pipeline_name`, the package is
    uploaded first as version `version` of that pipeline (the pipeline is created on first
    use), so the UI lists every version and its runs."""
    if not pipeline_name:
        run = client.create_run_from_pipeline_package(
            package, arguments={}, experiment_name=experiment, run_name=run_name,
            namespace=namespace, enable_caching=caching)
        return run.run_id, "a one-off package"
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(package, pipeline_name=pipeline_name,
                                             namespace=namespace).pipeline_id
    ver = client.upload_pipeline_version(package, version, pipeline_id=pipeline_id)
    run = client.run_pipeline(_experiment_id(client, experiment, namespace),
                              run_name or f"{pipeline_name} {version}", pipeline_id=pipeline_id,
                              version_id=ver.pipeline_version_id, enable_caching=caching)
    return run.run_id, f"pipeline {pipeline_name!r} version {version!r}"


def watch(client, run_id: str, timeout: float, poll: float = 10.0,
          say: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep) -> str:
    """Poll the run until it ends, saying each task's state changes; returns the run's state."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while True:
        run = client.get_run(run_id)
        details = getattr(run, "run_details", None)
        for task in (getattr(details, "task_details", None) or []):
            name, state = task.display_name, str(task.state)
            if name and seen.get(name) != state:
                seen[name] = state
                say(f"  {name}: {state.lower()}")
        state = str(run.state).upper()
        if state in FINAL_STATES:
            return state
        if time.monotonic() >= deadline:
            raise TimeoutError(f"run {run_id} still {state.lower()} after {timeout:.0f} s")
        sleep(poll)
