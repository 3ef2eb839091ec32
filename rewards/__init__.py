"""ontolab stage: rewards."""
