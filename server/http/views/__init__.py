"""One blueprint per resource; each view parses input, calls one function and returns JSON."""
