"""`feda2v submit`: compiles with the cluster options and hands the package to the real
kfp.Client, which talks over HTTP to a fake KFP v2beta1 API server (tests/kfpapi.py) that
records every request and enforces credentials as a multi-user Kubeflow does."""

import json
import time

import pytest
import yaml
from kfpapi import kfp_api_fixture  # noqa: F401 - the kfp_api fixture

from feda2v.cli import main

IMAGE = "registry.example.com/team/feda2v:9"
TOKEN = "tok-3f1d9a-secret"               # never printed
COOKIE = "authservice_session=c00k1e-secret-77"


def _tasks(spec):
    """(DAG, task name, task, component) for the root DAG and every sub-DAG of a spec."""
    comps = spec["components"]
    for dag, comp in [("root", spec["root"]), *comps.items()]:
        for name, task in comp.get("dag", {}).get("tasks", {}).items():
            yield dag, name, task, comps[task["componentRef"]["name"]]


def _cached(spec) -> dict:
    """{DAG/task: caching enabled} for every container task."""
    return {f"{dag}/{name}": bool(task.get("cachingOptions", {}).get("enableCache"))
            for dag, name, task, comp in _tasks(spec) if "executorLabel" in comp}


def _run_spec(run_body) -> tuple[dict, dict]:
    """(pipeline spec, platform spec) of a run created from a package."""
    spec = run_body["pipeline_spec"]
    return spec["pipeline_spec"], spec.get("platform_spec", {})


def _no_secret(capsys, *secrets):
    captured = capsys.readouterr()
    for secret in secrets:
        assert secret not in captured.out and secret not in captured.err
    return captured


# -- submitting ---------------------------------------------------------------------------------

def test_submit_compiles_with_the_options_and_watches(kfp_api, capsys, monkeypatch):
    kfp_api.token, kfp_api.multi_user = TOKEN, True
    kfp_api.run_script = [
        ("RUNNING", [("class-targets", "RUNNING"), ("run1", "PENDING")]),
        ("RUNNING", [("class-targets", "SUCCEEDED"), ("run1", "RUNNING")]),
        ("SUCCEEDED", [("class-targets", "SUCCEEDED"), ("run1", "SUCCEEDED")]),
    ]
    monkeypatch.setenv("FEDA2V_KFP_TOKEN", TOKEN)
    main(["submit", "--config", "configs/a2v_use_pretrained_generators.json", "--host",
          kfp_api.url, "--experiment", "exp-a", "--run-name", "r1", "--image", IMAGE,
          "--namespace", "team-a", "--watch", "--poll", "0", "--timeout", "60"])
    calls = kfp_api.calls()
    assert calls and all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in calls)
    assert all(r.status == 200 for r in calls), calls
    # the namespace reaches the credentials check, the experiment and so the run
    assert calls[0].path.endswith("/experiments") and calls[0].query["namespace"] == "team-a"
    (exp,) = kfp_api.experiments.values()
    assert exp["display_name"] == "exp-a" and exp["namespace"] == "team-a"
    (run,) = kfp_api.created_runs()
    assert run["experiment_id"] == exp["experiment_id"] and run["display_name"] == "r1"
    assert not run.get("runtime_config", {}).get("parameters")  # arguments={}
    spec, platform = _run_spec(run)
    assert spec["pipelineInfo"]["name"] == "feda2v-run2"
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {
        IMAGE}
    assert platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    cached = _cached(spec)  # as compiled: no run-level override
    assert any(cached.values()) and not all(cached.values())
    (run_id,) = kfp_api.runs
    assert [r.path for r in kfp_api.calls("GET") if "/runs/" in r.path] == [
        f"/apis/v2beta1/runs/{run_id}"] * 3
    out = _no_secret(capsys, TOKEN).out
    assert f"run {run_id}" in out and "finished: SUCCEEDED" in out
    assert "as the bearer token in $FEDA2V_KFP_TOKEN" in out and "namespace team-a" in out
    # each task's state change, once
    assert out.count("class-targets: running") == 1 and out.count("class-targets: succeeded") == 1
    assert out.index("run1: pending") < out.index("run1: running") < out.index("run1: succeeded")
    assert TOKEN not in json.dumps([r.json for r in calls])  # nor in any body


