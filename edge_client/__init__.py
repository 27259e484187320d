"""Device-side client: load local data, train on the global model, upload the update.

:class:`~edge_client.client.EdgeClient` takes part in one round at a time, using the two
S3 buckets of a federation. The console command ``sfl-edge`` (:mod:`edge_client.cli`)
wraps it to take part in several consecutive rounds.
"""
