"""What several processes share is made once: the others wait for it, then read it; a
killed maker leaves no lock behind."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from tljax import locks
from tljax.data import folder_store, folders


def _python(code: str, log) -> subprocess.Popen:
    """Starts ``python -c code`` writing stdout and stderr to the file ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-c", code], stdout=out,
                                stderr=subprocess.STDOUT, text=True)


def _wait_for(text: str, log, proc, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while text not in open(log).read():
        assert proc.poll() is None and time.time() < deadline, open(log).read()[-2000:]
        time.sleep(0.05)


def _folder(root) -> str:
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        os.makedirs(root / c)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), np.uint8)).save(root / c / f"{i}.png")
    return str(root)


def test_a_folder_another_process_is_preparing_is_waited_for_then_read(tmp_path):
    root, data_dir = _folder(tmp_path / "pets"), str(tmp_path / "data")
    scan = folders.scan(root)
    key = folders.folder_key(scan, 0)
    log = tmp_path / "other.log"
    with locks.held(locks.lock_path(data_dir, f"{folders.BUILDER}-{key}"), "the test"):
        other = _python(f"from tljax.data import folder_store\n"
                        f"print('dir', folder_store.prepare({root!r}, {data_dir!r}).dir)", log)
        _wait_for(f"waiting for another process to finish preparing image folder {root}",
                  log, other)
        mine = folder_store._write(root, scan, key, data_dir, 0)  # what the lock's holder does
        time.sleep(0.5)
        assert other.poll() is None  # still waiting: it does not decode a copy of its own
    assert other.wait(120) == 0, open(log).read()
    text = open(log).read()
    assert f"dir {mine.dir}" in text
    assert "tljax: preparing image folder" not in text  # it read the copy made meanwhile


def test_a_killed_holder_leaves_no_lock_behind(tmp_path):
    path = locks.lock_path(str(tmp_path), "digits")
    log = tmp_path / "holder.log"
    holder = _python(f"import time\nfrom tljax import locks\n"
                     f"with locks.held({path!r}, 'x'):\n"
                     f"    print('held', flush=True)\n    time.sleep(300)\n", log)
    _wait_for("held", log, holder)
    said = []
    started = time.perf_counter()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with locks.held(path, "preparing digits", log=said.append):
        pass
    assert time.perf_counter() - started < 5 and said == []  # taken at once, no waiting


def test_lock_names_stay_inside_their_folder(tmp_path):
    for name in ("../../etc/passwd", "/abs/path", "imagenet2012_subset/1pct", ".."):
        path = locks.lock_path(str(tmp_path), name)
        assert os.path.dirname(path) == os.path.join(str(tmp_path), locks.LOCK_DIR), path
