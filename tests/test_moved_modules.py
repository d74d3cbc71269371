"""Plugins keep importing the modules that moved out of taskd/jobs/ for one release, with a warning."""

from __future__ import annotations

import importlib
import sys

import pytest

from taskd.config import TasksConfig
from taskd.tasks import spec
from taskd.tasks.registry import default_registry


def fresh_import(name, monkeypatch):
    monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module(name)


def test_the_old_spec_module_warns_and_is_the_task_type_interface(monkeypatch):
    with pytest.deprecated_call(match="import taskd.tasks.spec instead"):
        old = fresh_import("taskd.jobs.spec", monkeypatch)

    assert (old.TaskType, old.TaskContext, old.ProcessContext) == (
        spec.TaskType,
        spec.TaskContext,
        spec.ProcessContext,
    )
    assert (old.TaskError, old.TransientError, old.SoftTimeLimitExceeded, old.Cancelled) == (
        spec.TaskError,
        spec.TransientError,
        spec.SoftTimeLimitExceeded,
        spec.Cancelled,
    )


def test_a_config_naming_the_old_diagnostics_module_still_adds_the_diagnostic_types(monkeypatch):
    monkeypatch.delitem(sys.modules, "taskd.jobs.diagnostics", raising=False)

    with pytest.deprecated_call(match="import taskd.tasks.diagnostics instead"):
        registry = default_registry(TasksConfig(modules=["taskd.jobs.diagnostics"]))

    assert {"noop", "sleep"} <= set(registry.types)
