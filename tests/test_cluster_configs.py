"""The cluster configs under clusters/ (and the commands in docs/cluster.md) parse and agree with
the code: the sweep commands they hold pass the real argument parser and config builder of
platform/sweep.py, the environment variables they set are read by the project or by a library
that documents them, secrets are only referenced, Ray's token authentication stays on, the
KubeRay cluster holds the trials the preset runs, and the MLflow server accepts the clients that
the Ray configs point at it. Real parsers throughout (YAML, JSON, bash -n, Ray's cluster schema,
MLflow's own command line and Host-header check); no mocks.
"""

import contextlib
import functools
import importlib.util
import io
import json
import os
import re
import runpy
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ROOT / "clusters"
FILES = sorted(p for p in CLUSTERS.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
SWEEP_SCRIPT = ROOT / "platform" / "sweep.py"
DOC = ROOT / "docs" / "cluster.md"
RAYJOB = CLUSTERS / "kuberay" / "rayjob.yaml"
RAYCLUSTER = CLUSTERS / "kuberay" / "raycluster.yaml"
SHARED_STORAGE = CLUSTERS / "kuberay" / "shared-storage.yaml"
RAY_DOCKERFILE = CLUSTERS / "kuberay" / "Dockerfile"
MLFLOW_K8S = CLUSTERS / "mlflow" / "mlflow.yaml"
MLFLOW_DOCKERFILE = CLUSTERS / "mlflow" / "Dockerfile"
SERVER_SH = CLUSTERS / "mlflow" / "server.sh"
CREATE_USER = CLUSTERS / "mlflow" / "create-user.sh"
LAUNCHER = CLUSTERS / "ray" / "cluster.yaml"

# Variables the configs set that a library or image reads, not the project: (the installed
# package whose files must mention the name, or None where it is not Python / not installed
# with the project; why the configs set it).
LIBRARY_VARIABLES = {
    "RAY_AUTH_MODE": ("ray", "Ray's authentication mode; the configs keep it at 'token'"),
    "RAY_AUTH_TOKEN": ("ray", "the cluster's shared token, from the Kubernetes Secret"),
    "TMPDIR": ("ray", "worker pods' temporary folder (Python's tempfile and Ray's own): the size-limited scratch volume"),
    "HF_HOME": ("huggingface_hub", "Hugging Face cache on /shared: models and GLUE downloaded once for all pods"),
    "MLFLOW_S3_ENDPOINT_URL": ("mlflow", "S3-compatible (MinIO) endpoint of the MLflow server's artifact store"),
    "AWS_ACCESS_KEY_ID": ("botocore", "S3 credentials of the MLflow server's artifact store (boto3)"),
    "AWS_SECRET_ACCESS_KEY": ("botocore", "S3 credentials of the MLflow server's artifact store (boto3)"),
    "AWS_PROFILE": ("botocore", "S3 credentials of server.sh's artifact store (boto3)"),
    "PGPASSWORD": (None, "libpq (psycopg2) takes the Postgres password from it when the URI holds none"),
    "POSTGRES_USER": (None, "the postgres image's entrypoint creates this user"),
    "POSTGRES_DB": (None, "the postgres image's entrypoint creates this database"),
    "POSTGRES_PASSWORD": (None, "the postgres image's entrypoint sets this password"),
    "PGDATA": (None, "the postgres image's data folder (a sub-folder of the volume)"),
    "MLFLOW_TRACKING_USERNAME": ("mlflow", "the MLflow user the sweep driver (and registration) logs in as"),
    "MLFLOW_TRACKING_PASSWORD": ("mlflow", "that user's password, from the leebert-mlflow-sweep Secret"),
    "MLFLOW_AUTH_CONFIG_PATH": ("mlflow", "the basic-auth app's config (basic_auth.ini: users' database, defaults)"),
    "MLFLOW_AUTH_ADMIN_PASSWORD": ("mlflow", "the admin's password, read by the basic-auth app at its first start"),
    "MLFLOW_FLASK_SERVER_SECRET_KEY": ("mlflow", "signs the basic-auth UI's sessions and CSRF tokens"),
}
# Variables that libraries read too, but that only matter if the sweep itself reads them.
PROJECT_VARIABLES = {"MLFLOW_TRACKING_URI", "RAY_ADDRESS"}
PROJECT_CODE = [*ROOT.glob("sweeps/**/*.py"), *ROOT.glob("trainers/**/*.py"), *ROOT.glob("search_spaces/**/*.py"),
                SWEEP_SCRIPT, SERVER_SH, CREATE_USER]


# ---------------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=None)
def sweep_cli() -> dict:
    """platform/sweep.py's globals: platform/ is deliberately not a package, so load it by path."""
    return runpy.run_path(str(SWEEP_SCRIPT), run_name="leebert_sweep_cli")


def yaml_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kind_of(path: Path) -> str | None:
    if path.name.startswith("Dockerfile"):
        return "dockerfile"
    return {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".sh": "shell", ".md": "markdown"}.get(path.suffix)


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in lines if line and not line.startswith("#")]


