"""The REST facade over Triton: validation, tokenization, image fetching, problem+json errors (docs/api.md)."""
