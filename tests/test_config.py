"""Settings: every field parses from the environment or `.env`, and bad values fail by name.

The checks walk `dataclasses.fields(Settings)`, so a setting added later is
covered without touching this file: it must parse, its default must be a value
its own parser accepts, and `.env.example` and the README must list it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chat.config import ConfigError, Settings, read_env_file

ROOT = Path(__file__).resolve().parent.parent
FIELDS = list(dataclasses.fields(Settings))
# Free-form settings: any text is a valid value, so none is malformed.
FREE_FORM = {"host"}
# A malformed value for each kind of field, by the field's annotation.
MALFORMED = {
    "int": "many",
    "float": "soon",
    "bool": "maybe",
    "str": "not valid!",
    "str | None": "not a url",
    "tuple[str, ...]": "ftp://files.example.com",
}


def env_name(field: dataclasses.Field[Any]) -> str:
    return field.name.upper()


def render(value: object) -> str:
    """A value as it would be written in the environment."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def load(environ: dict[str, str], env_file: str | None = None) -> Settings:
    return Settings.from_env(environ, env_file=env_file)


def test_no_environment_gives_the_defaults() -> None:
    """An empty environment and no `.env` file give `Settings()`."""
    assert load({}) == Settings()


@pytest.mark.parametrize("field", [f for f in FIELDS if f.default is not None], ids=env_name)
def test_default_is_a_valid_value(field: dataclasses.Field[Any]) -> None:
    """Each default, written out in the environment, parses back to itself."""
    settings = load({env_name(field): render(field.default)})
    assert getattr(settings, field.name) == field.default


def test_every_field_type_parses() -> None:
    """Strings, URLs, ints, floats, booleans and origin lists come out typed."""
    settings = load(
        {
            "CHAT_ENV": "staging",
            "DATABASE_URL": "postgresql://chat@db.internal:5432/chat",
            "REDIS_URL": "rediss://cache.internal:6380/1",
            "REDIS_PREFIX": "chat-staging.1",
            "HOST": "0.0.0.0",
            "PORT": "9001",
            "ALLOWED_ORIGINS": " https://Chat.Example.com/ , http://localhost:3000,",
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "text",
            "HEARTBEAT": "2.5",
            "WS_COMPRESSION": "Yes",
            "DB_POOL_MIN": "1",
            "DB_POOL_MAX": "3",
        }
    )
    assert settings.chat_env == "staging" and not settings.production
    assert settings.database_url == "postgresql://chat@db.internal:5432/chat"
    assert settings.redis_url == "rediss://cache.internal:6380/1"
    assert settings.redis_prefix == "chat-staging.1"
    assert settings.host == "0.0.0.0"
    assert settings.port == 9001
    assert settings.allowed_origins == ("https://chat.example.com", "http://localhost:3000")
    assert settings.log_level == "DEBUG"
    assert settings.log_format == "text"
    assert settings.heartbeat == 2.5
    assert settings.ws_compression is True
    assert (settings.db_pool_min, settings.db_pool_max) == (1, 3)
    assert load({"WS_COMPRESSION": "off"}).ws_compression is False


def test_empty_url_means_unset() -> None:
    """`DATABASE_URL=` (as in a copied `.env.example`) is the same as no DATABASE_URL."""
    assert load({"DATABASE_URL": "", "REDIS_URL": ""}).database_url is None


@pytest.mark.parametrize("field", [f for f in FIELDS if f.name not in FREE_FORM], ids=env_name)
def test_malformed_value_names_the_setting(field: dataclasses.Field[Any]) -> None:
    """A value that does not parse raises ConfigError naming the setting and the value."""
    bad = MALFORMED[str(field.type)]
    with pytest.raises(ConfigError) as caught:
        load({env_name(field): bad})
    assert f"{env_name(field)}=" in str(caught.value)
    assert repr(bad) in str(caught.value)


@pytest.mark.parametrize(
    "field", [f for f in FIELDS if str(f.type) in ("int", "float")], ids=env_name
)
def test_out_of_range_number_names_the_setting(field: dataclasses.Field[Any]) -> None:
    """A number outside its setting's range fails, naming the setting and the range."""
    with pytest.raises(ConfigError, match=rf"^{env_name(field)}=.*must be between"):
        load({env_name(field): "99999999999999"})


