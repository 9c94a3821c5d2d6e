"""Deployment files: compose (schema + merged view), Kubernetes manifests, Dockerfile."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from fastapi import FastAPI

from ai_service import cli
from ai_service.api.app import create_app
from ai_service.config import ENV_NAMES, Settings, load_settings, parse_duration
from ai_service.store import Store
from ai_service.worker.runner import Runner
from ai_service.worker.status import create_status_app

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
AI_SERVER = DEPLOY / "ai-server"
K8S = DEPLOY / "k8s"
BASE = AI_SERVER / "docker-compose.yml"
AUDIO = AI_SERVER / "docker-compose.audio.yml"

SEED_COMMANDS = (
    "docker compose -f docker-compose.yml -f docker-compose.audio.yml "
    "--profile qwen-audio up -d qwen-audio",
    "docker compose -f docker-compose.yml -f docker-compose.audio.yml "
    "--profile voxtral-small up -d voxtral-small",
)
GPU_SERVICES = ("vllm", "whisperx-1", "whisperx-2", "sidecar", "qwen-audio", "voxtral-small")
VLLM_SERVICES = ("vllm", "qwen-audio", "voxtral-small")
MODEL_SERVICES = ("vllm", "whisperx-1", "whisperx-2", "qwen-audio", "voxtral-small")
# Secrets a pod must not start without: the database, and the API's admin token
# (an absent token would turn auth off).
REQUIRED_SECRETS = {"DATABASE_URL", "AI_SERVICE_TOKEN"}
SECRET_VARIABLES = (
    "DATABASE_URL",
    "AI_SERVICE_TOKEN",
    "AI_SERVICE_TOKENS",
    "LLM_API_KEY",
    "QWEN_AUDIO_API_KEY",
    "VOXTRAL_API_KEY",
    "AUDIO_LLM_API_KEY",
    "INFRA_STATUS_TOKEN",
    "WEBHOOK_SECRET",
)


# -- compose --------------------------------------------------------------------


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def merged() -> dict[str, Any]:
    """`docker compose -f docker-compose.yml -f docker-compose.audio.yml` as compose merges it."""
    base, audio = load(BASE), load(AUDIO)
    result: dict[str, Any] = {k: v for k, v in base.items()}
    services = dict(base["services"])
    for name, service in audio["services"].items():
        services[name] = {**services.get(name, {}), **service}
    result["services"] = services
    result["volumes"] = {**base.get("volumes", {}), **audio.get("volumes", {})}
    return result


def interpolate_defaults(value: str) -> str:
    """Replace `${VAR:-default}` with its default (what compose uses without a .env)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def published(service: dict[str, Any]) -> dict[int, int]:
    """host port -> container port."""
    ports: dict[int, int] = {}
    for entry in service.get("ports", []):
        host, _, container = interpolate_defaults(str(entry)).rpartition(":")
        ports[int(host)] = int(container)
    return ports


def depends_on(service: dict[str, Any]) -> set[str]:
    deps = service.get("depends_on") or []
    return set(deps if isinstance(deps, list) else dict(deps))


