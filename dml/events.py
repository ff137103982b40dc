"""The events of the training loop and the hooks' base (MXNet's
``gluon.contrib.estimator.event_handler`` is the model): a hook declares the events it handles by
the mixins it inherits and runs in the order of its ``priority``, smaller first. :mod:`dml.hooks`
holds the loop's own hooks; :class:`dml.health.HealthMonitor` is one too.

Events, in the order a run meets them: ``train_start`` (once, and again when a stopped run
resumes), then per epoch ``epoch_begin``, ``batch_end`` after every step and ``epoch_end``; after
the last epoch ``train_end`` (the writing process only) and ``fit_end`` (what completes the run,
after every hook's ``train_end`` and after the hooks are left).
"""

EVENTS = ("train_start", "epoch_begin", "batch_end", "epoch_end", "train_end", "fit_end")
# priorities of the built-in hooks (smaller first): check, then measure, record, report, and
# complete the run folder last of all
GUARD, MEASURE, RECORD, REPORT, COMPLETE = -1000, -100, 0, 1000, 10000


class Hook:
    """The base of a hook: ``priority`` orders it among the others (smaller first; a class
    attribute an instance may override)."""
    priority = 0


class TrainStart(Hook):
    """Called once before the first step (and again when a stopped run resumes)."""

    def train_start(self, state):
        raise NotImplementedError


class EpochBegin(Hook):
    """Called at each epoch's start, after ``state.epoch`` and ``state.batches`` are set."""

    def epoch_begin(self, state):
        raise NotImplementedError


class BatchEnd(Hook):
    """Called after each training step (``state.batch_loss``, ``state.step``)."""

    def batch_end(self, state):
        raise NotImplementedError


class EpochEnd(Hook):
    """Called at each epoch's end (``state.epoch_loss``, ``state.seen``)."""

    def epoch_end(self, state):
        raise NotImplementedError


class TrainEnd(Hook):
    """Called once after the last epoch, by the process that writes (rank 0)."""

    def train_end(self, state):
        raise NotImplementedError


class FitEnd(Hook):
    """Called once after every hook's ``train_end``: what completes the run."""

    def fit_end(self, state):
        raise NotImplementedError


_MIXINS = dict(zip(EVENTS, (TrainStart, EpochBegin, BatchEnd, EpochEnd, TrainEnd, FitEnd)))


def handles(hook, event):
    """Whether ``hook`` handles ``event``: it inherits the event's mixin, or (a hook without
    mixins) has a method of the event's name."""
    if isinstance(hook, Hook):
        return isinstance(hook, _MIXINS[event])
    return callable(getattr(hook, event, None))


class Hooks:
    """Calls the hooks that handle an event (``hooks.epoch_end(state)``) in the order of their
    ``priority``, smaller first, ties in the order given; entering it enters every hook that is a
    context manager (the stop guard's signal handlers) and leaving it leaves them in reverse."""

    def __init__(self, hooks):
        self.hooks = sorted(hooks, key=lambda hook: getattr(hook, "priority", 0))

    def __enter__(self):
        for hook in self.hooks:
            if hasattr(hook, "__enter__"):
                hook.__enter__()
        return self

    def __exit__(self, *exc):
        for hook in reversed(self.hooks):
            if hasattr(hook, "__exit__"):
                hook.__exit__(*exc)
        return False

    def __getattr__(self, event):
        if event not in EVENTS:
            raise AttributeError(event)
        called = [hook for hook in self.hooks if handles(hook, event)]

        def call(state):
            for hook in called:
                getattr(hook, event)(state)
        return call
