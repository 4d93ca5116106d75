"""Parallel and distributed interval replay: SimuBoost's speed-up.

Once every interval of a recording has a checkpoint, the intervals can be
replayed at the same time, on many cores or many hosts, so a slow analysis
of a long run takes about as long as its longest interval plus overhead.

Modules (wire format apart from orchestration apart from the schedulers):

* ``replaylog``  which replay-log bytes an interval reads (the offset QEMU
  saved in each checkpoint's ``replay`` section) and a sparse copy of them
* ``job``        :class:`IntervalJob` (everything a worker needs, as msgpack
  bytes), :func:`run_job` (the worker side, from bytes only, in a private
  temporary directory) and :class:`JobResult`
* ``analyses``   what a worker does with an interval (``verify``,
  ``writeset``) and the client's verdict against the store
* ``simulate``   :func:`simulate`: plan (longest first), run, judge, progress
* ``local``      :class:`LocalScheduler`: N local processes (``--jobs N``)
* ``dask``       :class:`DaskScheduler`: a Dask distributed cluster
  (``--scheduler tcp://HOST:PORT``), and the worker probe behind
  ``sbtui doctor --scheduler``
* ``results``    results stored with the recording (``REC/analyses/NAME.msgpack``)

Typical use::

    report = simulate(rec, "writeset", LocalScheduler(jobs=2), progress=print)
    with DaskScheduler("tcp://10.0.0.5:8786") as cluster:
        report = simulate(rec, "verify", cluster)
"""

from engine.parallel.analyses import ANALYSES, get_analysis
from engine.parallel.job import IntervalJob, JobResult, build_job, run_job, run_job_bytes
from engine.parallel.local import LocalScheduler
from engine.parallel.results import load_report, save_report, stored_analyses
from engine.parallel.simulate import (IntervalOutcome, SimulationProgress, SimulationReport,
                                      plan_intervals, simulate)

__all__ = ["ANALYSES", "IntervalJob", "IntervalOutcome", "JobResult", "LocalScheduler",
           "SimulationProgress", "SimulationReport", "build_job", "get_analysis", "load_report",
           "plan_intervals", "run_job", "run_job_bytes", "save_report", "simulate",
           "stored_analyses"]
