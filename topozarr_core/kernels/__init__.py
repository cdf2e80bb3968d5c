"""The coarsening kernels: NaN-aware means and the other reductions, compiled where it pays."""
