"""Servers shared by the end-to-end tests."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

BUCKET = "stash-backups"
"""The bucket ``moto_s3`` creates."""
S3_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[dict[str, Any]]:
    """moto's S3 on a free loopback port that checks access keys, with the bucket created.

    moto accepts unsigned requests by default, which would let a backup pass even if
    the Secret's AWS keys never reached restic. So an IAM user with an S3 policy and
    an access key are made first, then authentication is switched on
    (``/moto-api/reset-auth``): from then on only that key's signed requests succeed.
    One server per session: moto keeps its accounts process-wide, so a second server
    would find the IAM user made already. Tests keep apart by prefix.
    """
    import boto3
    import requests
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    previous_auth = None
    try:
        bootstrap = {"aws_access_key_id": "bootstrap", "aws_secret_access_key": "bootstrap"}
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", **bootstrap)
        iam.create_user(UserName="stash")
        iam.put_user_policy(UserName="stash", PolicyName="s3", PolicyDocument=json.dumps(S3_POLICY))
        key = iam.create_access_key(UserName="stash")["AccessKey"]
        keys = {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
        )
        client.create_bucket(Bucket=BUCKET)
        reply = requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10)
        reply.raise_for_status()
        previous_auth = reply.json()["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]
        yield {"endpoint": endpoint, "client": client, "keys": keys, "bucket": BUCKET}
    finally:
        if previous_auth is not None:  # the setting is process-wide: leave it as found
            requests.post(
                f"{endpoint}/moto-api/reset-auth", data=previous_auth.encode(), timeout=10
            )
        server.stop()
