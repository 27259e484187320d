"""Device-side client: load local data, train on the global model, upload the update.

:class:`~edge_client.client.EdgeClient` does one round at a time against the two S3
buckets of a federation; ``sfl-edge`` (:mod:`edge_client.cli`) wraps it as a console
command that takes part in several consecutive rounds.
"""
