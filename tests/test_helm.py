"""The Helm chart and the image, checked the way a reviewer would.

Renders helm/csm-serve with the pinned helm binary that scripts/install_tools.sh builds
(in $CSM_TOOLS_DIR, default ~/.cache/csm-serve/tools). Without it the tests skip on a
developer machine and fail under CI=true.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "csm-serve"
PRODUCTION = CHART / "examples" / "values-production.yaml"
ALL_ENABLED = CHART / "ci" / "all-enabled-values.yaml"
CPU_DEMO = CHART / "examples" / "values-cpu-demo.yaml"
PINS = dict(
    line.split("=", 1)
    for line in (REPO / "scripts" / "k8s-tools.env").read_text().splitlines()
    if line and not line.startswith("#")
)
TOOLS = Path(os.environ.get("CSM_TOOLS_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "csm-serve" / "tools")
HELM = TOOLS / "bin" / "helm"
OPTIONAL_KINDS = {"HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor",
                  "Ingress", "GRPCRoute", "HTTPRoute", "NetworkPolicy", "PersistentVolumeClaim"}


@pytest.fixture(scope="module")
def helm() -> Path:
    if not os.access(HELM, os.X_OK):
        message = f"{HELM} not found: run scripts/install_tools.sh (or set CSM_TOOLS_DIR)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return HELM


def run_template(helm: Path, tmp_path: Path, *files: Path, **values) -> subprocess.CompletedProcess:
    args = [str(helm), "template", "csm", str(CHART), "--namespace", "csm",
            "--kube-version", PINS["KUBE_VERSION"]]
    for f in files:
        args += ["--values", str(f)]
    if values:
        extra = tmp_path / "extra-values.yaml"
        extra.write_text(yaml.safe_dump(values))
        args += ["--values", str(extra)]
    env = {**os.environ, "HELM_CACHE_HOME": str(tmp_path / "hc"),
           "HELM_CONFIG_HOME": str(tmp_path / "hcfg"), "HELM_DATA_HOME": str(tmp_path / "hd")}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)


def render(helm: Path, tmp_path: Path, *files: Path, **values) -> list[dict]:
    done = run_template(helm, tmp_path, *files, **values)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def one(docs: list[dict], kind: str, name: str = "csm-csm-serve") -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, got {len(found)}"
    return found[0]


def server_container(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def flag(container: dict, name: str) -> str:
    values = [a.split("=", 1)[1] for a in container["args"] if a.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} given {len(values)} times in {container['args']}"
    return values[0]


@pytest.mark.parametrize("files", [(), (PRODUCTION,)], ids=["default", "production"])
def test_gpu_limit_is_set(helm, tmp_path, files):
    limits = server_container(render(helm, tmp_path, *files))["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1


def test_cpu_demo_needs_no_gpu(helm, tmp_path):
    done = run_template(helm, tmp_path, CPU_DEMO)
    assert done.returncode == 0, done.stderr
    assert "nvidia.com/gpu" not in done.stdout and "runtimeClassName" not in done.stdout
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    container = server_container(docs)
    assert (flag(container, "model"), flag(container, "device")) == ("bench", "cpu")
    assert not any("gpu" in k for k in container["resources"].get("limits", {}))


def _show_readme(helm, tmp_path) -> str:
    env = {**os.environ, "HELM_CACHE_HOME": str(tmp_path / "hc"),
           "HELM_CONFIG_HOME": str(tmp_path / "hcfg"), "HELM_DATA_HOME": str(tmp_path / "hd")}
    done = subprocess.run([str(helm), "show", "readme", str(CHART)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_helm_show_readme_lists_what_production_needs(helm, tmp_path):
    """Every cluster object the production values name is in the chart's README."""
    readme = _show_readme(helm, tmp_path)
    prod = yaml.safe_load(PRODUCTION.read_text())
    needed = [prod["modelCache"]["pvc"]["storageClass"], "ReadWriteMany", prod["runtimeClassName"],
              "RuntimeClass", *prod["serviceMonitor"]["labels"].values(), "prometheus-adapter",
              prod["autoscaling"]["requestsWaiting"]["metricName"], "Gateway API", "NetworkPolicy",
              prod["huggingface"]["tokenSecret"]["name"], prod["auth"]["existingSecret"],
              "docker build", "docker push", "values-cpu-demo.yaml"]
    for route in ("grpcRoute", "httpRoute"):
        for ref in prod[route]["parentRefs"]:
            needed += [ref["name"], ref["namespace"], ref["sectionName"]]
    missing = [n for n in needed if f"{n}" not in readme]
    assert not missing, f"helm show readme does not mention {missing}"


