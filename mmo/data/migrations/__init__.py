"""mmo's own schema: versioned SQL files ``NNNN_name.sql``, applied by :mod:`mmo.data.migrate`."""
