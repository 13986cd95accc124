"""Configuration: one rule (flag, else SSE_STREAM_*, else default), typed
values, and every bad value refused with its flag before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import ROOT

from sse_stream.cli import common
from sse_stream.cli import main as cli
from sse_stream.core.settings import (
    CommandOptions,
    Settings,
    SettingsError,
    format_duration,
    parse_duration,
)

CLEAN_ENV = {k: v for k, v in os.environ.items()
             if not k.startswith("SSE_STREAM_") and k != "DATABASE_URL"}


def parsed(*argv: str) -> Any:
    return cli.build_parser().parse_args(list(argv))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in set(os.environ) - set(CLEAN_ENV):
        monkeypatch.delenv(name)


# -- the duration grammar -------------------------------------------------------------


@pytest.mark.parametrize("text,seconds", [
    ("250ms", 0.25), ("1.5", 1.5), ("30s", 30), ("5m", 300), ("12h", 43200),
    ("30d", 30 * 86400), ("90m", 5400), ("15", 15), ("0.003", 0.003), (" 2h ", 7200),
    ("0", 0)])
def test_one_duration_grammar(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert parse_duration(format_duration(parse_duration(text))) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "soon", "3x", "-1s", "1 day", "1y", "1.s", "1e3"])
def test_a_bad_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_durations_are_shown_as_written() -> None:
    assert [format_duration(s) for s in (15, 300, 86400, 259200, 0.25, 0.003, 1.5, 90, 0)] == \
        ["15s", "5m", "1d", "3d", "250ms", "3ms", "1.5s", "90s", "0s"]


# -- precedence: a flag, else the variable, else the default ----------------------------


def test_a_duration_flag_over_its_variable_over_its_default() -> None:
    assert Settings.load({}).heartbeat == 15.0
    assert Settings.load({"SSE_STREAM_HEARTBEAT": "5m"}).heartbeat == 300.0
    assert Settings.load({"SSE_STREAM_HEARTBEAT": "5m"}, heartbeat="250ms").heartbeat == 0.25
    # An empty variable is unset.
    assert Settings.load({"SSE_STREAM_HEARTBEAT": ""}).heartbeat == 15.0


def test_a_switch_overrides_its_variable_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSE_STREAM_CORS_CREDENTIALS", "true")
    assert common.settings_from(parsed("serve")).cors_credentials is True
    assert common.settings_from(parsed("serve", "--no-cors-credentials")).cors_credentials is False
    monkeypatch.setenv("SSE_STREAM_CORS_CREDENTIALS", "0")
    assert common.settings_from(parsed("serve")).cors_credentials is False
    assert common.settings_from(parsed("serve", "--cors-credentials")).cors_credentials is True
    # A switch that is on by default, and its variable under its older name.
    assert common.settings_from(parsed("serve")).migrate is True
    assert common.settings_from(parsed("serve", "--no-migrate")).migrate is False
    monkeypatch.setenv("SSE_STREAM_NO_MIGRATE", "1")
    assert common.settings_from(parsed("serve")).migrate is False
    assert common.settings_from(parsed("serve", "--migrate")).migrate is True
    monkeypatch.setenv("SSE_STREAM_MIGRATE", "on")  # the new name wins over the old one
    assert common.settings_from(parsed("serve")).migrate is True
    for name in ("uvloop", "webhooks"):
        assert getattr(common.settings_from(parsed("serve")), name) is True
        assert getattr(common.settings_from(parsed("serve", f"--no-{name}")), name) is False


def test_a_list_flag_over_its_variable() -> None:
    assert Settings.load({}).cors_origins == ()
    env = {"SSE_STREAM_CORS_ORIGINS": "https://a.example, https://b.example,"}
    assert Settings.load(env).cors_origins == ("https://a.example", "https://b.example")
    assert Settings.load(env, cors_origins="https://c.example").cors_origins == \
        ("https://c.example",)


def test_the_dsn_from_database_url() -> None:
    assert Settings.load({}).dsn is None
    assert Settings.load({"DATABASE_URL": "postgresql://u/a"}).dsn == "postgresql://u/a"
    both = {"DATABASE_URL": "postgresql://u/a", "SSE_STREAM_DSN": "postgresql://u/b"}
    assert Settings.load(both).dsn == "postgresql://u/b"
    assert Settings.load(both, dsn="postgresql://u/c").dsn == "postgresql://u/c"


def test_command_options_follow_the_same_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    tail = ("tail", "http://127.0.0.1:1/streams/orders")
    assert common.options_from(parsed(*tail)).start is None
    monkeypatch.setenv("SSE_STREAM_FROM", "0")
    monkeypatch.setenv("SSE_STREAM_TOKEN", "t1")
    monkeypatch.setenv("SSE_STREAM_STATE", "/tmp/state")
    options = common.options_from(parsed(*tail))
    assert (options.start, options.token, options.state) == ("0", "t1", "/tmp/state")
    options = common.options_from(parsed(*tail, "--from", "12-34", "--token", "t2"))
    assert (options.start, options.token) == ("12-34", "t2")
    publish = ("publish", "orders", "order.created")
    assert common.options_from(parsed(*publish)).batch_size == 500
    monkeypatch.setenv("SSE_STREAM_BATCH_SIZE", "7")
    assert common.options_from(parsed(*publish)).batch_size == 7
    assert common.options_from(parsed(*publish, "--batch-size", "3")).batch_size == 3
    assert CommandOptions.load({}, ttl="90m").ttl == 5400


# -- typed values, also when built in Python ------------------------------------------


def test_text_given_in_python_is_parsed() -> None:
    settings = Settings(heartbeat="15s", prune_older_than="30d", cors_origins="http://a, http://b",
                        trusted_proxies="10.0.0.0/8", webhooks_retry="1s, 2m",
                        log_level="debug", port="8081", cors_credentials="yes")
    assert settings.heartbeat == 15.0 and settings.prune_older_than == 30 * 86400
    assert settings.cors_origins == ("http://a", "http://b")
    assert settings.trusted_proxies == ("10.0.0.0/8",)
    assert settings.webhooks_retry == (1.0, 120.0)
    assert (settings.log_level, settings.port, settings.cors_credentials) == ("DEBUG", 8081, True)
    assert Settings(jwt_leeway=30).jwt_leeway == 30.0 and Settings().prune_older_than is None
    assert settings.replace(heartbeat="1m").heartbeat == 60.0


@pytest.mark.parametrize("values,message", [
    ({"port": 70000}, "--port: must be 0 to 65535, not 70000"),
    ({"port": "http"}, "--port: 'http' is not a whole number"),
    ({"workers": 0}, "--workers: must be 1 or more, not 0"),
    ({"pool_size": 0}, "--pool-size: must be 1 or more"),
    ({"page_size": 0}, "--page-size: must be 1 or more"),
    ({"max_streams": -1}, "--max-streams: must be 0 or more"),
    ({"heartbeat": "soon"}, "--heartbeat: 'soon' is not a duration"),
    ({"heartbeat": -1.0}, "--heartbeat: must be at least 0"),
    ({"prune_older_than": "3x"}, "--prune-older-than: '3x' is not a duration"),
    ({"webhooks_timeout": 0}, "--webhooks-timeout: must be more than 0"),
    ({"webhooks_retry": "5s,0s"}, "--webhooks-retry: must be more than 0"),
    ({"webhooks_retry": ""}, "--webhooks-retry: "),
    ({"log_level": "loud"}, "--log-level: 'LOUD' is not one of DEBUG, INFO"),
    ({"jwt_algorithm": "none"}, "--jwt-algorithm: 'none' is not one of HS256, RS256, ES256"),
    ({"cors_credentials": "maybe"}, "--cors-credentials: 'maybe' is neither true nor false"),
    ({"trusted_proxies": "10.0.0.0/8, proxy.example"}, "--trusted-proxies: 'proxy.example'"),
    ({"anonymous_subscribe": "news.>.x"}, "--anonymous-subscribe: in 'news.>.x', '>' may only"),
    ({"cors_origins": "*", "cors_credentials": True},
     "--cors-origins: '*' cannot go with --cors-credentials"),
    ({"webhooks_lease": 5.0, "webhooks_timeout": 4.0},
     "--webhooks-lease: must be at least --webhooks-timeout + 2s (6s), not 5s"),
])
def test_a_bad_value_is_refused_naming_its_flag(values: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings(**values)
    assert str(caught.value).startswith(message)
    assert isinstance(caught.value, ValueError)


def test_a_bad_variable_is_named_too() -> None:
    with pytest.raises(SettingsError, match=r"^--port: 'abc' is not a whole number "
                                            r"\(from SSE_STREAM_PORT\)$"):
        Settings.load({"SSE_STREAM_PORT": "abc"})
    with pytest.raises(SettingsError, match=r"^--uvloop: .* \(from SSE_STREAM_NO_UVLOOP\)$"):
        Settings.load({"SSE_STREAM_NO_UVLOOP": "perhaps"})


def test_every_command_fails_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "pgdata"
    monkeypatch.setenv("SSE_STREAM_PRUNE_BATCH", "0")
    assert cli.main(["prune", "--older-than", "30d", "--data-dir", str(data_dir)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "sse-stream prune: --prune-batch: must be 1 or more, not 0 (from "
        "SSE_STREAM_PRUNE_BATCH)"]
    assert cli.main(["webhooks", "list", "--data-dir", str(data_dir)]) == 2
    assert capsys.readouterr().err.startswith("sse-stream webhooks list: --prune-batch: ")
    monkeypatch.delenv("SSE_STREAM_PRUNE_BATCH")
    assert cli.main(["publish", "orders", "t", "--batch-size", "0",
                     "--data-dir", str(data_dir)]) == 2
    assert capsys.readouterr().err.startswith("sse-stream publish: --batch-size: must be 1")
    assert not data_dir.exists()


# -- the command line: refused before any database starts -------------------------------


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sse_stream.cli", *argv], capture_output=True,
                          text=True, timeout=60, cwd=ROOT,
                          env={**CLEAN_ENV, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("argv,message", [
    (["serve", "--cors-origins", "*", "--cors-credentials"],
     "sse-stream serve: --cors-origins: '*' cannot go with --cors-credentials: list the origins"),
    (["prune", "--older-than", "3x"],
     "sse-stream prune: --prune-older-than: '3x' is not a duration: a number and an optional "
     "unit ms, s, m, h or d (250ms, 1.5, 30s, 5m, 12h, 30d)"),
    (["serve", "--prune-older-than", "soon"], "sse-stream serve: --prune-older-than: 'soon'"),
    (["serve", "--port", "99999"], "sse-stream serve: --port: must be 0 to 65535, not 99999"),
])
def test_the_cli_refuses_before_starting_a_database(tmp_path: Path, argv: list[str],
                                                    message: str) -> None:
    data_dir = tmp_path / "pgdata"
    result = run_cli(*argv, "--data-dir", str(data_dir))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert result.stdout == "" and not data_dir.exists()


def test_help_shows_defaults_units_and_variables(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag

    def help_of(*argv: str) -> str:
        with pytest.raises(SystemExit) as caught:
            cli.main([*argv, "--help"])
        assert caught.value.code == 0
        return capsys.readouterr().out

    serve = help_of("serve")
    for text in (
            "--heartbeat DURATION  seconds of silence before a keepalive (a duration: 15s; "
            "default 15s; env SSE_STREAM_HEARTBEAT)",
            "--port N ", "(a whole number, 0 to 65535; default 8080; env SSE_STREAM_PORT)",
            "--migrate, --no-migrate", "(default on; env SSE_STREAM_MIGRATE)",
            "--no-uvloop", "--no-webhooks", "--cors-credentials, --no-cors-credentials",
            "(a comma list; default none; env SSE_STREAM_CORS_ORIGINS)",
            "(a duration: 30d; default keep everything; env SSE_STREAM_PRUNE_OLDER_THAN)",
            "default 5s,30s,2m,10m,1h;", "(a duration: 1d; default 1d; env "
            "SSE_STREAM_IDEMPOTENCY_TTL)", "default embedded; env SSE_STREAM_DSN or DATABASE_URL",
            "one of DEBUG, INFO, WARNING, ERROR, CRITICAL; default INFO"):
        assert text in serve, text
    assert "env SSE_STREAM_FROM" in help_of("tail", "http://x/streams/a")
    assert "default 500; env SSE_STREAM_BATCH_SIZE" in help_of("publish", "s", "t")
    assert "--older-than DURATION" in help_of("prune")
    assert "(a duration: 1h; default 1h; env SSE_STREAM_TTL)" in help_of("token")
