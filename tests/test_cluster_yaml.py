"""Offline checks of ray_cluster.yaml, the AWS cluster-launcher config.

These tests validate the file against Ray's own JSON schema, run it through
the same prepare/validate path that `ray up` uses, and check the properties
this project depends on. Nothing here contacts AWS: the validation step runs
with sockets blocked, and it must not import boto3 or Ray's AWS provider.
"""

import copy
import json
import re
import socket
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

import ray
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "ray_cluster.yaml"
SCHEMA_PATH = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"

HEAD_TYPE = "ray.head.cpu"
GPU_TYPE = "ray.worker.gpu"
CONSTRAINTS = "~/vae-zoo/constraints.txt"
PRIVATE_PORTS = (8265, 5000, 6379)  # dashboard, MLflow, GCS
WORLD = {"0.0.0.0/0", "::/0"}


@pytest.fixture(scope="module")
def raw():
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def schema():
    with open(SCHEMA_PATH) as f:
        return json.load(f)


@pytest.fixture
def no_network(monkeypatch):
    """Make any attempt to resolve or connect fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="module")
def prepared(raw):
    # What `ray up` works with: the file merged with Ray's AWS defaults.yaml.
    return prepare_config(copy.deepcopy(raw))


# --- schema -----------------------------------------------------------------


def test_schema_file_is_a_valid_draft7_schema(schema):
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema.get("additionalProperties") is False


def test_yaml_validates_against_rays_schema(raw, schema):
    jsonschema.Draft7Validator(schema).validate(raw)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c: c.__setitem__("bogus_key", 1), id="unknown-top-level-key"),
        pytest.param(
            lambda c: c["available_node_types"][GPU_TYPE].__setitem__("min_worker", 0),
            id="typo-in-node-type",
        ),
        pytest.param(
            lambda c: c["provider"]["security_group"].__setitem__("Ingress", []),
            id="unknown-security-group-key",
        ),
        pytest.param(
            lambda c: c["available_node_types"][GPU_TYPE]["resources"].__setitem__("GPU", 0.5),
            id="fractional-resource",
        ),
    ],
)
def test_schema_rejects_broken_copies(raw, schema, mutate):
    """Negative controls: the validation above really bites."""
    bad = copy.deepcopy(raw)
    mutate(bad)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(bad)
    # Ray's own validate_config rejects it too.
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


# --- Ray's own prepare/validate path, offline ----------------------------------


def test_ray_prepare_and_validate_config_offline(raw, no_network):
    before = set(sys.modules)
    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)
    new = set(sys.modules) - before
    # prepare_config only merges ray/autoscaler/aws/defaults.yaml. The AWS
    # bootstrap (boto3 calls) happens later in `ray up` and must not be
    # pulled in here.
    assert not [m for m in new if m.startswith(("boto", "ray.autoscaler._private.aws"))]
    assert cfg["head_node_type"] == HEAD_TYPE


def test_defaults_do_not_leak_in(prepared):
    """Ray merges defaults.yaml key by key. Every command list must be ours."""
    text = json.dumps(
        {k: prepared[k] for k in prepared if k.endswith("_commands")}
    )
    assert "0.0.0.0" not in text
    assert "ray-wheels" not in text  # the default's unpinned nightly wheel
    assert "boto3>=" not in text  # the default's unpinned boto3


# --- topology / autoscaling ---------------------------------------------------


def test_head_is_cpu_only(raw):
    head = raw["available_node_types"][raw["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"].get("CPU", 0) >= 1
    assert head["node_config"]["InstanceType"].startswith(("m", "c", "r"))


def test_gpu_workers_autoscale_from_zero(raw, prepared):
    gpu_types = {
        name: nt
        for name, nt in raw["available_node_types"].items()
        if name != raw["head_node_type"]
    }
    assert GPU_TYPE in gpu_types
    for name, nt in gpu_types.items():
        assert nt["resources"].get("GPU", 0) >= 1, name
        assert nt.get("min_workers", 0) == 0, name
        assert nt["max_workers"] >= 1, name
        assert nt["max_workers"] <= raw["max_workers"], name
    assert gpu_types[GPU_TYPE]["resources"] == {"CPU": 4, "GPU": 1}
    assert raw["idle_timeout_minutes"] > 0
    # prepare_config pins the head's own max_workers to 0.
    assert prepared["available_node_types"][HEAD_TYPE]["max_workers"] == 0


def test_provider_is_aws_with_zone_in_region(raw):
    p = raw["provider"]
    assert p["type"] == "aws"
    assert p["region"] == "us-west-2"
    zones = p["availability_zone"].split(",")
    assert zones and all(z.startswith(p["region"]) for z in zones)
    assert p["cache_stopped_nodes"] is False


def test_node_configs_have_image_and_instance_profile(raw):
    for name, nt in raw["available_node_types"].items():
        nc = nt["node_config"]
        assert re.fullmatch(r"ami-[0-9a-f]{8,17}", nc["ImageId"]), name
        assert re.fullmatch(
            r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@/-]+",
            nc["IamInstanceProfile"]["Arn"],
        ), name


def test_no_credentials_in_file():
    text = CLUSTER_YAML.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)
    assert "aws_secret_access_key" not in text.lower()


# --- start commands: nothing listens on public interfaces ----------------------


def _one_command(cmds, needle):
    hits = [c for c in cmds if needle in c]
    assert len(hits) == 1, f"expected exactly one command with {needle!r}: {cmds}"
    return hits[0]


def _flag(cmd, flag):
    m = re.search(rf"{re.escape(flag)}(?:=|\s+)(\S+)", cmd)
    assert m, f"{flag} missing in: {cmd}"
    return m.group(1).strip("'\"")


def test_dashboard_bound_to_loopback(prepared):
    cmd = _one_command(prepared["head_start_ray_commands"], "ray start --head")
    assert _flag(cmd, "--dashboard-host") == "127.0.0.1"
    assert _flag(cmd, "--port") == "6379"
    assert _flag(cmd, "--autoscaling-config") == "~/ray_bootstrap_config.yaml"


def test_mlflow_server_bound_to_loopback_on_head(prepared):
    cmd = _one_command(prepared["head_start_ray_commands"], "mlflow server")
    assert _flag(cmd, "--host") == "127.0.0.1"
    assert _flag(cmd, "--port") == "5000"
    # Absolute sqlite path (four slashes); relative ones resolve per process.
    assert _flag(cmd, "--backend-store-uri").startswith("sqlite:////")
    assert _flag(cmd, "--artifacts-destination").startswith("s3://")
    assert "nohup" in cmd
    # Not started on workers.
    assert not any("mlflow server" in c for c in prepared["worker_start_ray_commands"])


def test_workers_join_head_gcs(prepared):
    cmd = _one_command(prepared["worker_start_ray_commands"], "ray start")
    assert "--address=$RAY_HEAD_IP:6379" in cmd
    assert "--head" not in cmd


# --- setup: project installed at the pinned versions ---------------------------


def test_project_synced_and_installed_with_constraints(raw, prepared):
    assert raw["file_mounts"] == {"~/vae-zoo": "."}
    # After prepare_config, setup_commands are merged into both node kinds.
    for key in ("head_setup_commands", "worker_setup_commands"):
        cmds = prepared[key]
        install = [c for c in cmds if re.search(r"pip install .*-e ~/vae-zoo\b", c)]
        assert install, f"{key} does not install the project: {cmds}"
        assert all(f"-c {CONSTRAINTS}" in c for c in install), install


def test_every_pip_install_is_constrained_or_pinned(prepared):
    cmds = prepared["head_setup_commands"] + prepared["worker_setup_commands"]
    for c in cmds:
        if "pip install" not in c:
            continue
        assert f"-c {CONSTRAINTS}" in c, c
        # Anything beyond the project itself is pinned exactly.
        args = c.split("pip install", 1)[1].split()
        pkgs = [
            a
            for i, a in enumerate(args)
            if not a.startswith("-") and args[i - 1] not in ("-c", "-e") and a != "pip"
        ]
        assert all("==" in p for p in pkgs), c


def test_constraints_pin_pyproject_dependencies():
    """constraints.txt, which the cluster installs with, matches pyproject's pins."""
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            r = Requirement(line)
            pins[r.name.lower().replace("_", "-")] = str(r.specifier)
    for dep in deps:
        r = Requirement(dep)
        name = r.name.lower().replace("_", "-")
        assert name in pins, f"{name} not pinned in constraints.txt"
        assert pins[name] == str(r.specifier), f"{name}: {pins[name]} vs {r.specifier}"


