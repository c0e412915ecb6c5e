"""Where TFDS data lives and how TFDS is kept quiet: what every data module shares."""

import contextlib
import io
import os


def default_data_dir() -> str:
    """Returns ``$TLJAX_DATA_DIR``, else ``~/.cache/tljax/tensorflow_datasets``."""
    return os.environ.get("TLJAX_DATA_DIR",
                          os.path.expanduser("~/.cache/tljax/tensorflow_datasets"))


@contextlib.contextmanager
def quiet_tfds(swallow_prints: bool):
    """Runs its body with absl at ERROR and tfds's progress bars off; with ``swallow_prints``
    also drops what tfds prints to stdout ("Downloading and preparing dataset Unknown size",
    which for a built-in builder reads like a download).
    """
    import tensorflow_datasets as tfds
    from absl import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    tfds.display_progress_bar(False)
    try:
        if swallow_prints:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        else:
            yield
    finally:
        tfds.display_progress_bar(True)
        logging.set_verbosity(verbosity)
