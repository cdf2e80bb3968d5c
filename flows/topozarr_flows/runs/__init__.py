"""What both flows do with a tile plan: running tiles under the limit, checks, artifacts."""
