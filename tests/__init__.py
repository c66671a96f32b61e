"""Test suite of the SIP trunk gateway."""
