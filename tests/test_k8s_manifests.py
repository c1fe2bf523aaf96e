"""The Kubernetes manifests we ship pass `kubernetes-validate --strict` (a misspelt field is refused,
which plain validation lets through); the RBAC rules themselves are exercised against the API server in
test_pod_delete_kubernetes.py and test_training_pods_kubernetes.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
MANIFESTS = sorted([*ROOT.glob("docker/**/*.yaml")])
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"


def _validate(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VALIDATE), "--strict", "--kubernetes-version", "1.37", *map(str, files)],
                          capture_output=True, text=True, check=False)


def test_every_shipped_manifest_passes_strict_validation() -> None:
    assert {p.relative_to(ROOT).as_posix() for p in MANIFESTS} >= {"docker/rbac.yaml", "docker/k8s/rbac.yaml"}
    result = _validate(*MANIFESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed for resource") >= 7, result.stdout


def test_strict_validation_refuses_a_misspelt_field(tmp_path: Path) -> None:
    broken = tmp_path / "rbac.yaml"
    broken.write_text((ROOT / "docker" / "k8s" / "rbac.yaml").read_text().replace("verbs: [get]", "verb: [get]", 1))
    result = _validate(broken)
    assert result.returncode != 0 and "verb" in result.stdout + result.stderr, result.stdout + result.stderr
