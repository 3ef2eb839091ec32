"""ontolab stage: experiments."""
