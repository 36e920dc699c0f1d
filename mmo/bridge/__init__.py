"""Bridges between clusters: calls, pushes, events, sessions and channels of one cluster
reach another's (``twistd mmo-bridge``; :mod:`mmo.bridge.service`, docs/bridge.md)."""
