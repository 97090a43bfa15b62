"""Storage tiers behind one small protocol each: object store (Ceph RGW over S3), edge cache, tape archive."""
