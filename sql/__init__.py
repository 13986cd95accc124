"""The migrations and named queries, shipped inside the package."""
