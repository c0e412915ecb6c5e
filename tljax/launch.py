"""``tljax launch``: the processes of one multi-process run, started on this machine.

For trying ``tljax run --distributed`` without a cluster: N local processes, each told
the coordinator address, the process count and its own index (``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), each with its own forced CPU devices. Their
output is forwarded line by line, marked with the process that wrote it; when one fails,
the others are stopped (they would wait for it forever in the next collective).
"""

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from tljax.errors import UserError

_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long
_SETTLE_S = 3.0  # after one fails, how long the others may take to end on their own


def free_port() -> int:
    """Returns a TCP port on localhost that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def child_env(base: dict, index: int, processes: int, port: int,
              devices_per_process: int | None) -> dict:
    """Returns process ``index``'s environment: ``base`` plus the coordinator, process
    count and index, and ``devices_per_process`` forced CPU devices appended to any
    ``XLA_FLAGS`` of the user's."""
    env = dict(base)
    env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(processes),
               JAX_PROCESS_ID=str(index), PYTHONUNBUFFERED="1")
    if devices_per_process:
        flag = f"--xla_force_host_platform_device_count={devices_per_process}"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
    return env


def _die_with_parent() -> None:
    # Linux: a child whose launcher is killed (even by SIGKILL) is killed too, instead of
    # waiting forever for its peers and holding the port.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _forward(stream, out, tag: str, lock: threading.Lock, errors: list) -> None:
    """Copies ``stream`` to ``out`` line by line, each marked ``tag`` unless tljax already
    marked it with the process (``[p1/2] ...``); appends each ``tljax: error`` line (its
    mark removed) to ``errors``."""
    own = tag.rstrip("] ") + "/"
    for line in iter(stream.readline, ""):
        text = line.split("] ", 1)[1] if line.startswith(own) else line
        if text.startswith("tljax: error:"):
            errors.append(text.strip())
        with lock:
            out.write(line if line.startswith(own) else f"{tag}{line}")
            out.flush()
    stream.close()


# The line of a process that stopped because of a peer (tljax.peers): which, and why.
_PEER = re.compile(r"tljax: error: (process (\d+) (?:failed \((.*)\)|stopped responding|"
                   r"has not started)[^;]*); stopping process \d+$")


def _culprit(failed: list, codes: dict, errors: list, processes: int) -> str:
    """Returns which process ended the launch, how and why, in words: the first to fail on
    its own account (not because it saw a peer fail), else the peer such a process names,
    else the first to fail. ``failed``: the processes that ended non-zero on their own,
    in order; ``errors``: each process's ``tljax: error`` lines."""
    def own(i):
        return not any(_PEER.match(e) for e in errors[i])

    i = next((i for i in failed if own(i)), None)
    if i is None:
        m = next((m for e in errors[failed[0]] for m in [_PEER.match(e)] if m), None)
        if m is None:
            i = failed[0]
        else:  # it stopped before saying so itself; its peer says why
            return f"process {m[2]} of {processes} {m[1].split(' ', 2)[2]}"
    code = codes[i]
    if code > 128 and code - 128 in signal.Signals._value2member_map_:
        how = f"was killed by {signal.Signals(code - 128).name} (exit {code})"
    else:
        how = f"failed with exit status {code}"
    return f"process {i} of {processes} {how}" + (
        f": {errors[i][0][len('tljax: error: '):]}" if errors[i] else "")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _code(returncode: int) -> int:
    """Returns a process's exit status as a shell reports it (128 + signal if killed)."""
    return returncode if returncode >= 0 else 128 - returncode


def launch(argv: list, processes: int, devices_per_process: int | None = None,
           port: int | None = None) -> int:
    """Runs ``tljax ARGV --distributed`` as ``processes`` local processes; returns the worst
    exit status among those that ended on their own (0 when every one succeeded).

    ``argv`` is a ``run`` command line. Once one process fails, the rest are stopped
    (SIGTERM, then SIGKILL) and their status does not count; one line on stderr names the
    process that failed, how (its exit status or signal) and why (its error line).
    """
    if processes < 1:
        raise UserError(f"--processes must be >= 1; got {processes}")
    if devices_per_process is not None and devices_per_process < 1:
        raise UserError(f"--devices-per-process must be >= 1; got {devices_per_process}")
    argv = list(argv[1:] if argv[:1] == ["--"] else argv)
    if argv[:1] != ["run"]:
        got = repr(argv[0]) if argv else "nothing"
        raise UserError(f"tljax launch starts `run` commands; got {got}, e.g. "
                        "tljax launch --processes 2 -- run CONFIG --workdir DIR")
    if "--distributed" not in argv:
        argv.append("--distributed")
    port = port or free_port()
    lock = threading.Lock()
    procs, threads, errors = [], [], [[] for _ in range(processes)]
    for i in range(processes):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tljax.cli", *argv], text=True, bufsize=1,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env=child_env(os.environ, i, processes, port, devices_per_process),
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None))
    for i, p in enumerate(procs):
        for stream, out in ((p.stdout, sys.stdout), (p.stderr, sys.stderr)):
            t = threading.Thread(target=_forward,
                                 args=(stream, out, f"[p{i}] ", lock, errors[i]), daemon=True)
            t.start()
            threads.append(t)
    codes, stopped, failed = {}, set(), []

    def stop_rest():
        for j, q in enumerate(procs):
            if q.poll() is None:
                stopped.add(j)
                q.terminate()  # JAX takes SIGTERM for a preemption notice: SIGKILL follows
        deadline = time.time() + _GRACE_S
        for j in stopped:
            try:
                procs[j].wait(max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                procs[j].kill()
                procs[j].wait()

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        settle = None  # after a failure: until when the others may still end on their own
        while len(codes) < processes:
            ended = [i for i, p in enumerate(procs) if i not in codes and p.poll() is not None]
            codes.update({i: _code(procs[i].returncode) for i in ended})
            failed += [i for i in ended if codes[i] and i not in stopped]
            if failed and settle is None:
                # A process that fails tells its peers why (tljax.peers), and they stop
                # too: their own statuses and lines name who failed first.
                settle = time.time() + _SETTLE_S
            if settle is not None and time.time() > settle and not stopped:
                stop_rest()
            time.sleep(0.05)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: take the processes down with us
        stop_rest()
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        for t in threads:
            t.join(timeout=5)
    if failed:  # their error lines are in by now (the forwarding threads are joined)
        others = sorted(stopped)
        print(f"tljax: launch: {_culprit(failed, codes, errors, processes)}"
              + (f"; stopped process{'es' if len(others) > 1 else ''} "
                 f"{', '.join(map(str, others))}" if others else ""), file=sys.stderr)
    return max((c for i, c in codes.items() if i not in stopped), default=0)


__all__ = ["child_env", "free_port", "launch"]
