"""A fake Kubeflow Pipelines API server for tests: a stdlib HTTP server on 127.0.0.1 that answers
the KFP v2beta1 REST endpoints the real `kfp.Client` calls (healthz, experiments, runs,
pipelines, pipeline uploads), records every request, and refuses requests without the expected
credentials as a multi-user Kubeflow gateway does (401 or 403, or a redirect to a login page).

Use from a test module with `from kfpapi import kfp_api_fixture  # noqa: F401`:

- `kfp_api` (function): a fresh `KfpApi` on a free port, with kfp's client context file moved
  to the test's temporary folder and the credential variables cleared; stopped afterwards.
  Set `kfp_api.token` / `kfp_api.cookie` to require credentials.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

PREFIX = "/apis/v2beta1"
LOGIN_PATH = "/dex/auth"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]      # lower-case names
    body: bytes
    json: object = None          # the body, parsed, when it is JSON
    files: dict[str, bytes] = field(default_factory=dict)  # multipart uploads by field name
    status: int = 0              # what the server answered

    def __repr__(self) -> str:  # short, for assertion messages
        return f"<{self.method} {self.path} {self.status}>"


@dataclass
class KfpApi:
    """What the server holds and saw. `token` / `cookie` (NAME=VALUE): the credentials it
    accepts (None: no authentication); `refuse`: "401", "403" or "redirect" (to an HTML login
    page, as Dex / oauth2-proxy do for an unknown session); `multi_user`: healthz says so, and
    experiments need a namespace."""

    url: str = ""
    token: str | None = None
    cookie: str | None = None
    refuse: str = "401"
    multi_user: bool = False
    requests: list[Request] = field(default_factory=list)
    experiments: dict[str, dict] = field(default_factory=dict)
    pipelines: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    # What successive GETs of a run answer: [(run state, [(task name, task state)])]; the last
    # entry repeats. Empty: the run stays PENDING.
    run_script: list = field(default_factory=list)
    polls: dict[str, int] = field(default_factory=dict)

    # -- what tests ask ------------------------------------------------------------------------
    def calls(self, method: str | None = None, path: str | None = None) -> list[Request]:
        """The API requests (not the login page), optionally of one method and path."""
        return [r for r in self.requests if r.path.startswith(PREFIX)
                and (method is None or r.method == method)
                and (path is None or r.path == PREFIX + path)]

    def created_runs(self) -> list[dict]:
        return [r.json for r in self.calls("POST", "/runs") if r.status == 200]

    def uploads(self) -> list[Request]:
        return [r for r in self.calls("POST") if r.path.startswith(PREFIX + "/pipelines/upload")
                and r.status == 200]

    # -- the server's side ---------------------------------------------------------------------
    def _authorised(self, headers: dict[str, str]) -> bool:
        if self.token is None and self.cookie is None:
            return True
        if self.token is not None and headers.get("authorization") == f"Bearer {self.token}":
            return True
        cookies = [c.strip() for c in headers.get("cookie", "").split(";")]
        return self.cookie is not None and self.cookie in cookies

    def _new_id(self) -> str:
        return str(uuid.uuid4())

    def handle(self, req: Request) -> tuple[int, dict, object]:
        """(status, extra headers, JSON body or str) for one request."""
        if req.path == LOGIN_PATH:
            return 200, {"Content-Type": "text/html"}, "<html><body>Log in</body></html>"
        if not req.path.startswith(PREFIX):
            return 404, {}, {"error": "Not Found", "code": 5}
        if not self._authorised(req.headers):
            if self.refuse == "redirect":
                return 302, {"Location": f"{self.url}{LOGIN_PATH}?state=x"}, ""
            if self.refuse == "403":  # e.g. a valid user without access to the namespace
                return 403, {}, {"error": "PermissionDenied: access to the namespace denied",
                                 "code": 7, "message": "PermissionDenied"}
            return 401, {}, {"error": "Unauthenticated: request is missing valid credentials",
                             "code": 16, "message": "Unauthenticated"}
        path = req.path[len(PREFIX):]
        route = (req.method, path)
        if route == ("GET", "/healthz"):
            return 200, {}, {"multi_user": self.multi_user, "pipeline_store": "database"}
        if route == ("GET", "/experiments"):
            namespace = req.query.get("namespace")
            if self.multi_user and not namespace:
                return 400, {}, {"error": "Invalid input error: In multi-user mode, "
                                          "ListExperiment requires filtering by namespace",
                                 "code": 3}
            found = [e for e in self.experiments.values()
                     if (not namespace or e.get("namespace") == namespace)
                     and _matches(e, req.query.get("filter"))]
            page = found[:int(req.query.get("page_size") or 0) or None]
            return 200, {}, ({"experiments": page, "total_size": len(found)} if found else {})
        if route == ("POST", "/experiments"):
            body = req.json or {}
            if self.multi_user and not body.get("namespace"):
                return 400, {}, {"error": "Invalid input error: namespace is required", "code": 3}
            exp = {"experiment_id": self._new_id(), "display_name": body.get("display_name"),
                   "namespace": body.get("namespace"), "storage_state": "AVAILABLE"}
            self.experiments[exp["experiment_id"]] = exp
            return 200, {}, exp
        if req.method == "GET" and path.startswith("/experiments/"):
            exp = self.experiments.get(path.rsplit("/", 1)[1])
            return (200, {}, exp) if exp else (404, {}, {"error": "experiment not found"})
        if route == ("POST", "/runs"):
            body = req.json or {}
            if body.get("experiment_id") not in self.experiments:
                return 404, {}, {"error": f"experiment {body.get('experiment_id')} not found"}
            ref = body.get("pipeline_version_reference") or {}
            if ref and ref.get("pipeline_version_id") not in self.versions:
                return 404, {}, {"error": "pipeline version not found"}
            if not ref and not body.get("pipeline_spec"):
                return 400, {}, {"error": "a run needs a pipeline spec or a version reference"}
            run = {"run_id": self._new_id(), "experiment_id": body["experiment_id"],
                   "display_name": body.get("display_name"), "state": "PENDING",
                   "storage_state": "AVAILABLE"}
            self.runs[run["run_id"]] = run
            return 200, {}, run
        if req.method == "GET" and path.startswith("/runs/"):
            run_id = path.rsplit("/", 1)[1]
            if run_id not in self.runs:
                return 404, {}, {"error": f"run {run_id} not found"}
            run = dict(self.runs[run_id])
            if self.run_script:
                n = self.polls[run_id] = self.polls.get(run_id, 0) + 1
                state, tasks = self.run_script[min(n, len(self.run_script)) - 1]
                run["state"] = state
                run["run_details"] = {"task_details": [
                    {"run_id": run_id, "task_id": name, "display_name": name, "state": s}
                    for name, s in tasks]}
            return 200, {}, run
        if route == ("GET", "/pipelines"):
            found = [p for p in self.pipelines.values() if _matches(p, req.query.get("filter"))]
            return 200, {}, ({"pipelines": found, "total_size": len(found)} if found else {})
        if route == ("POST", "/pipelines/upload"):
            name = req.query.get("name") or req.query.get("display_name")
            if "uploadfile" not in req.files:
                return 400, {}, {"error": "no uploadfile in the request"}
            if any(p["display_name"] == name for p in self.pipelines.values()):
                return 409, {}, {"error": f"a pipeline named {name} already exists"}
            pipeline = {"pipeline_id": self._new_id(), "display_name": name,
                        "namespace": req.query.get("namespace")}
            self.pipelines[pipeline["pipeline_id"]] = pipeline
            self._version(pipeline["pipeline_id"], name, req.files["uploadfile"])  # as KFP does
            return 200, {}, pipeline
        if route == ("POST", "/pipelines/upload_version"):
            pipeline_id = req.query.get("pipelineid")
            if pipeline_id not in self.pipelines:
                return 404, {}, {"error": f"pipeline {pipeline_id} not found"}
            if "uploadfile" not in req.files:
                return 400, {}, {"error": "no uploadfile in the request"}
            return 200, {}, self._version(pipeline_id, req.query.get("name"),
                                          req.files["uploadfile"])
        return 404, {}, {"error": f"no route {req.method} {req.path}", "code": 5}

    def _version(self, pipeline_id: str, name: str | None, package: bytes) -> dict:
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": self._new_id(),
                   "display_name": name, "package": package}
        self.versions[version["pipeline_version_id"]] = version
        return {k: v for k, v in version.items() if k != "package"}

    def version_spec(self, version_id: str) -> list[dict]:
        """The YAML documents of an uploaded version (pipeline spec, platform spec)."""
        return list(yaml.safe_load_all(self.versions[version_id]["package"]))


def _matches(item: dict, filter_json: str | None) -> bool:
    """KFP's JSON filter, the EQUALS predicates kfp.Client sends."""
    if not filter_json:
        return True
    for p in json.loads(filter_json).get("predicates", []):
        if p.get("operation") not in ("EQUALS", 1) or item.get(p["key"]) != p.get("stringValue"):
            return False
    return True


