"""ontolab stage: dynamics."""
