"""A WSGI model server as teams run it under gunicorn (sync workers, app loaded in each worker).

Each worker "loads its model" at import. Workers started after the first ``APP_WORKERS`` are
replacements, and ``APP_REPLACEMENT_MODE`` says how they behave: ``healthy``; ``hang`` (stuck loading
the model, holding the inherited listening socket); ``crash`` (serve for ``APP_CRASH_AFTER_S``, then
die: a crash loop under the master's respawning); ``error`` (answer 500).
"""

import os
import threading
import time

with open(os.environ["APP_STARTS_FILE"], "a") as _starts:
    _starts.write(f"{os.getpid()}\n")
with open(os.environ["APP_STARTS_FILE"]) as _starts:
    REPLACEMENT = len(_starts.read().split()) > int(os.environ.get("APP_WORKERS", "2"))
MODE = os.environ.get("APP_REPLACEMENT_MODE", "healthy") if REPLACEMENT else "healthy"

time.sleep(float(os.environ.get("APP_LOAD_S", "0.2")))  # loading the model
if MODE == "hang":
    time.sleep(3600)
if MODE == "crash":
    threading.Timer(float(os.environ.get("APP_CRASH_AFTER_S", "0.5")), os._exit, args=(1,)).start()


def app(environ, start_response):  # type: ignore[no-untyped-def]
    if MODE == "error":
        start_response("500 Internal Server Error", [("Content-Type", "application/json")])
        return [b'{"error": "model not loaded"}']
    start_response("200 OK", [("Content-Type", "application/json")])
    return [b'{"status": "ok"}']
