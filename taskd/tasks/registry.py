"""The task types taskd knows: the eight built in, plus those registered through `taskd.tasks` entry points."""

from __future__ import annotations

import collections
import collections.abc
import enum
import logging
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

import attrs
import cattrs
import orjson
from cattrs.cols import homogenous_tuple_structure_factory, list_structure_factory, mapping_structure_factory
from cattrs.gen import make_dict_structure_fn

from taskd.config import Config, ConfigError, TasksConfig, name_problem
from taskd.model import ValidationError
from taskd.tasks.spec import TaskType
from taskd.validation import FieldErrors, structure_checked, whole_number

log = logging.getLogger("taskd.tasks")

BUILTIN_MODULES = (
    "generate_video",
    "generate_image",
    "generate_character_voice",
    "process_audio",
    "render_animation",
    "evaluate_department",
    "automated_gather_creation",
    "test_prompt",
)
ENTRY_POINT_GROUP = "taskd.tasks"


def _is_enum(kind: Any) -> typing.TypeGuard[type[enum.Enum]]:
    return isinstance(kind, type) and issubclass(kind, enum.Enum)


def _integer(value: Any, kind: type) -> Any:
    # An IntEnum: cattrs hands an int subclass the int hook (`is not` first: a submit reads many ints).
    if kind is not int and _is_enum(kind):
        return _choose(value, list(kind))
    # 24.0 is a whole number (JSON Schema's integer); 24.5, "24" and true are not.
    number = whole_number(value)
    if number is None:
        raise ValueError("Must be an integer")
    return number


def _json_value(choice: Any) -> Any:
    return choice.value if isinstance(choice, enum.Enum) else choice


def _is_json(value: Any, choice: Any) -> bool:
    """Whether the JSON value `value` is `choice` (a Literal's value, an Enum's member) as JSON tells
    values apart."""
    choice = _json_value(choice)
    if isinstance(choice, bool) or isinstance(value, bool):
        return value is choice  # true is not 1, nor 1 true
    if isinstance(choice, int):
        return whole_number(value) == choice  # 24.0 is 24, as for an int field
    if isinstance(choice, float):
        return isinstance(value, int | float) and value == choice
    return type(value) is type(choice) and value == choice


def _choose(value: Any, choices: typing.Sequence[Any]) -> Any:
    """The one of `choices` (a Literal's values, an Enum's members) that the JSON `value` is, itself.

    cattrs' own hooks take any value `==` to one (or, for an IntEnum or a `str` Enum, any int or
    string at all) and hand on the value sent: `true` reached a handler as a bool for `Literal[1]`,
    `24.0` as a float for `Literal[24]` (which formats as "24.0" in a file name or an argument), and
    5 as a plain int for an IntEnum without such a member.
    """
    for choice in choices:
        if _is_json(value, choice):
            return choice
    listed = ", ".join(orjson.dumps(_json_value(choice), default=repr).decode() for choice in choices)
    raise ValueError(f"Must be one of: {listed}")


def _is_literal(cl: Any) -> bool:
    return bool(typing.get_origin(cl) == typing.Literal)


def _literal(cl: Any, _: cattrs.Converter) -> Any:
    choices = typing.get_args(cl)
    return lambda value, _: _choose(value, choices)


def _member(cl: Any, _: cattrs.Converter) -> Any:
    members = list(cl)
    return lambda value, _: _choose(value, members)


def _strict(kind: type) -> Any:
    # JSON has no implicit conversions: "7" is not a number and true is not 1.
    def hook(value: Any, type_: type) -> Any:
        if type_ is not kind and _is_enum(type_):  # a StrEnum: cattrs hands a str subclass the str hook
            return _choose(value, list(type_))
        if not isinstance(value, kind):
            expected = {str: "a string", bool: "true or false"}[kind]
            raise ValueError(f"Must be {expected}")
        return value

    return hook


def _float(value: Any, kind: type) -> Any:
    if kind is not float and _is_enum(kind):
        return _choose(value, list(kind))
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("Must be a number")
    return float(value)


