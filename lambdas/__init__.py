"""Cloud-side handlers deployed as AWS Lambda functions."""
