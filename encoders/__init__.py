"""Pixels to packed binary codes: deep hashing plus classical perceptual baselines."""
from encoders.base import Encoder, code_to_hex, hamming, hex_to_code, pack_bits, unpack_bits
from encoders.registry import DEFAULT_ENCODER, get_encoder, list_encoders, register

__all__ = ["Encoder", "DEFAULT_ENCODER", "get_encoder", "list_encoders", "register",
           "pack_bits", "unpack_bits", "hamming", "code_to_hex", "hex_to_code"]
