"""gunicorn config that starts a sidecar (a log shipper) as a child of the master: it never listens."""

import subprocess
import sys


def when_ready(server):  # type: ignore[no-untyped-def]
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)  # log shipper"])
