"""Similar products: building the neighbour lists (workers) and serving them (pages, API)."""
