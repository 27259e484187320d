"""An embedded AWS on 127.0.0.1 (moto's server) that runs the real handler code.

It creates the resources the CDK stacks define, from the same settings, plays the
parts AWS would play (the SQS event source mapping, the EventBridge sweep schedule,
CloudWatch Logs turning EMF records into metrics) and runs the demo.
"""
