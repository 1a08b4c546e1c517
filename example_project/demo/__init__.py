"""The demo app: a page with buttons that start sample actors, and the live task list."""
