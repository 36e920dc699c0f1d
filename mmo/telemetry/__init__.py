"""What every process tells its operators: metrics, health, structured logs, traces.

* :mod:`mmo.telemetry.trace`: the trace id of the client request being served (a
  context variable the calls a handler makes carry on, and the log events it emits show);
* :mod:`mmo.telemetry.metrics`: cheap in-process counters and latency histograms, and the
  :class:`Telemetry` of a process (its metric sources and readiness checks) that the
  operator listener (:mod:`mmo.telemetry.site`) serves to Prometheus;
* :mod:`mmo.telemetry.logs`: one JSON object per log event, with the process's role and
  instance and the request's trace id.
"""