def test_pool_bounds_must_be_ordered() -> None:
    """DB_POOL_MIN above DB_POOL_MAX is refused, naming both."""
    with pytest.raises(ConfigError, match=r"DB_POOL_MIN.*DB_POOL_MAX"):
        load({"DB_POOL_MIN": "5", "DB_POOL_MAX": "2"})


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    """`.env` supplies settings (comments, `export`, quotes); the real environment overrides it."""
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# a comment\n"
        "\n"
        "PORT=9100\n"
        "export REDIS_PREFIX='from-file'\n"
        'ALLOWED_ORIGINS="https://a.example.com,https://b.example.com"\n'
        "HEARTBEAT = 7\n",
        encoding="utf-8",
    )
    from_file = load({}, str(env_file))
    assert from_file.port == 9100
    assert from_file.redis_prefix == "from-file"
    assert from_file.allowed_origins == ("https://a.example.com", "https://b.example.com")
    assert from_file.heartbeat == 7.0
    overridden = load({"PORT": "9200"}, str(env_file))
    assert overridden.port == 9200
    assert overridden.redis_prefix == "from-file"


def test_missing_env_file_is_fine(tmp_path: Path) -> None:
    """No `.env` file is not an error: the environment alone is used."""
    assert load({"PORT": "9300"}, str(tmp_path / "absent.env")).port == 9300


def test_malformed_env_file_line_names_file_and_line(tmp_path: Path) -> None:
    """A `.env` line that is not NAME=value fails with the file and line number."""
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=9100\nthis is not a setting\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\.env:2: expected NAME=value"):
        load({}, str(env_file))


def test_malformed_value_in_env_file_names_the_setting(tmp_path: Path) -> None:
    """A bad value read from `.env` is reported like one from the environment."""
    env_file = tmp_path / ".env"
    env_file.write_text("SEND_BURST=lots\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="SEND_BURST='lots'"):
        load({}, str(env_file))


PRODUCTION = {
    "CHAT_ENV": "production",
    "DATABASE_URL": "postgresql://chat@db.internal/chat",
    "REDIS_URL": "redis://cache.internal:6379/0",
}


def test_production_with_both_urls_is_accepted() -> None:
    """CHAT_ENV=production with DATABASE_URL and REDIS_URL loads."""
    assert load(PRODUCTION).production


@pytest.mark.parametrize("missing", ["DATABASE_URL", "REDIS_URL"])
def test_production_refuses_a_missing_url(missing: str) -> None:
    """CHAT_ENV=production without DATABASE_URL or REDIS_URL fails, naming it."""
    environ = {k: v for k, v in PRODUCTION.items() if k != missing}
    with pytest.raises(ConfigError, match=f"CHAT_ENV=production needs {missing}"):
        load(environ)
    with pytest.raises(ConfigError, match=missing):
        load({**environ, missing: ""})


def test_production_refuses_weak_password_hashing() -> None:
    """CHAT_ENV=production refuses argon2 costs below the default."""
    with pytest.raises(ConfigError, match="ARGON2_MEMORY_KIB"):
        load({**PRODUCTION, "ARGON2_MEMORY_KIB": "1024"})
    assert load({"ARGON2_MEMORY_KIB": "1024"}).argon2_memory_kib == 1024


def test_env_example_lists_every_setting_with_its_default() -> None:
    """`.env.example` has a line per setting, showing its default, and loads as the defaults."""
    example = read_env_file(ROOT / ".env.example")
    assert set(example) == {env_name(f) for f in FIELDS}
    assert load({}, str(ROOT / ".env.example")) == Settings()


def test_readme_documents_every_setting() -> None:
    """README.md's configuration table has a row per setting."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", readme, re.MULTILINE))
    assert rows >= {env_name(f) for f in FIELDS}


def run_chat(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m chat ARGS` with only `env` (plus PATH) as its environment."""
    return subprocess.run(
        [sys.executable, "-m", "chat", *args],
        env={"PATH": os.environ.get("PATH", ""), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_serve_exits_on_malformed_value(tmp_path: Path) -> None:
    """`python -m chat serve` with a bad value exits non-zero, naming the setting."""
    result = run_chat(["serve"], {"HEARTBEAT": "often"}, tmp_path)
    assert result.returncode != 0
    assert "HEARTBEAT='often'" in result.stderr


def test_serve_exits_on_malformed_value_in_env_file(tmp_path: Path) -> None:
    """`python -m chat serve` reads `.env` in its working directory and names a bad value."""
    (tmp_path / ".env").write_text("MAX_FRAME_BYTES=big\n", encoding="utf-8")
    result = run_chat(["serve"], {}, tmp_path)
    assert result.returncode != 0
    assert "MAX_FRAME_BYTES='big'" in result.stderr


def test_serve_in_production_needs_database_url(tmp_path: Path) -> None:
    """`python -m chat serve` with CHAT_ENV=production and no DATABASE_URL refuses to start."""
    result = run_chat(["serve"], {"CHAT_ENV": "production"}, tmp_path)
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr


def test_serve_without_database_url_says_what_to_do(tmp_path: Path) -> None:
    """With no DATABASE_URL and no --embedded-db, serve exits naming DATABASE_URL."""
    result = run_chat(["serve"], {}, tmp_path)
    assert result.returncode != 0
    assert "DATABASE_URL is not set" in result.stderr
