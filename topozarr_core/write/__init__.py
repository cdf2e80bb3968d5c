"""Running units of work: the region writer, the tile executor and the one write protocol."""
