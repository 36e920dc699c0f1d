"""Fault injection under a steady load (see :mod:`.load` for what is measured)."""
