"""Interrupts in the driver. SIGINT and SIGTERM (the CLI turns SIGTERM into `cli.Terminated`, a
KeyboardInterrupt) are taken by the main thread at its next Python instruction, and every `finally`
then runs (lease released, Ray workers killed, captured features removed). Three things delayed or
lost them, handled here (issue 30, item 7):

- a thread blocked in one C call (Ray Train's fit waits in a single `ray.get` for the whole
  training) runs no Python code, so it can be told nothing until the call returns:
  `call_in_helper` makes the call in a helper thread and waits in slices;
- an exception raised where Python cannot propagate it (a signal handled inside one of the fork
  hooks that `ray.init` runs as it starts its processes) is printed as "Exception ignored" and
  dropped, and the job runs on: `ray.init` is therefore started from a helper thread too (signals
  are handled only in the main thread, which waits in plain Python meanwhile), which also keeps
  Ray from putting its own SIGTERM handler (`sys.exit(15)`, no message) in place while it starts;
  that thread then lives as long as the driver, as Ray's processes die with the thread that
  started them;
- threads other than the main one never see a signal: a heads study's member threads are told to
  stop (`stop_threads`) and stop at their next wait or progress line (`stop_point`), and what
  they leave blocked in Ray is ended by `end_abandoned` before the interpreter exits.

Stopping is cooperative, at points this code chooses, not an exception raised at an arbitrary
instruction (`PyThreadState_SetAsyncExc`), which can land inside a `finally` that is cleaning up
(a lease being released, features being removed) and cut it short.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

POLL_SECONDS = 0.5  # how often a waiting thread looks whether it was told to stop
_STOPPING: dict[int, type[BaseException]] = {}  # thread ident -> what to raise at its next stop point
_ABANDONED: list[tuple[threading.Thread, threading.Event]] = []  # helpers an interrupt left running


def stop_point() -> None:
    """Raise, once, what another thread told this one to stop with (stop_threads); nothing else.
    Called wherever this code waits (every POLL_SECONDS) and at each progress line of a member."""
    exc_type = _STOPPING.pop(threading.get_ident(), None)
    if exc_type is not None:
        raise exc_type()


def call_in_helper(fn: Callable[[], Any], name: str, grace_on_interrupt: float = 0.0, park: bool = False) -> Any:
    """`fn()` in a daemon helper thread while this thread waits in slices of POLL_SECONDS (a stop
    point each); its value, or what it raised. When this thread is interrupted or told to stop
    meanwhile, the helper is waited for up to `grace_on_interrupt` seconds more (ray.init: so that
    Ray's shutdown at exit stops every process it started; 0: the helper is left, and
    end_abandoned ends it), then the interrupt goes on. The helper keeps whatever it raises after
    that to itself (no traceback after the interrupt's line). `park`: the helper does not end after
    `fn` but waits until the process exits, for a call whose child processes die with the thread
    that started them (Ray's, through PR_SET_PDEATHSIG, which Linux fires when the starting
    *thread* ends)."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def call() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = e
        finally:
            done.set()
        if park:
            threading.Event().wait()

    helper = threading.Thread(target=call, name=name, daemon=True)
    helper.start()
    try:
        while not done.wait(POLL_SECONDS):
            stop_point()
    except BaseException:
        if not done.wait(grace_on_interrupt):
            _ABANDONED.append((helper, done))
        raise
    if "error" in box:
        raise box["error"]
    return box.get("value")


def stop_threads(threads: list[tuple[threading.Thread, threading.Event]], exc_type: type[BaseException],
                 grace: float) -> list[threading.Thread]:
    """Tell each (thread, its `finished` event) whose event is not yet set to raise `exc_type` at its
    next stop point, and wait up to `grace` seconds for their events. Returns the threads still
    running (inside one long computation). Liveness is the thread's own event, not
    `Thread.is_alive()`: on Python 3.11 a `join(timeout)` that a signal interrupts marks the thread
    it waited for as stopped while it runs on. An `exc_type` that ends a thread is not printed."""
    previous = threading.excepthook

    def quiet(args: threading.ExceptHookArgs) -> None:
        if not (args.exc_type and issubclass(args.exc_type, exc_type)):
            previous(args)

    threading.excepthook = quiet
    running = [(t, done) for t, done in threads if not done.is_set() and t.ident is not None]
    for t, _done in running:
        _STOPPING[t.ident] = exc_type
    deadline = time.monotonic() + grace
    for _t, done in running:
        done.wait(max(0.0, deadline - time.monotonic()))
    return [t for t, done in running if not done.is_set()]


def end_abandoned(grace: float = 30.0) -> None:
    """End the helpers an interrupt left blocked in Ray (a stopped study member's Ray Train fit): Ray
    is shut down, which returns their `ray.get` (with SystemExit, which each keeps to itself), and
    they are waited for, at most `grace` seconds. Left to the interpreter's exit, such a thread is
    stopped inside Ray's C++ code."""
    if all(done.is_set() for _t, done in _ABANDONED):
        return
    import ray

    ray.shutdown()
    deadline = time.monotonic() + grace
    for _t, done in _ABANDONED:
        done.wait(max(0.0, deadline - time.monotonic()))
