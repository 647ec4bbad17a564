"""Test support that is not a test: tiny real models through the real publish path, the toy fourth task."""
