"""Deployment to an AWS EC2 GPU instance: provisioning with boto3 (``python -m deploy``)."""
