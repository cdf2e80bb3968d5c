"""Where data comes from and goes to: sources, targets, the retrying object store, Icechunk, the writer lease."""
