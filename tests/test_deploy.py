"""The shipped deployment files: a hardened systemd unit and the user it runs as (issue #11)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_the_systemd_unit_is_hardened() -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", str(DEPLOY / "gateway.service")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for gateway\.service: ([0-9.]+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match[1]) <= 2.0, result.stdout


def test_the_unit_runs_as_the_user_sysusers_creates() -> None:
    unit = (DEPLOY / "gateway.service").read_text()
    users = (DEPLOY / "sysusers.d" / "gateway.conf").read_text()
    user = re.search(r"^User=(\S+)$", unit, re.MULTILINE)
    assert user is not None
    assert re.search(rf"^u {user[1]} ", users, re.MULTILINE)
    assert re.search(rf"^m {user[1]} dialout$", users, re.MULTILINE)  # serial ports
    assert "UMask=0077" in unit  # the SQLite file and everything else: the user's only
