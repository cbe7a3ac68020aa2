"""The shard format: the sample schema (encode, decode, check), writing tars, reading and verifying shard folders, previews."""
