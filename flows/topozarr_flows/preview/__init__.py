"""``topozarr-flows preview``: a bundled maplibre + zarr-layer page and a loopback server for a pyramid."""
