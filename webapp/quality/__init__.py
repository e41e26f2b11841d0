"""Quality: retrieval evaluation runs and the admin page that shows them."""
