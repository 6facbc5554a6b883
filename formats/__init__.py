"""Byte layouts shared by the layers above: what an encoder writes and a shard reads.

The bottom of the house: it imports only numpy, so ``encoders`` (which produce these arrays)
and ``shards`` (which store and score them) both use it without importing each other.
"""
