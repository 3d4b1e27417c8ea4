"""``python -m onnxconv`` and the ``onnxconv`` console script run the CLI through :func:`run`.

Importing click and the CLI takes a noticeable moment; Ctrl-C during it must end like Ctrl-C later on (one line,
exit status 130, no traceback), so the import itself is guarded here, before anything else is loaded.
"""

from __future__ import annotations

import sys


def run() -> None:
    """Import and run the CLI, turning a Ctrl-C during the import into exit status 130."""
    try:
        from onnxconv.cli import main  # here, not at the top: a Ctrl-C during this import must exit 130 too
    except KeyboardInterrupt:
        sys.stderr.write("\nAborted!\n")
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
