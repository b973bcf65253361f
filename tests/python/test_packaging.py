"""The deployment files in packaging/: the systemd unit passes `systemd-analyze verify`
with no warning, every configuration shipped with the unit, the image or embedded in the
Kubernetes manifests is one weir accepts and agrees with the files around it (ports,
probe path, config path, state directory), and the container image builds from scratch
with podman (a static binary, a non-root user, its ports and health check declared)."""

import json
import os
import pathlib
import shutil
import subprocess
import tarfile
import tomllib

import pytest
import yaml

from weir_process import ROOT, WEIR

PACKAGING = ROOT / "packaging"


def validate(tmp_path, text, name="weir.toml"):
    """`weir validate` on `text`; fails the test with weir's message if refused."""
    path = tmp_path / name
    path.write_text(text)
    run = subprocess.run([WEIR, "validate", "--config", path], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "config OK"


def unit_directives(text):
    """`(section, key) -> [values]` of a systemd unit file."""
    found, section = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault((section, key), []).append(value)
    return found


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_systemd_unit_verifies_without_a_warning(tmp_path):
    unit = (PACKAGING / "systemd" / "weir.service").read_text()
    config = PACKAGING / "systemd" / "weir.toml"
    validate(tmp_path, config.read_text())
    # verify checks that ExecStart's binary exists: point it at the one under test.
    local = unit.replace("/usr/bin/weir --config /etc/weir/weir.toml", f"{WEIR} --config {config}")
    assert local != unit, "ExecStart changed: update this test"
    (tmp_path / "weir.service").write_text(local)
    run = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / "weir.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Unknown keys and bad values are warnings with exit status 0: none may appear.
    warnings = [l for l in (run.stdout + run.stderr).splitlines() if "weir.service" in l]
    assert run.returncode == 0 and not warnings, run.stdout + run.stderr

    d = unit_directives(unit)
    assert d[("Service", "Restart")] == ["on-failure"]
    assert d[("Service", "ExecReload")] == ["/bin/kill -HUP $MAINPID"]
    assert d[("Service", "DynamicUser")] == ["yes"]
    assert d[("Service", "StateDirectory")] == ["weir"]
    assert d[("Service", "NoNewPrivileges")] == ["yes"]
    assert d[("Service", "ProtectSystem")] == ["strict"]
    # The WALs go where systemd keeps the state directory.
    assert tomllib.loads(config.read_text())["data_dir"] == "/var/lib/weir"


def manifests(name):
    return [doc for doc in yaml.safe_load_all((PACKAGING / "kubernetes" / name).read_text()) if doc]


def toml_address_ports(config):
    """Port -> protocol of every listener the config enables (defaults as documented)."""
    receivers = config.get("receivers", {})
    ports = {}
    statsd = receivers.get("statsd", {})
    if statsd.get("enabled", True):
        ports[int(statsd.get("address", "127.0.0.1:8125").rsplit(":", 1)[1])] = "UDP"
    otlp = receivers.get("otlp", {})
    if otlp.get("enabled", True):
        for key, default in (("grpc_address", "127.0.0.1:4317"), ("http_address", "127.0.0.1:4318")):
            ports[int(otlp.get(key, default).rsplit(":", 1)[1])] = "TCP"
    admin = config.get("admin", {})
    if admin.get("enabled", True):
        ports[int(admin.get("address", "127.0.0.1:8686").rsplit(":", 1)[1])] = "TCP"
    return ports


@pytest.mark.parametrize("name", ["agent-daemonset.yaml", "gateway-deployment.yaml"])
def test_the_kubernetes_manifests_agree_with_the_config_they_mount(tmp_path, name):
    docs = manifests(name)
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    (secret,) = by_kind["Secret"]
    text = secret["stringData"]["weir.toml"]
    validate(tmp_path, text)
    config = tomllib.loads(text)

    (workload,) = by_kind.get("DaemonSet", []) + by_kind.get("Deployment", [])
    pod = workload["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert workload["spec"]["selector"]["matchLabels"].items() <= workload["spec"]["template"]["metadata"]["labels"].items()

    # The config file the container reads is the Secret's key, where it is mounted.
    args = container["args"]
    config_path = pathlib.PurePosixPath(args[args.index("--config") + 1])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (config_volume,) = [n for n, v in volumes.items() if v.get("secret", {}).get("secretName") == secret["metadata"]["name"]]
    assert pathlib.PurePosixPath(mounts[config_volume]) / "weir.toml" == config_path

    # The WALs are on a volume of their own, not in the read-only root filesystem.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert config["data_dir"] in mounts.values()

    # Every port the config listens on is declared, with its protocol, and nothing else.
    declared = {p["containerPort"]: p.get("protocol", "TCP") for p in container["ports"]}
    assert declared == toml_address_ports(config)
    if pod.get("hostNetwork"):
        assert all(p.get("hostPort") == p["containerPort"] for p in container["ports"])

    # Probes ask the admin API's /health, on the admin port, bound beyond loopback.
    admin_port = int(config["admin"]["address"].rsplit(":", 1)[1])
    assert not config["admin"]["address"].startswith("127.")
    names = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/health"
        assert names.get(get["port"], get["port"]) == admin_port

    # A Service, where there is one, targets declared ports.
    for service in by_kind.get("Service", []):
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, port


def layer_files(archive, workdir):
    """Path -> tar member of every file in the layers of a `docker-archive` image save."""
    files = {}
    with tarfile.open(archive) as outer:
        outer.extractall(workdir, filter="data")
    manifest = json.loads((workdir / "manifest.json").read_text())
    for layer in manifest[0]["Layers"]:
        with tarfile.open(workdir / layer) as inner:
            for member in inner.getmembers():
                files[member.name.rstrip("/")] = member
                if member.name == "usr/bin/weir":
                    inner.extract(member, workdir / "rootfs", filter="data")
    return files


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")
def test_the_container_image_is_a_static_weir_from_scratch_run_by_a_non_root_user(tmp_path):
    text = (PACKAGING / "container" / "weir.toml").read_text()
    validate(tmp_path, text)
    config = tomllib.loads(text)
    tag = f"localhost/weir-packaging-test:{os.getpid()}"
    build = subprocess.run(
        [PACKAGING / "container" / "build.sh", "--tag", tag],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    try:
        inspect = subprocess.run(["podman", "image", "inspect", tag], capture_output=True, text=True, timeout=60)
        assert inspect.returncode == 0, inspect.stderr
        (image,) = json.loads(inspect.stdout)
        declared = image["Config"]
        assert declared["Entrypoint"] == ["/usr/bin/weir"]
        assert declared["Cmd"] == ["--config", "/etc/weir/weir.toml"]
        assert declared["User"] == "10001:10001"
        assert declared["WorkingDir"] == "/var/lib/weir"
        assert "/var/lib/weir" in declared["Volumes"]
        assert config["data_dir"] == "/var/lib/weir"

        # Exposed: every listener the image's config opens beyond loopback, no more.
        listening = {}
        for key, protocol in (("statsd", "udp"), ("statsd_tcp", "tcp")):
            address = config["receivers"][key]["address"]
            listening[f"{address.rsplit(':', 1)[1]}/{protocol}"] = address
        for key in ("grpc_address", "http_address"):
            address = config["receivers"]["otlp"][key]
            listening[f"{address.rsplit(':', 1)[1]}/tcp"] = address
        listening[f"{config['exposition']['address'].rsplit(':', 1)[1]}/tcp"] = config["exposition"]["address"]
        assert all(a.startswith("0.0.0.0:") for a in listening.values()), listening
        assert set(declared["ExposedPorts"]) == set(listening)

        # The health check asks the admin API on the container's loopback, with weir itself.
        # podman lists it beside Config, docker inside it.
        check = image.get("Healthcheck") or image["Config"].get("Healthcheck")
        assert check["Test"] == ["CMD", "/usr/bin/weir", "health", "--url", f"http://{config['admin']['address']}/health"]
        assert config["admin"]["address"].startswith("127.0.0.1:")

        # The layers hold the binary, its config, the user's files and the WAL directory
        # owned by that user: nothing else (no base image).
        archive = tmp_path / "image.tar"
        save = subprocess.run(
            ["podman", "save", "--format", "docker-archive", "-o", archive, tag],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert save.returncode == 0, save.stderr
        files = layer_files(archive, tmp_path / "image")
        regular = {name for name, m in files.items() if m.isfile()}
        assert regular == {"usr/bin/weir", "etc/weir/weir.toml", "etc/passwd", "etc/group"}
        assert files["var/lib/weir"].isdir() and (files["var/lib/weir"].uid, files["var/lib/weir"].gid) == (10001, 10001)

        # The binary has no dynamic loader to need: it runs on its own.
        binary = tmp_path / "image" / "rootfs" / "usr" / "bin" / "weir"
        elf = binary.read_bytes()
        assert elf[:4] == b"\x7fELF"
        assert b"/lib64/ld-linux" not in elf[:4096], "the binary asks for a dynamic loader"
        version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
        assert version.returncode == 0 and version.stdout.startswith("weir "), version.stdout + version.stderr
    finally:
        subprocess.run(["podman", "rmi", "--force", tag], capture_output=True, timeout=120)
