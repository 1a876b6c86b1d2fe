"""Image features: one encoder (``encode_batches``) that every engine and caller goes through."""

from visroute.features.encode import EncodedBatch, encode_batches, encode_image_files, encode_inputs, iter_encoded_batches

__all__ = ["EncodedBatch", "encode_batches", "encode_image_files", "encode_inputs", "iter_encoded_batches"]
