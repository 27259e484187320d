"""The aggregator Lambda: validates updates, admits them, publishes global models."""
