"""Sink authentication settings: the Redis password (and TLS) against a real redis-server of this test's own,
Kafka SASL/SSL settings turned into kafka-python's, and the config rules for both.

The Redis server is started here (Debian's redis-server, on free loopback ports, in a temporary folder) with
``--requirepass`` and a TLS port whose certificate comes from a throwaway CA made with ``openssl``; it is
stopped at teardown. No SASL broker is started (a Kafka with SASL listeners takes far longer than this file's
budget to come up): the Kafka side checks the producer settings built from the config, that kafka-python
takes every one of them, and that SASL settings do reach the client (against the PLAINTEXT test broker they
make the connection fail, naming the broker and never the password).
"""
from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient

from config import ConfigError, load_config
from stream.errors import SinkError
from stream.sinks.kafka import kafka_security_kwargs
from stream.sinks.redis import RedisSink, redis_auth_kwargs
from tests.factories import make_result
from tests.serve_helpers import free_port
from workers.outputs import SinkTargets, open_sinks

PASSWORD = f"pw-{uuid.uuid4().hex}"
PASSWORD_ENV = "VIDREC_TEST_REDIS_PASSWORD"


def _make_certificates(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (EC keys: quick to make)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=30)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=vidrec test CA")
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    return {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    folder = tmp_path_factory.mktemp("redis-auth")
    certs = _make_certificates(folder)
    port, tls_port = free_port(), free_port()
    log = open(folder / "redis.log", "wb")
    process = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--requirepass", PASSWORD,
         "--save", "", "--appendonly", "no", "--dir", str(folder),
         "--tls-port", str(tls_port), "--tls-cert-file", str(certs["cert"]), "--tls-key-file", str(certs["key"]),
         "--tls-ca-cert-file", str(certs["ca"]), "--tls-auth-clients", "no"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        admin = redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                admin.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start: {(folder / 'redis.log').read_text(errors='replace')[-2000:]}")
                time.sleep(0.05)
        yield SimpleNamespace(
            url=f"redis://127.0.0.1:{port}/0", tls_url=f"rediss://127.0.0.1:{tls_port}/0", ca=certs["ca"], admin=admin,
        )
        admin.close()
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


def _latest(admin: redis.Redis, prefix: str, stream_id: str) -> str | None:
    value = admin.get(f"{prefix}:latest:{stream_id}")
    return value.decode() if value is not None else None


def _assert_one_line_without_password(message: str, *fragments: str) -> None:
    assert "\n" not in message
    assert PASSWORD not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# ---- Redis -------------------------------------------------------------------------------------------------


def test_redis_password_from_the_named_variable_writes(redis_server: SimpleNamespace) -> None:
    section = load_config(None, [f"Redis.url={redis_server.url}", f"Redis.password_env={PASSWORD_ENV}"]).Redis
    kwargs = redis_auth_kwargs(section, {PASSWORD_ENV: PASSWORD})
    assert kwargs == {"password": PASSWORD}
    prefix = f"auth-{uuid.uuid4().hex[:8]}"
    sink = RedisSink(redis_server.url, key_prefix=prefix, **kwargs)
    result = make_result("door", 7)
    sink.write(result)
    sink.close()
    assert _latest(redis_server.admin, prefix, "door") == result.to_json()


@pytest.mark.parametrize("password", ["wrong-password", None], ids=["wrong", "missing"])
def test_redis_wrong_or_missing_password_is_a_one_line_sink_error(redis_server: SimpleNamespace, password: str | None) -> None:
    with pytest.raises(SinkError) as info:
        RedisSink(redis_server.url, password=password)
    _assert_one_line_without_password(str(info.value), f"cannot reach Redis at {redis_server.url}")
    assert "wrong-password" not in str(info.value)
    assert "AuthenticationError" in str(info.value)


def test_redis_user_from_the_url_and_password_from_the_environment(redis_server: SimpleNamespace) -> None:
    user = f"vidrec-{uuid.uuid4().hex[:8]}"
    secret = f"user-{uuid.uuid4().hex}"
    redis_server.admin.acl_setuser(user, enabled=True, passwords=[f"+{secret}"], keys=["acl-*"], channels=["*"], commands=["+@all"])
    url = redis_server.url.replace("redis://", f"redis://{user}@", 1)
    section = load_config(None, [f"Redis.url={url}", "Redis.password_env=VIDREC_TEST_ACL_PASSWORD"]).Redis
    sink = RedisSink(url, key_prefix="acl-x", **redis_auth_kwargs(section, {"VIDREC_TEST_ACL_PASSWORD": secret}))
    sink.write(make_result("yard", 1))
    sink.close()
    assert _latest(redis_server.admin, "acl-x", "yard") is not None
    # the user may only touch acl-* keys: the ACL user, not the default one, is the one logged in
    with pytest.raises(SinkError) as info:
        denied = RedisSink(url, key_prefix="other", password=secret)
        denied.write(make_result("yard", 2))
    assert "NoPermissionError" in str(info.value) and secret not in str(info.value)


def test_redis_tls_with_the_configured_ca(redis_server: SimpleNamespace) -> None:
    section = load_config(None, [
        f"Redis.url={redis_server.tls_url}", f"Redis.password_env={PASSWORD_ENV}", f"Redis.ssl_ca_certs={redis_server.ca}",
    ]).Redis
    kwargs = redis_auth_kwargs(section, {PASSWORD_ENV: PASSWORD})
    assert kwargs == {"password": PASSWORD, "ssl_ca_certs": str(redis_server.ca)}
    sink = RedisSink(redis_server.tls_url, key_prefix="tls", **kwargs)
    result = make_result("tls-cam", 3)
    sink.write(result)
    sink.close()
    assert _latest(redis_server.admin, "tls", "tls-cam") == result.to_json()
    # without the CA the server's certificate is not trusted
    with pytest.raises(SinkError) as info:
        RedisSink(redis_server.tls_url, password=PASSWORD)
    _assert_one_line_without_password(str(info.value), f"cannot reach Redis at {redis_server.tls_url}", "certificate verify failed")


def test_redis_missing_or_empty_password_variable_names_it() -> None:
    section = load_config(None, ["Redis.url=redis://127.0.0.1:6379/0", f"Redis.password_env={PASSWORD_ENV}"]).Redis
    with pytest.raises(SinkError) as info:
        redis_auth_kwargs(section, {})
    assert str(info.value) == (
        f"Redis.password_env: environment variable {PASSWORD_ENV} is not set (it holds the Redis password for Redis at redis://127.0.0.1:6379/0)"
    )
    with pytest.raises(SinkError, match=f"environment variable {PASSWORD_ENV} is empty"):
        redis_auth_kwargs(section, {PASSWORD_ENV: ""})
    assert redis_auth_kwargs(load_config().Redis, {}) == {}


def test_open_sinks_passes_the_redis_password_from_the_environment(
    redis_server: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(None, [f"Redis.url={redis_server.url}", f"Redis.password_env={PASSWORD_ENV}", "Redis.key_prefix=open-sinks"])
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(SinkError, match=f"environment variable {PASSWORD_ENV} is not set"):
        open_sinks(cfg, SinkTargets())
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    [sink] = open_sinks(cfg, SinkTargets())
    sink.write(make_result("cli", 1))
    sink.close()
    assert _latest(redis_server.admin, "open-sinks", "cli") is not None


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["Redis.url=redis://u:pw@127.0.0.1:6379/0", "Redis.password_env=X"], "url has a password and password_env is set"),
        (["Redis.url=redis://127.0.0.1:6379/0", "Redis.ssl_ca_certs=ca.pem"], "ssl_ca_certs needs a rediss:// url"),
        (["Redis.password_env=NOT-A-NAME"], "Redis.password_env"),
        (["Redis.password=hunter2"], "Redis.password: unknown key"),
    ],
)
def test_redis_config_rules(overrides: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert "hunter2" not in str(info.value).replace("Redis.password=hunter2", "")


def test_redis_sink_refuses_two_passwords(redis_server: SimpleNamespace) -> None:
    url = redis_server.url.replace("redis://", f"redis://default:{PASSWORD}@", 1)
    RedisSink(url).close()  # the URL's own password works
    with pytest.raises(SinkError) as info:
        RedisSink(url, password=PASSWORD)
    _assert_one_line_without_password(str(info.value), "the URL has a password and one was also given")


# ---- Kafka -------------------------------------------------------------------------------------------------


def _kafka(*overrides: str):
    return load_config(None, ["Kafka.bootstrap=127.0.0.1:9093", *overrides]).Kafka


def test_kafka_plaintext_adds_nothing() -> None:
    assert kafka_security_kwargs(_kafka(), {}) == {}


def test_kafka_sasl_ssl_settings_become_kafka_python_kwargs(tmp_path: Path) -> None:
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    for path in files.values():
        path.write_text("-----BEGIN CERTIFICATE-----\n")
    section = _kafka(
        "Kafka.security_protocol=SASL_SSL", "Kafka.sasl_mechanism=SCRAM-SHA-512", "Kafka.sasl_username=vidrec",
        "Kafka.sasl_password_env=VIDREC_TEST_KAFKA_PASSWORD", f"Kafka.ssl_cafile={files['ca']}",
        f"Kafka.ssl_certfile={files['cert']}", f"Kafka.ssl_keyfile={files['key']}",
    )
    kwargs = kafka_security_kwargs(section, {"VIDREC_TEST_KAFKA_PASSWORD": "s3cret"})
    assert kwargs == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "vidrec",
        "sasl_plain_password": "s3cret", "ssl_cafile": str(files["ca"]), "ssl_certfile": str(files["cert"]),
        "ssl_keyfile": str(files["key"]),
    }
    # every one is a setting kafka-python's producer and admin client (the topic check) both know
    assert set(kwargs) <= set(KafkaProducer.DEFAULT_CONFIG) & set(KafkaAdminClient.DEFAULT_CONFIG)


