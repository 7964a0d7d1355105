"""Every test has a time limit (pytest-timeout, `timeout` in pyproject.toml).

With `timeout_method = "thread"` pytest-timeout dumps every thread's stack and ends the run. For
a hung async test that stack is only the event loop's `select()`: an idle loop says nothing about
what it waits for. So before that dump, this hook prints the stack of every unfinished asyncio
task, which is where an async hang actually is (the await that never completes).
"""

from __future__ import annotations

import asyncio
import io
import threading

import pytest
import pytest_timeout


def _task_stacks() -> str:
    # Read from the timer thread while the loop's thread is stuck: good enough for a dump taken
    # just before the process exits. `_all_tasks` is asyncio's registry of live tasks (private,
    # but it is what all_tasks() reads, and all_tasks() needs the loop's own thread).
    registry = getattr(asyncio.tasks, "_all_tasks", ())
    for _ in range(3):
        try:
            tasks = [t for t in list(registry) if not t.done()]
            break
        except RuntimeError:  # the set changed size while being copied
            continue
    else:
        return "(asyncio tasks could not be listed)\n"
    out = io.StringIO()
    for t in tasks:
        out.write(f"--- task {t.get_name()!r}\n")
        try:
            out.write(_await_chain(t.get_coro()))
        except Exception as e:  # a diagnostic must never hide the timeout itself
            out.write(f"    (stack unavailable: {e!r})\n")
    return out.getvalue()


def _await_chain(coro: object) -> str:
    """The whole chain of awaits down to what the task waits for (Task.print_stack shows only
    the outermost coroutine's frame, which rarely names the culprit)."""
    lines = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None) \
            or getattr(coro, "gi_frame", None)
        if frame is None:
            lines.append(f"    waiting on {coro!r}")
            break
        lines.append(f"    {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None) \
            or getattr(coro, "gi_yieldfrom", None)
    return "\n".join(lines) + "\n"


def _expire(item: pytest.Item, settings: pytest_timeout.Settings) -> None:
    terminal = item.config.get_terminal_writer()
    capman = item.config.pluginmanager.getplugin("capturemanager")
    if capman:
        capman.suspend_global_capture(item)
    terminal.sep("+", title=f"Timeout ({settings.timeout} s): unfinished asyncio tasks")
    terminal.write(_task_stacks())
    pytest_timeout.timeout_timer(item, settings)  # thread stacks, then os._exit(1)


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: pytest_timeout.Settings) -> bool | None:
    if settings.method != "thread":
        return None  # pytest-timeout's own implementation
    timer = threading.Timer(settings.timeout, _expire, (item, settings))
    timer.name = f"test timeout {item.nodeid}"
    timer.daemon = True

    def cancel() -> None:
        timer.cancel()
        timer.join()

    item.cancel_timeout = cancel  # what pytest-timeout's cancel hook calls
    timer.start()
    return True
