"""``django.tasks`` functions the tests enqueue on taskstate's backend (Django >= 6 only)."""

from __future__ import annotations

import asyncio
from typing import Any

from django.tasks import TaskContext, task

import taskstate


@task
def add(a: int, b: int) -> int:
    return a + b


@task(queue_name="low")
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}


@task
def fails(text: str) -> None:
    raise ValueError(text)


@task
async def async_double(value: int) -> int:
    await asyncio.sleep(0)
    return value * 2


@task(takes_context=True)
def with_context(context: TaskContext, steps: int) -> dict[str, Any]:
    for step in range(steps):
        taskstate.progress(step + 1, steps, message=f"step {step + 1}")
    return {"id": context.task_result.id, "attempt": context.attempt}


@task
def until_cancelled() -> None:
    from tests.testapp.tasks import TEST_OVER

    # progress() raises taskstate.Cancelled once the owner's cancel reached this worker.
    while not TEST_OVER.wait(0.02):
        taskstate.progress(1, 2)


@task(takes_context=True)
def fails_first_attempt(context: TaskContext) -> int:
    if context.attempt == 1:
        raise ValueError("the first attempt fails")
    return context.attempt
