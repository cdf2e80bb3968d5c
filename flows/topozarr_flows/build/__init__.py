"""The build-pyramid flow and its tasks."""