@pytest.mark.parametrize("files", [(), (PRODUCTION,)], ids=["default", "production"])
def test_probes_are_grpc_health_checks_on_the_grpc_port(helm, tmp_path, files):
    docs = render(helm, tmp_path, *files)
    container = server_container(docs)
    grpc_port = {p["name"]: p["containerPort"] for p in container["ports"]}["grpc"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == grpc_port, probe
    startup = container["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 600, "too impatient for a download"
    service_port = {p["name"]: p for p in one(docs, "Service")["spec"]["ports"]}["grpc"]
    assert service_port["appProtocol"] == "grpc" and service_port["targetPort"] == "grpc"


@pytest.mark.parametrize("files", [(), (PRODUCTION,)], ids=["default", "production"])
def test_grace_period_outlasts_prestop_and_drain(helm, tmp_path, files):
    docs = render(helm, tmp_path, *files)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    drain = int(flag(container, "drain-grace-s"))
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop > 0
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain
    live = container["livenessProbe"]
    assert live["failureThreshold"] * live["periodSeconds"] > drain


def test_default_render_has_no_optional_objects(helm, tmp_path):
    kinds = {d["kind"] for d in render(helm, tmp_path)}
    assert kinds == {"Deployment", "Service", "ServiceAccount", "Pod"}


@pytest.mark.parametrize("values, kind", [
    ({"autoscaling": {"enabled": True}}, "HorizontalPodAutoscaler"),
    ({"podDisruptionBudget": {"enabled": True}}, "PodDisruptionBudget"),
    ({"serviceMonitor": {"enabled": True}}, "ServiceMonitor"),
    ({"ingress": {"enabled": True, "hosts": ["tts.example.com"]}}, "Ingress"),
    ({"grpcRoute": {"enabled": True, "parentRefs": [{"name": "gw"}]}}, "GRPCRoute"),
    ({"httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}]}}, "HTTPRoute"),
    ({"httpIngress": {"enabled": True, "hosts": ["tts.example.com"]}}, "Ingress"),
    ({"networkPolicy": {"enabled": True}}, "NetworkPolicy"),
    ({"modelCache": {"type": "pvc"}}, "PersistentVolumeClaim"),
    ({"voices": {"storage": "pvc"}}, "PersistentVolumeClaim"),
])
def test_optional_object_renders_only_when_enabled(helm, tmp_path, values, kind):
    kinds = {d["kind"] for d in render(helm, tmp_path, **values)}
    assert kinds & OPTIONAL_KINDS == {kind}


@pytest.mark.parametrize("files", [(), (PRODUCTION,)], ids=["default", "production"])
def test_http_api_has_a_container_and_service_port_while_probes_stay_grpc(helm, tmp_path, files):
    docs = render(helm, tmp_path, *files)
    container = server_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert int(flag(container, "http-port")) == ports["http"] == 8000
    service = {p["name"]: p for p in one(docs, "Service")["spec"]["ports"]}["http"]
    assert service["targetPort"] == "http" and service["appProtocol"] == "http"
    off = server_container(render(helm, tmp_path, *files, service={"httpPort": 0}, httpRoute={"enabled": False}))
    assert flag(off, "http-port") == "0" and "http" not in {p["name"] for p in off["ports"]}


def test_routes_send_v1_to_the_http_port(helm, tmp_path):
    docs = render(helm, tmp_path, ALL_ENABLED)
    route = one(docs, "HTTPRoute")["spec"]["rules"][0]
    assert route["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"}}]
    assert route["backendRefs"] == [{"name": "csm-csm-serve", "port": 8000}]
    path = one(docs, "Ingress", "csm-csm-serve-http")["spec"]["rules"][0]["http"]["paths"][0]
    assert path["path"] == "/v1" and path["backend"]["service"]["port"] == {"name": "http"}
    done = run_template(helm, tmp_path, httpRoute={"enabled": True, "parentRefs": [{"name": "gw"}]},
                        service={"httpPort": 0})
    assert done.returncode != 0 and "service.httpPort" in done.stderr


def test_helm_test_pod_passes_the_production_network_policy(helm, tmp_path):
    docs = render(helm, tmp_path, PRODUCTION)
    test_pod = one(docs, "Pod", "csm-csm-serve-test-health")
    labels = test_pod["metadata"]["labels"]
    # Not one of the server's pods (Service, PDB and NetworkPolicy select those) ...
    selector = one(docs, "Service")["spec"]["selector"]
    assert not selector.items() <= labels.items()
    # ... but admitted on every port it calls.
    policy = one(docs, "NetworkPolicy")["spec"]
    for rule in policy["ingress"]:
        port = rule["ports"][0]["port"]
        if port in ("grpc", "http"):
            assert any(peer.get("podSelector", {}).get("matchLabels", {}).items() <= labels.items()
                       and "namespaceSelector" not in peer for peer in rule["from"]), port
    command = test_pod["spec"]["containers"][0]["command"]
    assert command[-2] == "csm-csm-serve:50051" and command[-1] == "http://csm-csm-serve:8000/ready"


def test_headless_service_only_when_enabled(helm, tmp_path):
    assert [d for d in render(helm, tmp_path) if d["kind"] == "Service"][0]["spec"].get("clusterIP") != "None"
    docs = render(helm, tmp_path, service={"headless": {"enabled": True}})
    assert one(docs, "Service", "csm-csm-serve-headless")["spec"]["clusterIP"] == "None"


def test_autoscaling_drops_fixed_replicas_and_scales_on_queue_depth(helm, tmp_path):
    docs = render(helm, tmp_path, PRODUCTION)
    assert "replicas" not in one(docs, "Deployment")["spec"]
    metric = one(docs, "HorizontalPodAutoscaler")["spec"]["metrics"][0]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "csm_num_requests_waiting"


def test_production_flags_and_secrets(helm, tmp_path):
    container = server_container(render(helm, tmp_path, PRODUCTION))
    assert flag(container, "model") == "sesame/csm-1b"
    assert flag(container, "dtype") == "bfloat16"
    assert flag(container, "auth-tokens-file") == "/etc/csm-serve/auth/tokens"
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "HF_TOKEN"}
    assert "value" not in env["HF_TOKEN"]


def test_pod_is_locked_down_with_writable_cache_and_tmp(helm, tmp_path):
    docs = render(helm, tmp_path)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    hf_home = {e["name"]: e.get("value") for e in container["env"]}["HF_HOME"]
    assert hf_home.startswith(next(p for p, n in mounts.items() if n == "model-cache"))


def test_voices_live_on_the_model_cache_by_default(helm, tmp_path):
    docs = render(helm, tmp_path, voices={"maxVoices": 50, "maxBytes": 1048576})
    container = server_container(docs)
    cache = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "model-cache")
    assert flag(container, "voices-dir") == f"{cache}/voices"
    assert (flag(container, "max-voices"), flag(container, "max-voice-bytes")) == ("50", "1048576")


