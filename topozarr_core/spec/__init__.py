"""What to build: the validated plan of a pyramid (levels, chunking, grid, CRS, packing, names and attributes)."""