@pytest.mark.parametrize("caching", ["off", "on"])
def test_caching_volumes_and_root_travel_in_the_submitted_spec(kfp_api, capsys, caching):
    main(["submit", "--config", "configs/demo.json", "--host", kfp_api.url, "--no-preflight",
          "--image", IMAGE, "--caching", caching, "--volume", "esc50:/mnt/data",
          "--pipeline-root", "s3://feda2v/kfp-root", "--auth", "none"])
    (run,) = kfp_api.created_runs()
    spec, platform = _run_spec(run)
    cached = _cached(spec)
    assert any(not dag.startswith("root/") for dag in cached)  # sub-DAGs were walked
    assert set(cached.values()) == {caching == "on"}, cached
    assert spec["defaultPipelineRoot"] == "s3://feda2v/kfp-root"
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors and all(e["pvcMount"][0]["mountPath"] == "/mnt/data"
                             for e in executors.values())
    # kfp's run-level override (root DAG only) is not what does it
    assert "caching" not in json.dumps(run.get("runtime_config", {}))
    assert f"caching: {caching}, every task" in capsys.readouterr().out


def test_param_overrides_caching_and_a_versioned_pipeline(kfp_api, capsys):
    args = ["submit", "--config", "configs/demo.json", "--host", kfp_api.url,
            "--no-preflight", "--pipeline-name", "feda2v-demo", "--caching", "off",
            "--param", "global_rounds=7", "--param", "feda2v.generator_type=gan",
            "--register-model", "demo-adapter", "--image", IMAGE]
    main(args)
    main(args + ["--version-name", "mine"])
    uploads = kfp_api.uploads()
    assert [u.path.rsplit("/", 1)[1] for u in uploads] == [
        "upload", "upload_version", "upload_version"]  # created once, then versioned
    assert uploads[0].query["name"] == "feda2v-demo"
    (pipeline_id,) = kfp_api.pipelines
    assert {u.query["pipelineid"] for u in uploads[1:]} == {pipeline_id}
    first, second = (u.query["name"] for u in uploads[1:])
    assert second == "mine"
    assert first.startswith(f"{_feda2v_version()}-") and len(first.split("-")[-1]) == 8
    versions = {v["display_name"]: vid for vid, v in kfp_api.versions.items()
                if v["display_name"] != "feda2v-demo"}
    runs = kfp_api.created_runs()
    assert [r["display_name"] for r in runs] == [f"feda2v-demo {first}", "feda2v-demo mine"]
    for run, name in zip(runs, (first, second)):
        assert run["pipeline_version_reference"] == {"pipeline_id": pipeline_id,
                                                     "pipeline_version_id": versions[name]}
        assert not run.get("pipeline_spec")  # the version's YAML is what runs
        # caching lives in the uploaded YAML, task by task, in every sub-DAG
        spec = kfp_api.version_spec(versions[name])[0]
        cached = _cached(spec)
        assert any(not k.startswith("root/") for k in cached) and not any(cached.values())
        params = spec["root"]["inputDefinitions"]["parameters"]
        assert params["global_rounds"]["defaultValue"] == 7
    assert len(kfp_api.calls("POST", "/experiments")) == 1  # found by name the second time
    assert len({r["experiment_id"] for r in runs}) == 1
    assert "pipeline 'feda2v-demo' version" in capsys.readouterr().out


def test_a_cookie_is_sent_as_the_cookie(kfp_api, capsys, monkeypatch):
    kfp_api.cookie = COOKIE
    monkeypatch.setenv("FEDA2V_KFP_COOKIE", COOKIE)
    main(["submit", "--config", "configs/demo.json", "--host", kfp_api.url, "--no-preflight",
          "--image", IMAGE])  # --auth auto finds the cookie
    calls = kfp_api.calls()
    assert len(kfp_api.created_runs()) == 1
    assert all(r.headers.get("cookie") == COOKIE and "authorization" not in r.headers
               for r in calls)
    out = _no_secret(capsys, COOKIE, COOKIE.split("=", 1)[1]).out
    assert "as the session cookie in $FEDA2V_KFP_COOKIE" in out