# --- security group -------------------------------------------------------------


def _world_open_ports(rule, ports):
    """Which of `ports` this EC2 IpPermission opens to the whole internet."""
    cidrs = {r.get("CidrIp") for r in rule.get("IpRanges", [])}
    cidrs |= {r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])}
    if not cidrs & WORLD:
        return set()
    if str(rule.get("IpProtocol")) in ("-1", "all"):
        return set(ports)
    lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
    if lo == -1:
        return set(ports)
    return {p for p in ports if lo <= p <= hi}


def test_world_open_check_bites():
    assert _world_open_ports(
        {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, PRIVATE_PORTS
    ) == set(PRIVATE_PORTS)
    assert _world_open_ports(
        {"IpProtocol": "tcp", "FromPort": 5000, "ToPort": 9000,
         "Ipv6Ranges": [{"CidrIpv6": "::/0"}]},
        PRIVATE_PORTS,
    ) == {5000, 6379, 8265}
    assert not _world_open_ports(
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
         "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        PRIVATE_PORTS,
    )


def test_no_ingress_opens_dashboard_or_mlflow_to_world(raw):
    rules = raw["provider"].get("security_group", {}).get("IpPermissions", [])
    assert rules, "expected an explicit (SSH) rule"
    for rule in rules:
        assert not _world_open_ports(rule, PRIVATE_PORTS), rule
        # Stronger: nothing we add is open to the world, SSH included.
        cidrs = {r.get("CidrIp") for r in rule.get("IpRanges", [])}
        cidrs |= {r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])}
        assert not cidrs & WORLD, rule
    assert {(r["FromPort"], r["ToPort"]) for r in rules} == {(22, 22)}
