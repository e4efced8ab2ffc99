"""The local dashboard: the app, its views (rows shared with the CLI), templates and static files."""
