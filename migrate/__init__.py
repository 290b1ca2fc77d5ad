"""One-off migrations of the workflow removal. Deleted one day; maint/ must not import it."""
