"""ontolab stage: probes."""
