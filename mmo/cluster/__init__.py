"""cluster: a whole mmo cluster on one machine, as supervised child processes."""