def test_a_pods_service_account_token(kfp_api, capsys, monkeypatch, tmp_path):
    token = tmp_path / "token"
    token.write_text("sa-token-abc-secret")
    kfp_api.token = "sa-token-abc-secret"
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    main(["submit", "--config", "configs/demo.json", "--host", kfp_api.url, "--no-preflight",
          "--image", IMAGE])  # --auth auto finds the token file
    assert len(kfp_api.created_runs()) == 1
    assert all(r.headers.get("authorization") == "Bearer sa-token-abc-secret"
               for r in kfp_api.calls())
    assert f"as the service-account token at {token}" in _no_secret(
        capsys, "sa-token-abc-secret").out


# -- refused: named, exit 2, no secret, nothing submitted ---------------------------------------

def _refused(capsys, argv, *secrets) -> str:
    start = time.monotonic()
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    # kfp would retry healthz 5 x 5 s on a refusal and call it unreachable
    assert time.monotonic() - start < 15
    return _no_secret(capsys, *secrets).err


@pytest.mark.parametrize("refuse", ["401", "403"])
@pytest.mark.parametrize("namespace", [[], ["--namespace", "team-a"]], ids=["", "namespace"])
def test_a_refused_token_is_named_without_the_secret(kfp_api, capsys, monkeypatch, refuse,
                                                     namespace):
    kfp_api.token, kfp_api.refuse = "the-right-one", refuse
    monkeypatch.setenv("FEDA2V_KFP_TOKEN", TOKEN)
    err = _refused(capsys, ["submit", "--config", "configs/demo.json", "--host", kfp_api.url,
                            "--no-preflight", "--image", IMAGE, *namespace], TOKEN)
    assert f"Kubeflow Pipelines at {kfp_api.url} refused the bearer token in " \
           f"$FEDA2V_KFP_TOKEN: HTTP {refuse}" in err
    assert ("for namespace 'team-a'" in err) is bool(namespace)
    assert "cannot reach" not in err
    assert not kfp_api.calls("POST") and not kfp_api.runs
    assert len(kfp_api.calls()) == 1  # one try, no retries
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in kfp_api.calls())


@pytest.mark.parametrize("namespace", [[], ["--namespace", "team-a"]], ids=["", "namespace"])
def test_a_session_cookie_sent_to_the_login_page_is_refused(kfp_api, capsys, monkeypatch,
                                                            namespace):
    """Dex / oauth2-proxy answer an unknown session with a redirect to an HTML login page, which
    kfp would read as an empty answer."""
    kfp_api.cookie, kfp_api.refuse = "authservice_session=the-right-one", "redirect"
    monkeypatch.setenv("FEDA2V_KFP_COOKIE", COOKIE)
    err = _refused(capsys, ["submit", "--config", "configs/demo.json", "--host", kfp_api.url,
                            "--no-preflight", "--image", IMAGE, *namespace],
                   COOKIE, COOKIE.split("=", 1)[1])
    assert f"Kubeflow Pipelines at {kfp_api.url} did not accept the session cookie in " \
           "$FEDA2V_KFP_COOKIE" in err and "text/html" in err
    assert not kfp_api.calls("POST") and not kfp_api.runs


def test_no_credentials_for_a_server_that_wants_them(kfp_api, capsys):
    kfp_api.token = TOKEN
    err = _refused(capsys, ["submit", "--config", "configs/demo.json", "--host", kfp_api.url,
                            "--no-preflight", "--image", IMAGE], TOKEN)
    assert f"{kfp_api.url} refused no credentials: HTTP 401" in err
    assert "set $FEDA2V_KFP_TOKEN or $FEDA2V_KFP_COOKIE" in err
    assert not kfp_api.calls("POST")


