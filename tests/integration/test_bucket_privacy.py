"""Both buckets as infra/resources.yaml deploys them: no public access, encrypted at rest."""

import pytest

from chalicelib.services import Services


@pytest.mark.parametrize("which", ["bucket_name", "drop_bucket_name"])
def test_buckets_block_public_access_and_encrypt_objects(services: Services, which: str) -> None:
    bucket = getattr(services.settings, which)
    s3 = services.s3
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert block == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    s3.put_object(Bucket=bucket, Key="privacy-probe", Body=b"x")
    assert s3.head_object(Bucket=bucket, Key="privacy-probe")["ServerSideEncryption"] == "AES256"
