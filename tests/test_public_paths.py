"""The paths projects write in settings, templates and code name the objects the
folders define, so moving a module inside the package breaks no project."""

from __future__ import annotations

import pytest
from django.template import engines
from django.utils.module_loading import import_string

import taskstate
from taskstate.core import models as core_models
from taskstate.core import policy as core_policy
from taskstate.core import signals as core_signals
from taskstate.core.grouping import track_group
from taskstate.web import channels as web_channels
from taskstate.worker import middleware as worker_middleware
from taskstate.worker import tracking


@pytest.mark.parametrize(
    ("path", "defined"),
    [
        ("taskstate.middleware.StateMiddleware", worker_middleware.StateMiddleware),
        ("taskstate.channels.TaskstateChannelManager", web_channels.TaskstateChannelManager),
        ("taskstate.channels.user_channel", web_channels.user_channel),
        ("taskstate.channels.site_namespace", web_channels.site_namespace),
        ("taskstate.policy.owner_or_staff", core_policy.owner_or_staff),
        ("taskstate.policy.object_of", core_policy.object_of),
        ("taskstate.models.Task", core_models.Task),
        ("taskstate.models.Status", core_models.Status),
        ("taskstate.signals.task_changed", core_signals.task_changed),
        ("taskstate.progress", tracking.progress),
        ("taskstate.track", tracking.track),
        ("taskstate.Cancelled", tracking.Cancelled),
        ("taskstate.cancel_requested", tracking.cancel_requested),
        ("taskstate.track_group", track_group),
    ],
)
def test_each_public_path_names_the_object_its_folder_defines(path, defined):
    assert import_string(path) is defined


def test_the_default_policy_setting_is_the_public_path():
    from taskstate.core.conf import get_settings

    assert import_string(get_settings().CONTROL_POLICY) is core_policy.owner_or_staff


def test_the_public_signal_module_hands_on_only_task_changed():
    from taskstate import signals

    assert signals.__all__ == ["task_changed"]
    assert not hasattr(signals, "worker_stopped")


def test_the_template_library_loads_by_its_public_name():
    template = engines["django"].from_string("{% load taskstate %}{% taskstate_scripts %}")
    assert "htmx" in template.render({})


def test_the_package_names_its_actor_api():
    assert set(taskstate.__all__) == {
        "Cancelled",
        "cancel_requested",
        "progress",
        "track",
        "track_group",
    }
