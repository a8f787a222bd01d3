import itertools

import pytest
from pydantic import ValidationError

from corral.model import (
    TERMINAL,
    TRANSITIONS,
    Status,
    WorkloadCreate,
    sources_of,
    transitions_as_data,
    valid_transition,
)

ALLOWED = {
    ("pending", "running"),
    ("pending", "killed"),
    ("running", "completed"),
    ("running", "failed"),
    ("running", "killed"),
}
ALL_PAIRS = list(itertools.product([s.value for s in Status], repeat=2))


def test_there_are_25_pairs_and_5_allowed() -> None:
    assert len(ALL_PAIRS) == 25
    assert set(ALL_PAIRS) >= ALLOWED


@pytest.mark.parametrize(("src", "dst"), sorted(ALLOWED))
def test_allowed_transition(src: str, dst: str) -> None:
    assert valid_transition(src, dst) is True
    assert valid_transition(Status(src), Status(dst)) is True


@pytest.mark.parametrize(("src", "dst"), sorted(set(ALL_PAIRS) - ALLOWED))
def test_forbidden_transition(src: str, dst: str) -> None:
    assert valid_transition(src, dst) is False


def test_unknown_status_names_are_not_valid() -> None:
    assert valid_transition("pending", "paused") is False
    assert valid_transition("paused", "running") is False


def test_terminal_is_derived_from_the_table() -> None:
    assert {Status.COMPLETED, Status.FAILED, Status.KILLED} == TERMINAL
    assert all(not TRANSITIONS[s] for s in TERMINAL)


def test_sources_and_data_view_agree_with_the_table() -> None:
    assert sources_of(Status.KILLED) == {Status.PENDING, Status.RUNNING}
    assert transitions_as_data()["pending"] == ["killed", "running"]


@pytest.mark.parametrize(
    "body",
    [
        {"command": []},
        {"command": [""]},
        {"command": ["x"], "cwd": "relative/dir"},
        {"command": ["x"], "resources": {"cpus": -1}},
        {"command": ["x"], "labels": {"bad key!": "v"}},
        {"command": ["x"], "labels": {"k": "bad value!"}},
        {"command": ["x"], "env": {"1X": "v"}},
        {"command": ["x"], "timeout_seconds": 0},
        {"command": ["x"], "name": "n" * 201},
        {"command": ["x"], "surprise": 1},
    ],
)
def test_workload_create_rejects(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        WorkloadCreate.model_validate(body)


def test_workload_create_defaults() -> None:
    spec = WorkloadCreate(command=["true"], labels={"example.com/team": "ml-1"})
    assert spec.resources.cpus == 1 and spec.resources.memory_mb == 0 and spec.resources.gpus == 0
    assert spec.priority == 0 and spec.env == {} and spec.timeout_seconds is None
