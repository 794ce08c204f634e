"""The Dockerfile and docker-compose.yml: no Docker engine runs here, so the files
are checked as files (and by `docker-compose config` when it is installed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ml_analytics.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_is_valid_for_docker_compose() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (.ci/run installs Debian's package)")
    for profile in ([], ["--profile", "monitoring"]):
        result = subprocess.run(
            [binary, "-f", str(COMPOSE), *profile, "config", "-q"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        assert result.returncode == 0, result.stderr


def test_the_service_scales_out_and_starts_after_its_dependencies() -> None:
    services = compose()["services"]
    service = services["ml-analytics"]
    assert "container_name" not in service
    # Container port only: each replica gets its own host port.
    assert all(":" not in str(port) for port in service["ports"])
    assert service["restart"] == "unless-stopped"
    assert service["mem_limit"] == "2g"
    # /tmp in memory, bounded, fresh at each restart (nothing a killed replica left).
    (scratch,) = [v for v in service["volumes"] if v["target"] == "/tmp"]
    assert scratch["type"] == "tmpfs" and 0 < scratch["tmpfs"]["size"] <= 512 * 2**20
    assert "/health" in " ".join(service["healthcheck"]["test"])
    assert service["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert service["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["init"]["command"] == ["ml-analytics", "migrate", "--topics"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["postgres"]["image"] == "postgres:16"
    assert any("postgresql/data" in volume for volume in services["postgres"]["volumes"])
    assert services["prometheus"]["profiles"] == ["monitoring"]


def test_every_variable_compose_passes_is_a_setting() -> None:
    environment = compose()["services"]["ml-analytics"]["environment"]
    known = {name.upper() for name in Settings.model_fields}
    assert set(environment) - known == set()


def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck_and_no_secrets() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", dockerfile, flags=re.MULTILINE)
    assert stages == ["python:3.11-slim", "python:3.11-slim"]
    assert re.search(r"^USER (?!root)\S+", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", dockerfile, flags=re.MULTILINE)
    assert 'CMD ["ml-analytics", "run"]' in dockerfile
    assert not re.search(r"PASSWORD|SECRET|TOKEN|DATABASE_URL", dockerfile)
    ignored = (ROOT / ".dockerignore").read_text()
    assert ignored.splitlines()[1] == "*"  # everything, then only what the image needs
    assert "!.env" not in ignored