def pod_specs(doc: dict) -> list[tuple[str, dict]]:
    """(label, pod spec) of every pod a manifest creates: Ray head and workers, RayJob submitter,
    Deployment / StatefulSet pods."""
    kind, spec = doc.get("kind"), doc.get("spec", {})
    if kind == "RayJob":
        out = [("submitter", spec["submitterPodTemplate"]["spec"])] if "submitterPodTemplate" in spec else []
        return out + pod_specs({"kind": "RayCluster", "spec": spec["rayClusterSpec"]})
    if kind == "RayCluster":
        return [("head", spec["headGroupSpec"]["template"]["spec"])] + [
            (f"worker group {g['groupName']}", g["template"]["spec"]) for g in spec.get("workerGroupSpecs", [])]
    if kind in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
        return [(doc["metadata"]["name"], spec["template"]["spec"])]
    return []


def containers(doc: dict) -> list[tuple[str, dict]]:
    return [(f"{label}/{c['name']}", c) for label, pod in pod_specs(doc)
            for c in pod.get("initContainers", []) + pod.get("containers", [])]


def ray_containers(doc: dict) -> list[tuple[str, dict]]:
    """The containers that run Ray or talk to it: every Ray pod's first container, the submitter."""
    return [(label, pod["containers"][0]) for label, pod in pod_specs(doc)]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def k8s_docs() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in FILES if kind_of(path) == "yaml" and path.parent.name in ("kuberay", "mlflow")
            for doc in yaml_docs(path)]


def fenced_code(text: str) -> list[str]:
    lines, inside = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def command_lines(path: Path) -> list[str]:
    """Shell command lines a file shows: comment lines of YAML files, code blocks of Markdown,
    every line of scripts and Dockerfiles; comment markers stripped, backslash continuations joined."""
    text = path.read_text()
    if path.suffix == ".md":
        raw = fenced_code(text)
    elif kind_of(path) == "yaml":
        raw = [line for line in text.splitlines() if line.lstrip().startswith("#")]
    else:
        raw = text.splitlines()
    joined, buf = [], ""
    for line in raw:
        s = line.strip().lstrip("#").strip()
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        joined.append(buf + s)
        buf = ""
    return joined


def sweep_commands(path: Path) -> list[list[str]]:
    """Every `python platform/sweep.py ...` in a file, as [interpreter, script, *args]."""
    lines = command_lines(path)
    if kind_of(path) == "yaml":
        lines += [doc["spec"]["entrypoint"] for doc in yaml_docs(path) if doc.get("kind") == "RayJob"]
    commands = []
    for line in lines:
        if "platform/sweep.py" not in line or "`" in line:  # backticks: prose that names the command
            continue
        tokens = shlex.split(line)
        i = next(i for i, t in enumerate(tokens) if t.endswith("platform/sweep.py"))
        args = []
        for token in tokens[i + 1:]:
            if token in ("&&", "||", ";", "|", "&") or token.startswith("#"):
                break
            args.append(token)
        commands.append([tokens[i - 1] if i else "", tokens[i], *args])
    return commands


def resolved_config(args: list[str]) -> dict:
    """The config the real command line resolves for ``args``: platform/sweep.py's main() with
    --print-config (for a --resume command, the config it would start from)."""
    args = [a for a in args if a != "--resume"]
    out = io.StringIO()
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()) as err:
            rc = sweep_cli()["main"]([*args, "--print-config"])
    finally:
        signal.signal(signal.SIGTERM, handler)  # main() installs its own
    assert rc == 0, f"platform/sweep.py {' '.join(args)}: exit {rc}: {err.getvalue().strip()}"
    return yaml.safe_load(out.getvalue())


def sweep_env(doc: dict) -> dict[str, str]:
    """The environment the sweep driver of a RayJob / RayCluster sees: the head container's."""
    head = dict(pod_specs(doc))["head"]["containers"][0]
    return {name: e["value"] for name, e in env_of(head).items() if "value" in e}