@pytest.mark.parametrize("auth, env, message", [
    ("token", {}, "$FEDA2V_KFP_TOKEN, which is not set"),
    ("token", {"FEDA2V_KFP_COOKIE": COOKIE}, "$FEDA2V_KFP_TOKEN, which is not set"),
    ("cookie", {}, "$FEDA2V_KFP_COOKIE, which is not set"),
    ("cookie", {"FEDA2V_KFP_COOKIE": "c00k1e-secret-77"}, "not of that form"),
    ("service-account", {"KF_PIPELINES_SA_TOKEN_PATH": "/nonexistent/token"},
     "reads the pod's token at /nonexistent/token"),
])
def test_missing_credentials_are_named_before_any_request(kfp_api, capsys, monkeypatch, auth,
                                                          env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    err = _refused(capsys, ["submit", "--config", "configs/demo.json", "--host", kfp_api.url,
                            "--no-preflight", "--image", IMAGE, "--auth", auth],
                   "c00k1e-secret-77")
    assert f"--auth {auth}" in err and message in err
    assert kfp_api.requests == []


def test_a_multi_user_cluster_needs_the_namespace(kfp_api, capsys):
    kfp_api.multi_user = True
    err = _refused(capsys, ["submit", "--config", "configs/demo.json", "--host", kfp_api.url,
                            "--no-preflight", "--image", IMAGE])
    assert f"{kfp_api.url} answered HTTP 400" in err and "needs --namespace" in err
    assert not kfp_api.calls("POST")


@pytest.mark.parametrize("environ, kind", [
    ({}, "none"),
    ({"FEDA2V_KFP_COOKIE": COOKIE}, "cookie"),
    ({"FEDA2V_KFP_TOKEN": TOKEN, "FEDA2V_KFP_COOKIE": COOKIE}, "token"),
    ({"KF_PIPELINES_SA_TOKEN_PATH": "TOKEN_FILE"}, "service-account"),
    ({"KF_PIPELINES_SA_TOKEN_PATH": "TOKEN_FILE", "FEDA2V_KFP_COOKIE": COOKIE}, "cookie"),
])
def test_auto_takes_the_first_credentials_set(kfp_api, tmp_path, environ, kind):
    from feda2v.orchestration.submit import credentials

    (tmp_path / "t").write_text("x")
    environ = {k: v.replace("TOKEN_FILE", str(tmp_path / "t")) for k, v in environ.items()}
    kwargs, what = credentials("auto", environ)
    assert set(kwargs) == {"none": set(), "cookie": {"cookies"}, "token": {"existing_token"},
                           "service-account": {"credentials"}}[kind]
    assert TOKEN not in what and COOKIE not in what


def test_param_overrides_reach_the_compiled_defaults(tmp_path):
    out = tmp_path / "p.yaml"
    main(["compile", "--config", "configs/demo.json", "--output", str(out), "--no-preflight",
          "--param", "global_rounds=7", "--param", "feda2v.generator_type=gan",
          "--register-model", "demo-adapter"])
    spec = next(yaml.safe_load_all(out.read_text()))
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["global_rounds"]["defaultValue"] == 7
    import json

    compiled = json.loads(params["config_json"]["defaultValue"])
    assert compiled["feda2v"]["generator_type"] == "gan"
    assert compiled["mlflow_register_model"] == "demo-adapter"


@pytest.mark.parametrize("param, message", [
    ("global_rounds", "expected KEY=VALUE"),
    ("feda2v.generator_tipe=gan", "unknown config key 'feda2v.generator_tipe'"),
    ("fedav.generator_type=gan", "unknown config section 'fedav'"),
    ("global_rounds=-1", "bad value for 'global_rounds'"),
])
def test_a_bad_param_is_named(tmp_path, capsys, param, message):
    with pytest.raises(SystemExit) as e:
        main(["compile", "--config", "configs/demo.json", "--output", str(tmp_path / "p.yaml"),
              "--no-preflight", "--param", param])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p.yaml").exists()


def _feda2v_version():
    from importlib.metadata import version

    return version("feda2v")


def test_a_failed_run_exits_non_zero_with_watch(kfp_api):
    kfp_api.run_script = [("RUNNING", [("run1", "RUNNING")]), ("FAILED", [("run1", "FAILED")])]
    with pytest.raises(SystemExit) as e:
        main(["submit", "--config", "configs/a2v_generator_training_mode.json", "--host",
              kfp_api.url, "--watch", "--poll", "0"])
    assert e.value.code == 1
    assert len(kfp_api.created_runs()) == 1


def test_unreachable_endpoint_is_named(capsys):
    with pytest.raises(SystemExit) as e:
        main(["submit", "--config", "configs/a2v_generator_training_mode.json", "--host",
              "http://127.0.0.1:9", "--auth", "none"])
    assert e.value.code == 2
    assert "cannot reach Kubeflow Pipelines at http://127.0.0.1:9" in capsys.readouterr().err
