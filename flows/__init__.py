"""Prefect flows over topozarr_core: build and update pyramids as retryable tile tasks."""