@contextlib.contextmanager
def environment(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------- every file parses
def test_every_cluster_file_parses():
    assert FILES
    for path in FILES:
        kind = kind_of(path)
        assert kind, f"{path}: no check for this kind of file; add one to this test"
        text = path.read_text()
        if kind == "yaml":
            assert yaml_docs(path), f"{path} is empty"
        elif kind == "json":
            json.loads(text)
        elif kind == "shell":
            assert os.access(path, os.X_OK), f"{path} is not executable"
            subprocess.run(["bash", "-n", str(path)], check=True)
        elif kind == "dockerfile":
            instructions = [name for name, _ in dockerfile_instructions(path)]
            assert instructions and instructions[0] in ("FROM", "ARG") and "FROM" in instructions, path
        else:
            assert text.strip(), f"{path} is empty"


def test_doc_scripts_are_valid_shell():
    script = ROOT / "docs" / "make_screenshot.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)


# ---------------------------------------------------------------------------- sweep commands
def all_sweep_commands() -> list[tuple[Path, list[str]]]:
    return [(path, cmd) for path in [*FILES, DOC] for cmd in sweep_commands(path)]


def test_sweep_commands_pass_the_real_parser_and_config():
    from sweeps.config import SweepConfig
    from sweeps.presets import presets

    fields = {f.name for f in SweepConfig.settings()}
    commands = all_sweep_commands()
    assert {path for path, _ in commands} >= {RAYJOB, RAYCLUSTER, LAUNCHER, DOC}
    parser = sweep_cli()["parser"]()
    for path, (python, script, *args) in commands:
        where = f"{path.relative_to(ROOT)}: {script} {' '.join(args)}"
        assert Path(python).name.startswith("python"), where
        assert script == "platform/sweep.py" and (ROOT / script).is_file(), where
        try:
            parsed = parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{where}: rejected by platform/sweep.py's argument parser")
        assert parsed.preset is None or parsed.preset in presets(), f"{where}: unknown preset {parsed.preset}"
        assert parsed.config is None, f"{where}: --config files are not shipped with the clusters"
        for override in parsed.set:
            key = override.split("=", 1)[0]
            assert key.split(".")[0] in fields, f"{where}: --set {key} is not a SweepConfig key"
        resolved_config(args)  # validates values, types and the trainer options


def test_the_rayjob_runs_the_glue_bert_sweep_with_the_new_keys():
    (job,) = yaml_docs(RAYJOB)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    python, script, *args = shlex.split(job["spec"]["entrypoint"])
    assert [python, script, *args[:2]] == ["python", "platform/sweep.py", "--preset", "glue-bert"]
    keys = {a.split("=", 1)[0] for a in args}
    assert {"workers_per_trial", "max_failures"} <= keys


def test_the_sweep_reads_the_tracking_uri_the_ray_configs_set():
    from sweeps.presets import build_config

    for path in (RAYJOB, RAYCLUSTER):
        (doc,) = [d for d in yaml_docs(path) if d["kind"] in ("RayJob", "RayCluster")]
        uri = sweep_env(doc)["MLFLOW_TRACKING_URI"]
        with environment({"MLFLOW_TRACKING_URI": uri}):
            assert build_config(preset="glue-bert").resolved_tracking_uri == uri, path


# ---------------------------------------------------------------------------- Ray cluster launcher
def test_ray_cluster_launcher_config_matches_rays_schema():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = yaml.safe_load(LAUNCHER.read_text())
    jsonschema.validate(cfg, schema)
    assert cfg["available_node_types"]["gpu_worker"]["resources"]["GPU"] >= 1
    assert all("RAY_AUTH_MODE=token" in " ".join(cfg[k]) for k in ("head_start_ray_commands", "worker_start_ray_commands"))
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert set(cfg["rsync_exclude"]) >= {".venv", "runs", ".git"}
    # the project is copied to every node and installed there
    (project,) = [remote for remote, local in cfg["file_mounts"].items() if local == "."]
    assert any("pip install" in c and f"-e {project}" in c for c in cfg["setup_commands"])
    assert any(f"{project}/clusters/mlflow/server.sh" in c for c in cfg["head_start_ray_commands"])


# ---------------------------------------------------------------------------- KubeRay
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
               "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML",
               "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
               "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend", "schedule"}
RAYCLUSTER_SPEC = {"rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec", "workerGroupSpecs",
                   "authOptions", "suspend", "managedBy", "headServiceAnnotations", "gcsFaultToleranceOptions"}
HEAD_GROUP = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_GROUP = {"groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds", "rayStartParams",
                "template", "scaleStrategy", "numOfHosts", "suspend"}


def ray_manifests() -> list[tuple[Path, dict]]:
    return [(path, doc) for path, doc in k8s_docs() if doc.get("kind") in ("RayJob", "RayCluster")]


def test_kuberay_manifests_use_kuberay_fields():
    import ray

    manifests = ray_manifests()
    assert {path for path, _ in manifests} == {RAYJOB, RAYCLUSTER}
    for path, doc in manifests:
        assert doc["apiVersion"] == "ray.io/v1", path
        spec = doc["spec"]
        if doc["kind"] == "RayJob":
            assert set(spec) <= RAYJOB_SPEC, f"{path}: unknown RayJob fields {set(spec) - RAYJOB_SPEC}"
            assert spec["shutdownAfterJobFinishes"] is True and spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"
            spec = spec["rayClusterSpec"]
        assert set(spec) <= RAYCLUSTER_SPEC, f"{path}: unknown RayCluster fields {set(spec) - RAYCLUSTER_SPEC}"
        assert spec["rayVersion"] == ray.__version__, path
        assert set(spec["headGroupSpec"]) <= HEAD_GROUP, path
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            assert set(group) <= HEAD_GROUP | WORKER_GROUP, path
            params = group["rayStartParams"]
            assert all(isinstance(v, str) for v in params.values()), f"{path}: rayStartParams values must be strings"
        for group in spec["workerGroupSpecs"]:
            assert set(group) <= WORKER_GROUP, path
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], path


def test_rayjob_and_raycluster_describe_the_same_cluster():
    (job,) = yaml_docs(RAYJOB)
    (cluster,) = yaml_docs(RAYCLUSTER)
    assert job["spec"]["rayClusterSpec"] == cluster["spec"]


