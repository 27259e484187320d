"""Operator commands of ``sfl``: see and steer a running federation.

Every command works against AWS or the embedded AWS (moto's server), chosen with
``--endpoint-url``. Only boto3 is used, so the commands run wherever the edge client
and the aggregator run.
"""
