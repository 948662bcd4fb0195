"""cluster.yaml: valid for the installed Ray's cluster launcher (its own schema and defaults, no cloud
contacted), token authentication on, no Ray port open to the internet, and node setup that installs
densekit's dependencies as pyproject.toml pins them, with faiss-gpu on the GPU workers."""

from __future__ import annotations

import copy
import ipaddress
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
SSH_PORT = 22


def load_cluster(path: Path = CLUSTER_YAML) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def prepared(config: dict) -> dict:
    """What `ray up` does to the file before using it: defaults of the provider merged in, setup
    commands merged per node type, then the launcher's schema check (ray-schema.json)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(config))
    validate_config(config)
    return config


def pyproject_requirements() -> dict[str, Requirement]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    reqs = [Requirement(r) for r in data["project"]["dependencies"]]
    return {r.name: r for r in reqs}


def pip_requirements(commands: list[str]) -> dict[str, Requirement]:
    """Requirements named by the `pip install` commands in `commands` (later ones win)."""
    found: dict[str, Requirement] = {}
    for command in commands:
        for part in command.split("&&"):
            words = shlex.split(part.replace(";", " ; "))
            if words[:2] != ["pip", "install"]:
                continue
            skip = False
            for w in words[2:]:
                if skip or w == ";":
                    skip = False
                    continue
                if w.startswith("-"):
                    skip = w in ("--index-url", "--extra-index-url", "-i", "-c", "-r")
                    continue
                req = Requirement(w)
                found[req.name] = req
    return found


def ray_start_commands(commands: list[str]) -> list[list[str]]:
    """Each `ray start ...` invocation as words, preceded by the variables its command exports or
    assigns before it (`export A=1; B=2 ray start ...` -> ["A=1", "B=2", "ray", "start", ...])."""
    out = []
    for command in commands:
        env: list[str] = []
        for segment in command.split(";"):
            words = shlex.split(segment)
            if words[:1] == ["export"]:
                env += words[1:]
                continue
            inline = []
            while words and "=" in words[0] and not words[0].startswith("-"):
                inline.append(words.pop(0))
            if words[:2] == ["ray", "start"]:
                out.append(env + inline + words)
    return out


def public_exposures(config: dict) -> list[str]:
    """Every way `config` opens Ray to the internet: security group rules reaching any port but SSH
    from a public range, and a dashboard not bound to loopback."""
    problems = []
    rules = config.get("provider", {}).get("security_group", {}).get("IpPermissions", []) or []
    for rule in rules:
        ranges = [r.get("CidrIp") for r in rule.get("IpRanges", [])]
        ranges += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])]
        public = [c for c in ranges if c and not ipaddress.ip_network(c, strict=False).is_private]
        lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
        all_ports = rule.get("IpProtocol") in ("-1", -1) or lo in (-1, None)
        if public and (all_ports or not (lo == hi == SSH_PORT)):
            problems.append(f"security group rule opens ports {lo}-{hi} to {public}")
    for kind in ("head_start_ray_commands", "worker_start_ray_commands"):
        for words in ray_start_commands(config.get(kind, [])):
            args = " ".join(words)
            for host in ("0.0.0.0", "::", "[::]"):
                if f"--dashboard-host={host}" in args or f"--dashboard-host {host}" in args:
                    problems.append(f"{kind}: dashboard bound to {host}")
            if "--head" in words and "--dashboard-host=127.0.0.1" not in args:
                problems.append(f"{kind}: the head's dashboard is not pinned to 127.0.0.1")
    return problems


def test_cluster_yaml_passes_the_launchers_schema():
    config = prepared(load_cluster())
    assert config["head_node_type"] in config["available_node_types"]
    worker_types = [t for t in config["available_node_types"] if t != config["head_node_type"]]
    assert worker_types
    for t in worker_types:
        node = config["available_node_types"][t]
        assert node["resources"].get("GPU", 0) >= 1 and node["max_workers"] > node.get(
            "min_workers", 0
        )
    assert config["available_node_types"][config["head_node_type"]]["resources"].get("GPU", 0) == 0

    # The check is live: a misspelt key is rejected by the same validation.
    broken = load_cluster()
    broken["head_node_typ"] = broken.pop("head_node_type")
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        prepared(broken)


def test_ray_start_flags_exist_in_installed_ray():
    from ray.scripts.scripts import start

    config = load_cluster()
    commands = ray_start_commands(
        config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    )
    assert len(commands) == 2
    for words in commands:
        args = words[words.index("start") + 1 :]
        start.make_context("start", list(args))  # click rejects an unknown or malformed flag


def test_token_authentication_is_on_everywhere():
    config = prepared(load_cluster())
    for kind in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = ray_start_commands(config[kind])
        assert starts, kind
        for words in starts:
            assert "RAY_AUTH_MODE=token" in words, (
                f"{kind}: `ray start` without RAY_AUTH_MODE=token"
            )
    mounts = {str(Path(k)): v for k, v in config["file_mounts"].items()}
    assert mounts.get("~/.ray/auth_token") == "~/.ray/auth_token", "the token must reach every node"
    setup = " && ".join(config["setup_commands"])
    assert "chmod 600 ~/.ray/auth_token" in setup
    assert "export RAY_AUTH_MODE=token" in setup  # node shells (ray status, ray job list) too


def test_no_ray_port_is_public():
    assert public_exposures(load_cluster()) == []


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda c: c["provider"]["security_group"]["IpPermissions"].append(
                {
                    "IpProtocol": "tcp",
                    "FromPort": 8265,
                    "ToPort": 8265,
                    "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
                }
            ),
            "ports 8265-8265",
        ),
        (
            lambda c: c["provider"]["security_group"]["IpPermissions"].append(
                {
                    "IpProtocol": "-1",
                    "FromPort": -1,
                    "ToPort": -1,
                    "Ipv6Ranges": [{"CidrIpv6": "::/0"}],
                }
            ),
            "ports -1--1",
        ),
        (
            lambda c: c["provider"]["security_group"]["IpPermissions"].append(
                {
                    "IpProtocol": "tcp",
                    "FromPort": 6000,
                    "ToPort": 7000,
                    "IpRanges": [{"CidrIp": "8.8.8.0/24"}],
                }
            ),
            "ports 6000-7000",
        ),
        (
            lambda c: c.__setitem__(
                "head_start_ray_commands",
                [
                    c["head_start_ray_commands"][-1].replace(
                        "--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0"
                    )
                ],
            ),
            "dashboard bound to 0.0.0.0",
        ),
    ],
)
def test_exposure_check_catches_planted_holes(change, expected):
    config = load_cluster()
    change(config)
    problems = public_exposures(config)
    assert any(expected in p for p in problems), problems


def test_exposure_check_allows_private_and_ssh_rules():
    config = load_cluster()
    config["provider"]["security_group"]["IpPermissions"] += [
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {
            "IpProtocol": "tcp",
            "FromPort": 8265,
            "ToPort": 8265,
            "IpRanges": [{"CidrIp": "10.0.0.0/8"}],
        },
    ]
    assert public_exposures(config) == []


def test_setup_installs_pyproject_dependencies_with_faiss_gpu_on_workers():
    config = prepared(load_cluster())
    wanted = pyproject_requirements()
    head = pip_requirements(config["head_setup_commands"])
    worker = pip_requirements(config["worker_setup_commands"])

    # ray: pinned to one exact version that pyproject allows, with at least pyproject's extras.
    for name, node in (("head", head), ("worker", worker)):
        ray_req = node["ray"]
        (spec,) = list(ray_req.specifier)
        assert spec.operator == "==", f"{name}: ray must be pinned with ==, got {ray_req}"
        assert wanted["ray"].specifier.contains(spec.version), (
            f"{name}: ray {spec.version} is outside pyproject's {wanted['ray'].specifier}"
        )
        assert wanted["ray"].extras <= ray_req.extras

    # Every other dependency with pyproject's own specifier (faiss handled below).
    for name, req in wanted.items():
        if name in ("ray", "faiss-cpu"):
            continue
        for node_name, node in (("head", head), ("worker", worker)):
            assert name in node, f"{node_name} setup does not install {name}"
            assert node[name].specifier == req.specifier, f"{node_name}: {node[name]} != {req}"

    # FAISS: the GPU build on GPU workers, the CPU build on the head, never both on one node.
    faiss_spec = wanted["faiss-cpu"].specifier
    assert "faiss-gpu" in worker and "faiss-cpu" not in worker
    assert worker["faiss-gpu"].specifier == faiss_spec
    assert "faiss-cpu" in head and "faiss-gpu" not in head
    # densekit itself ships with each job (jobs/runtime_env.yaml), never installed on nodes.
    assert "densekit" not in head and "densekit" not in worker
