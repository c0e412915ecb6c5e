"""The processes of a multi-process run watch each other, so that one failing stops all.

Without this, a process whose peer is gone waits: in the next collective, at a barrier,
or at exit, where JAX's distributed shutdown waits up to 5 minutes for every process; it
ends, if at all, with JAX's native stack trace and no word of which process failed.

Each process publishes its state in JAX's coordination service (its key-value store)
about once a second: a heartbeat count, ``done`` once it has finished its work, or
``failed`` with its one-line error. A watcher thread in every process reads the others'
states at the same pace and stops its own process at once, with one line naming the
peer, when a peer has failed, or when a peer's heartbeat has not moved for
``TLJAX_PEER_TIMEOUT_S`` seconds (killed, or its machine lost). A process that fails
publishes its line and exits at once (``fail``), skipping JAX's shutdown wait.
"""

import os
import sys
import threading
import time

TIMEOUT_ENV = "TLJAX_PEER_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 20.0
_INTERVAL_S = 0.5
_KEY = "tljax/peer/"

_state = {"watcher": None, "beats": 0, "done": False, "failing": False}
_publishing = threading.Lock()  # a last word (done, failed) is never overwritten by a beat


def _client():
    from jax._src import distributed

    return distributed.global_state.client


def _publish(value: str) -> None:
    import jax

    _client().key_value_set(f"{_KEY}{jax.process_index()}", value, allow_overwrite=True)


def _exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)  # not sys.exit: JAX's shutdown at exit would wait for the lost peer


def timeout_s(environ=None) -> float:
    """Returns how long a peer's heartbeat may stand still before it counts as lost:
    ``$TLJAX_PEER_TIMEOUT_S`` (seconds), else 20."""
    value = (os.environ if environ is None else environ).get(TIMEOUT_ENV, "")
    try:
        return float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError:
        from tljax.errors import UserError

        raise UserError(f"{TIMEOUT_ENV}={value!r} is not a number of seconds") from None


def _verdict(states: dict, seen: dict, now: float, me: int, limit: float):
    """Returns the line that stops this process, or None: for the first peer that failed,
    or whose heartbeat has stood still for ``limit`` seconds. ``states`` is ``{process:
    its published value}``; ``seen`` (updated here) ``{process: (value, when it changed)}``,
    holding every peer, those yet to publish included."""
    for peer, (last, since) in sorted(seen.items()):
        value = states.get(peer, last)
        if value != last:
            seen[peer] = (value, now)
            since = now
        if value.startswith("failed "):
            return f"process {peer} failed ({value[len('failed '):]}); stopping process {me}"
        if value != "done" and now - since > limit:
            what = "has not started" if value == "" else "stopped responding"
            return (f"process {peer} {what} (no heartbeat for {limit:g} s: killed, or its "
                    f"machine lost); stopping process {me}")
    return None


def _watch(limit: float, say) -> None:
    import jax

    me, n = jax.process_index(), jax.process_count()
    client, start = _client(), time.monotonic()
    seen = {p: ("", start) for p in range(n) if p != me}
    while not _state["failing"]:
        try:
            with _publishing:
                if not (_state["done"] or _state["failing"]):
                    _state["beats"] += 1
                    _publish(f"beat {_state['beats']}")
            states = {int(k.rsplit("/", 1)[1]): v for k, v in client.key_value_dir_get(_KEY)}
        except Exception as e:
            if _state["done"] or _state["failing"]:  # the run is shutting down
                return
            first = (str(e).splitlines() or [type(e).__name__])[0][:160]
            say(f"tljax: error: lost the coordination service (process 0 of {n}): {first}; "
                f"stopping process {me}")
            _exit_now(1)
        line = _verdict(states, seen, time.monotonic(), me, limit)
        if line and not _state["failing"]:
            say(f"tljax: error: {line}")
            _exit_now(1)
        if _state["done"] and all(v == "done" for v in states.values()):
            return
        time.sleep(_INTERVAL_S)


def watch(say=None) -> None:
    """Starts this process's watcher (once; a no-op with one process); returns nothing.
    ``say`` prints the line that stops it (default: stderr). It runs until every process
    is done, through JAX's shutdown at exit too, where a peer lost would otherwise keep
    this process waiting for minutes."""
    import jax

    if jax.process_count() < 2 or _state["watcher"] is not None:
        return
    say = say or (lambda line: print(line, file=sys.stderr))
    thread = threading.Thread(target=_watch, args=(timeout_s(), say), daemon=True,
                              name="tljax-peers")
    _state["watcher"] = thread
    thread.start()


def finished() -> None:
    """Says this process has finished its work: its peers stop expecting heartbeats from
    it (it goes on watching them until they are done too)."""
    if _state["watcher"] is not None and not _state["done"]:
        with _publishing:
            _state["done"] = True
            _publish("done")


def fail(code: int, line: str) -> None:
    """Stops this process now with exit status ``code`` after telling its peers why
    (``line``, one line, already printed by the caller). Never returns."""
    if _state["watcher"] is not None:
        try:
            with _publishing:
                _state["failing"] = True
                _publish(f"failed {line}")
            # Process 0 hosts the coordination service: give the others a moment to read
            # why before it goes (they would stop anyway, with JAX's trace instead).
            import jax

            if jax.process_index() == 0:
                time.sleep(2 * _INTERVAL_S + 0.5)
        except Exception:  # the service is gone already: exiting is all that is left
            pass
    _exit_now(code)
