"""Test doubles that ship with the package: the mock upstreams the demo and the tests use."""
