"""The hooks' events (dml.events): a hook is called for the events it declares by its mixins, in
the order of its priority (ties in the order given); a hook without mixins by its methods'
names; entering the container enters the hooks in order and leaves them in reverse."""
import pytest

from dml.events import EVENTS, BatchEnd, EpochEnd, FitEnd, Hooks, TrainStart, handles


class Recorder:
    calls = []


def named(name, priority, *mixins):
    """A hook class of ``mixins`` whose every event method (declared or not) logs its name."""
    def method(event):
        return lambda self, state: Recorder.calls.append((name, event))
    body = {event: method(event) for event in EVENTS}
    body.update(priority=priority, __enter__=lambda self: Recorder.calls.append((name, "enter")),
                __exit__=lambda self, *exc: Recorder.calls.append((name, "exit")))
    return type(name, mixins, body)()


def test_hooks_run_their_declared_events_by_priority():
    Recorder.calls = []
    late = named("late", 10, EpochEnd, FitEnd)
    early = named("early", -5, TrainStart, EpochEnd)
    middle = named("middle", 0, BatchEnd, EpochEnd)
    tie = named("tie", 0, EpochEnd)
    hooks = Hooks([late, middle, early, tie])
    with hooks:
        for event in EVENTS:
            getattr(hooks, event)(None)
    assert Recorder.calls == [
        ("early", "enter"), ("middle", "enter"), ("tie", "enter"), ("late", "enter"),
        ("early", "train_start"), ("middle", "batch_end"),
        ("early", "epoch_end"), ("middle", "epoch_end"), ("tie", "epoch_end"),
        ("late", "epoch_end"), ("late", "fit_end"),
        ("late", "exit"), ("tie", "exit"), ("middle", "exit"), ("early", "exit")]


def test_a_hook_without_mixins_is_called_by_its_methods_names_at_priority_zero():
    calls = []

    class Plain:
        def epoch_end(self, state):
            calls.append(("plain", state))

        batch_end = None  # not callable: not an event handler

    first = named("first", -1, EpochEnd)
    Recorder.calls = []
    hooks = Hooks([Plain(), first])
    assert handles(Plain(), "epoch_end") and not handles(Plain(), "batch_end")
    assert not handles(first, "batch_end")  # a method without its mixin is not declared
    hooks.epoch_end(7)
    hooks.batch_end(7)
    assert Recorder.calls == [("first", "epoch_end")] and calls == [("plain", 7)]


def test_an_unknown_event_is_an_attribute_error():
    with pytest.raises(AttributeError):
        Hooks([]).epoch_middle


def test_the_built_in_hooks_declare_their_events_and_order():
    from dml.health import HealthMonitor
    from dml.hooks import RunCompleter, RunRecorder, StopGuard, TensorBoardLogger

    order = [StopGuard, HealthMonitor, RunRecorder, TensorBoardLogger, RunCompleter]
    assert [h.priority for h in order] == sorted(h.priority for h in order)
    declared = {h.__name__: [e for e in EVENTS if issubclass(h, _mixin(e))] for h in order}
    assert declared == {
        "StopGuard": ["train_start", "batch_end", "epoch_end"],
        "HealthMonitor": ["train_start", "epoch_end"],
        "RunRecorder": ["train_start", "batch_end", "epoch_end", "train_end"],
        "TensorBoardLogger": ["train_start", "batch_end", "epoch_end", "train_end"],
        "RunCompleter": ["fit_end"]}


def _mixin(event):
    from dml import events

    return {"train_start": events.TrainStart, "epoch_begin": events.EpochBegin,
            "batch_end": events.BatchEnd, "epoch_end": events.EpochEnd,
            "train_end": events.TrainEnd, "fit_end": events.FitEnd}[event]