def test_voices_on_a_claim_of_their_own(helm, tmp_path):
    docs = render(helm, tmp_path, voices={"storage": "pvc", "mountPath": "/data/voices"})
    claim = one(docs, "PersistentVolumeClaim", "csm-csm-serve-voices")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert flag(container, "voices-dir") == "/data/voices"
    assert {"name": "voices", "mountPath": "/data/voices"} in container["volumeMounts"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["voices"]["persistentVolumeClaim"]["claimName"] == "csm-csm-serve-voices"
    docs = render(helm, tmp_path, voices={"storage": "pvc", "pvc": {"existingClaim": "shared-voices"}})
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    volumes = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["voices"]["persistentVolumeClaim"]["claimName"] == "shared-voices"


def test_voices_on_a_read_only_cache_are_refused(helm, tmp_path):
    done = run_template(helm, tmp_path, modelCache={"type": "pvc", "pvc": {"accessModes": ["ReadOnlyMany"]}})
    assert done.returncode != 0 and "voices.storage=pvc" in done.stderr, done.stderr
    render(helm, tmp_path, modelCache={"type": "pvc", "pvc": {"accessModes": ["ReadOnlyMany"]}},
           voices={"storage": "pvc"})


@pytest.mark.parametrize("values, needle", [
    ({"server": {"maxSlots": "eight"}}, "maxSlots"),
    ({"voices": {"storage": "emptyDir"}}, "storage"),
    ({"voices": {"pvc": {"accessModes": ["ReadOnlyMany"]}}}, "accessModes"),
    ({"server": {"maxSlot": 8}}, "maxSlot"),
    ({"gpu": {"count": -1}}, "count"),
    ({"autoscaling": {"metric": "gpu"}}, "metric"),
    ({"server": {"quantize": "int4"}}, "quantize"),
    ({"server": {"conversations": {"idleSeconds": 0}}}, "idleSeconds"),
    ({"server": {"metricsAuth": "basic"}}, "metricsAuth"),
    ({"server": {"http": {"maxConnections": 0}}}, "maxConnections"),
])
def test_schema_rejects_bad_values(helm, tmp_path, values, needle):
    done = run_template(helm, tmp_path, **values)
    assert done.returncode != 0
    assert "schema" in done.stderr and needle in done.stderr, done.stderr


def test_liveness_shorter_than_drain_is_refused(helm, tmp_path):
    done = run_template(helm, tmp_path, server={"drainGraceSeconds": 120})
    assert done.returncode != 0 and "drainGraceSeconds" in done.stderr, done.stderr


def test_check_helm_script_passes(helm):
    done = subprocess.run(["bash", str(REPO / "scripts" / "check_helm.sh")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("files", [(), (PRODUCTION,), (CPU_DEMO,)], ids=["default", "production", "cpu-demo"])
def test_rendered_flags_parse_with_the_server_cli(helm, tmp_path, files):
    from server.cli import build_parser

    container = server_container(render(helm, tmp_path, *files))
    args = build_parser().parse_args(container["args"])
    assert args.port == container["ports"][0]["containerPort"]
    assert args.watermark is True


LIMITS = ("quantize", "prefix_cache_mb", "stream_buffer_s", "reader_stall_s", "max_concurrent_rpcs",
          "max_conversations", "conversation_idle_s", "conversation_max_lifetime_s", "metrics_auth",
          "http_header_timeout_s", "http_keep_alive_s", "http_max_connections")


def test_chart_defaults_are_the_servers_and_each_value_reaches_its_flag(helm, tmp_path):
    from server.cli import build_parser

    parser = build_parser()
    defaults = parser.parse_args([])
    rendered = parser.parse_args(server_container(render(helm, tmp_path))["args"])
    assert {k: getattr(rendered, k) for k in LIMITS} == {k: getattr(defaults, k) for k in LIMITS}
    changed = parser.parse_args(server_container(render(helm, tmp_path, server={
        "quantize": "int8-weight", "prefixCacheMb": 0, "streamBufferSeconds": 2.5, "readerStallSeconds": 0,
        "maxConcurrentRpcs": 64, "conversations": {"max": 4, "idleSeconds": 5, "maxLifetimeSeconds": 600},
        "metricsAuth": "none",
        "http": {"headerTimeoutSeconds": 2.5, "keepAliveSeconds": 30, "maxConnections": 50}}))["args"])
    assert {k: getattr(changed, k) for k in LIMITS} == {
        "quantize": "int8-weight", "prefix_cache_mb": 0, "stream_buffer_s": 2.5, "reader_stall_s": 0.0,
        "max_concurrent_rpcs": 64, "max_conversations": 4, "conversation_idle_s": 5.0,
        "conversation_max_lifetime_s": 600.0, "metrics_auth": "none", "http_header_timeout_s": 2.5,
        "http_keep_alive_s": 30.0, "http_max_connections": 50}


def scrape_endpoint(docs: list[dict]) -> dict:
    return one(docs, "ServiceMonitor")["spec"]["endpoints"][0]


def test_service_monitor_sends_a_token_when_metrics_need_one(helm, tmp_path):
    docs = render(helm, tmp_path, PRODUCTION)
    assert flag(server_container(docs), "metrics-auth") == "token"
    assert scrape_endpoint(docs)["authorization"] == {
        "type": "Bearer", "credentials": {"name": "csm-auth-tokens", "key": "metrics-token"}}
    own = render(helm, tmp_path, PRODUCTION, serviceMonitor={"tokenSecret": {"name": "prometheus-csm", "key": "t"}})
    assert scrape_endpoint(own)["authorization"]["credentials"] == {"name": "prometheus-csm", "key": "t"}
    open_metrics = render(helm, tmp_path, PRODUCTION, server={"metricsAuth": "none"})
    assert flag(server_container(open_metrics), "metrics-auth") == "none"
    assert "authorization" not in scrape_endpoint(open_metrics)
    no_auth = render(helm, tmp_path, serviceMonitor={"enabled": True})
    assert "authorization" not in scrape_endpoint(no_auth)


def render_notes(helm: Path, tmp_path: Path, *files: Path, **values) -> str:
    # helm template skips NOTES.txt: render its text through a copy of the chart.
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart, dirs_exist_ok=True)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "notes.yaml").write_text(
        '{{- define "notes" }}' + notes + '{{- end }}\nnotes: |\n{{ include "notes" . | indent 2 }}\n')
    args = [str(helm), "template", "csm", str(chart), "--show-only", "templates/notes.yaml",
            "--kube-version", PINS["KUBE_VERSION"], *[a for f in files for a in ("--values", str(f))]]
    if values:
        extra = tmp_path / "notes-values.yaml"
        extra.write_text(yaml.safe_dump(values))
        args += ["--values", str(extra)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)["notes"]


@pytest.mark.parametrize("files", [(), (PRODUCTION,)], ids=["default", "production"])
def test_notes_tell_how_to_call_the_service(helm, tmp_path, files):
    text = render_notes(helm, tmp_path, *files)
    assert "grpcurl -plaintext" in text and "csm.v1.Speech/SynthesizeUnary" in text
    assert "csm-say " in text and "port-forward svc/csm-csm-serve 50051:50051" in text
    assert "curl -sS http://localhost:8000/v1/audio/speech" in text and "port-forward svc/csm-csm-serve 8000:8000" in text
    assert ("$CSM_TOKEN" in text) == bool(files)


def test_notes_warn_when_replicas_do_not_share_voices(helm, tmp_path):
    assert "unknown to the others" in render_notes(helm, tmp_path, replicaCount=2)
    assert "voices live and die with each pod" not in render_notes(helm, tmp_path, PRODUCTION)


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def docker_ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics: the last pattern matching the path or a parent decides."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        if any(fnmatch(c, glob) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerfile_copies_existing_files_not_dockerignored():
    patterns = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    copies = [shlex.split(arg) for op, arg in dockerfile_instructions() if op == "COPY"]
    assert copies, "the Dockerfile copies nothing"
    for args in copies:
        if any(a.startswith("--from") for a in args):
            continue
        for source in [a for a in args[:-1] if not a.startswith("--")]:
            assert (REPO / source).exists(), f"Dockerfile copies {source}, which is not in the repo"
            assert not docker_ignored(source, patterns), f".dockerignore excludes {source}"


def test_dockerfile_runs_the_installed_command_as_non_root():
    instructions = dockerfile_instructions()
    entrypoints = [arg for op, arg in instructions if op == "ENTRYPOINT"]
    assert entrypoints and yaml.safe_load(entrypoints[-1]) == ["csm-serve"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("scripts", {})
    assert "csm-serve" in scripts, "pyproject.toml [project.scripts] must install csm-serve"
    user = [arg for op, arg in instructions if op == "USER"][-1]
    assert re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", user), "USER must be a numeric non-root id"
    assert any(op == "VOLUME" and "/cache" in arg for op, arg in instructions)
