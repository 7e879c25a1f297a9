"""The batch engine of the offline tools: one Ray task per job, results as they finish.

    for i, result in ray_imap_unordered(process_one, jobs, address=None, num_cpus=2):
        ...   # the caller records `result` in its manifest (resumability lives there, not here)

`mu0 record --engine ray` and `mu0 extract --engine ray` run through this. Without an address
Ray starts a local instance with `num_cpus` worker slots (default: every core of the machine);
with `address` ("auto", "ray://head:10001", "10.0.0.1:6379") the same code submits to an existing
cluster, whose nodes must have this repository installed (the same image or venv) and see the
output directory (a shared filesystem), since workers import the job function by module name
and write their files themselves.

Here, in mu0_core (imports nothing of ours), because both the recorder (mu0_sim) and
TraceExtract (mu0_perception) use it and neither may import the other's layer for it. Ray is
imported lazily: the rest of the package never needs it.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

ENGINES = ("local", "ray")


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _call(fn, job):
    """The Ray task: `fn` travels as an argument, so any picklable callable works (a builtin too)."""
    return fn(job)


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None):
    """Connects to `address` or starts a local Ray with `num_cpus` slots; shuts it down on exit.

    A session someone else already opened (a test's fixture, a notebook) is reused and left
    running: starting Ray costs ~10 s, so a caller that runs several batches starts it once."""
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("the ray engine needs the `ray` package (pip install -r requirements.txt)") from exc
    if ray.is_initialized():
        yield ray
        return
    if address:
        ray.init(address=address, logging_level="WARNING")
    else:
        # no dashboard: it needs ray[default] and would take a core's worth of the 2 we have
        ray.init(num_cpus=int(num_cpus or os.cpu_count() or 1), include_dashboard=False,
                 logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()


def ray_imap_unordered(fn: Callable[[Any], Any], jobs: Iterable[Any], *, address: str | None = None,
                       num_cpus: int | None = None, cpus_per_task: float = 1.0,
                       on_error: Callable[[Any, BaseException], Any] | None = None,
                       max_calls_per_worker: int = 16,
                       ) -> Iterator[tuple[int, Any]]:
    """Yields (index into jobs, fn(job)) in completion order, one Ray task per job.

    `fn` must be importable by the workers (a module-level function of an installed module:
    they import it by name; one they cannot import fails every task). A task whose worker dies
    (segfault, OOM kill) is retried once by Ray; if it still fails, `on_error(job, exc)` turns
    the exception into a result (e.g. a manifest record with status "failed"), so one bad
    episode never stops a corpus; without `on_error` the exception propagates. Each task holds
    `cpus_per_task` slots, so Ray runs as many at once as the cluster has cores; Ray also sets
    OMP_NUM_THREADS to that count in the worker, so numpy/OpenCV do not oversubscribe."""
    jobs = list(jobs)
    if not jobs:
        return
    with ray_session(address, num_cpus) as ray:
        # max_calls: a worker is replaced after that many jobs; native state that Python's GC never
        # returns (MuJoCo render contexts, metaworld envs) grew a recording worker by ~28 MB per
        # episode, 8.5 GB each after 300 episodes of the 40-task corpus
        remote = ray.remote(num_cpus=cpus_per_task, max_retries=1, max_calls=max_calls_per_worker)(_call)
        fn_ref = ray.put(fn)
        pending = {remote.remote(fn_ref, job): i for i, job in enumerate(jobs)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # a RayTaskError / WorkerCrashedError of this job only
                    if on_error is None:
                        for other in pending:
                            ray.cancel(other)
                        raise
                    result = on_error(jobs[i], exc)
                yield i, result
