"""Photo search and two-image compare: upload pages, job pages, and the worker pipeline."""
