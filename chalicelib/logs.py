"""CloudWatch-style structured JSON logs (aws-lambda-powertools). Never prompt or output text."""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger


def get_logger(service: str) -> Logger:
    return Logger(service=service, level=os.environ.get("FIRST_LOG_LEVEL", "INFO"))
