"""``mmo bench``: the project's own load generator and its workloads."""
