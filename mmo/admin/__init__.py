"""``twistd mmo-admin``: the operators' web console (docs/admin.md)."""
