"""The production stack's definition: docker-compose.yaml, Dockerfile, .dockerignore, .env.example.

No Docker engine runs here, so these tests check what can be checked without one:
- compose itself validates the file (Debian's `docker-compose` v1, `config`), with every profile,
  and refuses to render without the required secrets;
- every service's command / entrypoint / health check exists in the image it runs (a script of
  this repository that the image contains and that is executable, or a program installed in the
  Dockerfile stage the service builds);
- every `${VAR}` the file uses has a default or a value in .env.example, and .env.example
  documents it; no credential is written in the file;
- the Dockerfile: one multi-stage file, one venv per target from its own lock (requirements/), CPU
  torch from the official CPU index in the airflow image only, no CUDA wheels, a non-root user in
  every runtime target.
"""
from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERIGNORE = REPO / ".dockerignore"

VAR_RE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
LOCKS = REPO / "requirements"


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def compose_text() -> str:
    """docker-compose.yaml without its comment lines (which mention ${VAR} as prose)."""
    return "\n".join(line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#"))


def compose_model() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def docker_compose_bin() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose (Debian package `docker-compose`) is not installed: "
                    "`make system-deps` installs it")
    return exe


def run_compose(*args: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess:
    # only PATH/HOME from the caller: a stray variable in the test environment must not hide a gap
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run([docker_compose_bin(), "--project-directory", str(REPO), "-f", str(COMPOSE),
                           "--env-file", str(env_file), *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=REPO)


# ----------------------------------------------------------------------------- compose validates
@pytest.mark.parametrize("profiles", [(), ("celery",), ("celery", "gpu")], ids=["default", "celery", "gpu"])
def test_compose_config_validates(profiles):
    args = [a for p in profiles for a in ("--profile", p)]
    proc = run_compose(*args, "config")
    assert proc.returncode == 0, proc.stderr
    assert isinstance(yaml.safe_load(proc.stdout)["services"], dict)  # parses as a compose file
    assert "WARNING" not in proc.stderr, proc.stderr
    # every value of .env.example reached the rendered file: nothing was left blank
    assert "${" not in proc.stdout.replace("$${", ""), "a variable was not interpolated"


def test_compose_refuses_to_start_without_secrets(tmp_path):
    env = env_example()
    for required in ("POSTGRES_PASSWORD", "AIRFLOW_FERNET_KEY", "DJANGO_SECRET_KEY", "REDIS_PASSWORD",
                     "MLFLOW_ADMIN_PASSWORD", "MLFLOW_READER_PASSWORD"):
        partial = tmp_path / f"without-{required}.env"
        partial.write_text("".join(f"{k}={v}\n" for k, v in env.items() if k != required))
        proc = run_compose("config", "--quiet", env_file=partial)
        assert proc.returncode != 0, f"compose rendered without {required}"
        assert required in proc.stderr, proc.stderr


def test_expected_services_and_profiles():
    services = compose_model()["services"]
    expected = {"postgres", "minio", "createbuckets", "mlflow", "airflow-init", "airflow-apiserver",
                "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "web-init", "web",
                "redis", "airflow-worker", "airflow-worker-gpu", "proxy"}
    assert expected <= set(services)
    assert services["postgres"]["image"] == "${POSTGRES_IMAGE:-postgres:15-bookworm}"
    # Celery scale-out is the default stack; S3 (MinIO) is optional
    for name in ("redis", "airflow-worker"):
        assert "profiles" not in services[name]
    for name in ("minio", "createbuckets"):
        assert services[name]["profiles"] == ["minio"]
    assert services["airflow-worker-gpu"]["profiles"] == ["gpu"]
    # the GPU worker takes only the training queue and reserves a GPU
    gpu = services["airflow-worker-gpu"]
    assert "${XRAY_TRAINING_QUEUE:-training}" in gpu["command"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert services["airflow-worker"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "${AIRFLOW_EXECUTOR:-CeleryExecutor}"


ONE_SHOTS = {"createbuckets", "airflow-init", "web-init"}


def test_health_checks_and_dependencies():
    services = compose_model()["services"]
    for name, svc in services.items():
        if name in ONE_SHOTS:
            assert svc.get("restart") == "no", f"{name} is a one-shot"
            continue
        assert "healthcheck" in svc and svc["healthcheck"].get("test"), f"{name} has no health check"
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on must use conditions"
        for dep, cond in deps.items():
            want = "service_completed_successfully" if dep in ONE_SHOTS else "service_healthy"
            assert cond == {"condition": want}, f"{name} -> {dep}: {cond}"
    # the chain that matters: data stores before servers, migrations before their users
    assert "airflow-init" in services["airflow-scheduler"]["depends_on"]
    assert "redis" in services["airflow-scheduler"]["depends_on"]
    assert "web" in services["proxy"]["depends_on"]
    assert "web-init" in services["web"]["depends_on"]
    assert "mlflow" in services["web"]["depends_on"]


def test_named_volumes_for_all_state():
    model = compose_model()
    declared = set(model["volumes"])
    used = set()
    for name, svc in model["services"].items():
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if source.startswith((".", "/")):
                # bind mounts are read-only configuration files of this repository, never state
                assert vol.endswith(":ro"), f"{name}: bind mount {vol} must be read-only"
                assert (REPO / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert declared == used, f"declared but unused volumes: {declared - used}"
    mounts = {v.split(":")[1] for s in model["services"].values() for v in s.get("volumes", [])}
    for state in ("/var/lib/postgresql/data", "/data", "/opt/airflow/logs", "/opt/xray/media", "/opt/xray-repo",
                  "/opt/xray/.mlflow", "/opt/dvc-remote"):
        assert state in mounts, f"no named volume for {state}"


# ----------------------------------------------------------------------------- variables
def test_every_variable_has_a_value_and_is_documented():
    text = compose_text()
    example = env_example()
    example_text = ENV_EXAMPLE.read_text()
    seen = {}
    for match in VAR_RE.finditer(text):
        name, op, default = match.groups()
        seen.setdefault(name, set()).add(op or "")
    assert seen, "no ${VAR} found: the regex is broken"
    for name, ops in sorted(seen.items()):
        has_default = any(op in (":-", "-") for op in ops)
        assert has_default or example.get(name), f"${{{name}}} has neither a default nor a value in .env.example"
        assert name in example, f"${{{name}}} is not documented in .env.example"
        # documented = the line is preceded by a comment somewhere in its section
        assert re.search(rf"^#.*$\n(?:^.*$\n)*?^{name}=", example_text, re.M), f"{name}: no comment above it"
    # .env.example has no stale variable (COMPOSE_* are compose's own settings)
    stale = {k for k in example if k not in seen and not k.startswith("COMPOSE_")}
    assert not stale, f".env.example documents variables nobody reads: {sorted(stale)}"


def test_required_secrets_have_no_default():
    """A secret must come from .env: `${VAR:?message}` or no default at all, never `${VAR:-value}`."""
    secretish = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|ACCESS_KEY")
    for match in VAR_RE.finditer(compose_text()):
        name, op, default = match.groups()
        if secretish.search(name) and op in (":-", "-"):
            assert default == "", f"${{{name}}} has a built-in default: credentials belong in .env"


def test_no_credentials_in_the_file():
    secretish = re.compile(r"(PASSWORD|SECRET|FERNET|TOKEN|ACCESS_KEY)", re.I)

    def walk(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, (str, int)) and secretish.search(str(key)):
                    value = str(value)
                    assert value == "" or "${" in value or value.startswith("/"), \
                        f"{where}.{key} holds a literal credential"
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{where}[{i}]")
    walk(compose_model(), "compose")
    # URLs with user:password@ must take the password from a variable
    urls = re.findall(r"\w+://[^\s\"']+@", compose_text())
    assert urls, "no URL with credentials found: the regex is broken"
    for url in urls:
        userinfo = url.split("://", 1)[1].rsplit("@", 1)[0]
        assert VAR_RE.sub("", userinfo) in ("", ":"), f"literal user or password in {url}"


def test_env_is_ignored_by_git_and_docker():
    proc = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO)
    assert proc.returncode == 0, ".env must be git-ignored"
    proc = subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=REPO)
    assert proc.returncode == 1, ".env.example must be committed"
    assert dockerignored(".env") and not dockerignored(".env.example")


# ----------------------------------------------------------------------------- the image
def dockerfile_stages() -> dict[str, list[str]]:
    """stage name -> its instructions (continuation lines joined, comments dropped)."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.strip().startswith("#"):
            continue
        current += raw.rstrip("\\").rstrip() + " " if raw.rstrip().endswith("\\") else raw
        if not raw.rstrip().endswith("\\"):
            if current.strip():
                lines.append(current.strip())
            current = ""
    stages, name = {}, None
    for line in lines:
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            name = m.group(2) or m.group(1)
            stages[name] = [line]
        elif name:
            stages[name].append(line)
    return stages


def stage_chain(stage: str) -> list[str]:
    """stage and every stage it derives from (FROM <stage>)."""
    stages, chain = dockerfile_stages(), []
    while stage in stages:
        chain.append(stage)
        stage = re.match(r"FROM\s+(\S+)", stages[stage][0], re.I).group(1)
    return chain


def dockerignored(path: str) -> bool:
    """Docker's .dockerignore semantics, close enough for this file: last matching rule wins."""
    ignored = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule[1:] if negate else rule
        pattern = pattern.strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hit = any(fnmatch.fnmatchcase(p, pattern) or
                  (pattern.startswith("**/") and fnmatch.fnmatchcase(p.split("/")[-1], pattern[3:]))
                  for p in prefixes)
        if hit:
            ignored = not negate
    return ignored


# program -> the locked package that installs it in the target's venv (base image: python)
PROGRAMS = {"airflow": "apache-airflow", "celery": "celery", "gunicorn": "gunicorn", "mlflow": "mlflow",
            "dvc": "dvc", "python": None, "python3": None}


# stages built from Debian packages alone (no Python venv): the local PACS, Orthanc
DEBIAN_STAGES = {"orthanc"}
DEBIAN_PROGRAMS = {"Orthanc": "orthanc", "curl": "curl"}


def lock_names(path: Path) -> set[str]:
    return {re.split(r"[=<>\[; ]", line)[0].lower() for line in path.read_text().splitlines()
            if line and line[0].isalnum()}


def venv_stage(target: str) -> str:
    """The stage whose /opt/venv the target copies (COPY --from=venv-... /opt/venv /opt/venv)."""
    copies = [re.match(r"COPY --from=(\S+) /opt/venv /opt/venv$", line)
              for s in stage_chain(target) for line in dockerfile_stages()[s]]
    found = [m.group(1) for m in copies if m]
    assert len(found) == 1, f"{target}: expected one venv copied in, found {found}"
    return found[0]


def installed_packages(target: str) -> set[str]:
    """Packages in the target's venv: the lock its venv stage builds from (docker/build_venv.sh LOCK),
    plus torch and torchvision where it passes --torch."""
    run = next(line for line in dockerfile_stages()[venv_stage(target)] if "build_venv.sh" in line)
    lock = re.search(r"/tmp/requirements/(\S+\.txt)", run).group(1)
    names = lock_names(LOCKS / lock)
    return names | {"torch", "torchvision"} if "--torch" in run.split() else names


def image_services():
    for name, svc in compose_model()["services"].items():
        if "build" in svc:
            yield name, svc


def check_program(argv: list[str], target: str, where: str) -> None:
    prog = argv[0]
    if prog in ("/bin/sh", "/bin/bash", "/usr/bin/env"):
        return
    if "/" in prog:  # a script of this repository, run from WORKDIR /opt/xray
        path = REPO / prog
        assert path.is_file(), f"{where}: {prog} does not exist in the repository"
        assert os.access(path, os.X_OK), f"{where}: {prog} is not executable"
        assert path.read_text().startswith("#!"), f"{where}: {prog} has no shebang"
        assert not dockerignored(prog), f"{where}: {prog} is excluded from the image by .dockerignore"
        return
    if target in DEBIAN_STAGES:   # a stage of Debian packages only: the program's package is installed there
        package = DEBIAN_PROGRAMS.get(prog)
        assert package, f"{where}: unknown program {prog!r} (add it to DEBIAN_PROGRAMS with its package)"
        installs = " ".join(line for line in dockerfile_stages()[target] if line.startswith("RUN"))
        assert re.search(rf"\b{re.escape(package)}\b", installs), f"{where}: {prog} needs Debian's {package}"
        return
    assert prog in PROGRAMS, f"{where}: unknown program {prog!r} (add it to PROGRAMS with its package)"
    package = PROGRAMS[prog]
    if package:
        assert package in installed_packages(target), f"{where}: {prog} needs {package}, not installed in the image"


@pytest.mark.parametrize("name", [n for n, _ in image_services()])
def test_service_commands_exist_in_the_image(name):
    svc = compose_model()["services"][name]
    target = svc["build"]["target"]
    assert target in dockerfile_stages(), f"{name}: Dockerfile has no stage {target}"
    argv = svc.get("command") or []
    if isinstance(argv, str):
        argv = argv.split()
    if not argv:  # the stage's CMD
        cmd = next(line for line in reversed(sum((dockerfile_stages()[s] for s in stage_chain(target)), []))
                   if line.startswith("CMD"))
        argv = yaml.safe_load(cmd[3:].strip())
    check_program(argv, target, f"{name}.command")
    test = svc.get("healthcheck", {}).get("test")
    if test:
        if test[0] == "CMD":
            check_program(test[1:], target, f"{name}.healthcheck")
            for arg in test[2:]:
                if arg.startswith(("docker/", "scripts/")):
                    check_program([arg], target, f"{name}.healthcheck")
        else:  # CMD-SHELL "prog args..."
            check_program(test[1].split()[0:1], target, f"{name}.healthcheck")
    if name.startswith("airflow-worker"):
        assert "apache-airflow-providers-celery" in installed_packages(target)


def test_stage_commands_and_entrypoint():
    stages = dockerfile_stages()
    for target in ("mlflow", "airflow", "web"):
        cmd = next(line for line in reversed(stages[target]) if line.startswith("CMD"))
        check_program(yaml.safe_load(cmd[3:].strip()), target, f"Dockerfile {target} CMD")
    entry = next(line for line in stages["runtime"] if line.startswith("ENTRYPOINT"))
    assert "tini" in entry
    assert any("tini" in line for line in stages["runtime"] if line.startswith("RUN") and "apt-get" in line)


def test_image_services_use_matching_targets():
    for name, svc in image_services():
        target = svc["build"]["target"]
        assert re.search(rf"-{target}(-gpu)?:", svc["image"]), \
            f"{name}: image name {svc['image']} does not name its target {target}"
        chain = stage_chain(target)
        if target in DEBIAN_STAGES:
            continue   # Orthanc from Debian's packages: no Python, so not the shared runtime
        assert chain[-1] == "runtime", f"{name}: {target} must derive from the shared runtime stage"


def test_the_stack_scripts_build_every_image_compose_builds():
    """scripts/stack_images.sh (make stack-images, make stack-test, which then runs `compose up
    --no-build`) builds every target a service builds, with every base-image argument the Dockerfile
    declares, and compose passes the same arguments (the orthanc image was once left out)."""
    script = (REPO / "scripts/stack_images.sh").read_text()
    targets = set(re.search(r"XRAY_TARGETS:-([^}]*)}", script).group(1).split())
    assert {svc["build"]["target"] for _, svc in image_services()} <= targets
    head = (REPO / "Dockerfile").read_text().split("\nFROM ", 1)[0]
    declared = set(re.findall(r"^ARG (\w+)=", head, re.M))
    assert {"PYTHON_IMAGE", "DEBIAN_IMAGE"} <= declared
    for arg in declared:
        assert f'--build-arg "{arg}=' in script, f"stack_images.sh does not pass {arg}"
    for name, svc in image_services():   # the base image of the service's own target, from .env
        base = "DEBIAN_IMAGE" if svc["build"]["target"] in DEBIAN_STAGES else "PYTHON_IMAGE"
        assert base in svc["build"].get("args", {}), f"compose service {name} does not pass {base}"


def test_read_only_containers_find_what_they_write_prepared_in_the_image():
    """With `read_only: true` a container writes only to its volumes and tmpfs: the web image's
    static files are collected at build, so its start script must not collect them again (it failed
    on the read-only tree), and Orthanc's database volume starts as a copy of a directory its user owns."""
    stages = dockerfile_stages()
    web = " ".join(stages["web"])
    assert web.index("collectstatic") < web.index("ENV XRAY_STATIC_COLLECTED=1")
    script = (REPO / "scripts/web_server.sh").read_text()
    calls = [line for line in script.splitlines() if "collectstatic" in line and not line.lstrip().startswith("#")]
    assert calls and all('"${XRAY_STATIC_COLLECTED:-0}" = 1 ] ||' in line for line in calls)
    pacs = compose_model()["services"]["pacs"]
    user = next(line.split()[1] for line in stages["orthanc"] if line.startswith("USER"))
    for volume in pacs["volumes"]:
        mount = (volume if isinstance(volume, str) else volume["target"]).split(":")[-1]
        assert re.search(rf"install -d -o {user} -g {user} .*{re.escape(mount)}", " ".join(stages["orthanc"])), mount


def test_one_multistage_dockerfile_cpu_torch_non_root():
    stages = dockerfile_stages()
    assert {"builder", "runtime", "mlflow", "airflow", "web"} <= set(stages)
    # torch from the CPU index, in the airflow venv only
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in " ".join(stages["venv-airflow"])
    assert not any("TORCH_INDEX_URL" in line for s in ("venv-web", "venv-mlflow") for line in stages[s])
    installer = (REPO / "scripts/install_locked.sh").read_text()
    assert '--index-url "$index"' in installer and "--require-hashes" in installer
    # each target its own venv, from its own lock; the final images get the venv only, not the build tools
    for target in ("mlflow", "airflow", "web"):
        assert venv_stage(target) == f"venv-{target}"
        assert stage_chain(f"venv-{target}")[-1] == "builder"
        users = [line.split()[1] for s in reversed(stage_chain(target)) for line in stages[s]
                 if line.startswith("USER")]
        assert users and users[-1] not in ("root", "0"), f"{target} runs as root"


def test_each_image_installs_its_own_lock_and_no_cuda_wheels():
    torch_pins = lock_names(LOCKS / "torch.txt")
    assert {"torch", "torchvision"} <= torch_pins
    for target in ("mlflow", "airflow", "web"):
        installed = installed_packages(target)
        cuda = {p for p in installed if p.startswith(("nvidia-", "cuda-")) or p == "triton"}
        assert not cuda, f"{target}: CUDA wheels would be installed: {cuda}"
        assert not {"pytest", "playwright", "moto"} & installed, f"{target}: test tools in the image"
    airflow, web, mlflow = (installed_packages(t) for t in ("airflow", "web", "mlflow"))
    for needed in ("apache-airflow", "mlflow", "django", "gunicorn", "dvc-s3", "psycopg2-binary", "whitenoise",
                   "apache-airflow-providers-celery", "redis", "torch", "nncf", "onnxscript"):
        assert needed in airflow, f"{needed} is not installed in the airflow image"
    # the serving tier: no torch, no training or orchestration stack, MLflow's client only
    for needed in ("django", "gunicorn", "whitenoise", "openvino", "mlflow-skinny", "psycopg2-binary", "highdicom"):
        assert needed in web, f"{needed} is not installed in the web image"
    for absent in ("torch", "torchvision", "nncf", "onnxscript", "mlflow", "apache-airflow", "dvc", "celery"):
        assert absent not in web, f"{absent} would be installed in the web image"
    # the tracking server: MLflow (+ auth), the database and S3 drivers
    for needed in ("mlflow", "flask-wtf", "psycopg2-binary", "boto3"):  # flask-wtf: mlflow[auth]; boto3: S3 artifacts
        assert needed in mlflow, f"{needed} is not installed in the mlflow image"
    for absent in ("torch", "django", "apache-airflow", "dvc", "openvino"):
        assert absent not in mlflow, f"{absent} would be installed in the mlflow image"


def test_dockerignore_keeps_data_out_and_code_in():
    for path in (".venv/bin/python", ".git/config", "data/chest_xray/train/NORMAL/a.jpeg", ".dvc/cache/ab/cd",
                 ".env", ".cache/preprocess/x.npy", "runs/x/model.pt", ".airflow/airflow.db", ".mlflow/mlflow.db",
                 ".local/logs/web.log", "pipeline/__pycache__/x.pyc", "tests/conftest.py"):
        assert dockerignored(path), f"{path} would be sent to the build context"
    needed = ["requirements/web.txt", "requirements/torch.txt", "scripts/install_locked.sh", "docker/build_venv.sh",
              "docker/install_app.sh", "params.yaml", ".dvc/config", "data/chest_xray.dvc", "docker/healthcheck.py",
              "pipeline/__init__.py", "dags/retrain_xray.py", "django_app/manage.py", "scripts/mlflow_server.sh",
              "scripts/web_server.sh", "docker/airflow/init.sh", "docker/web/init.sh"]
    for path in needed:
        assert not dockerignored(path), f"{path} is needed in the image but .dockerignore excludes it"


# ----------------------------------------------------------------------------- the scripts
SCRIPTS = ["docker/postgres/init-databases.sh", "docker/minio/create-buckets.sh", "docker/airflow/init.sh",
           "docker/gen-env.sh",
           "docker/web/init.sh", "docker/entrypoint.sh", "docker/postgres/secure-entrypoint.sh",
           "docker/proxy/start.sh", "scripts/docker_bases.sh", "scripts/stack_images.sh", "scripts/stack_test.sh",
           "scripts/docker_engine.sh", "docker/local-bases/postgres-entrypoint.sh",
           "scripts/lock.sh", "scripts/install_locked.sh", "docker/build_venv.sh", "docker/install_app.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_executable_and_parse(script):
    path = REPO / script
    assert os.access(path, os.X_OK), f"{script} is not executable"
    shell = "sh" if path.read_text().startswith("#!/bin/sh") else "bash"
    proc = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_services_agree_on_names_and_ports():
    """The URLs one service uses to reach another match that service's name, command and port."""
    services = compose_model()["services"]
    air = services["airflow-scheduler"]["environment"]
    assert air["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    api_cmd = services["airflow-apiserver"]["command"]
    assert api_cmd[:2] == ["airflow", "api-server"] and api_cmd[api_cmd.index("--port") + 1] == "8080"
    assert services["airflow-apiserver"]["ports"][0].endswith(":8080")
    assert air["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "True"
    assert ":8974/" in services["airflow-scheduler"]["healthcheck"]["test"][-1]
    ml = services["mlflow"]["environment"]
    assert air["MLFLOW_TRACKING_URI"] == services["web"]["environment"]["MLFLOW_TRACKING_URI"] == \
        f"http://mlflow:{ml['MLFLOW_PORT']}"
    assert f"mlflow:{ml['MLFLOW_PORT']}" in ml["MLFLOW_ALLOWED_HOSTS"]  # MLflow 3's Host-header guard
    assert ml["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql") and "@postgres:5432/" in ml["MLFLOW_BACKEND_STORE_URI"]
    assert ml["MLFLOW_ARTIFACTS_DESTINATION"] == "${MLFLOW_ARTIFACTS_DESTINATION:-/opt/xray/.mlflow/artifacts}"
    web = services["web"]
    port = web["environment"]["WEB_BIND"].rsplit(":", 1)[1]
    # the site is published only through the proxy, which forwards to web's port
    assert "ports" not in web and web["expose"] == [port] and f":{port}/healthz" in web["healthcheck"]["test"][-1]
    assert f"proxy_pass http://web:{port};" in (REPO / "docker/proxy/site.conf.template").read_text()
    assert services["proxy"]["ports"][0].startswith("${PUBLISH_ADDRESS:-127.0.0.1}:")
    # issue 11 item 10: the web app holds no S3 keys and only the MLflow reader login
    assert not any(k.startswith("AWS_") for k in web["environment"])
    assert web["environment"]["MLFLOW_TRACKING_USERNAME"] == "${MLFLOW_READER_USER:-web}"
    assert air["MLFLOW_TRACKING_USERNAME"] == "${MLFLOW_TRAINER_USER:-airflow}"
    # one Fernet key / JWT secret / database for every Airflow component
    keys = ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
            "AIRFLOW__CORE__EXECUTOR")
    airflow_envs = [s["environment"] for n, s in services.items() if n.startswith("airflow-")]
    for key in keys:
        assert len({e[key] for e in airflow_envs}) == 1, f"Airflow components disagree on {key}"


def test_sqlalchemy_urls_name_the_installed_driver():
    """SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which the image does not install
    (requirements pin psycopg2-binary): every SQLAlchemy URL must say +psycopg2."""
    for target in ("mlflow", "airflow", "web"):
        assert "psycopg2-binary" in installed_packages(target) and "psycopg" not in installed_packages(target)
    services = compose_model()["services"]
    urls = {
        "airflow database": services["airflow-scheduler"]["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
        "celery result backend": services["airflow-worker"]["environment"]["AIRFLOW__CELERY__RESULT_BACKEND"],
        "mlflow backend": services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"],
    }
    for what, url in urls.items():
        assert url.split("://")[0].endswith("postgresql+psycopg2"), f"{what}: {url}"


def test_forwarded_headers_are_not_trusted_from_everyone():
    """Issue 11 item 16: no default trusts X-Forwarded-* from any address (`*`)."""
    assert "WEB_FORWARDED_ALLOW_IPS: ${XRAY_PROXY_ADDRESS:-172.31.250.2}" in compose_text()
    assert env_example()["XRAY_PROXY_ADDRESS"] not in ("*", "")
    env = {k: v for k, v in os.environ.items() if k != "WEB_FORWARDED_ALLOW_IPS"}
    out = subprocess.run([sys.executable, "-c", "import runpy; print(runpy.run_path('django_app/gunicorn.conf.py')"
                          "['forwarded_allow_ips'])"], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "127.0.0.1", out.stderr


def test_mlflow_trainer_manages_the_served_model():
    """Issue 25 item 12: the trainer's MANAGE grant names the model the stack serves."""
    services = compose_model()["services"]
    assert services["mlflow"]["environment"]["MLFLOW_TRAINER_MODELS"] == \
        services["web"]["environment"]["XRAY_MODEL_NAME"] == "${XRAY_MODEL_NAME:-chest-xray-resnet18}"


def test_drift_dag_reads_the_web_database_as_the_read_only_role():
    """Issue 25 item 7: the drift DAG's site database is the web database (not an empty SQLite file
    of the Airflow image), as the read-only role that init-databases.sh creates and web-init grants."""
    services = compose_model()["services"]
    url = services["airflow-worker"]["environment"]["XRAY_SITE_DATABASE_URL"]
    assert url.startswith("postgres://${WEB_DB_READER_USER:-web_reader}:${WEB_DB_READER_PASSWORD:?")
    assert url.endswith("@postgres:5432/${WEB_DB_NAME:-web}")
    assert services["postgres"]["environment"]["WEB_DB_READER_USER"] == "${WEB_DB_READER_USER:-web_reader}"
    assert services["web-init"]["environment"]["WEB_DB_READER_USER"] == "${WEB_DB_READER_USER:-web_reader}"
    assert "WEB_DB_READER_PASSWORD" not in services["web"]["environment"]
    assert "WEB_DB_READER_PASSWORD" in (REPO / "docker/postgres/secure-entrypoint.sh").read_text()
    assert "grant_reader.py" in (REPO / "docker/web/init.sh").read_text()
    assert "XRAY_SITE_DATABASE_URL" in (REPO / "dags/xray_drift.py").read_text()
    proc = run_compose("config")
    assert proc.returncode == 0, proc.stderr
    rendered = yaml.safe_load(proc.stdout)["services"]
    assert rendered["airflow-scheduler"]["environment"]["XRAY_SITE_DATABASE_URL"] == \
        f"postgres://web_reader:{env_example()['WEB_DB_READER_PASSWORD']}@postgres:5432/web"


# ----------------------------------------------------------------------------- container hardening
# Capabilities a service may add back after `cap_drop: [ALL]`, and why (docs/operations.md):
# postgres/redis entry points start as root, chown their data and socket dirs, then drop to their
# user (gosu / setuid); nginx's master chowns its temp dirs and setuids its workers.
CAPS_ALLOWED = {"postgres": {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID"},
                "redis": {"CHOWN", "SETUID", "SETGID"},
                "proxy": {"CHOWN", "SETUID", "SETGID"}}
# Airflow writes airflow.cfg into AIRFLOW_HOME and git/DVC state under HOME at run time, and the
# worker runs training: a writable root filesystem, still without capabilities.
WRITABLE_ROOT = {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                 "airflow-triggerer", "airflow-worker", "airflow-worker-gpu"}


@pytest.mark.parametrize("name", sorted(compose_model()["services"]))
def test_every_service_is_confined(name):
    """Issue 25 item 9: limits, no capabilities, no privilege gain, read-only root with tmpfs."""
    svc = compose_model()["services"][name]
    for key in ("mem_limit", "cpus", "pids_limit"):
        assert svc.get(key), f"{name}: no {key}"
    assert svc.get("cap_drop") == ["ALL"], name
    assert set(svc.get("cap_add", [])) <= CAPS_ALLOWED.get(name, set()), name
    assert "no-new-privileges:true" in svc.get("security_opt", []), name
    if name in WRITABLE_ROOT:
        assert not svc.get("read_only"), name
    else:
        assert svc.get("read_only") is True, name
        assert any(t.split(":")[0] == "/tmp" for t in svc.get("tmpfs", [])), name


def test_confinement_renders():
    proc = run_compose("--profile", "minio", "--profile", "gpu", "config")
    assert proc.returncode == 0, proc.stderr
    for name, svc in yaml.safe_load(proc.stdout)["services"].items():
        assert svc.get("cap_drop") == ["ALL"] and svc.get("pids_limit"), name


def test_code_tree_is_owned_by_root_and_not_writable_by_the_app_user():
    """The app user (uid 50000, group 0) cannot rewrite the code it runs: COPY as root, go-w."""
    text = DOCKERFILE.read_text()
    assert "COPY --chown=xray" not in text
    stages = dockerfile_stages()
    for target in ("mlflow", "airflow", "web"):   # each copies the code as root, then docker/install_app.sh
        lines = stages[target]
        copy = lines.index("COPY --chown=root:root . /opt/xray")
        assert any("docker/install_app.sh" in line for line in lines[copy + 1:]), target
    script = (REPO / "docker/install_app.sh").read_text() + text
    assert "chmod -R go-w /opt/xray" in script
    assert "chmod -R g=u /opt/xray " not in script and "chown xray:0 /opt/xray;" not in script


def test_no_end_of_life_nginx():
    """Issue 25 item 20: nginx 1.27 (mainline, end of life) is gone everywhere an image is named."""
    for path in ("docker-compose.yaml", ".env.example", "scripts/stack_test.sh", "scripts/docker_bases.sh",
                 "docker/local-bases/nginx.Dockerfile"):
        assert "nginx:1.27" not in (REPO / path).read_text(), path
    assert "${NGINX_IMAGE:-nginx:1.28-bookworm}" in compose_text()
    assert env_example()["NGINX_IMAGE"] == "nginx:1.28-bookworm"
