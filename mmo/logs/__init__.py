"""logs: the log collector role (``twistd mmo-logs``).

A worker serving :class:`~mmo.logs.collector.LogCollector` as the service ``logs``:
every process of the cluster ships its log events to it (:mod:`mmo.ops.shipper`), it
keeps the latest in memory for ``mmo logs`` and ``mmo trace`` and writes them all, one
JSON object per line, to a rotated file (``docs/logging.md``).
"""
