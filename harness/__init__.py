"""The measuring harness of arenapool: load, hostile clients, servers under test, reports.

Not part of the installed library: it lives in the source checkout next to
``arenapool/`` and is what ``arenapool demo|bench|soak|serve``, ``python -m harness``,
``benchmarks/`` and the tests use. It imports only arenapool's public names.

Modules, lowest first:

- :mod:`harness.http`: one raw HTTP/1.1 client (``Conn``) and the one response reader
- :mod:`harness.workload`: request bodies, named workloads, seeded plans
- :mod:`harness.loadgen`: the bounded keep-alive load client and its ``LoadResult``
- :mod:`harness.wrk`: driving a server with Debian's ``wrk`` (a C client) and a Lua script
- :mod:`harness.procstat`: a process's page faults and CPU time from ``/proc/PID/stat``
- :mod:`harness.modes`: the ways of running the example service that a bench compares,
  and each arenapool mode's like-for-like baseline (the same decoder without arenapool)
- :mod:`harness.server`: starting a server under test (subprocess or in-process)
- :mod:`harness.rss`: the RSS sampler and what its readings come to (peak, steady, drift)
- :mod:`harness.run`: settings, progress hooks, driving and idling, shared by every run
- :mod:`harness.bench`, :mod:`harness.demo`, :mod:`harness.soak`: the three kinds of run
- :mod:`harness.report`, :mod:`harness.plots`: numbers, tables, JSON and plots
- :mod:`harness.idle`: polling a condition or a pool until it holds (no blind sleeps)
- :mod:`harness.hostile`, :mod:`harness.mix`: the hostile cases and their server, the
  fault mix of the integrity runs and the chaos soak
- :mod:`harness.console`, :mod:`harness.cli`: progress on a terminal and the commands
"""
