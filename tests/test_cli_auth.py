"""The ``corral`` command line and API keys: ``--token``, ``corral token …``,
``ls --all-users``, and one-line errors for 401/403. First against a scripted loopback
HTTP server (what the CLI sends and prints), then end to end against a real
``corral serve --executor none`` (these need the server side of issue 8)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scripted import KEY, Answer, ScriptedServer, Seen, problem, token_body, workload_body
from tests.server import LiveServer
from tests.test_cli import one_line_error as cli_error_line

KEY_VARS = ("CORRAL_TOKEN", "CORRAL_TOKEN_FILE", "CORRAL_DATA_DIR", "CORRAL_URL")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An XDG data home with no key in it: the CLI finds only what a test gives it."""
    return tmp_path / "xdg"


def corral(
    *args: str, url: str, home: Path, token: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in KEY_VARS}
    base.update(CORRAL_URL=url, XDG_DATA_HOME=str(home), **env)
    if token is not None:
        base["CORRAL_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "corral.cli", *args],
        capture_output=True,
        text=True,
        env=base,
        timeout=60,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    return cli_error_line(result, code)


# --- against a scripted server -----------------------------------------------------------


def tokens_api(seen: Seen) -> Answer:
    if seen.method == "POST":
        return Answer(201, token_body(id="t9", **seen.json(), key=KEY))
    if seen.method == "DELETE":
        if seen.path != "/v1/tokens/t1":
            return problem(404, "not-found", f"no token {seen.path.rsplit('/', 1)[1]}")
        return Answer(200, token_body(revoked_at="2024-01-02T03:04:05.678Z"))
    return Answer(
        200,
        {
            "items": [
                token_body(id="t2", user="root", admin=True, unix_user="root"),
                token_body(revoked_at="2024-01-02T03:04:05Z", description="old laptop"),
                token_body(id="t3", user="prom", role="metrics"),
            ]
        },
    )


def test_token_create_prints_the_key_alone(home: Path) -> None:
    with ScriptedServer(tokens_api) as srv:
        result = corral("token", "create", "--user", "alice", url=srv.url, home=home, token="adm")
        assert ok(result) == KEY + "\n"  # so that KEY=$(corral token create …) works
        assert len(result.stderr.splitlines()) == 1
        assert "shown only this once" in result.stderr and "CORRAL_TOKEN" in result.stderr
        assert KEY not in result.stderr

        args = ("--admin", "--unix-user", "bob", "--description", "CI runner", "--json")
        full = json.loads(
            ok(corral("token", "create", "--user", "bob", *args, url=srv.url, home=home))
        )
        assert (full["key"], full["user"], full["admin"]) == (KEY, "bob", True)
    assert srv.seen[0].json() == {"user": "alice", "admin": False}
    assert srv.seen[0].headers["authorization"] == "Bearer adm"
    assert srv.seen[1].json() == {
        "user": "bob",
        "admin": True,
        "unix_user": "bob",
        "description": "CI runner",
    }
    assert "authorization" not in srv.seen[1].headers  # no key anywhere


def test_token_create_metrics(home: Path) -> None:
    """``--metrics NAME``: a key of role ``metrics`` for NAME, said so on stderr."""
    with ScriptedServer(tokens_api) as srv:
        result = corral("token", "create", "--metrics", "prom", url=srv.url, home=home, token="a")
        assert ok(result) == KEY + "\n"
        assert "created metrics key t9 for prom" in result.stderr
        assert "scrape job" in result.stderr and KEY not in result.stderr
    assert srv.seen[0].json() == {"user": "prom", "admin": False, "role": "metrics"}


def test_token_list_and_revoke(home: Path) -> None:
    with ScriptedServer(tokens_api) as srv:
        table = ok(corral("token", "list", url=srv.url, home=home, token="adm")).splitlines()
        assert table[0].split() == ["ID", "USER", "ROLE", "UNIX-USER", "CREATED", "REVOKED"]
        assert table[1].split() == ["t2", "root", "admin", "root", "2024-01-01T00:00:00Z", "-"]
        assert table[3].split() == ["t3", "prom", "metrics", "-", "2024-01-01T00:00:00Z", "-"]
        assert table[2].split() == [
            "t1",
            "alice",
            "user",
            "-",
            "2024-01-01T00:00:00Z",
            "2024-01-02T03:04:05Z",
        ]
        listed = json.loads(ok(corral("token", "list", "--json", url=srv.url, home=home)))
        assert [t["id"] for t in listed] == ["t2", "t1", "t3"]
        assert all("key" not in t for t in listed)

        revoked = corral("token", "revoke", "t1", url=srv.url, home=home, token="adm")
        assert ok(revoked) == "revoked t1 (alice)\n"
        missing = one_line_error(corral("token", "revoke", "t7", url=srv.url, home=home))
        assert missing == "no token t7 (corral token list lists them)"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("token", "create", "--user", "Alice"), "invalid --user 'Alice': lower-case"),
        (("token", "create", "--user", "a", "--unix-user", "x y"), "invalid --unix-user 'x y'"),
        (("token", "create"), "missing --user or --metrics (see: corral token create --help)"),
        (("token", "create", "--metrics", "Prom"), "invalid --metrics 'Prom': lower-case"),
        (
            ("token", "create", "--user", "a", "--metrics", "b"),
            "--metrics cannot be given with --user",
        ),
        (
            ("token", "create", "--metrics", "prom", "--admin"),
            "--metrics makes a key that may only read /metrics: it takes no --admin",
        ),
        (
            ("token", "create", "--metrics", "prom", "--unix-user", "x"),
            "--metrics makes a key that may only read /metrics: it takes no --unix-user",
        ),
        (("token", "revoke"), "missing ID (see: corral token revoke --help)"),
        (("--token", "two words", "ls"), "invalid --token: a key is one word"),
        (("--token", "", "ls"), "invalid --token: a key is one word"),
    ],
)
def test_malformed_key_options(home: Path, args: tuple[str, ...], expected: str) -> None:
    result = corral(*args, url="http://127.0.0.1:1", home=home)
    assert one_line_error(result, 2).startswith(expected)


