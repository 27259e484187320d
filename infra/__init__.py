"""AWS CDK stacks and the deployment settings they share with the local runtime."""
