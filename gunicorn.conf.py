"""gunicorn's settings for plain gunicorn run from the checkout: `gunicorn wsgi:app` and
`gunicorn 'automation:create_app()'` read this file by themselves (`./gunicorn.conf.py`).

Elsewhere, pass it (`-c /path/to/gunicorn.conf.py`) or at least
`--logger-class automation.logs.GunicornLogger`. `automation serve` needs none of it.
"""

import os

from automation.web.serving import mark_worker_dead

#: The webhook secret masked in gunicorn's lines and, with LOG_FORMAT=json, every line
#: of the master and of the workers a JSON object, as the server's own.
logger_class = "automation.logs.GunicornLogger"
#: No control socket (gunicorn >= 24): its one path per user, ~/.gunicorn/gunicorn.ctl,
#: is shared by every gunicorn on the host and accepts reload and shutdown. Older
#: gunicorns ignore the name.
control_socket_disable = True


def child_exit(server: object, worker: object) -> None:
    """With PROMETHEUS_MULTIPROC_DIR set, drop a dead worker's live gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        mark_worker_dead(server, worker)
