"""Storage engines: SQLite (embedded default) and PostgreSQL, one SQLAlchemy Core schema."""
