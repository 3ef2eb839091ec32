"""One module per pipeline stage: each turns a resolved config into outputs in a folder."""
