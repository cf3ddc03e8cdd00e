"""Catalog -> training shards: scan, metadata and licenses, decode, segment, stems, chroma, EnCodec tokens."""
