"""The archive's media: where archived outputs are stored, and what their bytes are."""
