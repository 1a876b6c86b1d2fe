"""Image features: decode in workers, encode in batches."""

from visroute.features.encode import EncodedBatch, encode_image_files, iter_encoded_batches

__all__ = ["EncodedBatch", "encode_image_files", "iter_encoded_batches"]
