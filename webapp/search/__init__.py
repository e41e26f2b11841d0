"""Photo search and two-image compare: upload pages, result pages, search requests in Redis."""
