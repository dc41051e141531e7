"""Config loading: typed models, and errors that name the file and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

VALID = """
[gateway]
site = "DC1"
id = "dock-1"

[broker]
host = "127.0.0.1"

[storage]
path = "state/gateway.db"

[[devices]]
id = "fl-07"
kind = "barcode_scanner"
transport = { type = "serial", port = "/dev/ttyUSB0", baudrate = 115200 }
framing = { suffix = "CRLF", aim_symbology = true }
"""

# A wrong type (baudrate), a missing key (broker.host) and an unknown key (gateway.colour).
THREE_ERRORS = """
[gateway]
site = "DC1"
id = "dock-1"
colour = "blue"

[broker]
port = 1883

[storage]
path = "gateway.db"

[[devices]]
id = "fl-07"
kind = "barcode_scanner"
transport = { type = "serial", port = "/dev/ttyUSB0", baudrate = "fast" }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_valid_config_is_typed_and_paths_resolve_from_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID))
    assert config.gateway.site == "DC1"
    assert config.broker.port == 1883
    assert config.broker.protocol == "5"
    assert config.storage.path == tmp_path / "state" / "gateway.db"
    scanner = config.devices[0]
    assert scanner.transport.baudrate == 115200
    assert scanner.framing.suffix_bytes == b"\r\n"
    assert scanner.framing.aim_symbology is True
    assert config.rules.move.timeout_s == 60


def test_three_errors_each_name_their_key(tmp_path: Path) -> None:
    path = write(tmp_path, THREE_ERRORS)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    errors = caught.value.errors
    assert len(errors) == 3, errors
    text = "\n".join(errors)
    assert f"{path}: devices[0].transport.baudrate:" in text
    assert "valid integer" in text
    assert f"{path}: broker.host: required key is missing" in text
    assert f"{path}: gateway.colour: unknown key" in text


def test_check_config_command_prints_three_errors(tmp_path: Path) -> None:
    path = write(tmp_path, THREE_ERRORS)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 3
    for key in ("devices[0].transport.baudrate", "broker.host", "gateway.colour"):
        assert any(key in line for line in lines), (key, lines)


def test_check_config_accepts_the_shipped_examples() -> None:
    root = Path(__file__).resolve().parent.parent
    demo = root / "gateway" / "examples" / "demo.toml"
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(demo)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_hardware_example_fails_only_on_what_this_machine_lacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = Path(__file__).resolve().parent.parent
    monkeypatch.delenv("GATEWAY_MQTT_PASSWORD", raising=False)
    with pytest.raises(ConfigError) as caught:
        load_config(root / "deploy" / "site.example.toml")
    # The example is well-formed: only the secret and the certificate files are missing here.
    keys = sorted(line.split(": ")[1] for line in caught.value.errors)
    assert keys == [
        "broker.password_env",
        "broker.tls.ca_file",
        "broker.tls.cert_file",
        "broker.tls.key_file",
    ]


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[gateway\nsite = 1")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in caught.value.errors[0]
    assert "not valid TOML" in caught.value.errors[0]


def test_password_from_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "mqtt.password"
    secret.write_text("s3cret\n")
    config = load_config(
        write(
            tmp_path,
            VALID.replace('host = "127.0.0.1"', 'host = "h"\npassword_file = "mqtt.password"'),
        )
    )
    assert config.broker.password() == "s3cret"
    monkeypatch.setenv("GW_PW", "from-env")
    config = load_config(
        write(tmp_path, VALID.replace('host = "127.0.0.1"', 'host = "h"\npassword_env = "GW_PW"'))
    )
    assert config.broker.password() == "from-env"


def test_a_password_typed_into_password_file_is_not_echoed(tmp_path: Path) -> None:
    typed = 'host = "h"\npassword_file = "hunter2-Secret"'
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, VALID.replace('host = "127.0.0.1"', typed)))
    text = "\n".join(caught.value.errors)
    assert "broker.password_file: the file does not exist" in text
    assert "hunter2" not in text


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ('id = "dock-1"', "gateway.id"),
        ('kind = "barcode_scanner"', "devices[0].kind"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, change: str, key: str) -> None:
    bad = VALID.replace(change, change.split("=")[0] + '= "no/slashes#"')
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, bad))
    assert any(f": {key}" in e for e in caught.value.errors), caught.value.errors


def test_duplicate_device_ids_are_refused(tmp_path: Path) -> None:
    text = VALID + VALID[VALID.index("[[devices]]") :]
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert "used twice" in caught.value.errors[0]


TCP = '{ type = "tcp", host = "10.20.3.30", port = 4305 }'
SCALE = f"""
[[devices]]
id = "scale-d03"
kind = "sics_scale"
door = "D03"
transport = {TCP}
"""


def test_an_mt_sics_scale_can_be_reached_over_tcp_or_serial(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID + SCALE))
    transport = config.devices[1].transport
    assert (transport.type, transport.host, transport.port) == ("tcp", "10.20.3.30", 4305)
    serial = SCALE.replace(TCP, '{ type = "serial", port = "/dev/ttyUSB1" }')
    assert load_config(write(tmp_path, VALID + serial)).devices[1].transport.type == "serial"


@pytest.mark.parametrize(
    ("transport", "error"),
    [
        # No default port for a scale: indicators differ, a guess would look like a dead scale.
        ('{ type = "tcp", host = "10.20.3.30" }', "transport.port: required key is missing"),
        (
            '{ type = "udp", host = "10.20.3.30", port = 4305 }',
            "transport.type: unknown transport type 'udp'; expected one of: 'serial', 'tcp'",
        ),
        ('{ host = "10.20.3.30", port = 4305 }', "transport.type: required key is missing"),
        ('{ type = "tcp", host = "10.20.3.30", port = 70000 }', "transport.port: Input should"),
        ('{ type = "tcp", host = "h", port = 1, baudrate = 9600 }', "transport.baudrate: unknown"),
    ],
)
def test_a_bad_tcp_scale_is_named(tmp_path: Path, transport: str, error: str) -> None:
    path = write(tmp_path, VALID + SCALE.replace(TCP, transport))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (only,) = caught.value.errors
    assert only.startswith(f"{path}: devices[1].{error}"), only
