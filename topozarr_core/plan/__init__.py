"""Units of work as plain, picklable data: regions, tiles and their dependency graph."""