def test_compose_files_and_the_merged_view_validate_against_the_compose_spec(
    tmp_path: Path,
) -> None:
    merged_file = tmp_path / "merged.yml"
    merged_file.write_text(yaml.safe_dump(merged()))
    cli_path = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [
            str(cli_path),
            "--builtin-schema",
            "vendor.compose-spec",
            str(BASE),
            str(AUDIO),
            str(merged_file),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


def test_only_the_audio_services_are_profile_gated() -> None:
    services = merged()["services"]
    assert services["qwen-audio"]["profiles"] == ["qwen-audio"]
    assert services["voxtral-small"]["profiles"] == ["voxtral-small"]
    for name in ("vllm", "whisperx-1", "whisperx-2", "sidecar"):
        assert "profiles" not in services[name], name


def test_no_always_on_service_depends_on_a_profiled_one() -> None:
    services = merged()["services"]
    profiled = {name for name, s in services.items() if s.get("profiles")}
    for name, service in services.items():
        if not service.get("profiles"):
            assert not depends_on(service) & profiled, name


def test_the_seed_commands_start_the_named_service_under_its_profile() -> None:
    services = merged()["services"]
    for command in SEED_COMMANDS:
        words = shlex.split(command)
        files = [words[i + 1] for i, w in enumerate(words) if w == "-f"]
        assert files == ["docker-compose.yml", "docker-compose.audio.yml"]
        assert all((AI_SERVER / f).is_file() for f in files)
        profile = words[words.index("--profile") + 1]
        service = words[-1]
        assert words[-3:-1] == ["up", "-d"]
        assert profile in services[service]["profiles"]


def test_the_seed_commands_appear_verbatim_in_the_docs() -> None:
    readme = (DEPLOY.parent / "README.md").read_text()
    audio_text = AUDIO.read_text()
    for command in SEED_COMMANDS:
        assert command in readme
        assert command in audio_text


def test_published_ports() -> None:
    services = merged()["services"]
    assert published(services["vllm"]) == {8000: 8000}
    assert published(services["whisperx-1"]) == {9000: 9000}
    assert published(services["whisperx-2"]) == {9001: 9000}
    assert published(services["qwen-audio"]) == {8003: 8000}
    assert published(services["voxtral-small"]) == {8004: 8000}
    assert published(services["sidecar"]) == {9100: 9100}


def test_gpu_services_reserve_a_gpu_with_capabilities() -> None:
    services = merged()["services"]
    for name in GPU_SERVICES:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any(
            d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices
        ), name


def test_vllm_services_share_host_ipc() -> None:
    services = merged()["services"]
    for name in VLLM_SERVICES:
        assert services[name]["ipc"] == "host", name


def test_model_servers_have_health_checks_with_a_long_start_period() -> None:
    services = merged()["services"]
    for name in MODEL_SERVICES:
        check = services[name]["healthcheck"]
        assert check["test"][0] == "CMD"
        assert parse_duration(check["start_period"]) >= 600, name
    assert "/health" in " ".join(services["vllm"]["healthcheck"]["test"])
    # WhisperX has no health endpoint: its docs page is the probe.
    assert "/docs" in " ".join(services["whisperx-1"]["healthcheck"]["test"])


def test_model_servers_share_one_cache_volume_declared_in_both_files() -> None:
    assert "model-cache" in load(BASE)["volumes"]
    assert "model-cache" in load(AUDIO)["volumes"]
    assert load(BASE)["volumes"]["model-cache"] == load(AUDIO)["volumes"]["model-cache"]
    services = merged()["services"]
    for name in MODEL_SERVICES:
        sources = {str(v).split(":")[0] for v in services[name]["volumes"]}
        assert "model-cache" in sources, name


def test_production_text_vllm_serves_qwen_on_8000() -> None:
    vllm = merged()["services"]["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    command = [str(c) for c in vllm["command"]]
    assert command[command.index("--served-model-name") + 1] == "qwen2.5-14b"
    assert command[command.index("--port") + 1] == "8000"


def test_two_whisperx_instances_run_the_whisperx_engine() -> None:
    services = merged()["services"]
    for name in ("whisperx-1", "whisperx-2"):
        service = services[name]
        assert service["image"] == "onerahmet/openai-whisper-asr-webservice:latest-gpu"
        assert service["environment"]["ASR_ENGINE"] == "whisperx"


def test_sidecar_runs_our_image_with_the_docker_socket_read_only() -> None:
    sidecar = merged()["services"]["sidecar"]
    assert sidecar["command"] == ["sidecar"]
    assert sidecar["command"][0] in cli.COMMANDS
    assert sidecar["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (AI_SERVER / sidecar["build"]["context"] / "deploy" / "Dockerfile").is_file()
    assert "/var/run/docker.sock:/var/run/docker.sock:ro" in sidecar["volumes"]
    env = sidecar["environment"]
    assert env["DOCKER_SOCKET"] == "/var/run/docker.sock"
    settings = load_settings({k: interpolate_defaults(str(v)) for k, v in env.items()})
    assert settings.vllm_metrics_urls == ("http://vllm:8000/metrics",)
    assert settings.whisperx_url == ("http://whisperx-1:9000", "http://whisperx-2:9000")
    assert settings.sidecar_http_port == 9100


def test_audio_models_have_their_required_flags() -> None:
    services = merged()["services"]
    voxtral = [str(c) for c in services["voxtral-small"]["command"]]
    for flag in ("--tokenizer_mode", "--config_format", "--load_format"):
        assert voxtral[voxtral.index(flag) + 1] == "mistral"
    assert voxtral[voxtral.index("--model") + 1] == "mistralai/Voxtral-Small-24B-2507"
    qwen = [str(c) for c in services["qwen-audio"]["command"]]
    assert qwen[qwen.index("--model") + 1] == "Qwen/Qwen2-Audio-7B-Instruct"
    assert qwen[qwen.index("--max-model-len") + 1] == "4096"
    assert json.loads(qwen[qwen.index("--limit-mm-per-prompt") + 1]) == {"audio": 1}


def test_audio_image_installs_the_audio_extra_of_the_same_vllm_version() -> None:
    services = merged()["services"]
    dockerfile = (AI_SERVER / "vllm-audio.Dockerfile").read_text()
    default = re.search(r"^ARG VLLM_VERSION=(\S+)$", dockerfile, re.M)
    assert default is not None
    assert re.search(r"^FROM vllm/vllm-openai:v\$\{VLLM_VERSION\}$", dockerfile, re.M)
    assert '"vllm[audio]==${VLLM_VERSION}"' in dockerfile
    text_tag = interpolate_defaults(services["vllm"]["image"]).split(":v")[1]
    for name in ("qwen-audio", "voxtral-small"):
        build = services[name]["build"]
        assert build["dockerfile"] == "vllm-audio.Dockerfile"
        assert (AI_SERVER / build["context"] / build["dockerfile"]).is_file()
        # One version everywhere: the text vLLM, the audio image and its extra.
        assert interpolate_defaults(build["args"]["VLLM_VERSION"]) == default.group(1)
        assert text_tag == default.group(1)


# -- Kubernetes -------------------------------------------------------------------


def k8s_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def deployment(component: str) -> dict[str, Any]:
    [found] = [
        d
        for d in k8s_documents()
        if d["kind"] == "Deployment"
        and d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return found


def container(component: str) -> dict[str, Any]:
    [only] = deployment(component)["spec"]["template"]["spec"]["containers"]
    return cast(dict[str, Any], only)


def route_paths(app: FastAPI) -> set[str]:
    # Included routers are resolved lazily by recent FastAPI versions; the
    # OpenAPI document lists every route they hold.
    paths = {str(getattr(route, "path", "")) for route in app.routes}
    return (paths | set(app.openapi()["paths"])) - {""}


def api_routes() -> set[str]:
    return route_paths(create_app(Settings(database_url="postgresql://unused/db")))


def worker_routes() -> set[str]:
    # The routes exist whatever the runner and store are; nothing is called.
    return route_paths(create_status_app(cast(Runner, None), cast(Store, None)))


@pytest.mark.parametrize(
    ("component", "routes", "default_port"),
    [
        ("api", api_routes, Settings().http_port),
        ("worker", worker_routes, Settings().worker_http_port),
    ],
)
def test_probes_hit_real_routes_on_the_container_port(
    component: str, routes: Any, default_port: int
) -> None:
    spec = container(component)
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert list(ports.values()) == [default_port]
    known = routes()
    paths = {}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = spec[kind]["httpGet"]
        port = ports.get(probe["port"], probe["port"])
        assert port == default_port, kind
        assert probe["path"] in known, (kind, probe["path"])
        paths[kind] = probe["path"]
    assert paths["readinessProbe"] == "/readyz"
    assert paths["livenessProbe"] == "/healthz"


def test_deployments_run_the_cli_commands_with_resources_and_as_non_root() -> None:
    for component in ("api", "worker"):
        spec = container(component)
        assert spec["args"] == [component]
        assert component in cli.COMMANDS
        resources = spec["resources"]
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[part]), (component, part)
        pod = deployment(component)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["allowPrivilegeEscalation"] is False


def test_secrets_come_from_secret_key_refs() -> None:
    wanted = {
        "api": set(SECRET_VARIABLES),
        "worker": {
            "DATABASE_URL",
            "LLM_API_KEY",
            "QWEN_AUDIO_API_KEY",
            "VOXTRAL_API_KEY",
            "AUDIO_LLM_API_KEY",
        },
    }
    [secret] = [d for d in k8s_documents() if d["kind"] == "Secret"]
    for component, names in wanted.items():
        env = {e["name"]: e for e in container(component)["env"]}
        assert names <= set(env), component
        for name in names:
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"]
            # DATABASE_URL and AI_SERVICE_TOKEN are required; every other secret may be absent.
            assert ref.get("optional", False) is (name not in REQUIRED_SECRETS), name
        assert all("value" not in e for e in env.values()), component


def test_config_map_holds_only_known_non_secret_variables_that_load() -> None:
    [config_map] = [d for d in k8s_documents() if d["kind"] == "ConfigMap"]
    data = config_map["data"]
    assert set(data) <= set(ENV_NAMES.values())
    assert not set(data) & set(SECRET_VARIABLES)
    settings = load_settings({**data, "DATABASE_URL": "postgresql://db/ai"})
    assert settings.http_port == 8080
    assert settings.worker_http_port == 8081
    assert settings.qwen_audio_base_url is None  # set only once exposed
    for component in ("api", "worker"):
        [source] = container(component)["envFrom"]
        assert source["configMapRef"]["name"] == config_map["metadata"]["name"]


def test_services_select_their_deployments_and_target_named_ports() -> None:
    services = [d for d in k8s_documents() if d["kind"] == "Service"]
    assert {s["spec"]["selector"]["app.kubernetes.io/component"] for s in services} == {
        "api",
        "worker",
    }
    for service in services:
        component = service["spec"]["selector"]["app.kubernetes.io/component"]
        labels = deployment(component)["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        port_names = {p["name"] for p in container(component)["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    kustomization = load(K8S / "kustomization.yaml")
    resources = set(kustomization["resources"])
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert resources == manifests - {"secret.example.yaml"}


# -- Dockerfile -------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    return instructions[last_from:]


def test_dockerfile_is_multi_stage_on_python_slim_with_uv() -> None:
    instructions = dockerfile_instructions()
    args = dict(rest.partition("=")[::2] for k, rest in instructions if k == "ARG" and "=" in rest)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    froms = [rest for k, rest in instructions if k == "FROM"]
    assert len(froms) >= 3
    assert froms[-1].startswith("${PYTHON_IMAGE}")
    runs = " ".join(rest for k, rest in instructions if k == "RUN")
    assert "uv sync --locked --no-dev" in runs


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [rest for k, rest in final_stage() if k == "USER"]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert int(user) > 0  # numeric, so that runAsNonRoot can verify it
    runs = " ".join(rest for k, rest in final_stage() if k == "RUN")
    assert f"--uid {user}" in runs
    pod_user = deployment("api")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert pod_user == int(user)


def test_dockerfile_entrypoint_is_the_cli_with_api_by_default() -> None:
    stage = dict(final_stage())
    assert json.loads(stage["ENTRYPOINT"]) == ["ai-service"]
    assert json.loads(stage["CMD"]) == ["api"]


def test_dockerignore_keeps_the_build_inputs_and_drops_local_state() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".data", "tests"} <= patterns
    for needed in ("src", "pyproject.toml", "uv.lock", "README.md"):
        assert needed not in patterns


def test_a_rollout_lets_the_longest_attempt_finish() -> None:
    """WORKER_SHUTDOWN_TIMEOUT covers the longest provider attempt, and Kubernetes
    waits longer than that before it kills the worker."""
    [config_map] = [d for d in k8s_documents() if d["kind"] == "ConfigMap"]
    settings = load_settings(config_map["data"])
    longest = max(settings.llm_timeout, settings.transcription_timeout)
    assert settings.worker_shutdown_timeout >= longest
    grace = deployment("worker")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= settings.worker_shutdown_timeout + 30
