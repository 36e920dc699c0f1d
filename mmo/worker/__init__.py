"""worker: a process that runs one logic service (a handler class)."""
