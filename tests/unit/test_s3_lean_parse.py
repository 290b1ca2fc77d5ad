"""ponoskit/s3/lean_parse.py: the lean parse of listings and DeleteObjects answers gives what botocore
gives. No server.
"""

from __future__ import annotations

import pytest


LISTING = (b'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
           b"<Name>b</Name><Prefix>p%20q</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys>"
           b"<Delimiter>/</Delimiter><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>"
           b"<ContinuationToken>t1</ContinuationToken><NextContinuationToken>t2</NextContinuationToken>"
           b"<StartAfter>a</StartAfter>"
           b"<Contents><Key>a%26b/%C3%BC%07.txt</Key><LastModified>2026-12-01T10:00:00.000Z</LastModified>"
           b"<ETag>&quot;9f9b&quot;</ETag><ChecksumAlgorithm>CRC32</ChecksumAlgorithm><Size>147</Size>"
           b"<Owner><ID>x</ID></Owner><StorageClass>STANDARD_IA</StorageClass></Contents>"
           b"<Contents><Key>k2</Key><LastModified>2026-12-01T10:00:01.000Z</LastModified><ETag>&quot;e-2&quot;"
           b"</ETag><Size>0</Size><StorageClass>GLACIER</StorageClass></Contents>"
           b"<CommonPrefixes><Prefix>dir%2F/</Prefix></CommonPrefixes><CommonPrefixes><Prefix>d2/</Prefix>"
           b"</CommonPrefixes></ListBucketResult>")


EMPTY_LISTING = (b'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/'
                 b'2006-03-01/"><Name>b</Name><Prefix></Prefix><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys>'
                 b"<IsTruncated>false</IsTruncated></ListBucketResult>")


DELETED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
           b"<Deleted><Key>a&amp;b</Key></Deleted><Deleted><Key>v</Key><VersionId>v1</VersionId></Deleted>"
           b"<Deleted><Key>m</Key><DeleteMarker>true</DeleteMarker><DeleteMarkerVersionId>dm</DeleteMarkerVersionId>"
           b"</Deleted><Error><Key>x</Key><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
           b"</DeleteResult>")


@pytest.mark.parametrize("operation, body", [("ListObjectsV2", LISTING), ("ListObjectsV2", EMPTY_LISTING),
                                             ("DeleteObjects", DELETED)], ids=["listing", "empty", "deleted"])
def test_the_lean_parse_gives_what_botocore_gives_for_the_fields_the_jobs_read(operation, body):
    import botocore.session
    from botocore.parsers import RestXMLParser

    from ponoskit.s3.lean_parse import LeanRestXMLParser
    shape = botocore.session.get_session().get_service_model("s3").operation_model(operation).output_shape
    response = {"status_code": 200, "headers": {"x-amz-request-id": "r1", "x-amz-id-2": "h"}, "body": body}
    theirs = RestXMLParser(timestamp_parser=lambda v: v).parse(response, shape)
    ours = LeanRestXMLParser(timestamp_parser=lambda v: v).parse(response, shape)
    read = {"Contents": ("Key", "Size", "ETag", "LastModified", "StorageClass")}
    for item in theirs.get("Contents", []):
        for field in list(item):
            if field not in read["Contents"]:
                del item[field]
    assert ours == theirs
