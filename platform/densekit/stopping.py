"""Ctrl-C and SIGTERM that are never lost.

Python runs a signal's handler at the next bytecode of the main thread, wherever that is, and the
exception the handler raises is lost where it cannot propagate: a compiled extension's module
initialisation (`import ray`'s), a `__del__`, a weakref callback (Python prints "Exception ignored
in ..."), or code that catches everything (`except BaseException: pass`, a C helper that clears the
error). A run stopped at such a moment would go on as if never stopped. So a stop is latched:

- the handler records the signal before raising (`requested`);
- `check()`, called where densekit does long work (each progress update, each method stage, once
  Ray is up), raises the stop again if it was requested and not yet handled;
- the unraisable hook delivers a stop Python dropped again at once, and once a stop is under way it
  keeps teardown noise (a finaliser of an object whose construction the stop interrupted) out of
  the user's terminal, at DEBUG in the log.

Only the densekit CLI installs this (`install`); in a library or a Ray worker `check()` is a no-op.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

logger = logging.getLogger(__name__)

requested: int | None = None  # the signal that asked to stop, once one has
handled = False  # the CLI has reported the stop: nothing more to raise
_installed = False
_default_unraisablehook = sys.unraisablehook


def _exception(signum: int) -> BaseException:
    # SIGTERM unwinds as Ray's own driver handler (installed by ray.init) does: sys.exit(15).
    return KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(signal.SIGTERM)


def on_signal(signum, frame) -> None:
    """The handler for SIGINT (where Ctrl-C is not ignored) and SIGTERM."""
    global requested
    if requested is None:
        requested = signum
    raise _exception(signum)


def install() -> None:
    """Latch SIGTERM, and SIGINT unless it is ignored (a job started in the background with `&` or
    nohup ignores Ctrl-C, and stays so). Main thread only (signals are handled there)."""
    global _installed
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, on_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_signal)
    sys.unraisablehook = _unraisable
    _installed = True


def reinstall() -> None:
    """After ray.init: its core worker put abseil's failure-signal handler on SIGTERM (a C++ stack
    and SIGABRT instead of densekit's one-line stop) and ray.init its own Python handler. Hand
    SIGTERM back to ours, or, where densekit's CLI is not running, to whatever Python handler is set."""
    if threading.current_thread() is not threading.main_thread():
        return
    handler = on_signal if _installed else signal.getsignal(signal.SIGTERM)
    if callable(handler):
        signal.signal(signal.SIGTERM, handler)  # sigaction again: the OS calls Python's handler


def check() -> None:
    """Raise a requested stop that was lost on the way (see the module's text); a no-op otherwise,
    in other threads and once the stop has been handled."""
    if requested is not None and not handled and threading.current_thread() is threading.main_thread():
        logger.debug("a stop (signal %d) was lost on the way: raising it again", requested)
        raise _exception(requested)


def mark_handled() -> None:
    """The stop is being reported: ignore further Ctrl-C / SIGTERM so the shutdown runs to its end."""
    global handled
    handled = True
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _unraisable(unraisable) -> None:
    """A stop Python dropped is delivered again, from another thread a moment later (delivered from
    here, its handler would run inside this hook, where it is dropped too): it is handled at a later
    bytecode of the main thread, dropped again only while still inside such a place. Other
    exceptions Python cannot raise are printed as usual, except while a stop is under way."""
    import _thread

    exc = unraisable.exc_value
    if isinstance(exc, KeyboardInterrupt):
        signum = signal.SIGINT
    elif isinstance(exc, SystemExit) and exc.code == signal.SIGTERM:
        signum = signal.SIGTERM
    elif requested is not None:
        logger.debug("while stopping, ignored in %r: %r", unraisable.object, exc)
        return
    else:
        _default_unraisablehook(unraisable)
        return
    if handled:
        return
    again = threading.Timer(0.01, _thread.interrupt_main, args=(signum,))
    again.daemon = True
    again.start()
