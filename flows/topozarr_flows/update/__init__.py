"""The update-pyramid flow."""
