"""The JSON form of a task: its schema is generated from one source, payloads follow it."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from django.utils import timezone

from taskstate.core.models import Status, Task
from taskstate.core.states import Kind
from taskstate.web.task_json import StatusName, dumps, task_json

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "taskstate/static/taskstate/task.schema.json"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("json_schema", ROOT / "scripts/json_schema.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = _generator()
json_schema, schema_text = generator.json_schema, generator.schema_text


def validate(payload: Any, shape: str = "TaskJSON") -> None:
    """Validate ``payload`` against the committed schema, pointed at ``shape``."""
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(
        {**schema, "$ref": f"#/$defs/{shape}"},
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )
    validator.validate(json.loads(dumps(payload)))


def test_the_committed_schema_is_what_the_classes_generate():
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), (
        "taskstate/static/taskstate/task.schema.json is out of date: "
        "run python scripts/json_schema.py"
    )


def test_the_schema_is_a_valid_draft_2020_12_schema_defining_every_shape():
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert list(schema["$defs"]) == list(generator.SCHEMA_TYPES)
    assert all(d["description"] for d in schema["$defs"].values())


def test_statuses_in_the_schema_are_the_models_statuses():
    from typing import get_args

    assert list(get_args(StatusName)) == list(Status.values)
    enum = json_schema()["$defs"]["TaskJSON"]["properties"]["status"]["enum"]
    assert enum == list(Status.values)


def make(user: Any, status: str = Status.DONE, **fields: Any) -> Task:
    n = Task.objects.count() + 1
    return Task.objects.create(
        message_id=f"json-{n}", actor_name="export", status=status, user=user, **fields
    )


@pytest.mark.parametrize("status", Status.values)
def test_a_task_of_every_status_validates(user, status):
    task = make(user, status, description="Export", error_type="E", error_message="boom")
    payload = task_json(task)
    validate(payload)
    assert payload["status"] == status
    assert payload["complete"] == task.is_complete
    assert payload["times"]["created"] == task.created_at.isoformat()


def test_a_done_task_carries_its_result_link_and_may_be_dismissed(user):
    task = make(user, result={"url": "/reports/7.csv", "rows": 3})
    payload = task_json(task)
    assert payload["result_url"] == "/reports/7.csv"
    assert payload["actions"] == {"dismiss": f"/taskstate/json/seen/{task.pk}/"}
    assert payload["error"] is None


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)", "java\tscript:alert(1)", "//evil.example/x", "data:text/html,x"]
)
def test_a_result_link_a_browser_could_run_is_left_out(user, url):
    assert task_json(make(user, result={"url": url}))["result_url"] is None


def test_actions_follow_the_policy_like_the_rows_buttons(user, other_user, settings):
    running = make(user, Status.RUNNING)
    failed = make(user, Status.FAILED, retry_message={"actor_name": "export", "args": []})
    assert set(task_json(running)["actions"]) == {"cancel"}
    assert set(task_json(failed)["actions"]) == {"retry", "dismiss"}
    # Someone else (not staff) may do nothing by the default policy, but dismiss is the
    # owner's list's own button: the list endpoints never show another's task anyway.
    assert set(task_json(running, other_user)["actions"]) == set()
    settings.TASKSTATE = {"CONTROL_POLICY": "tests.test_task_json.nobody"}
    assert task_json(running)["actions"] == {}
    assert set(task_json(failed, user)["actions"]) == {"dismiss"}


def nobody(user: Any, task: Task, action: str) -> bool:
    return False


def test_a_child_of_a_group_offers_no_cancel_or_retry(user):
    group = make(user, Status.RUNNING, kind=Kind.GROUP, children_total=3, children_done=1)
    child = make(user, Status.RUNNING, parent=group, position=1)
    assert task_json(child)["actions"] == {}
    payload = task_json(group)
    assert payload["group"] == {"kind": "group", "total": 3, "done": 1, "failed": 0, "running": 0}
    validate(payload)


def test_a_cancelling_task_says_so(user):
    task = make(user, Status.RUNNING, cancel_requested_at=timezone.now())
    payload = task_json(task)
    assert payload["cancelling"] is True
    assert payload["label"] == "Cancelling…"
    assert "cancel" not in payload["actions"]


def test_hostile_values_serialise_to_strict_json(user):
    lone = "\ud800"
    deep: Any = []
    for _ in range(200):
        deep = [deep]
    task = Task(
        pk=99,
        message_id="hostile",
        actor_name=f"export{lone}",
        status=Status.FAILED,
        user=user,
        description=f"name {lone} \x00 and more" + "x" * 10_000,
        progress_message=f"step {lone}",
        progress=250,
        error_type=f"E{lone}",
        error_message=f"bad {lone}" * 10_000,
        result={"url": f"/x{lone}", "nan": math.nan, "deep": deep, "big": "y" * 10_000_000},
        created_at=timezone.now(),
        updated_at=timezone.now(),
    )
    payload = task_json(task)
    text = dumps(payload)
    text.encode("utf-8")  # no lone surrogate survives: it would not encode
    assert "NaN" not in text and len(text) < 10_000
    assert json.loads(text)["progress"]["percent"] == 100
    assert "\ufffd" in json.loads(text)["description"]
    assert json.loads(text)["result_url"] is None
    validate(payload)


def test_dumps_refuses_nan_rather_than_write_invalid_json():
    with pytest.raises(ValueError, match="JSON compliant"):
        dumps({"x": math.nan})
