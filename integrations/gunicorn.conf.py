"""gunicorn settings for the example service with arenapool.

    gunicorn -c integrations/gunicorn.conf.py
    ARENAPOOL_MODE=orjson WEB_CONCURRENCY=4 gunicorn -c integrations/gunicorn.conf.py

aiohttp apps run under gunicorn with aiohttp's own worker class; each worker is one
process with one event loop, and it calls ``make_app`` itself, so each worker has its
own ``SlabPool``. Memory adds up per worker: with ``--budget 256MiB`` and 4 workers the
pools may lend up to 1 GiB in all, so size the budget as (memory for request bodies) /
(workers).
"""

import os

_here = os.path.dirname(os.path.abspath(__file__))
_mode = os.environ.get("ARENAPOOL_MODE", "arenapool")
_budget = os.environ.get("ARENAPOOL_BUDGET", "256MiB")
_limit = os.environ.get("ARENAPOOL_LIMIT", "8MiB")

# The app factory, called once in every worker (gunicorn >= 20.1 reads literal arguments).
wsgi_app = f"app:make_app({_mode!r}, budget={_budget!r}, limit={_limit!r})"
chdir = os.path.join(_here, "example_service")
worker_class = "aiohttp.GunicornWebWorker"
bind = os.environ.get("BIND", "127.0.0.1:8080")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))

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
