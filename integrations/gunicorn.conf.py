"""gunicorn settings for the example service with arenapool.

    gunicorn -c integrations/gunicorn.conf.py
    ARENAPOOL_MODE=orjson WEB_CONCURRENCY=4 gunicorn -c integrations/gunicorn.conf.py

aiohttp apps run under gunicorn with aiohttp's own worker class; each worker is one
process with one event loop, and it calls ``make_app`` itself, so each worker has its
own ``SlabPool``. Memory adds up per worker, so each worker sizes its pool with
``budget="auto"``: its share of the container's memory limit (cgroup v2 ``memory.max``
or v1 ``memory.limit_in_bytes``), after every worker's baseline and room for one worker
being respawned, divided by the worker count, less a margin for objects decoded from
bodies. Each worker logs the derivation once at start-up, with every term; see
docs/scaling.md. Outside a container (no memory limit) ``auto`` fails at start-up and
asks for a number: set ``ARENAPOOL_BUDGET=256MiB``.

With ``PROMETHEUS_MULTIPROC_DIR`` set (an empty directory, on disk), the workers share
their Prometheus metrics: any worker's ``/_arenapool/metrics`` shows every worker (a
``pid`` label) and the container's totals. The hooks below clear the directory at
start and drop a dead worker's live figures.
"""

import os

_here = os.path.dirname(os.path.abspath(__file__))
_mode = os.environ.get("ARENAPOOL_MODE", "arenapool")
_budget = os.environ.get("ARENAPOOL_BUDGET", "auto")
_limit = os.environ.get("ARENAPOOL_LIMIT", "8MiB")
_token = os.environ.get("ARENAPOOL_ADMIN_TOKEN") or None

# The app factory, called once in every worker (gunicorn >= 20.1 reads literal arguments).
wsgi_app = f"app:make_app({_mode!r}, budget={_budget!r}, limit={_limit!r}, admin_token={_token!r})"
chdir = os.path.join(_here, "example_service")
worker_class = "aiohttp.GunicornWebWorker"
bind = os.environ.get("BIND", "127.0.0.1:8080")
# gunicorn's own default for -w is WEB_CONCURRENCY too; pre_fork below keeps it true.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# The burst a container must absorb arrives as connections first: room in the queue.
backlog = 2048
# gunicorn 24+ opens a control socket at one path per user; several servers on one
# machine (tests, a dev box) would fight over it. Older versions ignore the setting.
control_socket_disable = True

# arenapool logs the budget derivation (and the governor its actions) at INFO on the
# "arenapool" loggers: send them where gunicorn's own error log goes.
# (gunicorn replaces its "loggers" with this dict's, so its own two are repeated here.)
logconfig_dict = {
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
        "arenapool": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
    },
}


def pre_fork(server, worker):
    """Before each fork: tell the new worker how many workers share the container.

    A worker cannot ask the master; it reads ``WEB_CONCURRENCY`` (and
    ``ARENAPOOL_WORKERS``) from the environment it inherits. Setting both to the
    master's live count keeps them true after ``-w`` on the command line or TTIN/TTOU.
    """
    count = str(server.num_workers)
    os.environ["WEB_CONCURRENCY"] = count
    os.environ["ARENAPOOL_WORKERS"] = count


def on_starting(server):
    """Clear the multiprocess metrics directory: files of a previous run would count."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and os.path.isdir(path):
        for name in os.listdir(path):
            if name.endswith(".db"):
                os.remove(os.path.join(path, name))


def post_worker_init(worker):
    """The app is built in this worker (its ``make_app`` has returned): say so.

    gunicorn logs "Booting worker" when it forks, before the worker has imported the
    service; this line comes after, just before the worker's event loop starts and
    takes connections from the shared listening socket.
    """
    worker.log.info("Worker ready (pid: %s)", worker.pid)


def child_exit(server, worker):
    """A worker is gone: drop its live gauges (its counters stay in the totals)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess  # noqa: PLC0415 - only with the extra

        multiprocess.mark_process_dead(worker.pid)


# Build the app in each worker, not in the master: arenapool's pool and governor belong
# to the worker's event loop, and a pool inherited through fork would be shared
# copy-on-write by every worker.
preload_app = False

# max_requests: the usual answer to "RSS only grows" is to restart each worker after N
# requests. With the plain or orjson handler that is what keeps a long-lived worker's
# RSS in check: large bodies are freed into glibc's heap and stay resident.
#
# With arenapool it is not needed: request bodies live in the pool's mmap blocks, which
# are reused while busy and returned to the OS `decay` seconds after they go idle, and
# the governor calls malloc_trim when the worker goes idle. RSS then has a ceiling
# (roughly: the process at rest + the budget) instead of a trend; `arenapool soak`
# measures the drift.
#
# Recycling is not free: `arenapool bench` runs the orjson service under this worker
# class with max_requests (mode orjson+recycle) and counts the cost. A restarting
# worker closes its keep-alive connections (clients must resend) and cold-starts
# (imports, a cold pool); requests that arrive during its graceful shutdown can wait up
# to graceful_timeout. So leave it off (0), or keep it as a rare safety net for leaks in
# other code, far above the requests a worker serves in an hour, with jitter so the
# workers do not restart together.
max_requests = int(os.environ.get("MAX_REQUESTS", "0"))
max_requests_jitter = max_requests // 10

# Seconds a stopping worker gets to finish in-flight requests (restarts, deploys).
graceful_timeout = 30
# Seconds of silence before the master kills a worker; the aiohttp worker notifies the
# master from its event loop, so a blocked loop shows up here too.
timeout = 30
keepalive = 75  # keep-alive seconds; above a load balancer's idle timeout (often 60)
accesslog = None  # the example service logs nothing per request
