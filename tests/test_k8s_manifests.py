"""The Kubernetes manifests in deploy/k8s: valid for the Flink Kubernetes Operator, and in
agreement with the image deploy/k8s/Dockerfile builds and with rtrec's own configuration.

Needs no cluster and no Docker engine. The operator's CRDs are vendored in deploy/k8s/crds
(Apache-2.0) and every FlinkDeployment / FlinkSessionJob is validated against the schema of
its apiVersion, with the API server's rules added (int-or-string, and unknown fields
rejected as ``kubectl apply --validate=strict`` does). The Dockerfile is read as text: its
ARG/ENV/COPY/WORKDIR/RUN lines give the image layout the manifests' paths must exist in.
Each check is also run on a deliberately broken copy, to show that it can fail.
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib.util
import re
import shlex
import tempfile
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
import yaml

from rtrec.config import RtrecConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
CRDS = K8S / "crds"
# Where the CRDs were copied from, beside the checkout; absent in a fresh clone.
SHARED_CRDS = ROOT.parent / "shared" / "k8s"
CRD_FILES = {
    "FlinkDeployment": "flinkdeployments.flink.apache.org-v1.yml",
    "FlinkSessionJob": "flinksessionjobs.flink.apache.org-v1.yml",
}
CRD_LICENSE = "LICENSE-flink-kubernetes-operator"
PYTHON_DRIVER = "org.apache.flink.client.python.PythonDriver"
PROMETHEUS_FACTORY = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
# PythonDriver's own options (each takes a value); the job's arguments follow them.
DRIVER_OPTIONS = {"-py", "-pym", "-pyfs", "-pyarch", "-pyreq", "-pyexec", "-pyclientexec", "-pypath"}
# Checkpoint and savepoint folders under their Flink 2.x and pre-2.0 names.
STORAGE_KEYS = (
    "execution.checkpointing.dir",
    "state.checkpoints.dir",
    "execution.checkpointing.savepoint-dir",
    "state.savepoints.dir",
)
MAIN_CONTAINER = "flink-main-container"


# --------------------------------------------------------------------------- manifests


def load_manifests() -> list[tuple[str, dict]]:
    """(file name, document) for every YAML document in deploy/k8s/*.yaml."""
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def flink_resources() -> list[tuple[str, dict]]:
    return [(f, d) for f, d in load_manifests() if d.get("kind") in CRD_FILES]


def _ids(items: list[tuple[str, dict]]) -> list[str]:
    return [f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in items]


# --------------------------------------------------------------------------- CRD schema


def _to_jsonschema(node: dict) -> dict:
    """One node of a Kubernetes structural schema as JSON Schema.

    ``x-kubernetes-int-or-string`` becomes integer-or-string; an object with declared
    properties rejects others unless ``x-kubernetes-preserve-unknown-fields`` (the API server
    would drop them silently, ``kubectl --validate=strict`` refuses them: either way a typo
    in a field name would be lost).
    """
    out: dict = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "not", "additionalProperties") and isinstance(value, dict):
            out[key] = _to_jsonschema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [_to_jsonschema(sub) for sub in value]
        elif not key.startswith("x-kubernetes-"):
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
# What the API server checks of every object itself (the CRD's schema leaves them out).
_ROOT_FIELDS = {
    "apiVersion": {"type": "string"},
    "kind": {"type": "string"},
    "metadata": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
            "namespace": {"type": "string"},
            "labels": _STRING_MAP,
            "annotations": _STRING_MAP,
        },
        "additionalProperties": False,
    },
}


@functools.cache
def crd_validator(kind: str, api_version: str) -> jsonschema.Draft7Validator:
    crd = yaml.safe_load((CRDS / CRD_FILES[kind]).read_text())
    group, _, version = api_version.partition("/")
    assert crd["spec"]["group"] == group, f"{kind}: apiVersion group {group!r} is not the CRD's {crd['spec']['group']!r}"
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    assert version in versions, f"{kind}: the CRD serves {sorted(versions)}, not {version!r}"
    assert versions[version].get("served"), f"{kind} {version} is not served"
    schema = _to_jsonschema(versions[version]["schema"]["openAPIV3Schema"])
    schema["properties"] = {**schema.get("properties", {}), **_ROOT_FIELDS}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    schema["additionalProperties"] = False
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(doc: dict) -> list[str]:
    validator = crd_validator(doc["kind"], doc["apiVersion"])
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


# --------------------------------------------------------------------------- Dockerfile


@dataclass
class Copy:
    sources: list[str]
    dest: str
    from_stage: str | None


@dataclass
class Stage:
    name: str | None
    base: str
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    copies: list[Copy] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    workdir: str = "/"

    def subst(self, text: str) -> str:
        return _subst(text, {**self.args, **self.env})


def _subst(text: str, values: dict[str, str]) -> str:
    """${NAME} and $NAME replaced by known ARG/ENV values (others left as they are)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) with continuation lines joined and comment lines dropped, as Docker does."""
    out, buf = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        if buf.strip():
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instr, rest in _instructions(path.read_text()):
        stage = stages[-1] if stages else None
        if instr == "ARG":
            name, _, default = rest.partition("=")
            if stage is None:
                global_args[name] = _subst(default, global_args)
            else:
                stage.args[name] = stage.subst(default) if default else global_args.get(name, "")
        elif instr == "FROM":
            words = [w for w in _subst(rest, global_args).split() if not w.startswith("--")]
            stages.append(Stage(name=words[2] if len(words) > 2 and words[1].upper() == "AS" else None, base=words[0]))
        elif stage is None:
            continue
        elif instr == "ENV":
            words = shlex.split(rest)
            if "=" in words[0]:
                for word in words:
                    key, _, value = word.partition("=")
                    stage.env[key] = stage.subst(value)
            else:
                stage.env[words[0]] = stage.subst(" ".join(words[1:]))
        elif instr == "WORKDIR":
            stage.workdir = str(PurePosixPath(stage.workdir) / stage.subst(rest))
        elif instr in ("COPY", "ADD"):
            words = shlex.split(stage.subst(rest))
            flags = {w[2:].partition("=")[0]: w.partition("=")[2] for w in words if w.startswith("--")}
            paths = [w for w in words if not w.startswith("--")]
            dest = paths[-1]
            if not dest.startswith("/"):
                dest = str(PurePosixPath(stage.workdir) / dest) + ("/" if dest.endswith("/") else "")
            stage.copies.append(Copy(paths[:-1], dest, flags.get("from")))
        elif instr == "RUN":
            stage.runs.append(stage.subst(rest))
    return global_args, stages


@dataclass
class Image:
    """What deploy/k8s/Dockerfile puts where, as far as the manifests care."""

    stages: list[Stage]
    final: Stage
    flink_version: str
    files: set[str]  # absolute paths of files the final stage copies in (from the build context or stages)
    asserted: set[str]  # paths the build checks with `test -f` (from the base image)
    code_root: str  # where the project is installed (editable)
    python: str  # the interpreter (PYFLINK_CLIENT_EXECUTABLE)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def run_text(self) -> str:
        return "\n".join(self.final.runs)


def _context_files(copy_: Copy) -> set[str]:
    files = set()
    for src in copy_.sources:
        local = ROOT / src
        if local.is_dir():
            files |= {
                str(PurePosixPath(copy_.dest) / f.relative_to(local).as_posix())
                for f in local.rglob("*")
                if f.is_file() and "__pycache__" not in f.parts
            }
        elif copy_.dest.endswith("/") or len(copy_.sources) > 1:
            files.add(str(PurePosixPath(copy_.dest) / local.name))
        else:
            files.add(copy_.dest)
    return files


def _maven_jars(stage: Stage, copy_: Copy) -> set[str]:
    """The jars `mvn dependency:copy-dependencies` leaves where the COPY --from picks them up."""
    assert any("dependency:copy-dependencies" in r for r in stage.runs), f"stage {stage.name} runs no Maven copy"
    pom_copy = next(c for c in stage.copies if c.from_stage is None and c.sources == ["deploy/flink/pom.xml"])
    pom = ET.parse(ROOT / "deploy" / "flink" / "pom.xml").getroot()
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    out_dir = pom.find(".//m:plugin/m:configuration/m:outputDirectory", ns).text
    basedir = str(PurePosixPath(pom_copy.dest).parent)
    out_dir = out_dir.replace("${project.basedir}", basedir)
    props = {p.tag.split("}")[1]: p.text for p in pom.find("m:properties", ns)}
    jars = set()
    for dep in pom.findall("m:dependencies/m:dependency", ns):
        artifact = dep.find("m:artifactId", ns).text
        version = re.sub(r"\$\{([^}]+)\}", lambda m: props[m.group(1)], dep.find("m:version", ns).text)
        jars.add(f"{artifact}-{version}.jar")
    src = copy_.sources[0].rstrip("/")
    assert src == out_dir, f"COPY --from={stage.name} takes {src}, Maven writes {out_dir}"
    return {str(PurePosixPath(copy_.dest) / jar) for jar in jars}


def _image(global_args: dict[str, str], stages: list[Stage]) -> Image:
    final = stages[-1]
    files: set[str] = set()
    for c in final.copies:
        if c.from_stage is None:
            files |= _context_files(c)
        elif any("mvn " in r for r in next(s for s in stages if s.name == c.from_stage).runs):
            files |= _maven_jars(next(s for s in stages if s.name == c.from_stage), c)
        else:
            files.add(c.dest)  # a tree from another stage (e.g. /usr/local): checked on its own
    asserted = {m.group(1) for r in final.runs for m in re.finditer(r"\btest -f (\S+)", r)}
    editable = [m.group(1) for r in final.runs for m in re.finditer(r"pip install\b[^;&]*?\s-e\s+(\S+)", r)]
    return Image(
        stages=stages,
        final=final,
        flink_version=final.args.get("FLINK_VERSION") or global_args["FLINK_VERSION"],
        files=files,
        asserted=asserted,
        code_root=editable[0] if editable else "",
        python=final.env.get("PYFLINK_CLIENT_EXECUTABLE", ""),
    )


@functools.cache
def image() -> Image:
    return _image(*parse_dockerfile(K8S / "Dockerfile"))


# --------------------------------------------------------------------------- project facts


@functools.cache
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pinned_flink() -> str:
    pins = [re.fullmatch(r"apache-flink==(\S+)", d) for d in pyproject()["project"]["dependencies"]]
    return next(m.group(1) for m in pins if m)


def readme_image_tag() -> str:
    m = re.search(r"docker build\b[^\n]*?\s-t\s+(\S+)", (K8S / "README.md").read_text())
    assert m, "deploy/k8s/README.md has no `docker build ... -t IMAGE` command"
    return m.group(1)


def configmaps() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in load_manifests() if d.get("kind") == "ConfigMap"}


def rtrec_config(configmap: dict, key: str, overrides: list[str]) -> RtrecConfig:
    """The job's configuration as it will read it: the ConfigMap's file, then the --set overrides."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / key
        path.write_text(configmap["data"][key])
        return load_config(path, overrides)


def deployments() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in flink_resources() if d["kind"] == "FlinkDeployment"}


def pod_template(deployment: dict, component: str) -> tuple[list[dict], list[dict]]:
    """(volumes, main-container volumeMounts) a JobManager or TaskManager pod gets."""
    volumes, mounts = [], []
    for template in (deployment["spec"].get("podTemplate"), deployment["spec"].get(component, {}).get("podTemplate")):
        spec = (template or {}).get("spec", {})
        volumes += spec.get("volumes", [])
        for c in spec.get("containers", []):
            if c.get("name") == MAIN_CONTAINER:
                mounts += c.get("volumeMounts", [])
    return volumes, mounts


def main_containers(deployment: dict) -> list[dict]:
    templates = [deployment["spec"].get("podTemplate")] + [
        deployment["spec"].get(c, {}).get("podTemplate") for c in ("jobManager", "taskManager")
    ]
    return [c for t in templates if t for c in t.get("spec", {}).get("containers", []) if c.get("name") == MAIN_CONTAINER]


def split_args(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """PythonDriver's options (they must come first) and the job's own arguments."""
    options, i = {}, 0
    while i < len(args) and args[i] in DRIVER_OPTIONS:
        options[args[i]] = args[i + 1]
        i += 2
    return options, args[i:]


def job_args(program: list[str]) -> tuple[str | None, list[str], list[str]]:
    """jobs/rtrec_job.py main()'s arguments: (--config, --set values, anything it would not accept)."""
    config, sets, unknown, i = None, [], [], 0
    while i < len(program):
        if program[i] in ("--config", "--set") and i + 1 < len(program):
            if program[i] == "--config":
                config = program[i + 1]
            else:
                sets.append(program[i + 1])
            i += 2
        else:
            unknown.append(program[i])
            i += 1
    return config, sets, unknown


def _is_under(path: str, folder: str) -> bool:
    return PurePosixPath(path) == PurePosixPath(folder) or PurePosixPath(folder) in PurePosixPath(path).parents


def module_file(code_root: str, module: str) -> str:
    return str(PurePosixPath(code_root, *module.split(".")).with_suffix(".py"))


# --------------------------------------------------------------------------- consistency checks


def check_job(doc: dict, img: Image) -> list[str]:
    """A job spec (FlinkDeployment or FlinkSessionJob) against the image and rtrec's configuration."""
    problems = []
    job = doc["spec"]["job"]
    jar_name = f"flink-python-{img.flink_version}.jar"
    uri = job["jarURI"]
    if uri.startswith("local://"):
        path = uri.removeprefix("local://")
        if path not in img.files and path not in img.asserted:
            problems.append(f"jarURI {uri}: the image neither copies nor checks (test -f) {path}")
        if PurePosixPath(path).name != jar_name:
            problems.append(f"jarURI {uri}: the image's Flink {img.flink_version} has {jar_name}")
    elif PurePosixPath(uri).name != jar_name or f"/org/apache/flink/flink-python/{img.flink_version}/" not in uri:
        problems.append(f"jarURI {uri}: expected Maven Central's org/apache/flink/flink-python/{img.flink_version}/{jar_name}")
    if job.get("entryClass") != PYTHON_DRIVER:
        problems.append(f"entryClass {job.get('entryClass')}: a Python job starts through {PYTHON_DRIVER}")

    options, program = split_args(job.get("args", []))
    if options.get("-pyclientexec") != img.python:
        problems.append(f"-pyclientexec {options.get('-pyclientexec')}: the image's interpreter is {img.python}")
    module = options.get("-pym")
    if not module:
        problems.append("args: no -pym module")
    else:
        in_image = module_file(img.code_root, module)
        if in_image not in img.files:
            problems.append(f"-pym {module}: the image has no {in_image}")
        source = ROOT.joinpath(*module.split(".")).with_suffix(".py")
        text = source.read_text() if source.exists() else ""
        # (the job takes the command line's --config, --set and --bootstrap-servers: rtrec.cli.config_arguments)
        takes_config = '"--config"' in text or ("config_arguments(" in text
                                                and '"--config"' in (ROOT / "rtrec" / "cli.py").read_text())
        if '__name__ == "__main__"' not in text or not takes_config:
            problems.append(f"-pym {module}: {source.relative_to(ROOT)} has no __main__ taking --config")

    config_path, sets, unknown = job_args(program)
    if unknown:
        problems.append(f"args {unknown}: the job takes only --config FILE and --set KEY=VALUE")
    if not config_path:
        return [*problems, "args: no --config FILE"]
    deployment = doc if doc["kind"] == "FlinkDeployment" else deployments().get(doc["spec"].get("deploymentName"))
    if deployment is None:
        return [*problems, f"deploymentName {doc['spec'].get('deploymentName')}: no such FlinkDeployment here"]
    volumes, mounts = pod_template(deployment, "jobManager")
    folder, key = str(PurePosixPath(config_path).parent), PurePosixPath(config_path).name
    mount = next((m for m in mounts if m["mountPath"] == folder), None)
    volume = next((v for v in volumes if mount and v["name"] == mount["name"]), None)
    if not volume or "configMap" not in volume:
        return [*problems, f"--config {config_path}: no ConfigMap is mounted at {folder} in the JobManager"]
    cm = configmaps().get(volume["configMap"]["name"])
    if cm is None or key not in cm.get("data", {}) or volume["configMap"].get("items"):
        return [*problems, f"--config {config_path}: ConfigMap {volume['configMap']['name']} here has no key {key}"]
    cfg = rtrec_config(cm, key, sets)

    if job.get("parallelism") != cfg.flink.parallelism:
        problems.append(
            f"job.parallelism {job.get('parallelism')} != flink.parallelism {cfg.flink.parallelism} "
            "(the job sets its parallelism itself)"
        )
    flink_conf = deployment["spec"].get("flinkConfiguration", {})
    for name in STORAGE_KEYS:
        if name in flink_conf and cfg.flink.options.get(name) != flink_conf[name]:
            problems.append(
                f"{name}: flinkConfiguration has {flink_conf[name]}, the job overrides it with "
                f"{cfg.flink.options.get(name) or 'a folder under flink.checkpoint_dir'} (set flink.options)"
            )
    for what, path in (("flink.checkpoint_dir", cfg.flink.checkpoint_dir), ("model.versions_dir", cfg.model.versions_dir)):
        if not path:
            continue
        for component in ("jobManager", "taskManager"):
            vols, mnts = pod_template(deployment, component)
            writable = {v["name"] for v in vols if "emptyDir" in v or "persistentVolumeClaim" in v}
            if not any(m["name"] in writable and _is_under(path, m["mountPath"]) for m in mnts):
                problems.append(f"{what} {path}: not on a writable volume in the {component} pods")
    return problems


def check_deployment(doc: dict, img: Image) -> list[str]:
    """A FlinkDeployment's cluster settings against the image, the README and the project."""
    problems = []
    spec = doc["spec"]
    tag = readme_image_tag()
    if spec.get("image") != tag:
        problems.append(f"image {spec.get('image')}: README.md builds {tag}")
    if not tag.endswith(":" + pyproject()["project"]["version"]):
        problems.append(f"README.md tag {tag}: not the project version {pyproject()['project']['version']}")
    major_minor = img.flink_version.rsplit(".", 1)[0]
    if spec.get("flinkVersion") != "v" + major_minor.replace(".", "_"):
        problems.append(f"flinkVersion {spec.get('flinkVersion')}: the image has Flink {img.flink_version}")

    conf = spec.get("flinkConfiguration", {})
    not_strings = sorted(k for k, v in conf.items() if not isinstance(v, str))
    if not_strings:
        problems.append(f"flinkConfiguration values must be strings (quote them): {not_strings}")
    for key in ("python.client.executable", "python.executable"):
        if conf.get(key) != img.python:
            problems.append(f"{key} {conf.get(key)}: the image's interpreter is {img.python}")
    if img.code_root and img.code_root not in conf.get("python.pythonpath", "").split(":"):
        problems.append(f"python.pythonpath {conf.get('python.pythonpath')}: should hold {img.code_root}")
    if conf.get("python.execution-mode") != "thread":
        problems.append("python.execution-mode: rtrec runs its Python operators in thread mode")
    if conf.get("state.backend.type") != "rocksdb":
        problems.append("state.backend.type: rocksdb expected")
    if "true" not in (conf.get("execution.checkpointing.incremental"), conf.get("state.backend.incremental")):
        problems.append("incremental checkpoints are off")
    if conf.get("high-availability.type") != "kubernetes" or not conf.get("high-availability.storageDir"):
        problems.append("high-availability: type kubernetes with a storageDir expected")
    dirs = {k: conf.get(k) for k in STORAGE_KEYS}
    if not all(dirs.values()):
        problems.append(f"checkpoint and savepoint folders: set all of {list(STORAGE_KEYS)}")
    schemes = {v.split("://")[0] for v in [*dirs.values(), conf.get("high-availability.storageDir")] if v and "://" in v}
    for scheme in schemes - {"file"}:
        if f"plugins/{scheme}-fs-" not in img.run_text():
            problems.append(f"{scheme}:// storage, but the image enables no {scheme} file system plugin")

    if conf.get("metrics.reporter.prom.factory.class") != PROMETHEUS_FACTORY:
        problems.append("metrics.reporter.prom.factory.class: the Prometheus reporter expected")
    if "plugins/metrics-prometheus" not in img.run_text():
        problems.append("the image does not check or install plugins/metrics-prometheus")
    port = conf.get("metrics.reporter.prom.port")
    annotations = (spec.get("podTemplate") or {}).get("metadata", {}).get("annotations", {})
    if annotations.get("prometheus.io/port") != port:
        problems.append(f"prometheus.io/port {annotations.get('prometheus.io/port')} != reporter port {port}")
    ports = [p for c in main_containers(doc) for p in c.get("ports", [])]
    if not any(p.get("name") == "metrics" and str(p.get("containerPort")) == port for p in ports):
        problems.append(f"no container port named metrics at {port}")
    return problems


def check_kafka_secrets(deployment: dict, cfg: RtrecConfig) -> list[str]:
    """The Kafka secrets the configuration names are in every Flink pod, from a Kubernetes Secret.

    The Flink job's Java clients run in the TaskManagers and rtrec's Python clients in both kinds
    of pod, and both read the password themselves: its file must be mounted (or its variable set)
    everywhere.
    """
    problems = []
    files = {"kafka.sasl_password_file": cfg.kafka.sasl_password_file, "kafka.ssl_ca_file": cfg.kafka.ssl_ca_file}
    for component in ("jobManager", "taskManager"):
        volumes, mounts = pod_template(deployment, component)
        secrets = {v["name"]: v["secret"] for v in volumes if "secret" in v}
        for what, path in files.items():
            if not path:
                continue
            mount = next((m for m in mounts if m["name"] in secrets and _is_under(path, m["mountPath"])), None)
            if mount is None:
                problems.append(f"{what} {path}: no Secret is mounted there in the {component} pods")
                continue
            items = secrets[mount["name"]].get("items")
            key = str(PurePosixPath(path).relative_to(mount["mountPath"]))
            if items and key not in {i["path"] for i in items}:
                problems.append(f"{what} {path}: the Secret volume {mount['name']} does not project {key}")
        if cfg.kafka.sasl_password_env:
            env = [e for c in main_containers(deployment) for e in c.get("env", [])]
            source = next((e for e in env if e["name"] == cfg.kafka.sasl_password_env), None)
            if source is None or "secretKeyRef" not in source.get("valueFrom", {}):
                problems.append(f"kafka.sasl_password_env {cfg.kafka.sasl_password_env}: not set from a Secret "
                                "(valueFrom.secretKeyRef) in the Flink containers")
    return problems


# --------------------------------------------------------------------------- tests: schema

RESOURCES = flink_resources()


def test_the_folder_holds_the_application_deployment_and_a_session_job():
    kinds = {(d["kind"], "job" in d["spec"]) for _, d in RESOURCES}
    assert ("FlinkDeployment", True) in kinds
    assert ("FlinkSessionJob", True) in kinds


def test_vendored_crds_carry_their_licence():
    assert (CRDS / CRD_LICENSE).read_text().lstrip().startswith("Apache License")
    for name in CRD_FILES.values():
        crd = yaml.safe_load((CRDS / name).read_text())
        assert crd["kind"] == "CustomResourceDefinition"


def test_vendored_crds_match_the_shared_copies():
    if not SHARED_CRDS.is_dir():
        pytest.skip(f"{SHARED_CRDS} is absent (a fresh clone); the vendored deploy/k8s/crds are used as they are")
    for name in [*CRD_FILES.values(), CRD_LICENSE]:
        assert (CRDS / name).read_bytes() == (SHARED_CRDS / name).read_bytes(), f"deploy/k8s/crds/{name} differs"


@pytest.mark.parametrize("name, doc", RESOURCES, ids=_ids(RESOURCES))
def test_manifest_is_valid_for_the_operator_crd(name, doc):
    assert schema_errors(doc) == []


def _set(doc: dict, path: str, value) -> dict:
    broken = copy.deepcopy(doc)
    node = broken
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return broken


APP = next(d for _, d in RESOURCES if d["kind"] == "FlinkDeployment" and "job" in d["spec"])
SESSION_JOB = next(d for _, d in RESOURCES if d["kind"] == "FlinkSessionJob")


@pytest.mark.parametrize(
    "doc, path, value, message",
    [
        (APP, "spec.job.upgradeMode", "savepoints", "is not one of"),
        (APP, "spec.flinkVersion", "v2_9", "is not one of"),
        (APP, "spec.job.state", "paused", "is not one of"),
        (APP, "spec.job.upgradMode", "savepoint", "Additional properties"),
        (APP, "spec.jobManager.replicas", "one", "is not of type 'integer'"),
        (APP, "spec.taskManager.resource.cpu", "lots", "is not of type 'number'"),
        (APP, "spec.job.args", "-pym jobs.rtrec_job", "is not of type 'array'"),
        (APP, "metadata.name", "RTREC_Job", "does not match"),
        (SESSION_JOB, "spec.job.upgradeMode", "restart", "is not one of"),
        (SESSION_JOB, "spec.deploymentNme", "rtrec-session", "Additional properties"),
    ],
)
def test_schema_rejects_a_broken_copy(doc, path, value, message):
    errors = schema_errors(_set(doc, path, value))
    assert any(message in e for e in errors), errors


def test_schema_takes_int_or_string_quantities():
    container = {"name": MAIN_CONTAINER, "resources": {"limits": {"cpu": 2, "memory": "6Gi"}, "requests": {"cpu": "500m"}}}
    assert schema_errors(_set(APP, "spec.podTemplate.spec.containers", [container])) == []
    container["resources"]["limits"]["cpu"] = [2]
    assert schema_errors(_set(APP, "spec.podTemplate.spec.containers", [container]))


# --------------------------------------------------------------------------- tests: image and configuration


def test_dockerfile_builds_from_the_official_flink_image_of_the_pinned_version():
    img = image()
    assert img.flink_version == pinned_flink()
    assert img.final.base == f"flink:{img.flink_version}-scala_2.12-java17"
    assert img.final.base == img.stage("python").base, "Python must be built on the image it runs in"


def test_dockerfile_python_is_the_projects_and_embeddable():
    img = image()
    python = img.stage("python")
    version = python.args["PYTHON_VERSION"]
    requires = pyproject()["project"]["requires-python"]
    assert re.fullmatch(r"3\.11\.\d+", version) and ">=3.11" in requires and "<3.12" in requires
    build = "\n".join(python.runs)
    prefix = re.search(r"--prefix=(\S+)", build).group(1)
    # thread mode embeds libpython in the JVM: it must be a shared library
    assert "--enable-shared" in build and "make altinstall" in build
    assert img.python == f"{prefix}/bin/python{version.rsplit('.', 1)[0]}"
    assert any(c.from_stage == "python" and c.sources == [prefix] and c.dest == prefix for c in img.final.copies)


def test_dockerfile_installs_the_project_where_the_job_looks_for_its_files():
    img = image()
    assert img.code_root == "/opt/rtrec"
    # PROJECT_ROOT (rtrec/config.py) is the folder above the rtrec package
    assert f"{img.code_root}/rtrec/config.py" in img.files
    assert f"{img.code_root}/flink-conf/config.yaml" in img.files
    assert f"{img.code_root}/pyproject.toml" in img.files
    # jobs/environment.py: CONNECTOR_DIR = PROJECT_ROOT / "deploy" / "flink" / "lib"
    tree = ast.parse((ROOT / "jobs" / "environment.py").read_text())
    assign = next(
        n for n in ast.walk(tree) if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "CONNECTOR_DIR"
    )
    strings = [n for n in ast.walk(assign.value) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    parts = [n.value for n in sorted(strings, key=lambda n: (n.lineno, n.col_offset))]
    connector_dir = str(PurePosixPath(img.code_root, *parts))
    jars = [f for f in img.files if PurePosixPath(f).parent == PurePosixPath(connector_dir)]
    assert jars == [f"{connector_dir}/flink-sql-connector-kafka-5.0.0-2.2.jar"]
    assert not any(f.startswith("/opt/flink/lib/") for f in img.files), "the connector would be on the classpath twice"


def test_the_flink_python_jar_is_the_wheels():
    spec = importlib.util.find_spec("pyflink")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pyflink is not installed here")
    pyflink = Path(next(iter(spec.submodule_search_locations)))
    assert [p.name for p in (pyflink / "opt").glob("flink-python-*.jar")] == [f"flink-python-{image().flink_version}.jar"]
    # the Flink distribution keeps the Prometheus reporter under plugins/ (the wheel mirrors it)
    assert list((pyflink / "plugins" / "metrics-prometheus").glob(f"flink-metrics-prometheus-{image().flink_version}.jar"))


@pytest.mark.parametrize("name, doc", RESOURCES, ids=_ids(RESOURCES))
def test_manifest_agrees_with_the_image_and_the_configuration(name, doc):
    problems = []
    if doc["kind"] == "FlinkDeployment":
        problems += check_deployment(doc, image())
    if "job" in doc["spec"]:
        problems += check_job(doc, image())
    assert problems == []


def test_session_job_runs_on_a_session_cluster():
    target = deployments()[SESSION_JOB["spec"]["deploymentName"]]
    assert "job" not in target["spec"]
    assert SESSION_JOB["spec"]["job"]["args"] == APP["spec"]["job"]["args"]


@pytest.mark.parametrize(
    "doc, path, value, message",
    [
        (APP, "spec.job.args", ["-pyclientexec", "/usr/bin/python3", "-pym", "jobs.rtrec_job", "--config",
                                "/etc/rtrec/rtrec.yaml"], "-pyclientexec /usr/bin/python3"),
        (APP, "spec.job.args", ["-pyclientexec", "/usr/local/bin/python3.11", "-pym", "jobs.rtrec_jobs", "--config",
                                "/etc/rtrec/rtrec.yaml"], "the image has no /opt/rtrec/jobs/rtrec_jobs.py"),
        (APP, "spec.job.args", ["-pyclientexec", "/usr/local/bin/python3.11", "-pym", "jobs.rtrec_job", "--config",
                                "/etc/rtrec-conf/rtrec.yaml"], "no ConfigMap is mounted at /etc/rtrec-conf"),
        (APP, "spec.job.args", ["-pyclientexec", "/usr/local/bin/python3.11", "-pym", "jobs.rtrec_job", "--config",
                                "/etc/rtrec/rtrec.yml"], "has no key rtrec.yml"),
        (APP, "spec.job.args", ["--config", "/etc/rtrec/rtrec.yaml", "-pyclientexec", "/usr/local/bin/python3.11",
                                "-pym", "jobs.rtrec_job"], "no -pym module"),
        (APP, "spec.job.jarURI", "local:///opt/flink/opt/flink-python-2.1.0.jar", "neither copies nor checks"),
        (APP, "spec.job.entryClass", "org.apache.flink.client.python.PythonGatewayServer", "entryClass"),
        (APP, "spec.job.parallelism", 4, "job.parallelism 4 != flink.parallelism 2"),
        (SESSION_JOB, "spec.job.jarURI", "https://example.com/flink-python.jar", "Maven Central"),
        (SESSION_JOB, "spec.deploymentName", "rtrec-sessions", "no such FlinkDeployment"),
    ],
)
def test_job_check_catches_a_broken_copy(doc, path, value, message):
    problems = check_job(_set(doc, path, value), image())
    assert any(message in p for p in problems), problems


def test_job_check_catches_a_set_override_that_breaks_the_parallelism():
    args = [*APP["spec"]["job"]["args"], "--set", "flink.parallelism=3"]
    problems = check_job(_set(APP, "spec.job.args", args), image())
    assert any("!= flink.parallelism 3" in p for p in problems), problems


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("spec.image", "rtrec-flink:latest", "README.md builds"),
        ("spec.flinkVersion", "v2_1", "flinkVersion v2_1"),
        ("spec.flinkConfiguration.taskmanager.numberOfTaskSlots", 2, "must be strings"),
        ("spec.flinkConfiguration.python.executable", "python3", "python.executable python3"),
        ("spec.flinkConfiguration.execution.checkpointing.dir", "s3://elsewhere/checkpoints", "the job overrides it"),
        ("spec.flinkConfiguration.high-availability.storageDir", "gs://rtrec/ha", "no gs file system plugin"),
        ("spec.flinkConfiguration.metrics.reporter.prom.port", "9250", "prometheus.io/port 9249 != reporter port 9250"),
    ],
)
def test_deployment_check_catches_a_broken_copy(path, value, message):
    # flinkConfiguration keys contain dots: address them as one key below flinkConfiguration
    broken = copy.deepcopy(APP)
    if path.startswith("spec.flinkConfiguration."):
        broken["spec"]["flinkConfiguration"][path.removeprefix("spec.flinkConfiguration.")] = value
    else:
        broken = _set(APP, path, value)
    problems = check_deployment(broken, image()) + check_job(broken, image())
    assert any(message in p for p in problems), problems


def test_the_scratch_folders_must_be_writable():
    broken = copy.deepcopy(APP)
    broken["spec"]["podTemplate"]["spec"]["volumes"] = [
        v for v in broken["spec"]["podTemplate"]["spec"]["volumes"] if "emptyDir" not in v
    ]
    problems = check_job(broken, image())
    assert any("flink.checkpoint_dir /opt/rtrec/var/checkpoints: not on a writable volume" in p for p in problems)


# --------------------------------------------------------------------------- tests: the rest of the folder


def test_configmap_is_a_valid_rtrec_configuration():
    for cm in configmaps().values():
        for key in cm["data"]:
            cfg = rtrec_config(cm, key, [])
            assert cfg.model.device == "cpu", "the image carries PyTorch's CPU build"
            # (the image has no recbole wheel: a MovieLens catalogue there fails the job's start)
            for name, source in (("model.item_attributes", cfg.model.item_attributes),
                                 ("model.user_attributes", cfg.model.user_attributes),
                                 ("text.catalogue", cfg.text.catalogue)):
                assert source != "movielens-100k", f"{name}: the image has no MovieLens catalogue"


def test_kafka_credentials_come_from_a_secret_in_every_flink_pod():
    cfg = rtrec_config(configmaps()["rtrec-config"], "rtrec.yaml", [])
    assert cfg.kafka.security_protocol == "SASL_SSL" and cfg.kafka.sasl_password_file
    for name, deployment in deployments().items():
        assert check_kafka_secrets(deployment, cfg) == [], name
    broken = copy.deepcopy(deployments()["rtrec"])
    broken["spec"]["podTemplate"]["spec"]["volumes"] = [
        v for v in broken["spec"]["podTemplate"]["spec"]["volumes"] if "secret" not in v
    ]
    problems = check_kafka_secrets(broken, cfg)
    assert "kafka.sasl_password_file /etc/rtrec-kafka/password: no Secret is mounted there in the taskManager pods" \
        in problems
    with_env = rtrec_config(configmaps()["rtrec-config"], "rtrec.yaml",
                            ["kafka.sasl_password_file=", "kafka.sasl_password_env=RTREC_KAFKA_PASSWORD"])
    assert any("not set from a Secret" in p for p in check_kafka_secrets(deployments()["rtrec"], with_env))


def test_podmonitor_selects_the_flink_pods_and_their_metrics_port():
    monitor = next(d for _, d in load_manifests() if d.get("kind") == "PodMonitor")
    selector = monitor["spec"]["selector"]
    assert selector["matchLabels"] == {"type": "flink-native-kubernetes"}
    apps = next(e["values"] for e in selector["matchExpressions"] if e["key"] == "app")
    assert set(apps) == set(deployments())
    ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    for deployment in deployments().values():
        assert ports <= {p["name"] for c in main_containers(deployment) for p in c.get("ports", [])}


def test_kustomization_applies_the_configmap_and_the_application_deployment():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    resources = kustomization["resources"]
    assert all((K8S / r).is_file() for r in resources)
    assert {"configmap.yaml", "flinkdeployment.yaml"} <= set(resources)
    # the PodMonitor needs the Prometheus Operator's CRDs, the session variant replaces the application
    assert not {"podmonitor.yaml", "flinkdeployment-session.yaml", "flinksessionjob.yaml"} & set(resources)


def test_flink_conf_documents_the_reporter_but_leaves_it_off():
    text = (ROOT / "flink-conf" / "config.yaml").read_text()
    assert "metrics" not in (yaml.safe_load(text) or {})
    assert re.search(rf"^# metrics\.reporter\.prom\.factory\.class: {re.escape(PROMETHEUS_FACTORY)}$", text, re.M)
    assert re.search(r"^# metrics\.reporter\.prom\.port: 9249$", text, re.M)