def test_the_token_flag_wins_and_is_named_when_refused(home: Path) -> None:
    with ScriptedServer(problem(401, "unauthorized", "invalid API key")) as srv:
        result = corral("--token", "flag-key", "ls", url=srv.url, home=home, token="env-key")
        message = one_line_error(result, 4)
    assert srv.seen[0].headers["authorization"] == "Bearer flag-key"
    assert message.startswith(f"the corral server at {srv.url} refused the API key from --token")
    assert "corral token create" in message
    assert "flag-key" not in message


def test_no_key_found_says_where_corral_looks(home: Path, tmp_path: Path) -> None:
    with ScriptedServer(problem(401, "unauthorized", "an API key is needed")) as srv:
        data = tmp_path / "data"
        result = corral("submit", "--", "true", url=srv.url, home=home, CORRAL_DATA_DIR=str(data))
        message = one_line_error(result, 4)
    assert "none was found" in message
    assert str(data / "token") in message and str(home / "corral" / "token") in message
    assert "corral serve writes its admin key to DATA_DIR/token" in message


def test_a_key_file_is_read(home: Path, tmp_path: Path) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_text("file-key\n")
    (home / "corral").mkdir(parents=True)
    (home / "corral" / "token").write_text("default-key\n")
    with ScriptedServer(Answer(200, {"items": []})) as srv:
        ok(corral("token", "list", url=srv.url, home=home, CORRAL_TOKEN_FILE=str(keyfile)))
        ok(corral("token", "list", url=srv.url, home=home))
        missing = corral("ls", url=srv.url, home=home, CORRAL_TOKEN_FILE=str(tmp_path / "nope"))
        assert one_line_error(missing).startswith(f"the key file {tmp_path / 'nope'} named by")
    assert [s.headers["authorization"] for s in srv.seen] == [
        "Bearer file-key",
        "Bearer default-key",
    ]


def test_403_is_one_line_with_a_hint(home: Path) -> None:
    refused = problem(403, "forbidden", "listing every user's workloads needs an admin key")
    with ScriptedServer(refused) as srv:
        message = one_line_error(corral("ls", "--all-users", url=srv.url, home=home, token="u"), 4)
    assert message.startswith("listing every user's workloads needs an admin key (the key from")
    assert "$CORRAL_TOKEN is not an admin key" in message


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (problem(507, "storage-full", "the disk is full"), "the disk is full (the server's disk"),
        (
            problem(503, "busy", "the database is busy", **{"Retry-After": "300"}),
            "the database is busy (still so after the client retried; nothing was changed:",
        ),
    ],
)
def test_server_faults_are_one_line(home: Path, answer: Answer, expected: str) -> None:
    with ScriptedServer(answer) as srv:
        message = one_line_error(corral("submit", "--", "true", url=srv.url, home=home))
    assert message.startswith(expected)


def test_a_busy_server_is_retried_saying_so_once(home: Path) -> None:
    busy = problem(503, "busy", "the database is\nunreachable", **{"Retry-After": "0"})
    with ScriptedServer(busy, busy, Answer(201, workload_body())) as srv:
        result = corral("submit", "--", "true", url=srv.url, home=home)
        assert ok(result) == "w1\n"
    assert len(srv.seen) == 3
    assert result.stderr == "corral: the database is unreachable; retrying for up to 30 s…\n"


