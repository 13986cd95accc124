"""sse-stream: filtered, resumable Server-Sent Events from a PostgreSQL event table."""

__version__ = "0.1.0"
