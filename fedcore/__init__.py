"""Cloud-neutral core of the federated learning system, in pure numpy.

Update format, validation, models and aggregation live here. Nothing in this
package calls AWS, so the edge client, the aggregator Lambda and tests share it.
"""