def _parse(method: str, target: str, headers, body: bytes) -> Request:
    parts = urlsplit(target)
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    lower = {k.lower(): v for k, v in headers.items()}
    req = Request(method, parts.path, query, lower, body)
    ctype = lower.get("content-type", "")
    if "json" in ctype and body:
        req.json = json.loads(body)
    elif ctype.startswith("multipart/form-data"):
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            req.files[name] = part.get_payload(decode=True)
    return req


def _handler(api: KfpApi):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self):
            length = int(self.headers.get("Content-Length") or 0)
            req = _parse(self.command, self.path, self.headers, self.rfile.read(length))
            try:
                status, extra, payload = api.handle(req)
            except Exception as e:  # noqa: BLE001 - a bug here must fail the test, not hang it
                status, extra, payload = 500, {}, {"error": f"fake server: {e!r}"}
            req.status = status
            api.requests.append(req)
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", extra.pop("Content-Type", "application/json"))
            for key, value in extra.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PATCH = _serve

        def log_message(self, *args):  # quiet
            pass

    return Handler


@pytest.fixture(name="kfp_api")
def kfp_api_fixture(tmp_path, monkeypatch) -> Iterator[KfpApi]:
    import kfp

    # kfp.Client reads (and in multi-user mode writes) ~/.config/kfp/context.json.
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for name in ("FEDA2V_KFP_TOKEN", "FEDA2V_KFP_COOKIE", "KF_PIPELINES_SA_TOKEN_PATH",
                 "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT",
                 "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME", "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    # No pod token on this machine: --auth auto must not pick one up.
    monkeypatch.setattr("feda2v.orchestration.submit.SA_TOKEN_PATH",
                        str(tmp_path / "no-sa-token"))
    api = KfpApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    server.daemon_threads = True
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