def test_ls_all_users_has_an_owner_column_and_show_the_owner(home: Path) -> None:
    def answer(seen: Seen) -> Answer:
        if seen.path.startswith("/v1/workloads?"):  # w1 is pending, and named w1 here
            items = [{**workload_body(), "name": "w1"}] if "status=pending" in seen.path else []
            return Answer(200, {"items": items, "next_cursor": None, "total": len(items)})
        if seen.path.endswith("/events"):
            return Answer(200, {"items": []})
        return Answer(200, workload_body())

    with ScriptedServer(answer) as srv:
        everyone = ok(corral("ls", "--all-users", url=srv.url, home=home)).splitlines()
        mine = ok(corral("ls", url=srv.url, home=home)).splitlines()
        shown = ok(corral("show", "w1", url=srv.url, home=home))
    assert everyone[0].split()[:3] == ["ID", "OWNER", "NAME"]
    assert everyone[1].split()[:4] == ["w1", "alice", "w1", "pending"]
    assert mine[0].split()[:2] == ["ID", "NAME"]
    assert all("all_users=true" in seen.path for seen in srv.seen[:2])  # active, finished
    assert not any("all_users" in seen.path for seen in srv.seen[2:])
    assert any(line.split() == ["owner", "alice"] for line in shown.splitlines())


# --- end to end, against a real server (needs the server side of issue 8) ---------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("cli-auth"), "--executor", "none").start()
    yield live
    live.kill()


def test_tokens_and_owners_through_the_cli(server: LiveServer, home: Path) -> None:
    admin = server.token
    assert admin, "the server wrote no admin key to DATA_DIR/token"
    url = server.url

    def as_admin(*args: str) -> subprocess.CompletedProcess[str]:
        return corral(*args, url=url, home=home, token=admin)

    dave = ok(as_admin("token", "create", "--user", "dave", "--description", "laptop")).strip()
    erin = ok(as_admin("token", "create", "--user", "erin")).strip()
    assert dave.startswith("corral_") and dave != erin

    def submit_as(key: str) -> str:
        return ok(corral("submit", "--", "true", url=url, home=home, token=key)).strip()

    dave_ids = {submit_as(dave), submit_as(dave)}
    erin_id = submit_as(erin)
    seen_by_dave = json.loads(ok(corral("ls", "--json", url=url, home=home, token=dave)))
    assert {w["id"] for w in seen_by_dave} == dave_ids
    assert {w["owner"] for w in seen_by_dave} == {"dave"}
    refused = one_line_error(corral("show", erin_id, url=url, home=home, token=dave))
    assert refused == f"no workload {erin_id} (corral ls lists them)"

    table = ok(as_admin("ls", "--all-users")).splitlines()
    assert table[0].split()[:2] == ["ID", "OWNER"]
    owners = {line.split()[0]: line.split()[1] for line in table[1:]}
    assert owners[erin_id] == "erin" and {owners[i] for i in dave_ids} == {"dave"}
    assert "owner" in ok(as_admin("show", erin_id)) and "erin" in ok(as_admin("show", erin_id))

    forbidden = one_line_error(corral("ls", "--all-users", url=url, home=home, token=dave), 4)
    assert "the key from $CORRAL_TOKEN is not an admin key" in forbidden
    one_line_error(corral("token", "list", url=url, home=home, token=dave), 4)

    listed = json.loads(ok(as_admin("token", "list", "--json")))
    by_user = {t["user"]: t for t in listed}
    assert by_user["dave"]["description"] == "laptop"
    assert all("key" not in t for t in listed)
    listing = ok(as_admin("token", "list"))
    assert dave not in listing and erin not in listing

    dave_id = by_user["dave"]["id"]
    assert ok(as_admin("token", "revoke", dave_id)) == f"revoked {dave_id} (dave)\n"
    revoked = one_line_error(corral("ls", url=url, home=home, token=dave), 4)
    assert revoked.startswith(f"the corral server at {url} refused the API key from $CORRAL_TOKEN")
    assert dave not in revoked
    assert submit_as(erin)  # other keys keep working


def test_the_server_s_own_key_is_found_without_a_step(server: LiveServer, home: Path) -> None:
    data_dir = str(server.data_dir)
    ok(corral("ls", url=server.url, home=home, CORRAL_DATA_DIR=data_dir))


def test_no_key_against_a_real_server(server: LiveServer, home: Path) -> None:
    message = one_line_error(corral("ls", url=server.url, home=home), 4)
    assert "none was found" in message
    assert str(home / "corral" / "token") in message