def test_kafka_sasl_plaintext_and_ssl_only() -> None:
    plain = _kafka("Kafka.security_protocol=SASL_PLAINTEXT", "Kafka.sasl_mechanism=PLAIN", "Kafka.sasl_username=u",
                   "Kafka.sasl_password_env=P")
    assert kafka_security_kwargs(plain, {"P": "x"}) == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_plain_username": "u", "sasl_plain_password": "x",
    }
    assert kafka_security_kwargs(_kafka("Kafka.security_protocol=SSL"), {}) == {"security_protocol": "SSL"}


def test_kafka_missing_password_variable_or_file_is_one_line_naming_it(tmp_path: Path) -> None:
    section = _kafka("Kafka.security_protocol=SASL_SSL", "Kafka.sasl_mechanism=PLAIN", "Kafka.sasl_username=vidrec",
                     "Kafka.sasl_password_env=VIDREC_TEST_KAFKA_PASSWORD", f"Kafka.ssl_cafile={tmp_path / 'nope.pem'}")
    with pytest.raises(SinkError) as info:
        kafka_security_kwargs(section, {})
    assert str(info.value) == (
        "Kafka.sasl_password_env: environment variable VIDREC_TEST_KAFKA_PASSWORD is not set "
        "(it holds the SASL password of user 'vidrec' for Kafka at 127.0.0.1:9093)"
    )
    with pytest.raises(SinkError, match="VIDREC_TEST_KAFKA_PASSWORD is empty"):
        kafka_security_kwargs(section, {"VIDREC_TEST_KAFKA_PASSWORD": ""})
    with pytest.raises(SinkError) as info:
        kafka_security_kwargs(section, {"VIDREC_TEST_KAFKA_PASSWORD": "s3cret"})
    assert str(info.value) == f"Kafka.ssl_cafile: file {tmp_path / 'nope.pem'} not found for Kafka at 127.0.0.1:9093"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["Kafka.security_protocol=SASL_SSL"], "security_protocol SASL_SSL needs sasl_mechanism, sasl_username, sasl_password_env"),
        (["Kafka.security_protocol=SASL_PLAINTEXT", "Kafka.sasl_mechanism=PLAIN", "Kafka.sasl_username=u"], "needs sasl_password_env"),
        (["Kafka.sasl_username=u"], "sasl_username set but security_protocol is PLAINTEXT"),
        (["Kafka.security_protocol=SASL_PLAINTEXT", "Kafka.sasl_mechanism=PLAIN", "Kafka.sasl_username=u",
          "Kafka.sasl_password_env=P", "Kafka.ssl_cafile=ca.pem"], "ssl_cafile set but security_protocol is SASL_PLAINTEXT"),
        (["Kafka.security_protocol=SSL", "Kafka.ssl_keyfile=k.pem"], "ssl_keyfile set without ssl_certfile"),
        (["Kafka.security_protocol=SASL_SSL", "Kafka.sasl_mechanism=GSSAPI"], "Kafka.sasl_mechanism: must be one of"),
        (["Kafka.security_protocol=TLS"], "Kafka.security_protocol: must be one of"),
        (["Kafka.sasl_password_env=MY-VAR"], "Kafka.sasl_password_env"),
        (["Kafka.sasl_password=hunter2"], "Kafka.sasl_password: unknown key"),
    ],
)
def test_kafka_config_rules(overrides: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.timeout(60)
def test_sasl_settings_reach_the_client(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test broker speaks PLAINTEXT only: with SASL configured the sink cannot connect, and says so
    without the password (with PLAINTEXT the same broker works: tests/test_sink_kafka.py)."""
    secret = f"kafka-{uuid.uuid4().hex}"
    monkeypatch.setenv("VIDREC_TEST_KAFKA_PASSWORD", secret)
    cfg = load_config(None, [
        f"Kafka.bootstrap={kafka_bootstrap}", "Kafka.connect_timeout_s=2", "Kafka.security_protocol=SASL_PLAINTEXT",
        "Kafka.sasl_mechanism=SCRAM-SHA-256", "Kafka.sasl_username=vidrec", "Kafka.sasl_password_env=VIDREC_TEST_KAFKA_PASSWORD",
    ])
    started = time.monotonic()
    with pytest.raises(SinkError) as info:
        open_sinks(cfg, SinkTargets())
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert message.startswith(f"cannot reach Kafka at {kafka_bootstrap}:") and "\n" not in message
    assert secret not in message

