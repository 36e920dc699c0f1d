"""The brokerlist role: an HTTP JSON list of the live brokers and their load.

``twistd mmo-brokerlist --yellow URL --listen STRPORT`` answers ``GET /`` with
``{"version": "...", "brokerList": {"host:port": load, ...}}``: the one endpoint a
game client must know (docs/edge.md, docs/protocol.md section 5.9).
"""
