"""broker: the edge layer that holds game clients' connections and sessions."""
