"""S3 operations, one module each (listing, copy, delete), as in s3transfer."""