def _only(kind: type, expected: str, make: Callable[[Any, cattrs.Converter], Any]) -> Any:
    """A hook factory: cattrs' own hook (from `make`) for a value of `kind`, "Must be …" for any other.

    cattrs builds a list from any iterable and an object from anything it can index: a string sent
    for a list was taken a character at a time (`"departments": "lighting"` was 8 departments), and
    for a list of objects gave an error per character ("string indices must be integers"): a 1 MB
    string held the event loop 80 s and took 3 GB to say so.
    """

    def factory(cl: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
        inner = make(cl, conv)

        def hook(value: Any, type_: Any) -> Any:
            if not isinstance(value, kind):
                raise ValueError(f"Must be {expected}")
            return inner(value, type_)

        return hook

    return factory


def _is(*origins: type) -> Callable[[Any], bool]:
    return lambda cl: (typing.get_origin(cl) or cl) in origins


# What a JSON list is read into: cattrs builds each of them from any iterable, a string included
# (a `tuple[str, ...]`, `set[str]` or `deque[str]` field took "abc" as three items, as list fields
# did before).
FROM_A_LIST = (
    list,
    tuple,
    set,
    frozenset,
    collections.deque,
    collections.abc.Sequence,
    collections.abc.MutableSequence,
    collections.abc.Set,
    collections.abc.MutableSet,
)
# The FROM_A_LIST kinds made from a list of their items, as cattrs makes them.
_MADE_FROM_ITEMS: dict[Any, Callable[[list[Any]], Any]] = {
    set: set,
    collections.abc.MutableSet: set,
    frozenset: frozenset,
    collections.abc.Set: frozenset,
    collections.deque: collections.deque,
}
FROM_AN_OBJECT = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _from_a_list(cl: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    """The hook cattrs itself has for `cl`, one of `FROM_A_LIST`, through its public factories."""
    origin, args = typing.get_origin(cl) or cl, typing.get_args(cl)
    if origin in (list, collections.abc.MutableSequence):
        return list_structure_factory(cl, conv)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return conv.gen_structure_hetero_tuple(cl)  # tuple[int, str]: its length is checked too
    if origin in (tuple, collections.abc.Sequence):
        return homogenous_tuple_structure_factory(cl, conv)
    # A set or a deque: its items read as a list's (a bad one named by its index), then made the
    # set or deque cattrs makes.
    items = list_structure_factory(typing.cast(type, types.GenericAlias(list, args or (Any,))), conv)
    made = _MADE_FROM_ITEMS[origin]
    return lambda value, type_: made(items(value, type_))


def json_converter() -> cattrs.Converter:
    """A converter that accepts JSON values only as their own types; unknown keys are kept by the caller."""
    conv = cattrs.Converter()
    conv.register_structure_hook(str, _strict(str))
    conv.register_structure_hook(int, _integer)
    conv.register_structure_hook(bool, _strict(bool))
    conv.register_structure_hook(float, _float)
    conv.register_structure_hook_factory(_is_literal, _literal)
    conv.register_structure_hook_factory(_is_enum, _member)
    conv.register_structure_hook_factory(_is(*FROM_A_LIST), _only(list, "a list", _from_a_list))
    conv.register_structure_hook_factory(
        _is(*FROM_AN_OBJECT), _only(dict, "an object", mapping_structure_factory)
    )
    conv.register_structure_hook_factory(attrs.has, _only(dict, "an object", make_dict_structure_fn))
    return conv


class Registry:
    """Task types by name, with routing to queues and input validation."""

    def __init__(self, types: Iterable[TaskType]) -> None:
        self.types: dict[str, TaskType] = {}
        for task_type in types:
            self.types[task_type.name] = task_type
        self._converter = json_converter()

    def get(self, name: str) -> TaskType | None:
        """The task type called `name`, or None."""
        return self.types.get(name)

    def runnable(self) -> list[str]:
        """The names of the types this process can run: those with a handler."""
        return sorted(name for name, task_type in self.types.items() if task_type.handler is not None)

    def queues(self) -> set[str]:
        """Every queue some task type routes to."""
        return {task_type.queue for task_type in self.types.values()}

    def parse_input(self, task_type: TaskType, task_data: Mapping[str, Any]) -> Any:
        """Structure `task_data` into the type's input class; raise ValidationError with per-field details."""
        try:
            return structure_checked(self._converter, dict(task_data), task_type.input, prefix="task_data")
        except FieldErrors as exc:
            raise ValidationError(exc.details) from None

    def input_errors(self, task_type: TaskType, task_data: Mapping[str, Any]) -> FieldErrors:
        """What the type's checks refuse in `task_data`, by field path (`at` empty: nothing)."""
        try:
            structure_checked(self._converter, dict(task_data), task_type.input, prefix="task_data")
        except FieldErrors as exc:
            return exc
        return FieldErrors({})


def _builtin_types() -> list[TaskType]:
    return [import_module(f"taskd.tasks.builtin.{name}").TASK for name in BUILTIN_MODULES]


def _module_types(modules: Iterable[str]) -> list[TaskType]:
    found: list[TaskType] = []
    for name in modules:
        try:
            module = import_module(name)
        except Exception as exc:  # whatever the module's own code raised: the config names it
            # One line, as every config error: the exception, not its traceback.
            problem = (str(exc).strip().splitlines() or [""])[0]
            raise ConfigError(
                f"config key tasks.modules: {name} could not be imported: {type(exc).__name__}: {problem}"
            ) from None
        exported = getattr(module, "TASKS", None) or [getattr(module, "TASK", None)]
        if not isinstance(exported, list | tuple) or not all(isinstance(t, TaskType) for t in exported):
            raise ConfigError(
                f"config key tasks.modules: {name} must export TASK (a TaskType) or TASKS (a list of them)"
            )
        for task_type in exported:
            if bad_name := _name_problem(task_type):
                raise ConfigError(f"config key tasks.modules: {name} exports {bad_name}")
        found += exported
    return found


def _name_problem(task_type: TaskType) -> str | None:
    """Why a type's name (a part of Redis key names: taskd.config.NAME) cannot be used, or None."""
    return name_problem(f"task type {task_type.name!r}, whose name", task_type.name)


def _plugin_types() -> list[TaskType]:
    found = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        task_type = entry.load()
        if not isinstance(task_type, TaskType):
            log.error("entry point %s in %s is not a TaskType; ignored", entry.name, ENTRY_POINT_GROUP)
            continue
        if problem := _name_problem(task_type):
            log.error("entry point %s in %s: %s; ignored", entry.name, ENTRY_POINT_GROUP, problem)
            continue
        found.append(task_type)
    return found


def _configured(task_type: TaskType, tasks: TasksConfig) -> TaskType:
    name = task_type.name
    return attrs.evolve(
        task_type,
        queue=tasks.routes.get(name, task_type.queue),
        soft_time_limit=tasks.soft_time_limits.get(name, task_type.soft_time_limit),
        hard_time_limit=tasks.hard_time_limits.get(name, task_type.hard_time_limit),
    )


def check_names(config: Config, registry: Registry) -> None:
    """Raise ConfigError, naming the key, when a per-type setting names a type `registry` lacks
    (or `gpu.queue_slots` a queue no one configured or routes to)."""
    # A misspelt type name would otherwise be kept and never used: its limit or route silently not
    # applied to the type the operator meant.
    by_type: dict[str, Mapping[str, object]] = {
        "tasks.routes": config.tasks.routes,
        "tasks.soft_time_limits": config.tasks.soft_time_limits,
        "tasks.hard_time_limits": config.tasks.hard_time_limits,
        "gpu.task_needs": config.gpu.task_needs,
        "gpu.task_slots": config.gpu.task_slots,
    }
    for key, settings in by_type.items():
        unknown = sorted(set(settings) - set(registry.types))
        if unknown:
            raise ConfigError(
                f"config key {key}: no installed task type is called {', '.join(map(repr, unknown))} "
                f"(installed: {', '.join(sorted(registry.types))})"
            )
    queues = set(config.queues) | registry.queues()
    unknown = sorted(set(config.gpu.queue_slots) - queues)
    if unknown:
        raise ConfigError(
            f"config key gpu.queue_slots: no queue is called {', '.join(map(repr, unknown))} "
            f"(configured: {', '.join(sorted(queues))})"
        )


def default_registry(tasks: TasksConfig | None = None, *, builtin: bool = True) -> Registry:
    """The built-in task types (unless `builtin` is False), then entry-point plugins, then
    `tasks.modules` (later names win), with the queue and time limits `[tasks]` sets for each."""
    tasks = tasks or TasksConfig()
    found = [*(_builtin_types() if builtin else []), *_plugin_types(), *_module_types(tasks.modules)]
    configured = [_configured(task_type, tasks) for task_type in found]
    for task_type in configured:
        # The queue as routed: a type's own queue that no key can hold is for the operator to route
        # elsewhere, which a third party's package does not let them change.
        if problem := name_problem(f"the queue of task type {task_type.name!r}", task_type.queue):
            raise ConfigError(f"config key tasks.routes: {problem}; route it to another queue")
    return Registry(configured)
