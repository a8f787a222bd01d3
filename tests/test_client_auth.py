"""``corral.Client`` and API keys: where it finds its key, what it sends, how it maps
401/403/429/5xx and when it retries (against a scripted loopback HTTP server), then
keys and owners end to end against a real ``corral serve --executor none``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import (
    APIError,
    Client,
    CorralClientError,
    Forbidden,
    InvalidInput,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
)
from corral.wire import NewToken, Status, Token
from tests.scripted import KEY, Answer, ScriptedServer, Seen, problem, token_body, workload_body
from tests.server import LiveServer, free_port

KEY_VARS = ("CORRAL_TOKEN", "CORRAL_TOKEN_FILE", "CORRAL_DATA_DIR")


@pytest.fixture
def no_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No key anywhere the client looks; returns the default data dir (not created)."""
    for name in KEY_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "corral"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def sent_key(token: str | None = None) -> str | None:
    """The Authorization header a client sends to a server."""
    with ScriptedServer(Answer(200, {"items": []})) as srv, Client(srv.url, token=token) as c:
        c.tokens()
        return srv.seen[0].headers.get("authorization")


# --- where the key comes from ---------------------------------------------------------


def test_key_discovery_order(
    no_keys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = write(no_keys / "token", "default-key\n")
    data_dir = tmp_path / "data"
    in_data_dir = write(data_dir / "token", "data-dir-key\n")
    named = write(tmp_path / "named", "  named-key\n\n")
    monkeypatch.setenv("CORRAL_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CORRAL_TOKEN_FILE", str(named))
    monkeypatch.setenv("CORRAL_TOKEN", "env-key")

    assert Client(token="arg-key").token_source == "the token argument"
    assert sent_key("arg-key") == "Bearer arg-key"
    assert Client().token_source == "$CORRAL_TOKEN"
    assert sent_key() == "Bearer env-key"

    monkeypatch.delenv("CORRAL_TOKEN")  # (set but blank is an error, tested below)
    assert Client().token_source == str(named)
    assert sent_key() == "Bearer named-key"

    monkeypatch.delenv("CORRAL_TOKEN_FILE")
    assert Client().token_source == str(in_data_dir)
    assert sent_key() == "Bearer data-dir-key"

    in_data_dir.unlink()
    assert Client().token_source == str(default)
    assert sent_key() == "Bearer default-key"

    default.unlink()
    assert Client().token_source is None
    assert sent_key() is None


def test_a_data_dir_key_goes_to_loopback_servers_only(
    no_keys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key a local server wrote is this machine's admin key: pointing the client at
    another server must not hand it over. A key given explicitly goes anywhere."""
    write(no_keys / "token", "default-key\n")
    named = write(tmp_path / "named", "named-key\n")
    for url in ("http://127.0.0.1:1", "http://localhost:1", "http://[::1]:1"):
        assert Client(url).token_source == str(no_keys / "token"), url
    for url in ("http://10.1.2.3:1", "https://corral.example.org", "http://[2001:db8::1]:1"):
        client = Client(url)
        assert client.token_source is None, url
        assert any("loopback" in place for place in client._looked_in), url
        assert Client(url, token="arg-key").token_source == "the token argument"
    monkeypatch.setenv("CORRAL_TOKEN_FILE", str(named))
    assert Client("http://10.1.2.3:1").token_source == str(named)


def test_an_explicit_key_file_must_hold_a_key(
    no_keys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(no_keys / "token", "default-key")  # never a silent fallback to it
    missing = tmp_path / "missing"
    monkeypatch.setenv("CORRAL_TOKEN_FILE", str(missing))
    with pytest.raises(CorralClientError, match=f"key file {missing} named by"):
        Client()
    monkeypatch.setenv("CORRAL_TOKEN_FILE", str(write(tmp_path / "empty", "\n")))
    with pytest.raises(CorralClientError, match="is empty"):
        Client()
    monkeypatch.setenv("CORRAL_TOKEN_FILE", str(tmp_path))  # a directory
    with pytest.raises(CorralClientError, match="cannot read the key file"):
        Client()
    with pytest.raises(CorralClientError, match="the token argument is empty"):
        Client(token="")
    monkeypatch.delenv("CORRAL_TOKEN_FILE")
    monkeypatch.setenv("CORRAL_TOKEN", " ")  # set but empty: never the data dir's key
    with pytest.raises(CorralClientError, match=r"CORRAL_TOKEN is empty \(unset CORRAL_TOKEN"):
        Client()
    monkeypatch.delenv("CORRAL_TOKEN")
    monkeypatch.setenv("CORRAL_TOKEN_FILE", "")
    with pytest.raises(CorralClientError, match=r"CORRAL_TOKEN_FILE is empty \(unset"):
        Client()


def test_a_malformed_key_is_refused_without_showing_it(no_keys: Path) -> None:
    for bad in ("two words", "line\nbreak", "caf\u00e9"):
        with pytest.raises(CorralClientError) as info:
            Client(token=bad)
        assert "malformed" in str(info.value)
        assert bad not in str(info.value)


def test_the_key_is_never_shown(no_keys: Path) -> None:
    with ScriptedServer(problem(401, "unauthorized", "unknown key")) as srv:
        client = Client(srv.url, token=KEY)
        with pytest.raises(Unauthorized) as info:
            client.get("x")
    for text in (repr(client), str(client), repr(client._headers), str(info.value)):
        assert KEY not in text
    assert KEY not in repr(info.value.args)


# --- errors ---------------------------------------------------------------------------


def test_401_names_the_key_s_source(no_keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_TOKEN", KEY)
    with (
        ScriptedServer(problem(401, "unauthorized", "invalid API key")) as srv,
        Client(srv.url) as client,
        pytest.raises(Unauthorized) as info,
    ):
        list(client.list())
    exc = info.value
    assert (exc.status, exc.token_source, exc.detail) == (401, "$CORRAL_TOKEN", "invalid API key")
    message = str(exc)
    assert "\n" not in message
    assert f"the corral server at {srv.url} refused the API key from $CORRAL_TOKEN" in message
    assert "corral token create" in message


def test_401_without_a_key_says_where_the_client_looked(
    no_keys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_DATA_DIR", str(tmp_path / "data"))
    with (
        ScriptedServer(problem(401, "unauthorized", "an API key is needed")) as srv,
        Client(srv.url) as client,
        pytest.raises(Unauthorized) as info,
    ):
        client.get("x")
    assert "authorization" not in srv.seen[0].headers
    message = str(info.value)
    assert info.value.token_source is None
    assert "none was found" in message
    for place in ("$CORRAL_TOKEN", "$CORRAL_TOKEN_FILE", tmp_path / "data" / "token"):
        assert str(place) in message
    assert str(no_keys / "token") in message
    assert "corral serve writes its admin key to DATA_DIR/token" in message


def test_an_unreadable_default_key_file_is_mentioned(no_keys: Path) -> None:
    (no_keys / "token").mkdir(parents=True)  # unreadable as a file, even for root
    client = Client("http://127.0.0.1:1")
    assert client.token_source is None
    assert f"{no_keys / 'token'} (unreadable: is a directory)" in client._looked_in


@pytest.mark.parametrize(
    ("answer", "cls", "text"),
    [
        (problem(403, "forbidden", "an admin key is needed"), Forbidden, "an admin key is needed"),
        (problem(403, "origin-not-allowed", "cross-origin"), Forbidden, "cross-origin"),
        (problem(404, "not-found", "no token 7"), NotFound, "no token 7"),
        (
            problem(409, "unix-user-conflict", "alice runs as alice"),
            InvalidInput,
            "alice runs as alice",
        ),
        (
            problem(507, "storage-full", "the disk is full"),
            ServerError,
            "the disk is full (the server's disk is full; nothing was changed: free space",
        ),
        (problem(500, "internal", "oops; see the log"), ServerError, "oops; see the log"),
        (Answer(502, "<html>Bad gateway</html>", {"Content-Type": "text/html"}), ServerError,
         "HTTP 502 Bad Gateway: <html>Bad gateway</html> (a server-side failure"),
        (problem(400, "host-not-allowed", "Host evil.example"), APIError, "Host evil.example"),
    ],
)  # fmt: skip
def test_error_answers_become_typed_errors(
    no_keys: Path, answer: Answer, cls: type[APIError], text: str
) -> None:
    with (
        ScriptedServer(answer) as srv,
        Client(srv.url, token=KEY) as client,
        pytest.raises(APIError) as info,
    ):
        client.tokens()
    assert type(info.value) is cls
    assert info.value.status == answer.status
    assert str(info.value).startswith(text)
    assert "\n" not in str(info.value)
    if isinstance(info.value, Forbidden):
        assert info.value.token_source == "the token argument"
        assert str(info.value) == info.value.detail


# --- retries --------------------------------------------------------------------------


def test_429_and_503_are_retried_after_retry_after(no_keys: Path) -> None:
    tokens = Answer(200, {"items": []})
    with ScriptedServer(
        problem(429, "rate-limited", "slow down", **{"Retry-After": "1"}),
        problem(503, "busy", "database busy", **{"Retry-After": "0"}),
        Answer(503, "unavailable", {"Content-Type": "text/plain"}),  # GET: still retried
        tokens,
    ) as srv:
        start = time.monotonic()
        with Client(srv.url, token=KEY) as client:
            assert client.tokens() == []
        took = time.monotonic() - start
    assert len(srv.seen) == 4
    assert 1.0 <= took < 5  # 1 s asked for, then short pauses


def test_a_post_is_retried_after_503_only_when_nothing_was_done(no_keys: Path) -> None:
    created = Answer(201, workload_body())
    busy = problem(503, "busy", "database busy", **{"Retry-After": "0"})
    plain = Answer(503, "proxy says no", {"Content-Type": "text/plain", "Retry-After": "0"})

    with ScriptedServer(busy, created) as srv, Client(srv.url, token=KEY) as client:
        assert client.submit(["true"]).id == "w1"  # corral's busy: it did nothing
    assert len(srv.seen) == 2 and srv.seen[0].body == srv.seen[1].body

    with (
        ScriptedServer(plain, created) as srv,
        Client(srv.url, token=KEY) as client,
        pytest.raises(ServerError) as info,
    ):
        client.submit(["true"])  # someone else's 503: it may have gone through
    assert len(srv.seen) == 1
    assert info.value.status == 503
    assert "retry later" in str(info.value)

    with ScriptedServer(plain, created) as srv, Client(srv.url, token=KEY) as client:
        assert client.submit(["true"], idempotency_key="k1").id == "w1"  # replayed if done
    assert [s.headers["idempotency-key"] for s in srv.seen] == ["k1", "k1"]


def test_retrying_stops_after_retry_for(no_keys: Path) -> None:
    limited = problem(429, "rate-limited", "rate limit exceeded", **{"Retry-After": "0"})
    with ScriptedServer(limited) as srv, Client(srv.url, token=KEY, retry_for=1) as client:
        start = time.monotonic()
        with pytest.raises(RateLimited) as info:
            client.tokens()
        took = time.monotonic() - start
    assert 0.5 <= took < 3
    assert len(srv.seen) >= 3
    assert str(info.value).startswith("rate limit exceeded (rate limited: slow down")

    # The budget counts the server's time to answer (a database that is unreachable
    # takes the server seconds to say so), not only the waits between the tries.
    slow = problem(503, "busy", "database unreachable", **{"Retry-After": "0"})
    slow.delay = 0.4
    waits: list[float] = []
    with (
        ScriptedServer(slow) as srv,
        Client(srv.url, token=KEY, retry_for=1.5, on_retry=lambda e, d: waits.append(d)) as client,
        pytest.raises(ServerError),
    ):
        start = time.monotonic()
        client.tokens()
    took = time.monotonic() - start
    assert 1.0 <= took < 1.5 + slow.delay + 0.25
    assert len(waits) == len(srv.seen) - 1 >= 2

    far = problem(503, "busy", "database busy", **{"Retry-After": "120"})
    with ScriptedServer(far) as srv, Client(srv.url, token=KEY) as client:
        start = time.monotonic()
        with pytest.raises(ServerError) as busy:
            client.tokens()
        assert time.monotonic() - start < 2  # no point waiting past the budget
    assert len(srv.seen) == 1
    assert busy.value.retry_after == 120
    assert "still so after the client retried; nothing was changed: retry later" in str(busy.value)


def test_streamed_logs_are_retried_too(no_keys: Path) -> None:
    with (
        ScriptedServer(
            problem(503, "busy", "database busy", **{"Retry-After": "0"}),
            Answer(200, b"hello\n", {"Content-Type": "text/plain"}),
        ) as srv,
        Client(srv.url, token=KEY) as client,
    ):
        assert client.logs("w1") == "hello\n"
    assert [s.path for s in srv.seen] == ["/v1/workloads/w1/logs"] * 2


def test_a_log_unavailable_503_is_raised_at_once_as_the_server_said_it(no_keys: Path) -> None:
    detail = "the log of w1 is kept by server a, which is not reachable (last seen never)"
    gone = problem(503, "log-unavailable", detail)
    never = Answer(200, b"not asked\n", {"Content-Type": "text/plain"})
    for follow in (False, True):
        with (
            ScriptedServer(gone, never) as srv,
            Client(srv.url, token=KEY) as client,
            pytest.raises(ServerError) as info,
        ):
            b"".join(client.stream_logs("w1", follow=follow))
        assert len(srv.seen) == 1  # not retried: waiting does not bring the keeper back
        assert str(info.value) == detail
        assert info.value.slug == "log-unavailable"


# --- the token API, as sent -----------------------------------------------------------


def test_token_calls_send_what_the_contract_says(no_keys: Path) -> None:
    def answer(seen: Seen) -> Answer:
        if seen.method == "POST":
            return Answer(201, token_body(**seen.json(), key=KEY))
        if seen.method == "DELETE":
            return Answer(200, token_body(revoked_at="2024-01-02T00:00:00Z"))
        if seen.path.startswith("/v1/workloads"):
            return Answer(200, {"items": [workload_body()], "next_cursor": None})
        return Answer(200, {"items": [token_body()]})

    with ScriptedServer(answer) as srv, Client(srv.url, token=KEY) as client:
        new = client.create_token("alice")
        assert isinstance(new, NewToken) and new.key == KEY
        client.create_token("bob", admin=True, unix_user="bob", description="CI")
        listed = client.tokens()
        assert listed == [Token(**token_body())]  # type: ignore[arg-type]
        revoked = client.revoke_token("t1")
        assert revoked.revoked_at == "2024-01-02T00:00:00Z"
        with pytest.raises(NotFound):
            client.revoke_token("")
        assert [w.owner for w in client.list(all_users=True)] == ["alice"]
        list(client.list())
    requests = [(s.method, s.path) for s in srv.seen]
    assert requests[:4] == [
        ("POST", "/v1/tokens"),
        ("POST", "/v1/tokens"),
        ("GET", "/v1/tokens"),
        ("DELETE", "/v1/tokens/t1"),
    ]
    assert srv.seen[0].json() == {"user": "alice", "admin": False}
    assert srv.seen[1].json() == {
        "user": "bob",
        "admin": True,
        "unix_user": "bob",
        "description": "CI",
    }
    assert srv.seen[0].headers["content-type"] == "application/json"
    assert "all_users=true" in requests[4][1]
    assert "all_users" not in requests[5][1]


# --- end to end, against a real server (needs the server side of issue 8) ------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("client-auth"), "--executor", "none").start()
    yield live
    live.kill()


@pytest.fixture
def admin(server: LiveServer) -> Iterator[Client]:
    assert server.token, "the server wrote no admin key to DATA_DIR/token"
    with Client(server.url, token=server.token) as client:
        yield client


def test_the_server_s_key_is_found_in_its_data_dir(
    server: LiveServer, no_keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_DATA_DIR", str(server.data_dir))
    with Client(server.url) as client:
        assert client.token_source == str(server.data_dir / "token")
        assert isinstance(client.tokens(), list)
    token = server.data_dir / "token"
    assert token.stat().st_mode & 0o777 == 0o600


def test_a_user_sees_only_their_own_workloads(admin: Client, server: LiveServer) -> None:
    alice = admin.create_token("alice", description="alice's laptop")
    bob = admin.create_token("bob")
    assert (alice.user, alice.admin, alice.revoked_at) == ("alice", False, None)
    assert alice.key.startswith("corral_") and alice.key != bob.key
    with Client(server.url, token=alice.key) as a, Client(server.url, token=bob.key) as b:
        mine = a.submit(["true"])
        assert mine.owner == "alice"
        assert [(w.id, w.owner) for w in a.list()] == [(mine.id, "alice")]
        assert mine.id not in [w.id for w in b.list()]
        for call in (b.get, b.events, b.kill, b.logs):
            with pytest.raises(NotFound):
                call(mine.id)  # another's id answers 404, never 403
        with pytest.raises(Forbidden) as info:
            list(a.list(all_users=True))
        assert info.value.token_source == "the token argument"
        with pytest.raises(Forbidden):
            a.tokens()
        with pytest.raises(Forbidden):
            a.create_token("mallory", admin=True)
    everyone = {w.id: w.owner for w in admin.list(all_users=True)}
    assert everyone[mine.id] == "alice"
    assert mine.id not in {w.id for w in admin.list()}  # the admin's own by default
    assert admin.get(mine.id).status is Status.PENDING  # admins see any


def test_a_revoked_key_is_refused(admin: Client, server: LiveServer) -> None:
    new = admin.create_token("carol")
    listed = {t.id: t for t in admin.tokens()}
    assert listed[new.id].user == "carol"
    assert not hasattr(listed[new.id], "key")
    with Client(server.url, token=new.key) as carol:
        carol.submit(["true"])
        revoked = admin.revoke_token(new.id)
        assert revoked.revoked_at is not None
        assert admin.revoke_token(new.id) == revoked  # again: unchanged
        with pytest.raises(Unauthorized) as info:
            list(carol.list())
    assert "refused the API key from the token argument" in str(info.value)
    with pytest.raises(NotFound):
        admin.revoke_token("no-such-token")


def test_no_key_is_refused_with_where_to_find_one(server: LiveServer, no_keys: Path) -> None:
    with Client(server.url) as client, pytest.raises(Unauthorized) as info:
        client.submit(["true"])
    assert "none was found" in str(info.value)


def test_a_loopback_server_is_reached_without_the_environment_s_proxy(
    no_keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$HTTP_PROXY would see the key, and cannot reach this machine's loopback."""
    write(no_keys / "token", "default-key\n")
    dead = free_port()
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{dead}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert sent_key() == "Bearer default-key"
