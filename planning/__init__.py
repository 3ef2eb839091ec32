"""ontolab stage: planning."""