def test_gpu_workers_advertise_their_gpus_and_every_ray_pod_mounts_the_shared_volume():
    (pvc,) = yaml_docs(SHARED_STORAGE)
    assert pvc["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in pvc["spec"]["accessModes"]
    for path, doc in ray_manifests():
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", f"{path}: trials must not run on the head"
        for group in spec["workerGroupSpecs"]:
            container = group["template"]["spec"]["containers"][0]
            limits, requests = container["resources"]["limits"], container["resources"]["requests"]
            gpus = int(limits["nvidia.com/gpu"])
            assert gpus >= 1 and int(requests.get("nvidia.com/gpu", gpus)) == gpus, path
            assert group["rayStartParams"]["num-gpus"] == str(gpus), path
        for label, pod in pod_specs(doc):
            if label == "submitter":
                continue
            claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
            mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
            assert claims.get(mounts.get("/shared")) == pvc["metadata"]["name"], f"{path} {label}: /shared not mounted"


def test_trials_run_only_on_worker_nodes_with_a_bounded_scratch_volume():
    """Every worker group declares the trial-node resource the sweep's trials ask for
    (sweeps.placement; the head declares none and no CPUs), and its sweep commands require it;
    each worker pod trains in a size-limited emptyDir that $TMPDIR (where trainer folders,
    sweeps.trial.local_sweep_dir, and Ray's own temporary files go) points at, with an
    ephemeral-storage request and limit that hold it."""
    from sweeps.placement import TRIAL_NODE_RESOURCE, TRIAL_NODE_SHARE

    def gib(quantity: str) -> float:
        number, unit = re.fullmatch(r"([0-9.]+)(Gi|Mi|Ti)", quantity).groups()
        return float(number) * {"Mi": 1 / 1024, "Gi": 1, "Ti": 1024}[unit]

    for path, doc in ray_manifests():
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        assert "resources" not in spec["headGroupSpec"]["rayStartParams"], f"{path}: the head must not be a trial node"
        for group in spec["workerGroupSpecs"]:
            # KubeRay passes the value to `ray start --resources=<value>` through a shell
            (declared,) = shlex.split(group["rayStartParams"]["resources"])
            assert json.loads(declared).get(TRIAL_NODE_RESOURCE, 0) >= TRIAL_NODE_SHARE, f"{path}: {declared}"
            pod = group["template"]["spec"]
            container = pod["containers"][0]
            scratch = env_of(container)["TMPDIR"]["value"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volume = next(v for v in pod["volumes"] if v["name"] == mounts[scratch])
            size = gib(volume["emptyDir"]["sizeLimit"])
            assert "medium" not in volume["emptyDir"] and 16 <= size, f"{path}: scratch must be a bounded disk emptyDir"
            storage = container["resources"]
            assert size <= gib(storage["requests"]["ephemeral-storage"]) <= gib(storage["limits"]["ephemeral-storage"]), path
    launcher = yaml.safe_load(LAUNCHER.read_text())
    head = launcher["head_node_type"]
    for name, node_type in launcher["available_node_types"].items():
        declared = node_type["resources"].get(TRIAL_NODE_RESOURCE, 0)
        assert (declared == 0) if name == head else (declared >= TRIAL_NODE_SHARE), f"{LAUNCHER}: {name}"
    for path in (RAYJOB, RAYCLUSTER, LAUNCHER):
        for _, _, *args in sweep_commands(path):
            if "--resume" not in args:  # a resumed sweep keeps its saved settings
                assert resolved_config(args)["trial_nodes"] == "required", f"{path}: {' '.join(args)}"


def ray_capacity_k8s(doc: dict) -> dict:
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    groups = []
    for group in spec["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        cpus = float(group["rayStartParams"].get("num-cpus", limits["cpu"]))
        groups.append((cpus, float(group["rayStartParams"].get("num-gpus", limits.get("nvidia.com/gpu", 0))),
                       group["minReplicas"], group["maxReplicas"]))
    return summarize(groups)


def ray_capacity_launcher(cfg: dict) -> dict:
    groups = [(t["resources"].get("CPU", 0), t["resources"].get("GPU", 0), t.get("min_workers", 0), t.get("max_workers", 0))
              for name, t in cfg["available_node_types"].items() if name != cfg["head_node_type"]]
    assert cfg["available_node_types"][cfg["head_node_type"]]["resources"]["CPU"] == 0
    return summarize(groups)


def summarize(groups) -> dict:
    return {"min_cpus": sum(c * lo for c, g, lo, hi in groups), "min_gpus": sum(g * lo for c, g, lo, hi in groups),
            "max_cpus": sum(c * hi for c, g, lo, hi in groups), "max_gpus": sum(g * hi for c, g, lo, hi in groups),
            "node_cpus": max(c for c, g, lo, hi in groups), "node_gpus": max(g for c, g, lo, hi in groups)}


def test_the_clusters_hold_the_trials_of_their_sweeps():
    """The sweep refuses to start when one trial (workers_per_trial workers of cpus_per_trial CPUs and
    gpus_per_trial GPUs) does not fit the cluster it finds, so the smallest cluster must hold one
    trial, the largest max_concurrent trials, and one node one worker."""
    cases = [(path, ray_capacity_k8s(doc), sweep_env(doc)) for path, doc in ray_manifests()]
    cases.append((LAUNCHER, ray_capacity_launcher(yaml.safe_load(LAUNCHER.read_text())), {}))
    for path, have, env in cases:
        commands = [args for _, _, *args in sweep_commands(path)]
        assert commands, path
        for args in commands:
            with environment(env):
                cfg = resolved_config(args)
            workers = cfg["workers_per_trial"]
            trial_cpus, trial_gpus = cfg["cpus_per_trial"] * workers, cfg["gpus_per_trial"] * workers
            where = f"{path.relative_to(ROOT)}: {' '.join(args)}"
            assert trial_gpus >= 1, f"{where}: a GPU cluster for a CPU sweep"
            assert have["node_cpus"] >= cfg["cpus_per_trial"] and have["node_gpus"] >= cfg["gpus_per_trial"], where
            assert have["min_cpus"] >= trial_cpus and have["min_gpus"] >= trial_gpus, f"{where}: one trial does not fit at minimum scale"
            assert have["max_cpus"] >= trial_cpus * cfg["max_concurrent"], f"{where}: max_concurrent trials need more CPUs"
            assert have["max_gpus"] >= trial_gpus * cfg["max_concurrent"], f"{where}: max_concurrent trials need more GPUs"


def test_the_tune_storage_is_shared_and_one_per_sweep():
    """Trials restarted on another node resume from the Tune storage, so every node must see it;
    each method's experiment is <storage>/<method>, so an explicit storage must name the sweep."""
    for path, doc in ray_manifests():
        pods = [pod for label, pod in pod_specs(doc) if label != "submitter"]
        for _, _, *args in sweep_commands(path):
            cfg = resolved_config(args)
            storage = cfg["storage"] or f"{cfg['root']}/{cfg['name']}/ray"
            for pod in pods:
                mounts = [m["mountPath"] for m in pod["containers"][0]["volumeMounts"]]
                assert any(storage.startswith(m.rstrip("/") + "/") for m in mounts if m != "/dev/shm"), (path, storage)
    for _, _, *args in sweep_commands(LAUNCHER):
        cfg = resolved_config(args)
        assert cfg["storage"] and cfg["storage"].startswith("s3://"), "the launcher's nodes share no filesystem"
        assert cfg["name"] in cfg["storage"], "an explicit storage must be one per sweep"
        assert Path(cfg["root"]).is_absolute(), "--root must be absolute inside `ray job submit`"


def test_ray_images_are_built_from_the_dockerfile():
    import ray

    version = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    instructions = dockerfile_instructions(RAY_DOCKERFILE)
    base = next(arg for name, arg in instructions if name == "FROM")
    assert base.startswith(f"rayproject/ray:{ray.__version__}-") and base.endswith("-gpu"), base
    workdir = next(arg for name, arg in instructions if name == "WORKDIR")
    copied = set()
    for name, arg in instructions:
        if name == "COPY":
            *sources, _ = [t for t in arg.split() if not t.startswith("--")]
            copied |= set(sources)
    assert all((ROOT / source).exists() for source in copied), copied
    assert copied >= {"pyproject.toml", "README.md", "trainers", "search_spaces", "sweeps", "platform", "clusters"}
    assert any(name == "RUN" and "pip install" in arg and "-e ." in arg for name, arg in instructions)
    # the entrypoint `python platform/sweep.py` runs in the image's working directory
    assert workdir.startswith("/") and (ROOT / "platform" / "sweep.py").is_file()
    for path, doc in ray_manifests():
        images = {c["image"] for _, c in ray_containers(doc)}
        assert len(images) == 1, f"{path}: every Ray pod and the submitter use the project image"
        assert images.pop().endswith(f"/leebert-platform:{version}"), path


# ---------------------------------------------------------------------------- environment variables
def set_variables() -> list[tuple[str, str]]:
    """(where, NAME) of every environment variable the configs (and docs/cluster.md) set."""
    out = []
    for path, doc in k8s_docs():
        for label, container in containers(doc):
            out += [(f"{path.name} {label}", name) for name in env_of(container)]
        if doc.get("kind") == "RayJob" and doc["spec"].get("runtimeEnvYAML"):
            env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"]).get("env_vars", {})
            out += [(f"{path.name} runtimeEnvYAML", name) for name in env]
    for path in [*FILES, DOC]:
        if kind_of(path) == "dockerfile":
            out += [(path.name, arg.split("=")[0].split()[0]) for name, arg in dockerfile_instructions(path) if name == "ENV"]
        lines = command_lines(path)
        if path == LAUNCHER:
            cfg = yaml.safe_load(path.read_text())
            lines += [c for key, value in cfg.items() if key.endswith("_commands") for c in value]
        for line in lines:
            out += [(str(path.relative_to(ROOT)), m.group(1))
                    for m in re.finditer(r"(?:^|[\s;&(])(?:export\s+)?([A-Z][A-Z0-9_]*)=", line)]
    return out


@functools.lru_cache(maxsize=None)
def project_sources() -> list[tuple[Path, str]]:
    return [(p, p.read_text()) for p in PROJECT_CODE]


def read_by_project(name: str) -> bool:
    for path, text in project_sources():
        pattern = rf"\$\{{?{name}\b" if path.suffix == ".sh" else rf"[\"']{name}[\"']"
        if re.search(pattern, text):
            return True
    return False


def package_mentions(package: str, name: str) -> bool:
    spec = importlib.util.find_spec(package)
    folder = Path(spec.origin).parent
    needle = name.encode()
    files = [f for f in folder.rglob("*") if f.is_file()]
    return any(needle in f.read_bytes() for f in sorted(files, key=lambda f: f.suffix != ".py"))


def test_every_variable_the_configs_set_is_read_by_the_code_or_a_documented_library():
    found = set_variables()
    names = {name for _, name in found}
    assert {"MLFLOW_TRACKING_URI", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "HF_HOME", "MLFLOW_S3_ENDPOINT_URL"} <= names
    for where, name in found:
        if name in PROJECT_VARIABLES or name not in LIBRARY_VARIABLES:
            assert read_by_project(name), f"{where}: sets {name}, which neither the project nor a listed library reads"
            continue
        package, why = LIBRARY_VARIABLES[name]
        assert why
        if package and importlib.util.find_spec(package) is not None:
            assert package_mentions(package, name), f"{where}: {package} does not read {name}"
    unused = set(LIBRARY_VARIABLES) - names
    assert not unused, f"allow-list entries no config sets any more: {sorted(unused)}"


# ---------------------------------------------------------------------------- secrets and auth
REFERENCE = re.compile(r"""^["']?\$""")  # $VAR, ${VAR}, $(command), quoted or not


def secretish(key: str) -> bool:
    parts = {p.lower() for p in re.split(r"[_.\-\s]+|(?<=[a-z])(?=[A-Z])", str(key)) if p}
    return any("password" in p or "passwd" in p or "secret" in p or p.endswith("token") or p == "pwd" for p in parts) or (
        "key" in parts and bool(parts & {"access", "api", "private"}))


def literal_secrets_in_text(text: str) -> list[str]:
    hits = [m.group(0) for m in re.finditer(r"\b[a-z][a-z0-9+.-]*://[^\s/@:'\"]+:[^\s/@'\"]*@", text, re.I)]
    for m in re.finditer(r"(?<![\w.$-])(?=([A-Za-z_][\w.]*)\s*=\s*(\"[^\"]*\"|'[^']*'|[^\s;&|]+))", text):
        key, value = m.groups()
        if secretish(key) and value.strip("\"'") and not REFERENCE.match(value):
            hits.append(f"{key}={value}")
    return hits


def literal_secrets_in_yaml(node, path="") -> list[str]:
    hits = []
    if isinstance(node, dict):
        if "name" in node and "value" in node and secretish(node["name"]) and not REFERENCE.match(str(node["value"])):
            hits.append(f"{path}: env {node['name']} has a literal value")
        if node.get("kind") == "Secret" and ("data" in node or "stringData" in node):
            hits.append(f"{path}: a Secret with its data")
        for key, value in node.items():
            if isinstance(value, (str, int, float)) and not isinstance(value, bool) and secretish(key) \
                    and str(value) and not REFERENCE.match(str(value)) and not str(value).startswith(("/", "~/")):
                hits.append(f"{path}.{key}")
            hits += literal_secrets_in_yaml(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            hits += literal_secrets_in_yaml(value, f"{path}[{i}]")
    return hits


def test_the_secret_scanner_finds_literal_secrets():
    for bad in ("export PGPASSWORD=hunter2", "postgresql://mlflow:hunter2@db:5432/mlflow",
                "kubectl create secret generic x --from-literal=auth_token=abc123", "AWS_SECRET_ACCESS_KEY='abc'"):
        assert literal_secrets_in_text(bad), bad
    for good in ('--from-literal=auth_token="$(openssl rand -hex 32)"', 'export RAY_AUTH_TOKEN="$(kubectl get secret x)"',
                 "postgresql://mlflow@leebert-postgres:5432/mlflow", "TOKENIZERS_PARALLELISM=false", "RAY_AUTH_MODE=token"):
        assert not literal_secrets_in_text(good), good
    assert literal_secrets_in_yaml({"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"}]})
    assert literal_secrets_in_yaml({"db": {"password": "abc"}})
    assert literal_secrets_in_yaml({"kind": "Secret", "stringData": {"auth_token": "abc"}})
    assert not literal_secrets_in_yaml({"env": [{"name": "RAY_AUTH_TOKEN", "valueFrom": {
        "secretKeyRef": {"name": "leebert-ray-auth", "key": "auth_token"}}}]})


def test_secrets_are_only_referenced():
    for path in [*FILES, DOC]:
        hits = literal_secrets_in_text(path.read_text())
        if kind_of(path) == "yaml":
            hits += [h for doc in yaml_docs(path) for h in literal_secrets_in_yaml(doc, path.name)]
        assert not hits, f"{path}: literal secrets {hits}; reference a Secret (secretKeyRef) or ${{VAR}}"
    for path, doc in k8s_docs():
        for label, container in containers(doc):
            for name, entry in env_of(container).items():
                if secretish(name):
                    assert "secretKeyRef" in entry.get("valueFrom", {}), f"{path} {label}: {name} not from a Secret"


def test_ray_token_authentication_stays_on():
    for path in FILES:
        for m in re.finditer(r"RAY_AUTH_MODE\s*=\s*[\"']?([\w-]*)", path.read_text()):
            assert m.group(1) == "token", f"{path}: RAY_AUTH_MODE={m.group(1)}"
    for path, doc in k8s_docs():
        for label, container in containers(doc):
            mode = env_of(container).get("RAY_AUTH_MODE")
            assert mode is None or mode.get("value") == "token", f"{path} {label}"
    for path, doc in ray_manifests():
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        assert spec.get("authOptions", {}).get("mode", "token") == "token", path
        secrets = set()
        for label, container in ray_containers(doc):
            env = env_of(container)
            assert env["RAY_AUTH_MODE"]["value"] == "token", f"{path} {label}"
            secrets.add(json.dumps(env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"], sort_keys=True))
        assert len(secrets) == 1, f"{path}: every Ray container and the submitter share one token"
        if doc["kind"] == "RayJob":
            assert "submitter" in dict(pod_specs(doc)), f"{path}: the default submitter would have no token"


# ---------------------------------------------------------------------------- presets and DeepSpeed
def test_presets_name_existing_deepspeed_configs():
    from sweeps.presets import build_config, presets

    assert set(presets()) >= {"demo", "smoke", "glue-bert", "glue-albert"}
    for name in presets():
        cfg = build_config(preset=name)
        path = Path(cfg.train["deepspeed_config"])
        path = path if path.is_absolute() else ROOT / path
        assert path.is_file() and path.parent == CLUSTERS / "deepspeed", (name, path)
        json.loads(path.read_text())
        assert Path(cfg.train_config("clo").deepspeed_config).resolve() == path.resolve()


# ---------------------------------------------------------------------------- MLflow server
def mlflow_manifests() -> dict[str, dict]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml_docs(MLFLOW_K8S)}


def test_mlflow_server_manifest_matches_mlflows_command_line_and_the_ray_clients():
    import mlflow
    from mlflow.cli import server
    from mlflow.server.security_utils import get_default_allowed_hosts, is_allowed_host_header

    docs = mlflow_manifests()
    deployment, service = docs["Deployment/leebert-mlflow"], docs["Service/leebert-mlflow"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["mlflow", "server"]
    params = server.make_context("mlflow server", list(container["args"])).params  # click: MLflow's own parser
    backend = urlparse(params["backend_store_uri"])
    assert backend.scheme == "postgresql" and backend.password is None
    assert params["artifacts_destination"].startswith("s3://") and params["serve_artifacts"] is True
    assert params["host"] == "0.0.0.0"
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert any(p["port"] == params["port"] for p in service["spec"]["ports"])
    # the Ray configs' clients are answered, and so is a port-forward
    allowed = [h.strip() for h in params["allowed_hosts"].split(",")]
    for path, doc in ray_manifests():
        client = urlparse(sweep_env(doc)["MLFLOW_TRACKING_URI"])
        assert client.hostname == service["metadata"]["name"] and client.port == params["port"], path
        assert not is_allowed_host_header(get_default_allowed_hosts(), client.netloc), "MLflow's default would do"
        assert is_allowed_host_header(allowed, client.netloc), f"{path}: MLflow would answer {client.netloc} with 403"
    assert is_allowed_host_header(allowed, "localhost:5000")
    # Postgres: the host, user and database of the URI, one password Secret for both sides
    database = docs["StatefulSet/leebert-postgres"]
    assert f"Service/{backend.hostname}" in docs and database["spec"]["serviceName"] == backend.hostname
    (db_container,) = database["spec"]["template"]["spec"]["containers"]
    db_env = env_of(db_container)
    assert backend.username == db_env["POSTGRES_USER"]["value"] and backend.path == "/" + db_env["POSTGRES_DB"]["value"]
    assert env_of(container)["PGPASSWORD"]["valueFrom"] == db_env["POSTGRES_PASSWORD"]["valueFrom"]
    # the image: built from clusters/mlflow/Dockerfile, the project's MLflow, with the store drivers
    instructions = dockerfile_instructions(MLFLOW_DOCKERFILE)
    base = next(arg for name, arg in instructions if name == "FROM")
    tag = base.rsplit(":v", 1)[1]
    assert base.startswith("ghcr.io/mlflow/mlflow:v") and tag.split(".")[0] == mlflow.__version__.split(".")[0]
    assert container["image"].endswith(f"/leebert-mlflow:{tag}")
    installs = " ".join(arg for name, arg in instructions if name == "RUN")
    assert "psycopg2-binary" in installs and "boto3" in installs


def test_the_mlflow_server_requires_a_user_and_admits_only_ray_pods(tmp_path, monkeypatch):
    from mlflow.cli import server
    from mlflow.server.auth.config import read_auth_config

    docs = mlflow_manifests()
    deployment = docs["Deployment/leebert-mlflow"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    params = server.make_context("mlflow server", list(container["args"])).params
    assert params["app_name"] == "basic-auth"
    env = env_of(container)
    # the auth config: MLflow's own reader, on the ConfigMap the pod mounts
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    config_path = Path(env["MLFLOW_AUTH_CONFIG_PATH"]["value"])
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[str(config_path.parent)])
    config_map = docs[f"ConfigMap/{volume['configMap']['name']}"]
    (tmp_path / config_path.name).write_text(config_map["data"][config_path.name])
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(tmp_path / config_path.name))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    auth = read_auth_config()
    users_db = urlparse(auth.database_uri)
    backend = urlparse(params["backend_store_uri"])
    assert users_db.scheme == "postgresql" and users_db.password is None and users_db.hostname == backend.hostname
    assert users_db.path != backend.path, "the users get their own database"
    database = docs["StatefulSet/leebert-postgres"]["spec"]["template"]["spec"]
    init = next(v for v in database["volumes"] if "configMap" in v)
    scripts = docs[f"ConfigMap/{init['configMap']['name']}"]["data"]
    assert any(f"CREATE DATABASE {users_db.path.lstrip('/')} " in sql for sql in scripts.values())
    assert {m["mountPath"] for m in database["containers"][0]["volumeMounts"]} >= {"/docker-entrypoint-initdb.d"}
    assert auth.admin_password is None, "no admin password in the config: it comes from the Secret"
    assert auth.default_permission == "READ"
    for name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "leebert-mlflow-admin", name
    # the NetworkPolicies: MLflow from Ray pods only, Postgres from MLflow only
    mlflow_labels = deployment["spec"]["template"]["metadata"]["labels"]
    policies = {name.split("/", 1)[1]: d for name, d in docs.items() if name.startswith("NetworkPolicy/")}
    service_port = docs["Service/leebert-mlflow"]["spec"]["ports"][0]["port"]
    for name, selected, admitted, port in (
            ("leebert-mlflow", mlflow_labels, {"ray.io/is-ray-node": "yes"}, service_port),
            ("leebert-postgres", docs["StatefulSet/leebert-postgres"]["spec"]["template"]["metadata"]["labels"],
             mlflow_labels, 5432)):
        spec = policies[name]["spec"]
        assert spec["podSelector"]["matchLabels"].items() <= selected.items() and spec["policyTypes"] == ["Ingress"]
        (rule,) = spec["ingress"]
        assert rule["from"] == [{"podSelector": {"matchLabels": admitted}}], name
        assert rule["ports"] == [{"protocol": "TCP", "port": port}], name
    # the Ray heads (the sweep driver) log in as the sweep user of one Secret, which the header creates
    secrets = set()
    for path, doc in ray_manifests():
        head = env_of(dict(pod_specs(doc))["head"]["containers"][0])
        refs = {head[k]["valueFrom"]["secretKeyRef"]["name"] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
        secrets |= refs
    assert secrets == {"leebert-mlflow-sweep"}
    header = " ".join(command_lines(MLFLOW_K8S))
    for secret in ("leebert-mlflow-sweep", "leebert-mlflow-admin"):
        assert f"kubectl create secret generic {secret}" in header
    assert "create-user.sh leebert-sweep" in header


def test_server_sh_keeps_a_reachable_server_behind_a_login(tmp_path):
    proc = run_server_sh({"MLFLOW_HOST": "0.0.0.0", "MLFLOW_AUTH": "none", "MLFLOW_STORE": str(tmp_path)})
    assert proc.returncode == 2 and "keep MLFLOW_AUTH=basic" in proc.stderr
    proc = run_server_sh({"MLFLOW_HOST": "0.0.0.0", "MLFLOW_STORE": str(tmp_path),
                          "MLFLOW_FLASK_SERVER_SECRET_KEY": ""})
    assert proc.returncode == 2 and "MLFLOW_FLASK_SERVER_SECRET_KEY" in proc.stderr
    proc = run_server_sh({"MLFLOW_AUTH": "ldap", "MLFLOW_STORE": str(tmp_path)})
    assert proc.returncode == 2 and "basic or none" in proc.stderr


def run_server_sh(env: dict, timeout: float = 20) -> subprocess.CompletedProcess:
    full = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env}
    return subprocess.run([str(SERVER_SH)], env=full, capture_output=True, text=True, timeout=timeout)


def test_server_sh_refuses_a_password_in_the_uri_and_missing_drivers(tmp_path):
    proc = run_server_sh({"MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow:hunter2@db:5432/mlflow", "MLFLOW_STORE": str(tmp_path)})
    assert proc.returncode == 2 and "PGPASSWORD" in proc.stderr and "hunter2" not in proc.stderr
    if importlib.util.find_spec("psycopg2") is None:
        proc = run_server_sh({"MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow@db:5432/mlflow"})
        assert proc.returncode == 2 and "pip install psycopg2-binary" in proc.stderr
    if importlib.util.find_spec("boto3") is None:
        proc = run_server_sh({"MLFLOW_ARTIFACTS_DESTINATION": "s3://bucket/mlflow", "MLFLOW_STORE": str(tmp_path)})
        assert proc.returncode == 2 and "pip install boto3" in proc.stderr


@pytest.mark.integration
def test_server_sh_serves_a_local_store(tmp_path):
    import requests

    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_STORE": str(tmp_path / "store"), "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1"}
    proc = subprocess.Popen([str(SERVER_SH)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            time.sleep(1)
        assert proc.poll() is None, proc.stderr.read().decode()
        response = requests.get(f"{base}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, timeout=10)
        assert response.status_code == 200 and (tmp_path / "store" / "mlflow.db").is_file()
    finally:
        proc.terminate()  # server.sh execs mlflow: this is the server, and SIGTERM stops its workers
        try:
            proc.wait(timeout=60)  # uvicorn's graceful stop took 26 s on the loaded 2-core machine
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the session this test started
            proc.wait()
