"""yellow: the registry every mmo process registers with and finds the others in."""
